//! The gateway: computes footprints, forwards calls to the sequencer leader, returns
//! results, and finds the original result of a retried call.
//!
//! ```text
//!  Call ─────────▶ Gateway ──▶ Submit(txn) to the leader it believes in
//!  Deliver ──────▶         ──▶ Submit(delivery txn), never answered (see below)
//!  NotLeader ────▶         ──▶ Submit again at the hinted leader, or Reply::Unavailable
//!  Duplicate ────▶         ──▶ Query the result table of each replica of the
//!                              designated partition
//!  Result ───────▶         ──▶ Reply::Done (the first); later ones are compared
//!  ResultUnknown ▶         ──▶ Reply::Unavailable once every replica asked said so
//!  Leader(node) ─▶         ──▶ (submits there from now on)
//!  Tick ─────────▶         ──▶ Reply::Unavailable to calls past their deadline
//!  ReadStream ───▶         ──▶ StreamQuery to every replica of every partition
//!  StreamPart ───▶         ──▶ StreamAnswer once a replica of every partition answered
//!  SnapshotRead ─▶         ──▶ SnapshotQuery to a replica of each partition involved
//!  SnapshotPart ─▶         ──▶ SnapshotAnswer once they answered at one epoch
//! ```
//!
//! Every replica of a partition executes its plans, so a call's result comes from each
//! replica of its designated partition: the first answers the client, the others are
//! compared with it (see [`compare`]); a difference is a [`Divergence`], reported as
//! [`Output::Diverged`] and counted.
//!
//! A gateway keeps only its calls in flight; after a crash it knows nothing, and clients
//! retry elsewhere. The simulator and the `node` runtime drive the same machine.
//!
//! A gateway bounds what it holds: at most [`CALLS_IN_FLIGHT_MAX_DEFAULT`] calls (or the
//! configured number) wait at once, more are refused `Overloaded`; a call not answered
//! within [`CALL_DEADLINE_US_DEFAULT`] (or the configured deadline) of its last attempt is
//! answered `Unavailable` and forgotten. It may still execute: a retry, through any
//! gateway, finds its result in the result table.
//!
//! Calls come from clients, so a gateway checks them before they are ordered: a call over
//! [`CALL_BYTES_MAX_DEFAULT`] (or the configured limit), arguments that do not decode, a
//! footprint over its entry limit, or a footprint key or prefix that is not a valid key
//! (one a node could not load again after storing it) is refused with a typed
//! [`Rejection`] and never reaches the log.
//!
//! An executor of the same node hands the gateway [`Delivery`] requests for its outbox's
//! letters (see [`detflow_protocol::mailbox`]). The gateway computes the delivery's
//! footprint from the letters' own, carrying as many letters as fit its entry limit, and
//! marks letters that cannot be ordered (no footprint, unroutable) so that the delivery
//! consumes them with that abort instead of blocking their outbox. A delivery is ordered
//! like a call under its outbox's session ([`mailbox_client`]); nobody waits for its
//! reply, since the executor sees the delivery in its own store.
//!
//! A stream read asks every partition for its events from an offset and merges the answers
//! up to the offset every partition has covered (each holds every event of the epochs it
//! applied), so a reader never misses an event that a later read would show before one it
//! got. A read not answered by every partition within [`STREAM_READ_DEADLINE_US`] is
//! answered `Unavailable`.

#![forbid(unsafe_code)]

pub mod compare;
mod snapshot;

pub use compare::Divergence;
pub use snapshot::{SNAPSHOT_HEDGE_US, SNAPSHOT_READ_DEADLINE_US};

