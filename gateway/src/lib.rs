//! The gateway: computes footprints, forwards calls to the sequencer leader, returns
//! results, and finds the original result of a retried call.
//!
//! ```text
//!  Call ─────────▶ Gateway ──▶ Submit(txn) to the leader it believes in
//!  NotLeader ────▶         ──▶ Submit again at the hinted leader, or Reply::Unavailable
//!  Duplicate ────▶         ──▶ Query the designated partition's result table
//!  Result ───────▶         ──▶ Reply::Done
//!  ResultUnknown ▶         ──▶ Reply::Unavailable (the client retries later)
//!  Leader(node) ─▶         ──▶ (submits there from now on)
//! ```
//!
//! A gateway keeps only its calls in flight; after a crash it knows nothing, and clients
//! retry elsewhere. The simulator and the `node` runtime drive the same machine.
//!
//! Calls come from clients, so a gateway checks them before they are ordered: a call over
//! [`CALL_BYTES_MAX_DEFAULT`] (or the configured limit), arguments that do not decode, a
//! footprint over its entry limit, or a footprint key or prefix that is not a valid key
//! (one a node could not load again after storing it) is refused with a typed
//! [`Rejection`] and never reaches the log.

#![forbid(unsafe_code)]

use detflow_executor::Registry;
use detflow_protocol::message::{Call, Rejection, Reply};
use detflow_protocol::{
    CallId, ClientId, Footprint, Machine, NodeId, PartitionId, Position, RequestSeq, Time,
    Transaction, TxnResult,
};
use detflow_scheduler::PartitionMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An input to the gateway.
#[derive(Clone, Debug)]
pub enum Input {
    /// A client's call (or its retry).
    Call(Call),
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
    /// A result, from the designated participant or from a result-table query.
    Result {
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
    /// The client stopped waiting for a call here: forget it, so that calls that are never
    /// answered do not accumulate. A later result is ignored; a retry through any gateway
    /// finds it in the result table.
    Forget {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
}

/// An effect of the gateway.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
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

/// The largest call a gateway accepts by default, procedure name and arguments together:
/// 1 MiB. Every call is copied into the log, its replicas and the plans of its participants.
pub const CALL_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// Planted bugs, for proving that the simulator's checkers bite. Never set in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayBugs {
    /// Refuse every call whose exact keys live on more than one partition, as if the
    /// footprint size cap applied per participant (`Rejection::FootprintTooLarge`).
    pub refuse_multi_partition: bool,
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
    call_bytes_max: usize,
    /// Calls in flight: the transaction and the replica it was last submitted to.
    pending: BTreeMap<CallId, (Arc<Transaction>, NodeId)>,
    bugs: GatewayBugs,
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
            call_bytes_max: CALL_BYTES_MAX_DEFAULT,
            pending: BTreeMap::new(),
            bugs: GatewayBugs::default(),
            stats: GatewayStats::default(),
        }
    }

    /// Sets the largest call accepted, procedure name and arguments together, in bytes
    /// (default [`CALL_BYTES_MAX_DEFAULT`]).
    pub fn set_call_bytes_max(&mut self, bytes: usize) {
        self.call_bytes_max = bytes;
    }

    /// Plants bugs (tests of the simulator's checkers only).
    pub fn set_bugs(&mut self, bugs: GatewayBugs) {
        self.bugs = bugs;
    }

    /// Calls in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Work counters.
    pub fn stats(&self) -> GatewayStats {
        self.stats
    }

    fn leader(&self) -> NodeId {
        self.replicas[self.leader_hint]
    }

    /// Adopts `leader` as the replica to submit to, if it is one of ours.
    fn observe_leader(&mut self, leader: NodeId) {
        if let Some(i) = self.replicas.iter().position(|r| *r == leader) {
            self.leader_hint = i;
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

    fn on_call(&mut self, call: Call, out: &mut Vec<Output>) {
        match self.footprint(&call) {
            Ok(footprint) => {
                let key = CallId::new(call.client, call.seq);
                // A retry of a call still in flight here: its last submission got no
                // answer, so the replica it went to may be dead (a gateway hears of a new
                // leader only from a live replica). Never send the retry to the same one:
                // the next replica either leads or answers NotLeader with the leader.
                if let Some((_, silent)) = self.pending.get(&key)
                    && *silent == self.leader()
                    && self.replicas.len() > 1
                {
                    self.leader_hint = (self.leader_hint + 1) % self.replicas.len();
                }
                let txn = Arc::new(Transaction {
                    client: call.client,
                    seq: call.seq,
                    gateway: self.id,
                    procedure: call.procedure,
                    args: call.args,
                    footprint,
                });
                let to = self.leader();
                self.pending.insert(key, (txn.clone(), to));
                out.push(Output::Submit { to, txn });
            }
            Err(rejection) => {
                self.stats.rejected += 1;
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
                pending.1 = self.replicas[i];
                out.push(Output::Submit {
                    to: self.leader(),
                    txn,
                });
            }
            // No leader known (an election is under way): the client backs off and retries;
            // meanwhile try the next replica for later calls.
            _ => {
                self.leader_hint = (self.leader_hint + 1) % self.replicas.len();
                self.pending.remove(&key);
                out.push(Output::Reply {
                    client: txn.client,
                    seq: txn.seq,
                    reply: Reply::Unavailable,
                });
            }
        }
    }

    fn on_duplicate(&mut self, client: ClientId, seq: RequestSeq, out: &mut Vec<Output>) {
        let Some((txn, _)) = self.pending.get(&CallId::new(client, seq)) else {
            return;
        };
        let routed = detflow_scheduler::route(Position::default(), txn.clone(), &self.map);
        out.push(Output::Query {
            to: routed.designated(),
            client,
            seq,
        });
    }

    fn on_result(&mut self, result: TxnResult, recovered: bool, out: &mut Vec<Output>) {
        // Results of calls this gateway no longer holds (answered, or from before a crash)
        // are dropped: the client has its answer or will retry.
        if self.pending.remove(&result.call_id()).is_none() {
            return;
        }
        if recovered {
            self.stats.recovered_results += 1;
        }
        out.push(Output::Reply {
            client: result.client,
            seq: result.seq,
            reply: Reply::Done {
                position: result.position,
                outcome: result.outcome,
            },
        });
    }

    fn on_result_unknown(&mut self, client: ClientId, seq: RequestSeq, out: &mut Vec<Output>) {
        if self.pending.remove(&CallId::new(client, seq)).is_some() {
            out.push(Output::Reply {
                client,
                seq,
                reply: Reply::Unavailable,
            });
        }
    }
}

impl Machine for Gateway {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, _now: Time, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Call(call) => self.on_call(call, out),
            Input::NotLeader { from, txn, leader } => self.on_not_leader(from, txn, leader, out),
            Input::Duplicate { client, seq } => self.on_duplicate(client, seq, out),
            Input::Result { result, recovered } => self.on_result(result, recovered, out),
            Input::ResultUnknown { client, seq } => self.on_result_unknown(client, seq, out),
            Input::Leader(leader) => self.observe_leader(leader),
            Input::Forget { client, seq } => {
                self.pending.remove(&CallId::new(client, seq));
            }
        }
    }

    /// A gateway keeps no timers: its clients time out and retry.
    fn next_deadline(&self) -> Option<Time> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_executor::{Abort, Procedure, Txn};
    use detflow_protocol::{Key, PartitionScheme, codec};

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
    fn a_retry_of_an_unanswered_call_never_goes_to_the_silent_replica() {
        let mut g = gateway();
        let mut out = Vec::new();
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(1)]);
        // Node 1 never answered (its node died): the retry tries the next replica, and
        // later calls follow.
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(2)]);
        g.handle(Time(0), Input::Call(call(2)), &mut out);
        assert_eq!(submitted(&mut out), [NodeId(2)]);
        // A redirect records where the call went: a retry after it avoids that replica.
        let txn = g.pending[&CallId::new(ClientId(1), RequestSeq(2))]
            .0
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
    fn a_forgotten_call_leaves_nothing_behind() {
        let mut g = gateway();
        let mut out = Vec::new();
        g.handle(Time(0), Input::Call(call(1)), &mut out);
        assert_eq!(g.pending(), 1);
        let forget = Input::Forget {
            client: ClientId(1),
            seq: RequestSeq(1),
        };
        g.handle(Time(0), forget, &mut out);
        assert_eq!(g.pending(), 0);
        // Its result, should it come after all, answers nobody.
        let result = TxnResult {
            client: ClientId(1),
            seq: RequestSeq(1),
            position: Position::new(detflow_protocol::Epoch(1), 0),
            outcome: detflow_protocol::Outcome::Committed(Vec::new()),
        };
        out.clear();
        let result = Input::Result {
            result,
            recovered: false,
        };
        g.handle(Time(0), result, &mut out);
        assert!(
            out.iter().all(|o| !matches!(o, Output::Reply { .. })),
            "{out:?}"
        );
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
}
