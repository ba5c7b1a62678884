//! The gateway: computes footprints, forwards calls to the sequencer, returns results.
//!
//! ```text
//!  Call ──▶ Gateway ──▶ Submit(txn)          (footprint computed here)
//!             │   └───▶ Reply::Rejected      (unknown procedure, bad arguments, too large)
//!  Result ──▶ Gateway ──▶ Reply::Done
//! ```

use detflow_executor::Registry;
use detflow_protocol::message::{Call, Rejection, Reply};
use detflow_protocol::{ClientId, NodeId, RequestSeq, Transaction, TxnResult};
use std::sync::Arc;

/// An effect of the gateway.
#[derive(Clone, Debug, PartialEq)]
pub enum GatewayOutput {
    /// Answer a client.
    Reply {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
        /// The answer.
        reply: Reply,
    },
    /// Forward a transaction to the sequencer.
    Submit(Arc<Transaction>),
}

/// A sans-IO gateway.
pub struct Gateway {
    id: NodeId,
    registry: Arc<Registry>,
    footprint_entries_max: usize,
    rejected: u64,
}

impl Gateway {
    /// A gateway with node id `id` that knows the procedures of `registry`.
    pub fn new(id: NodeId, registry: Arc<Registry>, footprint_entries_max: usize) -> Gateway {
        Gateway {
            id,
            registry,
            footprint_entries_max,
            rejected: 0,
        }
    }

    /// Calls refused before ordering.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// A client's call.
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
            Ok(footprint) => out.push(GatewayOutput::Submit(Arc::new(Transaction {
                client: call.client,
                seq: call.seq,
                gateway: self.id,
                procedure: call.procedure,
                args: call.args,
                footprint,
            }))),
            Err(rejection) => {
                self.rejected += 1;
                out.push(GatewayOutput::Reply {
                    client: call.client,
                    seq: call.seq,
                    reply: Reply::Rejected(rejection),
                });
            }
        }
    }

    /// A result from a designated participant.
    pub fn on_result(&mut self, result: TxnResult, out: &mut Vec<GatewayOutput>) {
        out.push(GatewayOutput::Reply {
            client: result.client,
            seq: result.seq,
            reply: Reply::Done {
                position: result.position,
                outcome: result.outcome,
            },
        });
    }
}