use compare::Answered;
use detflow_executor::Registry;
use detflow_protocol::mailbox::{
    DELIVER_PROCEDURE, Delivery, is_mailbox_client, letter_key, mailbox_client, mark_key,
};
use detflow_protocol::message::{Call, Rejection, Reply};
use detflow_protocol::snapshot::{PartAt, PartOp, SnapshotPart, SnapshotRead, SnapshotReply};
use detflow_protocol::stream::{
    Offset, STREAM_READ_EVENTS_DEFAULT, StreamPart, StreamReply, check_stream_name,
};
use detflow_protocol::{
    CallId, ClientId, ExecutorId, Footprint, Machine, NodeId, PartitionId, Placement, Position,
    RequestSeq, Time, Transaction, TxnResult,
};
use detflow_scheduler::PartitionMap;
use snapshot::Snapshots;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// An input to the gateway.
#[derive(Clone, Debug)]
pub enum Input {
    /// A client's call (or its retry).
    Call(Call),
    /// An executor of this node asks for letters of its outbox to be delivered.
    Deliver(Delivery),
    /// A replica that does not lead handed a submission back.
    NotLeader {
        /// The replica.
        from: NodeId,
        /// The submission.
        txn: Arc<Transaction>,
        /// The leader it knows of, if any.
        leader: Option<NodeId>,
    },
    /// The leader already holds this call in its log: find its result.
    Duplicate {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
    /// A result, from a replica of the designated participant or from a result-table
    /// query.
    Result {
        /// The reporting partition.
        from: PartitionId,
        /// The result.
        result: TxnResult,
        /// Whether it came from a result table.
        recovered: bool,
    },
    /// A result table did not (yet) hold the queried call.
    ResultUnknown {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
    /// A sequencer replica on the same node follows `leader` now: submit there. It hears
    /// of elections as they happen, earlier than the hints this gateway collects.
    Leader(NodeId),
    /// [`Machine::next_deadline`] passed: answer the calls that waited too long.
    Tick,
    /// A client reads a stream.
    ReadStream {
        /// The driver's number for the waiting reader, echoed in the answer.
        reader: u64,
        /// The stream.
        stream: String,
        /// The first offset wanted.
        from: Offset,
        /// The most events wanted (0: the default).
        max: u32,
    },
    /// A partition's share of a stream read.
    StreamPart {
        /// The read.
        read: u64,
        /// The share.
        part: StreamPart,
    },
    /// A client reads a snapshot (see [`detflow_protocol::snapshot`]).
    SnapshotRead {
        /// The driver's number for the waiting reader, echoed in the answer.
        reader: u64,
        /// The read.
        read: SnapshotRead,
    },
    /// A partition's answer to a snapshot read.
    SnapshotPart {
        /// The gateway's number for the read.
        read: u64,
        /// The answer.
        part: SnapshotPart,
    },
}

/// An effect of the gateway.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Ask a replica's result table for a call's result.
    Query {
        /// A replica of the designated partition of the call.
        to: ExecutorId,
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
    /// Ask a replica of a partition for its events of a stream.
    StreamQuery {
        /// The replica.
        to: ExecutorId,
        /// This gateway's number for the read.
        read: u64,
        /// The stream.
        stream: String,
        /// The first offset wanted.
        from: Offset,
        /// The most events wanted.
        max: u32,
    },
    /// Answer a stream reader.
    StreamAnswer {
        /// The driver's number for the reader.
        reader: u64,
        /// The answer.
        reply: StreamReply,
    },
    /// Ask a replica of a partition to read its state at an epoch.
    SnapshotQuery {
        /// The replica.
        to: ExecutorId,
        /// This gateway's number for the read.
        read: u64,
        /// Which epoch.
        at: PartAt,
        /// What.
        op: PartOp,
    },
    /// Answer a snapshot reader.
    SnapshotAnswer {
        /// The driver's number for the reader.
        reader: u64,
        /// The answer.
        reply: SnapshotReply,
    },
    /// Replicas of a partition reported different results for one call: a determinism
    /// failure, for the driver to report loudly.
    Diverged(Divergence),
    /// Forward a transaction to a sequencer replica.
    Submit {
        /// The replica believed to lead.
        to: NodeId,
        /// The transaction.
        txn: Arc<Transaction>,
    },
}

/// The largest call a gateway accepts by default, procedure name and arguments together:
/// 1 MiB. Every call is copied into the log, its replicas and the plans of its participants.
pub const CALL_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// How long a call waits in a gateway by default before it is answered `Unavailable`:
/// 10 s from its last attempt.
pub const CALL_DEADLINE_US_DEFAULT: u64 = 10_000_000;

/// How many calls a gateway holds at once by default; more are refused `Overloaded`.
pub const CALLS_IN_FLIGHT_MAX_DEFAULT: usize = 16_384;

/// How long a stream read waits for every partition's share.
pub const STREAM_READ_DEADLINE_US: u64 = 2_000_000;

/// The most events one stream read returns.
pub const STREAM_READ_EVENTS_MAX: u32 = 10_000;

/// Planted bugs, for proving that the simulator's checkers bite. Never set in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayBugs {
    /// Refuse every call whose exact keys live on more than one partition, as if the
    /// footprint size cap applied per participant (`Rejection::FootprintTooLarge`).
    pub refuse_multi_partition: bool,
    /// Take a call past its deadline off the timer without answering or forgetting it: a
    /// leak of calls nobody waits for.
    pub keep_expired_calls: bool,
    /// Merge a stream read's shares up to the partition that covered the most, not the
    /// least: events a lagging partition has yet to apply are skipped for good.
    pub merge_past_frontier: bool,
    /// Answer a call only once every replica of its designated partition reported it, as
    /// a gateway that insists on agreement before it answers would: one replica down stalls
    /// every call it would have reported.
    pub answer_after_every_replica: bool,
}

/// Counters of a gateway's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Calls refused before ordering.
    pub rejected: u64,
    /// Submissions redirected to another replica.
    pub redirects: u64,
    /// Calls submitted again to a new leader when the leader changed.
    pub resubmitted: u64,
    /// Retried calls answered from a result table.
    pub recovered_results: u64,
    /// Calls refused because the gateway held its limit of calls in flight.
    pub overloaded: u64,
    /// Calls answered `Unavailable` because their deadline passed.
    pub timed_out: u64,
    /// Deliveries of letters submitted.
    pub deliveries: u64,
    /// Stream reads answered with events (perhaps none).
    pub stream_reads: u64,
    /// Snapshot reads answered, but for those that timed out.
    pub snapshot_reads: u64,
    /// Later results that matched the answer given (replicas agreeing).
    pub results_compared: u64,
    /// Later results that differed from the answer given: determinism failures.
    pub divergences: u64,
}

/// A stream read waiting for the partitions' shares.
struct Gather {
    reader: u64,
    from: Offset,
    max: u32,
    parts: BTreeMap<PartitionId, StreamPart>,
    deadline: Time,
}

/// A call waiting in the gateway.
struct InFlight {
    txn: Arc<Transaction>,
    /// The replica it was last submitted to.
    submitted_to: NodeId,
    /// Result tables asked for its result since the last submission.
    queried: usize,
    /// Of those, the ones that did not hold it.
    unknown: usize,
    /// When it is answered `Unavailable` if nothing else answered it.
    deadline: Time,
}

