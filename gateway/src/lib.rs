//! The gateway: computes footprints, forwards calls to the sequencer leader, returns
//! results, and finds the original result of a retried call.
//!
//! ```text
//!  Call ─────────▶ Gateway ──▶ Submit(txn) to the leader it believes in
//!  NotLeader ────▶         ──▶ Submit again at the hinted leader, or Reply::Unavailable
//!  Duplicate ────▶         ──▶ Query the designated partition's result table
//!  Result ───────▶         ──▶ Reply::Done
//!  ResultUnknown ▶         ──▶ Reply::Unavailable (the client retries later)
//! ```
//!
//! A gateway keeps only its calls in flight; after a crash it knows nothing, and clients
//! retry elsewhere. The simulator and the `node` runtime drive the same machine.

#![forbid(unsafe_code)]

use detflow_executor::Registry;
use detflow_protocol::message::{Call, Rejection, Reply};
use detflow_protocol::{
    ClientId, NodeId, PartitionId, Position, RequestSeq, Transaction, TxnResult,
};
use detflow_scheduler::PartitionMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An effect of the gateway.
#[derive(Clone, Debug, PartialEq)]
pub enum GatewayOutput {
    /// Ask a partition's result table for a call's result.
    Query {
        /// The designated partition of the call.
        to: PartitionId,
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
    /// Answer a client.
    Reply {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
        /// The answer.
        reply: Reply,
    },
    /// Forward a transaction to a sequencer replica.
    Submit {
        /// The replica believed to lead.
        to: NodeId,
        /// The transaction.
        txn: Arc<Transaction>,
    },
}

/// Counters of a gateway's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Calls refused before ordering.
    pub rejected: u64,
    /// Submissions redirected to another replica.
    pub redirects: u64,
    /// Retried calls answered from a result table.
    pub recovered_results: u64,
}

/// A sans-IO gateway.
pub struct Gateway {
    id: NodeId,
    registry: Arc<Registry>,
    map: PartitionMap,
    replicas: Vec<NodeId>,
    leader_hint: usize,
    footprint_entries_max: usize,
    pending: BTreeMap<(ClientId, RequestSeq), Arc<Transaction>>,
    stats: GatewayStats,
}

impl Gateway {
    /// A gateway with node id `id` that knows the procedures of `registry`, routes with
    /// `map` and submits to one of `replicas`.
    pub fn new(
        id: NodeId,
        registry: Arc<Registry>,
        map: PartitionMap,
        replicas: Vec<NodeId>,
        footprint_entries_max: usize,
    ) -> Gateway {
        assert!(!replicas.is_empty(), "a gateway needs a sequencer");
        Gateway {
            id,
            registry,
            map,
            replicas,
            leader_hint: 0,
            footprint_entries_max,
            pending: BTreeMap::new(),
            stats: GatewayStats::default(),
        }
    }

    /// Work counters.
    pub fn stats(&self) -> GatewayStats {
        self.stats
    }

    fn leader(&self) -> NodeId {
        self.replicas[self.leader_hint]
    }

    /// A client's call (or its retry).
    pub fn on_call(&mut self, call: Call, out: &mut Vec<GatewayOutput>) {
        let footprint = self
            .registry
            .footprint(&call.procedure, &call.args)
            .and_then(|fp| {
                if fp.len() > self.footprint_entries_max {
                    Err(Rejection::FootprintTooLarge {
                        entries: fp.len(),
                        max: self.footprint_entries_max,
                    })
                } else {
                    Ok(fp)
                }
            });
        match footprint {
            Ok(footprint) => {
                let txn = Arc::new(Transaction {
                    client: call.client,
                    seq: call.seq,
                    gateway: self.id,
                    procedure: call.procedure,
                    args: call.args,
                    footprint,
                });
                self.pending.insert((call.client, call.seq), txn.clone());
                out.push(GatewayOutput::Submit {
                    to: self.leader(),
                    txn,
                });
            }
            Err(rejection) => {
                self.stats.rejected += 1;
                out.push(GatewayOutput::Reply {
                    client: call.client,
                    seq: call.seq,
                    reply: Reply::Rejected(rejection),
                });
            }
        }
    }

    /// A replica that does not lead handed a submission back.
    pub fn on_not_leader(
        &mut self,
        from: NodeId,
        txn: Arc<Transaction>,
        leader: Option<NodeId>,
        out: &mut Vec<GatewayOutput>,
    ) {
        let key = (txn.client, txn.seq);
        if !self.pending.contains_key(&key) {
            return;
        }
        match leader.and_then(|l| self.replicas.iter().position(|r| *r == l)) {
            Some(i) if self.replicas[i] != from => {
                self.leader_hint = i;
                self.stats.redirects += 1;
                out.push(GatewayOutput::Submit {
                    to: self.leader(),
                    txn,
                });
            }
            // No leader known (an election is under way): the client backs off and retries;
            // meanwhile try the next replica for later calls.
            _ => {
                self.leader_hint = (self.leader_hint + 1) % self.replicas.len();
                self.pending.remove(&key);
                out.push(GatewayOutput::Reply {
                    client: txn.client,
                    seq: txn.seq,
                    reply: Reply::Unavailable,
                });
            }
        }
    }

    /// The leader already holds this call in its log: find its result.
    pub fn on_duplicate(
        &mut self,
        client: ClientId,
        seq: RequestSeq,
        out: &mut Vec<GatewayOutput>,
    ) {
        let Some(txn) = self.pending.get(&(client, seq)) else {
            return;
        };
        let routed = detflow_scheduler::route(Position::default(), txn.clone(), &self.map);
        out.push(GatewayOutput::Query {
            to: routed.designated(),
            client,
            seq,
        });
    }

    /// A result, from the designated participant or from a result-table query.
    pub fn on_result(&mut self, result: TxnResult, recovered: bool, out: &mut Vec<GatewayOutput>) {
        // Results of calls this gateway no longer holds (answered, or from before a crash)
        // are dropped: the client has its answer or will retry.
        if self.pending.remove(&(result.client, result.seq)).is_none() {
            return;
        }
        if recovered {
            self.stats.recovered_results += 1;
        }
        out.push(GatewayOutput::Reply {
            client: result.client,
            seq: result.seq,
            reply: Reply::Done {
                position: result.position,
                outcome: result.outcome,
            },
        });
    }

    /// A result table did not (yet) hold the queried call.
    pub fn on_result_unknown(
        &mut self,
        client: ClientId,
        seq: RequestSeq,
        out: &mut Vec<GatewayOutput>,
    ) {
        if self.pending.remove(&(client, seq)).is_some() {
            out.push(GatewayOutput::Reply {
                client,
                seq,
                reply: Reply::Unavailable,
            });
        }
    }
}