/// A sans-IO gateway.
pub struct Gateway {
    id: NodeId,
    registry: Arc<Registry>,
    map: PartitionMap,
    /// Where each partition's replicas run.
    placement: Arc<Placement>,
    replicas: Vec<NodeId>,
    leader_hint: usize,
    footprint_entries_max: usize,
    call_bytes_max: usize,
    call_deadline_us: u64,
    calls_in_flight_max: usize,
    pending: BTreeMap<CallId, InFlight>,
    /// The deadlines of `pending`, earliest first.
    deadlines: BTreeSet<(Time, CallId)>,
    /// Stream reads in progress, by this gateway's number.
    reads: BTreeMap<u64, Gather>,
    /// Their deadlines, earliest first.
    read_deadlines: BTreeSet<(Time, u64)>,
    next_read: u64,
    /// Results answered recently, to compare the other replicas' with.
    answered: Answered,
    bugs: GatewayBugs,
    /// Planted bug `answer_after_every_replica`: reports counted per call held.
    bug_reports: BTreeMap<CallId, usize>,
    stats: GatewayStats,
    /// Snapshot reads in progress.
    snapshots: Snapshots,
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
        let placement = Arc::new(Placement::single(map.partitions(), NodeId(0)));
        Gateway {
            id,
            registry,
            map,
            placement,
            replicas,
            leader_hint: 0,
            footprint_entries_max,
            call_bytes_max: CALL_BYTES_MAX_DEFAULT,
            call_deadline_us: CALL_DEADLINE_US_DEFAULT,
            calls_in_flight_max: CALLS_IN_FLIGHT_MAX_DEFAULT,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            reads: BTreeMap::new(),
            read_deadlines: BTreeSet::new(),
            next_read: 0,
            answered: Answered::default(),
            bugs: GatewayBugs::default(),
            bug_reports: BTreeMap::new(),
            stats: GatewayStats::default(),
            snapshots: Snapshots::default(),
        }
    }

    /// Sets where each partition's replicas run (by default each partition has one, on
    /// node 0).
    ///
    /// # Panics
    ///
    /// If `placement` has another partition count than the map.
    pub fn set_placement(&mut self, placement: Arc<Placement>) {
        assert_eq!(
            placement.partitions(),
            self.map.partitions(),
            "placement size"
        );
        self.placement = placement;
    }

    /// The replicas of `partition`.
    fn replicas_of(&self, partition: PartitionId) -> impl Iterator<Item = ExecutorId> + '_ {
        self.placement
            .replicas(partition)
            .iter()
            .map(move |node| ExecutorId {
                partition,
                node: *node,
            })
    }

    /// Sets the largest call accepted, procedure name and arguments together, in bytes
    /// (default [`CALL_BYTES_MAX_DEFAULT`]).
    pub fn set_call_bytes_max(&mut self, bytes: usize) {
        self.call_bytes_max = bytes;
    }

    /// Sets how long a call waits after its last attempt before it is answered
    /// `Unavailable` (default [`CALL_DEADLINE_US_DEFAULT`]).
    pub fn set_call_deadline_us(&mut self, us: u64) {
        self.call_deadline_us = us.max(1);
    }

    /// Sets how many calls may wait at once (default [`CALLS_IN_FLIGHT_MAX_DEFAULT`]).
    pub fn set_calls_in_flight_max(&mut self, calls: usize) {
        self.calls_in_flight_max = calls.max(1);
    }

    /// Numbers this gateway's stream and snapshot reads from `first` on (default 1). A
    /// driver gives each incarnation of a gateway numbers of its own, so that an answer to
    /// a read of the previous incarnation, still on its way, matches no read of this one.
    pub fn set_first_read_id(&mut self, first: u64) {
        self.next_read = first.saturating_sub(1);
        self.snapshots.set_first_id(first);
    }

    /// Plants bugs (tests of the simulator's checkers only).
    pub fn set_bugs(&mut self, bugs: GatewayBugs) {
        self.bugs = bugs;
    }

    /// Calls in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Calls held past their deadline at `now`: none, unless a timeout was not delivered
    /// or handled (a check for the simulator).
    pub fn overdue(&self, now: Time) -> usize {
        self.pending.values().filter(|c| c.deadline < now).count()
    }

    /// Work counters.
    pub fn stats(&self) -> GatewayStats {
        GatewayStats {
            snapshot_reads: self.snapshots.answered,
            ..self.stats
        }
    }

    /// The snapshot reads in flight, and what they need of the gateway.
    fn snapshots(&mut self) -> (&mut Snapshots, snapshot::Context<'_>) {
        let cx = snapshot::Context {
            me: self.id,
            map: &self.map,
            placement: &self.placement,
            reads_max: self.calls_in_flight_max,
        };
        (&mut self.snapshots, cx)
    }

    fn leader(&self) -> NodeId {
        self.replicas[self.leader_hint]
    }

    /// Adopts `leader` as the replica to submit to, if it is one of ours, and submits to
    /// it again every call waiting on another replica: that one was deposed (or died) and
    /// may have lost them. The log's de-duplication answers `Duplicate` for any it had
    /// ordered, so nothing runs twice, and a failover costs an election, not a client's
    /// attempt timeout.
    fn observe_leader(&mut self, leader: NodeId, out: &mut Vec<Output>) {
        let Some(i) = self.replicas.iter().position(|r| *r == leader) else {
            return;
        };
        self.leader_hint = i;
        for call in self.pending.values_mut() {
            // A call whose result is being looked up is ordered already.
            if call.submitted_to != leader && call.queried == 0 {
                call.submitted_to = leader;
                self.stats.resubmitted += 1;
                out.push(Output::Submit {
                    to: leader,
                    txn: call.txn.clone(),
                });
            }
        }
    }

    /// Checks a call and computes its footprint, cheapest check first: the size before
    /// decoding anything, the keys last.
    fn footprint(&self, call: &Call) -> Result<Footprint, Rejection> {
        let bytes = call.procedure.len().saturating_add(call.args.len());
        if bytes > self.call_bytes_max {
            return Err(Rejection::CallTooLarge {
                bytes,
                max: self.call_bytes_max,
            });
        }
        let footprint = self.registry.footprint(&call.procedure, &call.args)?;
        if footprint.len() > self.footprint_entries_max {
            return Err(Rejection::FootprintTooLarge {
                entries: footprint.len(),
                max: self.footprint_entries_max,
            });
        }
        footprint
            .validate()
            .map_err(|e| Rejection::BadKey(e.to_string()))?;
        if self.bugs.refuse_multi_partition {
            let owners: std::collections::BTreeSet<_> = footprint
                .entries
                .iter()
                .filter_map(|(spec, _)| match spec {
                    detflow_protocol::KeySpec::Exact(key) => self.map.owner(key).ok(),
                    detflow_protocol::KeySpec::Prefix(_) => None,
                })
                .collect();
            if owners.len() > 1 {
                return Err(Rejection::FootprintTooLarge {
                    entries: footprint.len(),
                    max: self.footprint_entries_max,
                });
            }
        }
        Ok(footprint)
    }

    /// Takes `key` out of the calls in flight.
    fn remove(&mut self, key: CallId) -> Option<InFlight> {
        let call = self.pending.remove(&key)?;
        self.deadlines.remove(&(call.deadline, key));
        Some(call)
    }

    /// Holds `txn` as in flight and submits it to the leader it believes in.
    fn submit(&mut self, now: Time, txn: Arc<Transaction>, out: &mut Vec<Output>) {
        let key = txn.call_id();
        // A retry of a call still in flight here: its last submission got no answer, so
        // the replica it went to may be dead (a gateway hears of a new leader only from a
        // live replica). Never send the retry to the same one: the next replica either
        // leads or answers NotLeader with the leader. Only this call moves: the shared
        // hint may already name a leader a live replica reported, and rotating it would
        // send every later call to whichever replica comes next, the dead one included.
        let mut to = self.leader();
        if let Some(silent) = self.remove(key)
            && silent.submitted_to == to
            && self.replicas.len() > 1
        {
            let next = (self.leader_hint + 1) % self.replicas.len();
            to = self.replicas[next];
        }
        let deadline = now.plus_us(self.call_deadline_us);
        self.deadlines.insert((deadline, key));
        let in_flight = InFlight {
            txn: txn.clone(),
            submitted_to: to,
            queried: 0,
            unknown: 0,
            deadline,
        };
        self.pending.insert(key, in_flight);
        out.push(Output::Submit { to, txn });
    }

    /// Answers a call, unless it is a delivery, whose executor learns its fate from its
    /// own store.
    fn reply(client: ClientId, seq: RequestSeq, reply: Reply, out: &mut Vec<Output>) {
        if !is_mailbox_client(client) {
            out.push(Output::Reply { client, seq, reply });
        }
    }

    /// The footprint of one letter, checked as a call's would be (except for its size,
    /// which the delivery bounds), or why it cannot be ordered.
    fn letter_footprint(&self, procedure: &str, args: &[u8]) -> Result<Footprint, String> {
        let footprint = self
            .registry
            .footprint(procedure, args)
            .map_err(|r| r.to_string())?;
        footprint
            .validate()
            .map_err(|e| Rejection::BadKey(e.to_string()).to_string())?;
        let probe = Arc::new(Transaction {
            client: ClientId(0),
            seq: RequestSeq(0),
            gateway: self.id,
            procedure: procedure.to_owned(),
            args: Vec::new(),
            footprint,
        });
        let routed = detflow_scheduler::route(Position::default(), probe.clone(), &self.map);
        match routed.rejected {
            Some(reason) => Err(reason.to_string()),
            None => Ok(Arc::unwrap_or_clone(probe).footprint),
        }
    }

    fn on_deliver(&mut self, now: Time, mut delivery: Delivery, out: &mut Vec<Output>) {
        let from = delivery.from;
        if from.0 >= self.map.partitions() || delivery.letters.is_empty() {
            return;
        }
        let key = CallId::new(mailbox_client(from), RequestSeq(delivery.batch));
        if self.pending.len() >= self.calls_in_flight_max && !self.pending.contains_key(&key) {
            // The executor asks again later.
            self.stats.overloaded += 1;
            return;
        }
        let mut footprint = Footprint::new().write(mark_key(from));
        let mut refused = BTreeMap::new();
        let mut kept = 0;
        for (i, letter) in delivery.letters.iter().enumerate() {
            let own = self.letter_footprint(&letter.procedure, &letter.args);
            let entries = footprint.len() + 1 + own.as_ref().map_or(0, Footprint::len);
            if kept > 0 && entries > self.footprint_entries_max {
                break;
            }
            footprint.add(
                detflow_protocol::KeySpec::Exact(letter_key(from, delivery.first + i as u64)),
                detflow_protocol::Access::Write,
            );
            match own {
                // Alone with the mark and its record, it must still fit.
                Ok(own) if own.len() + 2 > self.footprint_entries_max => {
                    let too_large = Rejection::FootprintTooLarge {
                        entries: own.len(),
                        max: self.footprint_entries_max,
                    };
                    refused.insert(i as u32, too_large.to_string());
                }
                Ok(own) => own
                    .entries
                    .into_iter()
                    .for_each(|(spec, access)| footprint.add(spec, access)),
                Err(reason) => {
                    refused.insert(i as u32, reason);
                }
            }
            kept += 1;
        }
        delivery.letters.truncate(kept);
        delivery.refused = refused;
        self.stats.deliveries += 1;
        let txn = Arc::new(Transaction {
            client: key.client,
            seq: key.seq,
            gateway: self.id,
            procedure: DELIVER_PROCEDURE.to_owned(),
            args: detflow_protocol::codec::encode(&delivery),
            footprint,
        });
        self.submit(now, txn, out);
    }

    fn on_call(&mut self, now: Time, call: Call, out: &mut Vec<Output>) {
        if is_mailbox_client(call.client) {
            self.stats.rejected += 1;
            let reply = Reply::Rejected(Rejection::ForeignSession(call.client.0));
            out.push(Output::Reply {
                client: call.client,
                seq: call.seq,
                reply,
            });
            return;
        }
        let key = CallId::new(call.client, call.seq);
        // A malformed call gets its precise refusal even at the limit: the limit bounds
        // what the gateway holds, and a refused call holds nothing.
        let at_limit =
            self.pending.len() >= self.calls_in_flight_max && !self.pending.contains_key(&key);
        let footprint = self.footprint(&call).and_then(|footprint| match at_limit {
            true => Err(Rejection::Overloaded(format!(
                "this gateway holds its limit of {} calls in flight",
                self.calls_in_flight_max
            ))),
            false => Ok(footprint),
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
                self.submit(now, txn, out);
            }
            Err(rejection) => {
                match rejection {
                    Rejection::Overloaded(_) => self.stats.overloaded += 1,
                    _ => self.stats.rejected += 1,
                }
                out.push(Output::Reply {
                    client: call.client,
                    seq: call.seq,
                    reply: Reply::Rejected(rejection),
                });
            }
        }
    }

    fn on_not_leader(
        &mut self,
        from: NodeId,
        txn: Arc<Transaction>,
        leader: Option<NodeId>,
        out: &mut Vec<Output>,
    ) {
        let key = txn.call_id();
        let Some(pending) = self.pending.get_mut(&key) else {
            return;
        };
        match leader.and_then(|l| self.replicas.iter().position(|r| *r == l)) {
            Some(i) if self.replicas[i] != from => {
                self.leader_hint = i;
                self.stats.redirects += 1;
                pending.submitted_to = self.replicas[i];
                out.push(Output::Submit {
                    to: self.leader(),
                    txn,
                });
            }
            // No leader known (an election is under way): the client backs off and retries;
            // meanwhile try the next replica for later calls, unless the answer came from
            // another replica than the one the hint names (a silent call's retry).
            _ => {
                if from == self.leader() {
                    self.leader_hint = (self.leader_hint + 1) % self.replicas.len();
                }
                self.remove(key);
                Gateway::reply(txn.client, txn.seq, Reply::Unavailable, out);
            }
        }
    }

    fn on_duplicate(&mut self, client: ClientId, seq: RequestSeq, out: &mut Vec<Output>) {
        let Some(call) = self.pending.get(&CallId::new(client, seq)) else {
            return;
        };
        let routed = detflow_scheduler::route(Position::default(), call.txn.clone(), &self.map);
        let replicas: Vec<ExecutorId> = self.replicas_of(routed.designated()).collect();
        if let Some(call) = self.pending.get_mut(&CallId::new(client, seq)) {
            call.queried += replicas.len();
        }
        for to in replicas {
            out.push(Output::Query { to, client, seq });
        }
    }

    fn on_result(
        &mut self,
        now: Time,
        from: PartitionId,
        result: TxnResult,
        recovered: bool,
        out: &mut Vec<Output>,
    ) {
        // Results of calls this gateway no longer holds (answered, or from before a crash)
        // are compared with the answer given, if it is still kept, and dropped: the client
        // has its answer or will retry.
        let call = result.call_id();
        if self.bugs.answer_after_every_replica && self.pending.contains_key(&call) {
            // Only live reports count: a result table's answer is one replica's word.
            if recovered {
                return;
            }
            let reports = self.bug_reports.entry(call).or_insert(0);
            *reports += 1;
            if *reports < self.placement.replicas(from).len() {
                return;
            }
            self.bug_reports.remove(&call);
        }
        if self.remove(call).is_none() {
            match self.answered.compare(now, from, &result) {
                Some(divergence) => {
                    self.stats.divergences += 1;
                    out.push(Output::Diverged(divergence));
                }
                None => self.stats.results_compared += 1,
            }
            return;
        }
        self.answered.keep(now, &result);
        if recovered {
            self.stats.recovered_results += 1;
        }
        let reply = Reply::Done {
            position: result.position,
            outcome: result.outcome,
        };
        Gateway::reply(result.client, result.seq, reply, out);
    }

    /// Answers `Unavailable` to the calls and stream reads whose deadline passed by `now`.
    fn expire(&mut self, now: Time, out: &mut Vec<Output>) {
        let (snapshots, cx) = self.snapshots();
        snapshots.expire(&cx, now, out);
        while let Some(&(at, read)) = self.read_deadlines.first()
            && at <= now
        {
            self.read_deadlines.remove(&(at, read));
            if let Some(gather) = self.reads.remove(&read) {
                out.push(Output::StreamAnswer {
                    reader: gather.reader,
                    reply: StreamReply::Unavailable,
                });
            }
        }
        while let Some(&(at, key)) = self.deadlines.first()
            && at <= now
        {
            if self.bugs.keep_expired_calls {
                self.deadlines.remove(&(at, key));
                continue;
            }
            self.remove(key);
            self.stats.timed_out += 1;
            Gateway::reply(key.client, key.seq, Reply::Unavailable, out);
        }
    }

    fn on_read_stream(
        &mut self,
        now: Time,
        reader: u64,
        stream: String,
        from: Offset,
        max: u32,
        out: &mut Vec<Output>,
    ) {
        let refuse = |reply, out: &mut Vec<Output>| {
            out.push(Output::StreamAnswer { reader, reply });
        };
        if let Err(why) = check_stream_name(&stream) {
            return refuse(StreamReply::Refused(why), out);
        }
        if self.reads.len() >= self.calls_in_flight_max {
            return refuse(StreamReply::Unavailable, out);
        }
        let max = match max {
            0 => STREAM_READ_EVENTS_DEFAULT,
            n => n.min(STREAM_READ_EVENTS_MAX),
        };
        self.next_read += 1;
        let read = self.next_read;
        let deadline = now.plus_us(STREAM_READ_DEADLINE_US);
        self.read_deadlines.insert((deadline, read));
        self.reads.insert(
            read,
            Gather {
                reader,
                from,
                max,
                parts: BTreeMap::new(),
                deadline,
            },
        );
        let replicas: Vec<ExecutorId> = self.placement.executors().collect();
        for to in replicas {
            out.push(Output::StreamQuery {
                to,
                read,
                stream: stream.clone(),
                from,
                max,
            });
        }
    }

    fn on_stream_part(&mut self, read: u64, part: StreamPart, out: &mut Vec<Output>) {
        let partitions = self.map.partitions();
        let Some(gather) = self.reads.get_mut(&read) else {
            return;
        };
        if part.partition.0 >= partitions {
            return;
        }
        // The first replica of each partition to answer gives its share.
        gather.parts.entry(part.partition).or_insert(part);
        if gather.parts.len() < partitions as usize {
            return;
        }
        let gather = self.reads.remove(&read).expect("just found");
        self.read_deadlines.remove(&(gather.deadline, read));
        self.stats.stream_reads += 1;
        out.push(Output::StreamAnswer {
            reader: gather.reader,
            reply: merge_parts(
                gather.from,
                gather.max,
                gather.parts.into_values(),
                self.bugs.merge_past_frontier,
            ),
        });
    }

    /// A replica's result table does not hold the call: once none of those asked does,
    /// the client is told to retry (a replica that lags may not have executed it yet).
    fn on_result_unknown(&mut self, client: ClientId, seq: RequestSeq, out: &mut Vec<Output>) {
        let key = CallId::new(client, seq);
        let Some(call) = self.pending.get_mut(&key) else {
            return;
        };
        call.unknown += 1;
        if call.unknown >= call.queried {
            self.remove(key);
            Gateway::reply(client, seq, Reply::Unavailable, out);
        }
    }
}

impl Machine for Gateway {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Call(call) => self.on_call(now, call, out),
            Input::Deliver(delivery) => self.on_deliver(now, delivery, out),
            Input::NotLeader { from, txn, leader } => self.on_not_leader(from, txn, leader, out),
            Input::Duplicate { client, seq } => self.on_duplicate(client, seq, out),
            Input::Result {
                from,
                result,
                recovered,
            } => self.on_result(now, from, result, recovered, out),
            Input::ResultUnknown { client, seq } => self.on_result_unknown(client, seq, out),
            Input::Leader(leader) => self.observe_leader(leader, out),
            Input::Tick => self.expire(now, out),
            Input::ReadStream {
                reader,
                stream,
                from,
                max,
            } => self.on_read_stream(now, reader, stream, from, max, out),
            Input::StreamPart { read, part } => self.on_stream_part(read, part, out),
            Input::SnapshotRead { reader, read } => {
                let (snapshots, cx) = self.snapshots();
                snapshots.start(&cx, now, reader, read, out);
            }
            Input::SnapshotPart { read, part } => {
                let (snapshots, cx) = self.snapshots();
                snapshots.part(&cx, read, part, out);
            }
        }
    }

    fn next_deadline(&self) -> Option<Time> {
        let calls = self.deadlines.first().map(|(at, _)| *at);
        let reads = self.read_deadlines.first().map(|(at, _)| *at);
        [calls, reads, self.snapshots.deadline()]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Merges the partitions' shares of a read from `from`: the events below the offset every
/// partition covered (all of its applied epochs, or up to its last event when the limit
/// cut its share), in order, at most `max`.
fn merge_parts(
    from: Offset,
    max: u32,
    parts: impl Iterator<Item = StreamPart>,
    past_frontier: bool,
) -> StreamReply {
    let mut covered: Option<Offset> = None;
    let mut events = Vec::new();
    for part in parts {
        let upto = match (part.complete, part.events.last()) {
            (true, _) => Offset::after_epoch(part.applied),
            (false, Some(last)) => last.offset.next(),
            (false, None) => from,
        };
        covered = Some(covered.map_or(upto, |c| match past_frontier {
            true => c.max(upto),
            false => c.min(upto),
        }));
        events.extend(part.events);
    }
    let covered = covered.unwrap_or(from).max(from);
    events.retain(|e| e.offset >= from && e.offset < covered);
    events.sort_by_key(|e| e.offset);
    let next = if events.len() > max as usize {
        events.truncate(max as usize);
        events.last().map_or(from, |e| e.offset.next())
    } else {
        covered
    };
    StreamReply::Events { events, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_executor::{Abort, Procedure, Txn};
    use detflow_protocol::stream::StreamEvent;
    use detflow_protocol::{Epoch, Key, Owner, PartitionScheme, codec};

    struct Touch;

    impl Procedure for Touch {
        const NAME: &'static str = "test.touch";
        type Args = u64;
        type Output = ();

        fn footprint(k: &u64) -> Footprint {
            Footprint::new().write(Key::table("t").u64(*k))
        }

        fn execute(_: &mut Txn<'_>, _: u64) -> Result<(), Abort> {
            Ok(())
        }
    }

    /// Touches the keys it is given, whatever their bytes.
    struct TouchRaw;

    impl Procedure for TouchRaw {
        const NAME: &'static str = "test.touch_raw";
        type Args = (Vec<Key>, Option<Key>);
        type Output = ();

        fn footprint((keys, prefix): &(Vec<Key>, Option<Key>)) -> Footprint {
            let fp = keys
                .iter()
                .fold(Footprint::new(), |fp, k| fp.write(k.clone()));
            match prefix {
                Some(p) => fp.read_prefix(p.clone()),
                None => fp,
            }
        }

        fn execute(_: &mut Txn<'_>, _: (Vec<Key>, Option<Key>)) -> Result<(), Abort> {
            Ok(())
        }
    }

    /// Panics computing its footprint for argument 13.
    struct Fussy;

    impl Procedure for Fussy {
        const NAME: &'static str = "test.fussy";
        type Args = u64;
        type Output = ();

        fn footprint(k: &u64) -> Footprint {
            assert_ne!(*k, 13, "unlucky");
            Footprint::new().write(Key::table("t").u64(*k))
        }

        fn execute(_: &mut Txn<'_>, _: u64) -> Result<(), Abort> {
            Ok(())
        }
    }

    fn gateway() -> Gateway {
        let mut registry = Registry::new();
        registry
            .register::<Touch>()
            .register::<TouchRaw>()
            .register::<Fussy>();
        let map = PartitionMap::new(PartitionScheme::hashed(1)).unwrap();
        let replicas = vec![NodeId(1), NodeId(2), NodeId(3)];
        Gateway::new(NodeId(9), Arc::new(registry), map, replicas, 16)
    }

    fn call(seq: u64) -> Call {
        Call {
            client: ClientId(1),
            seq: RequestSeq(seq),
            procedure: Touch::NAME.into(),
            args: codec::encode(&7u64),
        }
    }

    /// Where the outputs submitted to, draining them.
    fn submitted(out: &mut Vec<Output>) -> Vec<NodeId> {
        out.drain(..)
            .map(|o| match o {
                Output::Submit { to, .. } => to,
                other => panic!("expected a submission, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_call_unanswered_by_its_deadline_is_answered_unavailable_and_forgotten() {
        let mut g = gateway();
        g.set_call_deadline_us(1_000);
        let mut out = Vec::new();
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        g.handle(Time(500), Input::Call(call(2)), &mut out);
        out.clear();
        assert_eq!(g.next_deadline(), Some(Time(1_000)));
        // A retry restarts the call's wait.
        g.handle(Time(900), Input::Call(call(1)), &mut out);
        out.clear();
        assert_eq!(g.next_deadline(), Some(Time(1_500)));
        g.handle(Time(1_500), Input::Tick, &mut out);
        assert_eq!(
            out,
            [Output::Reply {
                client: ClientId(1),
                seq: RequestSeq(2),
                reply: Reply::Unavailable
            }]
        );
        assert_eq!((g.pending(), g.stats().timed_out), (1, 1));
        out.clear();
        g.handle(Time(1_899), Input::Tick, &mut out);
        assert!(out.is_empty());
        g.handle(Time(1_900), Input::Tick, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((g.pending(), g.next_deadline()), (0, None));
        // A result after the deadline finds nothing to answer.
        let result = TxnResult {
            client: ClientId(1),
            seq: RequestSeq(1),
            position: Position::default(),
            outcome: detflow_protocol::Outcome::Committed(Vec::new()),
        };
        out.clear();
        let late = Input::Result {
            from: PartitionId(0),
            result,
            recovered: false,
        };
        g.handle(Time(2_000), late, &mut out);
        assert!(out.is_empty());
    }

    /// A gateway whose partitions each have two replicas, on nodes 1 and 2.
    fn replicated_gateway() -> Gateway {
        let mut g = gateway();
        let partitions = g.map.partitions();
        let placement = Placement::spread(partitions, &[NodeId(1), NodeId(2)], 2);
        g.set_placement(Arc::new(placement));
        g
    }

    #[test]
    fn the_first_replica_answers_and_a_differing_replica_is_a_divergence() {
        let mut g = replicated_gateway();
        let mut out = Vec::new();
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        out.clear();
        let result = |bytes: Vec<u8>| Input::Result {
            from: PartitionId(0),
            result: TxnResult {
                client: ClientId(1),
                seq: RequestSeq(1),
                position: Position::default(),
                outcome: detflow_protocol::Outcome::Committed(bytes),
            },
            recovered: false,
        };
        g.handle(Time(1), result(vec![1]), &mut out);
        assert!(matches!(&out[..], [Output::Reply { .. }]), "{out:?}");
        out.clear();
        g.handle(Time(2), result(vec![1]), &mut out);
        assert!(out.is_empty());
        g.handle(Time(3), result(vec![2]), &mut out);
        assert!(matches!(&out[..], [Output::Diverged(_)]), "{out:?}");
        assert_eq!((g.stats().results_compared, g.stats().divergences), (1, 1));
    }

    #[test]
    fn a_duplicate_asks_every_replica_and_waits_for_all_to_not_know() {
        let mut g = replicated_gateway();
        let mut out = Vec::new();
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        out.clear();
        let duplicate = Input::Duplicate {
            client: ClientId(1),
            seq: RequestSeq(1),
        };
        g.handle(Time(1), duplicate, &mut out);
        let asked: Vec<NodeId> = out
            .drain(..)
            .map(|o| match o {
                Output::Query { to, .. } => to.node,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(asked.len(), 2);
        let unknown = || Input::ResultUnknown {
            client: ClientId(1),
            seq: RequestSeq(1),
        };
        g.handle(Time(2), unknown(), &mut out);
        assert!(out.is_empty(), "one replica may lag");
        g.handle(Time(3), unknown(), &mut out);
        assert!(matches!(
            &out[..],
            [Output::Reply {
                reply: Reply::Unavailable,
                ..
            }]
        ));
    }

    #[test]
    fn calls_over_the_in_flight_limit_are_refused_but_retries_are_not() {
        let mut g = gateway();
        g.set_calls_in_flight_max(2);
        let mut out = Vec::new();
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        g.handle(Time(0), Input::Call(call(2)), &mut out);
        assert_eq!(submitted(&mut out).len(), 2);
        g.handle(Time(0), Input::Call(call(3)), &mut out);
        assert!(matches!(
            &out[..],
            [Output::Reply {
                reply: Reply::Rejected(Rejection::Overloaded(_)),
                ..
            }]
        ));
        out.clear();
        // A retry of a call it holds is not a new call.
        g.handle(Time(0), Input::Call(call(2)), &mut out);
        assert_eq!(submitted(&mut out).len(), 1);
        assert_eq!((g.pending(), g.stats().overloaded), (2, 1));
        // A malformed call gets its own reason, even at the limit.
        let malformed = Call {
            args: vec![0xc1],
            ..call(4)
        };
        g.handle(Time(0), Input::Call(malformed), &mut out);
        assert!(
            matches!(
                &out[..],
                [Output::Reply {
                    reply: Reply::Rejected(Rejection::BadArgs(_)),
                    ..
                }]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_silent_retry_leaves_a_reported_leader_alone() {
        let mut g = gateway();
        let mut out = Vec::new();
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(1)]);
        // Node 1 (the old leader) died; a live replica reports node 3 leads, and the
        // unanswered call is submitted there again.
        g.handle(Time(0), Input::Leader(NodeId(3)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(3)]);
        // The client's retry of it finds node 3 silent too and tries the next replica,
        // the dead node 1; later calls must still go to node 3.
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(1)]);
        g.handle(Time(0), Input::Call(call(2)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(3)]);
    }

    #[test]
    fn a_retry_of_an_unanswered_call_never_goes_to_the_silent_replica() {
        let mut g = gateway();
        let mut out = Vec::new();
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(1)]);
        // Node 1 never answered (its node died): the retry tries the next replica. Later
        // calls keep the shared hint, which moves only on news from a replica.
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(2)]);
        g.handle(Time(0), Input::Call(call(2)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(1)]);
        g.handle(Time(0), Input::Call(call(2)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(2)]);
        // A redirect records where the call went: a retry after it avoids that replica.
        let txn = g.pending[&CallId::new(ClientId(1), RequestSeq(2))]
            .txn
            .clone();
        let not_leader = Input::NotLeader {
            from: NodeId(2),
            txn,
            leader: Some(NodeId(3)),
        };
        g.handle(Time(0), not_leader, &mut out);
        assert_eq!(submitted(&mut out), [NodeId(3)]);
        g.handle(Time(0), Input::Call(call(2)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(1)]);
    }

    #[test]
    fn a_driver_may_name_the_leader() {
        let mut g = gateway();
        let mut out = Vec::new();
        g.handle(Time(0), Input::Leader(NodeId(3)), &mut out);
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(3)]);
        // Not a replica of ours: ignored.
        g.handle(Time(0), Input::Leader(NodeId(42)), &mut out);
        g.handle(Time(0), Input::Call(call(2)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(3)]);
        // A new leader gets every call waiting on the old one, at once.
        g.handle(Time(1), Input::Leader(NodeId(1)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(1), NodeId(1)]);
        assert_eq!(g.stats().resubmitted, 2);
        g.handle(Time(2), Input::Leader(NodeId(1)), &mut out);
        assert!(out.is_empty(), "nothing waits on another replica");
    }

    /// A key as a hostile client can send it: raw bytes where a key is expected.
    fn raw_key(bytes: &[u8]) -> Key {
        codec::decode(&codec::encode(&detflow_protocol::bin::Blob(bytes))).unwrap()
    }

    fn rejection(g: &mut Gateway, procedure: &str, args: Vec<u8>) -> Option<Rejection> {
        let mut out = Vec::new();
        let call = Call {
            client: ClientId(2),
            seq: RequestSeq(1),
            procedure: procedure.into(),
            args,
        };
        g.handle(Time(0), Input::Call(call), &mut out);
        match out.as_slice() {
            [
                Output::Reply {
                    reply: Reply::Rejected(r),
                    ..
                },
            ] => Some(r.clone()),
            [Output::Submit { .. }] => None,
            other => panic!("unexpected outputs {other:?}"),
        }
    }

    #[test]
    fn malformed_keys_and_prefixes_are_rejected_before_ordering() {
        let mut g = gateway();
        let good = Key::table("kv").u64(5);
        let mut stray = good.as_bytes().to_vec();
        stray.push(0x77);
        let stray = raw_key(&stray);
        let bad_key = |r: Option<Rejection>| matches!(r, Some(Rejection::BadKey(_)));
        let args = |keys: Vec<Key>, prefix: Option<Key>| codec::encode(&(keys, prefix));

        assert!(bad_key(rejection(
            &mut g,
            TouchRaw::NAME,
            args(vec![good.clone(), stray], None)
        )));
        // A prefix cut inside an element, one with no table name, and an empty one.
        let cut = raw_key(&good.as_bytes()[..good.as_bytes().len() - 2]);
        for prefix in [
            cut,
            Key::from_elems(&[detflow_protocol::Elem::U64(1)]),
            Key::default(),
        ] {
            assert!(bad_key(rejection(
                &mut g,
                TouchRaw::NAME,
                args(vec![good.clone()], Some(prefix))
            )));
        }
        let long = Key::table("kv").bytes(&[1; detflow_protocol::key::KEY_BYTES_MAX]);
        let Some(Rejection::BadKey(why)) =
            rejection(&mut g, TouchRaw::NAME, args(vec![long], None))
        else {
            panic!("a key over the limit is refused")
        };
        assert!(why.contains("exceeds the maximum"), "{why}");
        assert_eq!(g.stats().rejected, 5);
        // Well-formed keys and whole-element prefixes go through.
        assert_eq!(
            rejection(
                &mut g,
                TouchRaw::NAME,
                args(vec![good], Some(Key::table("kv")))
            ),
            None
        );
    }

    #[test]
    fn calls_over_the_size_limit_are_rejected_before_decoding() {
        let mut g = gateway();
        g.set_call_bytes_max(64);
        let name = Touch::NAME;
        // Not even valid arguments: the size is checked first.
        assert_eq!(
            rejection(&mut g, name, vec![0xc1; 64 - name.len() + 1]),
            Some(Rejection::CallTooLarge { bytes: 65, max: 64 })
        );
        assert!(matches!(
            rejection(&mut g, name, vec![0xc1; 64 - name.len()]),
            Some(Rejection::BadArgs(_))
        ));
        assert_eq!(rejection(&mut g, name, codec::encode(&7u64)), None);
        assert_eq!(CALL_BYTES_MAX_DEFAULT, 1 << 20);
    }

    #[test]
    fn a_footprint_that_panics_is_a_rejection() {
        let mut g = gateway();
        let Some(Rejection::BadArgs(why)) = rejection(&mut g, Fussy::NAME, codec::encode(&13u64))
        else {
            panic!("the panic is a rejection")
        };
        assert!(
            why.starts_with("footprint panicked: ") && why.contains("unlucky"),
            "{why}"
        );
        assert!(!detflow_executor::in_procedure());
        assert_eq!(rejection(&mut g, Fussy::NAME, codec::encode(&12u64)), None);
    }

    fn event(epoch: u64, index: u32) -> StreamEvent {
        StreamEvent {
            offset: Offset {
                position: Position::new(detflow_protocol::Epoch(epoch), index),
                index: 0,
            },
            data: vec![epoch as u8],
        }
    }

    fn part(p: u32, events: Vec<StreamEvent>, applied: u64, complete: bool) -> StreamPart {
        StreamPart {
            partition: PartitionId(p),
            events,
            applied: detflow_protocol::Epoch(applied),
            complete,
        }
    }

    #[test]
    fn a_stream_read_returns_only_what_every_partition_covered() {
        // Partition 0 applied epoch 5, partition 1 only epoch 3: an event of epoch 4 may
        // still come from partition 1, so nothing past epoch 3 is returned.
        let parts = vec![
            part(0, vec![event(2, 0), event(5, 1)], 5, true),
            part(1, vec![event(3, 0)], 3, true),
        ];
        let StreamReply::Events { events, next } =
            merge_parts(Offset::START, 10, parts.clone().into_iter(), false)
        else {
            panic!("no events")
        };
        let offsets: Vec<u64> = events.iter().map(|e| e.offset.position.epoch.0).collect();
        assert_eq!(offsets, [2, 3]);
        assert_eq!(next, Offset::after_epoch(detflow_protocol::Epoch(3)));
        // A share cut by the limit covers up to its last event only.
        let cut = vec![
            part(0, vec![event(2, 0)], 5, false),
            part(1, vec![event(3, 0)], 5, true),
        ];
        let StreamReply::Events { events, next } =
            merge_parts(Offset::START, 1, cut.into_iter(), false)
        else {
            panic!("no events")
        };
        assert_eq!(events, [event(2, 0)]);
        assert_eq!(next, event(2, 0).offset.next());
        // The planted bug returns epoch 5 and moves past epoch 4 for good.
        let StreamReply::Events { next, .. } =
            merge_parts(Offset::START, 10, parts.into_iter(), true)
        else {
            panic!("no events")
        };
        assert_eq!(next, Offset::after_epoch(detflow_protocol::Epoch(5)));
    }

    /// A gateway over two partitions with two replicas each, on nodes 1 and 2.
    fn two_partition_gateway() -> Gateway {
        let registry = Registry::new();
        let map = PartitionMap::new(PartitionScheme::hashed(2)).unwrap();
        let mut g = Gateway::new(NodeId(9), Arc::new(registry), map, vec![NodeId(1)], 16);
        let placement = Placement::spread(2, &[NodeId(1), NodeId(2)], 2);
        g.set_placement(Arc::new(placement));
        g
    }

    fn snapshot_queries(out: &[Output]) -> Vec<(ExecutorId, PartAt)> {
        out.iter()
            .filter_map(|o| match o {
                Output::SnapshotQuery { to, at, .. } => Some((*to, *at)),
                _ => None,
            })
            .collect()
    }

    fn values_part(p: u32, epoch: u64, keys: &[Key]) -> SnapshotPart {
        SnapshotPart {
            partition: PartitionId(p),
            applied: Epoch(epoch),
            oldest: Epoch(0),
            answer: Ok(detflow_protocol::snapshot::PartRows::Values {
                epoch: Epoch(epoch),
                values: keys.iter().map(|_| Some(vec![p as u8])).collect(),
            }),
        }
    }

    #[test]
    fn a_latest_get_over_partitions_at_different_epochs_reads_them_again_at_the_latest() {
        use detflow_protocol::snapshot::{At, SnapshotOp};
        let mut g = two_partition_gateway();
        // One key on each partition.
        let keys: Vec<Key> =
            (0..64u64)
                .map(|i| Key::table("t").u64(i))
                .fold(Vec::new(), |mut found, k| {
                    let p = match g.map.owner(&k) {
                        Ok(Owner::Partition(p)) => p,
                        _ => unreachable!("a hashed table"),
                    };
                    if !found
                        .iter()
                        .any(|f| g.map.owner(f) == Ok(Owner::Partition(p)))
                    {
                        found.push(k);
                    }
                    found
                });
        assert_eq!(keys.len(), 2);
        let read = SnapshotRead {
            at: At::Latest {
                not_before: Epoch(0),
            },
            op: SnapshotOp::Get(keys.clone()),
        };
        let mut out = Vec::new();
        g.handle(Time(0), Input::SnapshotRead { reader: 7, read }, &mut out);
        let asked = snapshot_queries(&out);
        assert_eq!(asked.len(), 2, "one replica of each partition");
        let id = 1;
        let owner = |k: &Key| match g.map.owner(k) {
            Ok(Owner::Partition(p)) => p.0,
            _ => unreachable!(),
        };
        // Partition of key 0 answers at epoch 5, the other at 8: the first is asked again
        // at 8, and the answer is all at 8.
        let (p0, p1) = (owner(&keys[0]), owner(&keys[1]));
        out.clear();
        let part = values_part(p0, 5, &keys[..1]);
        g.handle(Time(10), Input::SnapshotPart { read: id, part }, &mut out);
        let part = values_part(p1, 8, &keys[1..]);
        g.handle(Time(20), Input::SnapshotPart { read: id, part }, &mut out);
        let again = snapshot_queries(&out);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.partition, PartitionId(p0));
        assert_eq!(again[0].1, PartAt::Epoch(Epoch(8)));
        // A first-round answer delivered twice is ignored; the right one completes it.
        out.clear();
        let part = values_part(p0, 5, &keys[..1]);
        g.handle(Time(30), Input::SnapshotPart { read: id, part }, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let part = values_part(p0, 8, &keys[..1]);
        g.handle(Time(40), Input::SnapshotPart { read: id, part }, &mut out);
        match &out[..] {
            [Output::SnapshotAnswer { reader: 7, reply }] => assert_eq!(
                reply,
                &SnapshotReply::Values {
                    epoch: Epoch(8),
                    values: vec![Some(vec![p0 as u8]), Some(vec![p1 as u8])],
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_replica_is_hedged_by_the_next_and_the_read_expires_at_its_deadline() {
        use detflow_protocol::snapshot::{At, SnapshotError, SnapshotOp};
        let mut g = two_partition_gateway();
        let read = SnapshotRead {
            at: At::Epoch(Epoch(3)),
            op: SnapshotOp::Epoch,
        };
        let mut out = Vec::new();
        g.handle(Time(0), Input::SnapshotRead { reader: 1, read }, &mut out);
        let first = snapshot_queries(&out);
        assert_eq!(first.len(), 2);
        assert_eq!(g.next_deadline(), Some(Time(SNAPSHOT_HEDGE_US)));
        out.clear();
        g.handle(Time(SNAPSHOT_HEDGE_US), Input::Tick, &mut out);
        let hedged = snapshot_queries(&out);
        assert_eq!(hedged.len(), 2, "both partitions are silent");
        for ((a, _), (b, _)) in first.iter().zip(&hedged) {
            assert_eq!(a.partition, b.partition);
            assert_ne!(a.node, b.node, "the next replica is asked");
        }
        out.clear();
        g.handle(Time(SNAPSHOT_READ_DEADLINE_US), Input::Tick, &mut out);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::SnapshotAnswer {
                reply: SnapshotReply::Failed(SnapshotError::Unavailable),
                ..
            }
        )));
        assert_eq!(g.next_deadline(), None);
    }
}
