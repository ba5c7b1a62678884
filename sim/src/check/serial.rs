//! Serial equivalence: the final state and every result equal executing the committed log
//! one transaction at a time, in position order, on a single map.
//!
//! The reference shares nothing with the system it judges but the workload (its
//! procedures, its declared partition scheme) and the [`Txn`] API the procedures are
//! written against. It holds one `BTreeMap`, computes each transaction's footprint from its
//! procedure and arguments, and never routes: no `PartitionMap`, no scheduler code. A
//! routing bug that refuses valid calls (or accepts invalid ones) therefore shows as a
//! result that differs from the reference's, instead of being repeated by it.
//!
//! Some footprints the system must refuse at routing time, deterministically, as an abort
//! at the transaction's position. The reference decides these itself, from the contract
//! (DESIGN.md §6) applied to the workload's declared [`PartitionScheme`]:
//!
//! - the table [`SYSTEM_TABLE`] is the executors' bookkeeping, never addressable by a
//!   transaction: an entry in it is unroutable;
//! - a replicated table is read-only: an entry that may write it is a replicated write;
//! - a hashed table places a key by its first `fields` elements after the table name: an
//!   exact key or a prefix with fewer elements has no partition (a prefix that short spans
//!   every partition its missing fields hash to), so it is unroutable. With all of them,
//!   every key under the entry shares them, and so its partition;
//! - a range table places a key by the split points: a prefix's keys are one contiguous
//!   run starting at the prefix itself, so they fall in one partition exactly when no split
//!   point other than the prefix lies under it; an exact key always has one owner.
//!
//! A key without a table name has no rule and is unroutable too; none reaches the log, as
//! the gateway refuses it (`Key::validate`). The first refused entry, in footprint order,
//! decides the reason, as it does for the router. Only the kind of an unroutable refusal
//! is compared, not its wording, which is the router's.
//!
//! [`Txn`]: detflow_executor::Txn
//! [`SYSTEM_TABLE`]: detflow_protocol::SYSTEM_TABLE

use crate::world::Outcome;
use detflow_executor::serial::SerialExecutor;
use detflow_protocol::CallId;
use detflow_protocol::mailbox::{DELIVER_PROCEDURE, Letter, outbox_partition};
use detflow_protocol::message::Reply;
use detflow_protocol::stream::{Offset, StreamEvent};
use detflow_protocol::{
    AbortReason, Access, Elem, Footprint, Key, KeySpec, Outcome as TxnOutcome, PartitionId,
    PartitionScheme, Position, SYSTEM_TABLE, TableRule, Transaction, Value,
};
use std::collections::{BTreeMap, BTreeSet};

/// The reference execution of a run's log.
pub(crate) struct Reference {
    /// `(procedure, args, outcome)` in log order.
    pub(crate) executed: Vec<(String, Vec<u8>, TxnOutcome)>,
    pub(crate) outcomes: BTreeMap<Position, TxnOutcome>,
    pub(crate) state: BTreeMap<Key, Value>,
    /// Ordered transactions whose footprint is not the one their procedure declares for
    /// their arguments: the gateway computed it wrongly, or the log was altered.
    pub(crate) footprint_failures: Vec<String>,
    /// Letters sent: by outbox and number, where and what.
    pub(crate) letters_sent: BTreeMap<(PartitionId, u64), (Position, Letter)>,
    /// Letters consumed, in log order: where, and which (outbox, number).
    pub(crate) letters_consumed: Vec<(Position, PartitionId, u64)>,
    /// Events published, by stream, in offset order.
    pub(crate) events: BTreeMap<String, Vec<StreamEvent>>,
    /// Snapshot reads whose answer differs from the state after their epoch.
    pub(crate) snapshot_failures: Vec<String>,
}

/// Executes the run's log on one map, with the workload's procedures and its own verdict
/// on each footprint (see the module doc).
pub(crate) fn replay(run: &Outcome) -> Reference {
    let registry = &run.registry;
    let scheme = run.workload.scheme();
    let rules = Placement::new(&scheme);
    let mut serial = SerialExecutor::new(registry, run.initial.iter().cloned().collect());
    let mut executed = Vec::new();
    let mut outcomes = BTreeMap::new();
    let mut footprint_failures = Vec::new();
    let mut letters_sent = BTreeMap::new();
    let mut letters_consumed = Vec::new();
    let mut events: BTreeMap<String, Vec<StreamEvent>> = BTreeMap::new();
    // Snapshot reads are judged against the state after their epoch: before the first
    // batch of a later epoch runs.
    let mut reads = crate::check::snapshots::by_epoch(run);
    let mut snapshot_failures = Vec::new();
    for batch in &run.log {
        while let Some(entry) = reads.first_entry()
            && *entry.key() < batch.epoch
        {
            let (epoch, records) = entry.remove_entry();
            crate::check::snapshots::judge(epoch, &records, serial.state(), &mut snapshot_failures);
        }
        for (i, txn) in batch.txns.iter().enumerate() {
            let position = Position::new(batch.epoch, i as u32);
            // The footprint as the procedure declares it for these arguments. One that
            // cannot be computed (an unknown procedure, arguments that do not decode) never
            // reaches the log, as the gateway refuses the call; should one, executing it
            // aborts for that same reason whatever its footprint.
            let footprint = match registry.footprint(&txn.procedure, &txn.args) {
                Ok(footprint) => {
                    if footprint != txn.footprint {
                        footprint_failures.push(format!(
                            "transaction at {position} ({:?}) was ordered with footprint {:?}, \
                             but its procedure declares {footprint:?} for its arguments",
                            txn.procedure, txn.footprint
                        ));
                    }
                    footprint
                }
                Err(_) => txn.footprint.clone(),
            };
            let refused = rules.refusal(&footprint, &txn.procedure);
            let own = (footprint != txn.footprint).then(|| Transaction {
                footprint,
                ..(**txn).clone()
            });
            // Where a transaction's letters wait is the router's choice (the partition
            // that reports its result); the letters checker judges what happens to them.
            let outbox = || detflow_scheduler::route(position, txn.clone(), &run.map).designated();
            let done =
                serial.execute_posting(own.as_ref().unwrap_or(txn), refused.as_ref(), outbox);
            let outcome = done.outcome;
            if let Some(from) = done.posted_to {
                for (seq, letter) in done.sent {
                    letters_sent.insert((from, seq), (position, letter));
                }
            }
            for (from, seq) in done.consumed {
                letters_consumed.push((position, from, seq));
            }
            for (index, (stream, data)) in done.events.into_iter().enumerate() {
                let offset = Offset {
                    position,
                    index: index as u32,
                };
                events
                    .entry(stream)
                    .or_default()
                    .push(StreamEvent { offset, data });
            }
            executed.push((txn.procedure.clone(), txn.args.clone(), outcome.clone()));
            outcomes.insert(position, outcome);
        }
    }
    for (epoch, records) in reads {
        crate::check::snapshots::judge(epoch, &records, serial.state(), &mut snapshot_failures);
    }
    Reference {
        snapshot_failures,
        executed,
        outcomes,
        state: serial.into_state(),
        footprint_failures,
        letters_sent,
        letters_consumed,
        events,
    }
}

pub(crate) fn compare(
    run: &Outcome,
    reference: &Reference,
    state: &BTreeMap<Key, Value>,
) -> Vec<String> {
    let mut failures = reference.footprint_failures.clone();
    for (CallId { client, seq }, record) in &run.calls {
        for reply in &record.replies {
            let Reply::Done { position, outcome } = reply else {
                continue;
            };
            match reference.outcomes.get(position) {
                Some(expected) if same(outcome, expected) => {}
                Some(expected) => failures.push(format!(
                    "call (client {client}, seq {seq}) at {position}: got {}, serial execution gives {}",
                    describe(outcome),
                    describe(expected)
                )),
                None => failures.push(format!(
                    "call (client {client}, seq {seq}) answered for position {position}, which the log does not hold"
                )),
            }
        }
    }
    // The reference keeps its outboxes beside the data; the stores keep theirs apart.
    let user = reference.state.keys().filter(|k| !k.is_system());
    let keys: BTreeSet<&Key> = state.keys().chain(user).collect();
    for key in keys {
        let (got, want) = (state.get(key), reference.state.get(key));
        if got != want {
            failures.push(format!(
                "key {key}: final state {}, serial execution gives {}",
                show(got),
                show(want)
            ));
        }
    }
    failures
}

/// Whether the system's outcome is the reference's. An unroutable footprint's message is
/// the router's wording, so only the kind is compared.
fn same(got: &TxnOutcome, want: &TxnOutcome) -> bool {
    match (got, want) {
        (
            TxnOutcome::Aborted(AbortReason::Unroutable(_)),
            TxnOutcome::Aborted(AbortReason::Unroutable(_)),
        ) => true,
        _ => got == want,
    }
}

/// The workload's declared placement rules, read as a specification (see the module doc).
struct Placement<'s> {
    tables: BTreeMap<&'s str, &'s TableRule>,
    default: &'s TableRule,
}

impl<'s> Placement<'s> {
    fn new(scheme: &'s PartitionScheme) -> Placement<'s> {
        Placement {
            // A later rule for the same table wins, as `PartitionScheme::table` keeps only
            // the last one.
            tables: scheme.tables.iter().map(|(t, r)| (t.as_str(), r)).collect(),
            default: &scheme.default,
        }
    }

    /// Why the system must refuse `footprint` of a call of `procedure`, if it must: the
    /// first refused entry's reason. A delivery may name its sender's outbox.
    fn refusal(&self, footprint: &Footprint, procedure: &str) -> Option<AbortReason> {
        let delivery = procedure == DELIVER_PROCEDURE;
        footprint
            .entries
            .iter()
            .filter(|(spec, _)| !(delivery && outbox_partition(spec.key()).is_some()))
            .find_map(|(spec, access)| self.entry_refusal(spec, *access))
    }

    fn entry_refusal(&self, spec: &KeySpec, access: Access) -> Option<AbortReason> {
        let key = spec.key();
        let unroutable = |why: &str| Some(AbortReason::Unroutable(format!("{key}: {why}")));
        let Ok(elems) = key.elems() else {
            return unroutable("not a tuple encoding");
        };
        let Some(Elem::Str(table)) = elems.first() else {
            return unroutable("names no table");
        };
        if table == SYSTEM_TABLE {
            return unroutable("the executors' bookkeeping table");
        }
        match self
            .tables
            .get(table.as_str())
            .copied()
            .unwrap_or(self.default)
        {
            TableRule::Replicated if access.writes() => {
                Some(AbortReason::ReplicatedWrite { key: key.clone() })
            }
            TableRule::Replicated => None,
            TableRule::Hash { fields } if elems.len() < 1 + *fields as usize => {
                unroutable("lacks its table's routing fields")
            }
            TableRule::Hash { .. } => None,
            TableRule::Range { splits } => match spec {
                KeySpec::Prefix(prefix)
                    if splits
                        .iter()
                        .any(|split| split != prefix && split.starts_with(prefix)) =>
                {
                    unroutable("a split point lies under the prefix")
                }
                KeySpec::Exact(_) | KeySpec::Prefix(_) => None,
            },
        }
    }
}

fn describe(outcome: &TxnOutcome) -> String {
    match outcome {
        TxnOutcome::Committed(out) => format!("commit with output {}", show(Some(out))),
        TxnOutcome::Aborted(reason) => format!("abort ({reason})"),
    }
}

fn show(value: Option<&Value>) -> String {
    match value {
        None => "absent".into(),
        Some(v) if v.len() <= 16 => format!("{v:02x?}"),
        Some(v) => format!("{:02x?}… ({} bytes)", &v[..16], v.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{ClientId, NodeId, RequestSeq};
    use detflow_scheduler::PartitionMap;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// A scheme with one table of each rule, over `partitions` partitions.
    fn scheme(partitions: u32) -> PartitionScheme {
        PartitionScheme::hashed(partitions)
            .table("h2", TableRule::Hash { fields: 2 })
            .table("item", TableRule::Replicated)
            .table(
                "r",
                TableRule::Range {
                    splits: (1..partitions)
                        .map(|i| Key::table("r").u64(u64::from(i) * 3).u64(1))
                        .collect(),
                },
            )
    }

    fn kind(reason: &Option<AbortReason>) -> &'static str {
        match reason {
            None => "routable",
            Some(AbortReason::Unroutable(_)) => "unroutable",
            Some(AbortReason::ReplicatedWrite { .. }) => "replicated write",
            Some(_) => "other",
        }
    }

    #[test]
    fn refusals_follow_the_contract() {
        let scheme = scheme(3);
        let rules = Placement::new(&scheme);
        let verdict = |fp: Footprint| kind(&rules.refusal(&fp, ""));
        let acct = Key::table("acct");
        assert_eq!(
            verdict(Footprint::new().write(acct.clone().u64(1))),
            "routable"
        );
        assert_eq!(verdict(Footprint::new().read(acct.clone())), "unroutable");
        assert_eq!(
            verdict(Footprint::new().read_prefix(acct.u64(1))),
            "routable"
        );
        let h2 = Key::table("h2").u64(1);
        assert_eq!(verdict(Footprint::new().read(h2.clone())), "unroutable");
        assert_eq!(verdict(Footprint::new().read(h2.u64(2))), "routable");
        let item = Key::table("item").u64(4);
        assert_eq!(verdict(Footprint::new().read(item.clone())), "routable");
        assert_eq!(
            verdict(Footprint::new().insert_prefix(item.clone())),
            "replicated write"
        );
        let r = Key::table("r");
        assert_eq!(verdict(Footprint::new().write(r.clone())), "routable");
        assert_eq!(
            verdict(Footprint::new().read_prefix(r.clone())),
            "unroutable"
        );
        // (r, 3) holds the split (r, 3, 1) below its own start: it spans.
        assert_eq!(
            verdict(Footprint::new().read_prefix(r.clone().u64(3))),
            "unroutable"
        );
        // A prefix that is itself a split starts a partition and stays in it.
        assert_eq!(
            verdict(Footprint::new().read_prefix(r.clone().u64(3).u64(1))),
            "routable"
        );
        assert_eq!(verdict(Footprint::new().read_prefix(r.u64(4))), "routable");
        let sys = Key::table(SYSTEM_TABLE).str("result");
        assert_eq!(verdict(Footprint::new().read(sys)), "unroutable");
        assert_eq!(
            verdict(Footprint::new().read_prefix(Key::default())),
            "unroutable"
        );
        // The first refused entry decides.
        assert_eq!(
            verdict(Footprint::new().write(item).read(Key::table("h2").u64(1))),
            "replicated write"
        );
    }

    fn key() -> impl Strategy<Value = Key> {
        let table = prop_oneof![
            Just("acct"),
            Just("h2"),
            Just("item"),
            Just("r"),
            Just(SYSTEM_TABLE)
        ];
        (table, proptest::collection::vec(0u64..8, 0..4)).prop_map(|(table, fields)| {
            fields
                .into_iter()
                .fold(Key::table(table), |key, field| key.u64(field))
        })
    }

    fn entry() -> impl Strategy<Value = (KeySpec, Access)> {
        let spec = prop_oneof![
            key().prop_map(KeySpec::Exact),
            key().prop_map(KeySpec::Prefix)
        ];
        let access = prop_oneof![
            Just(Access::Read),
            Just(Access::Write),
            Just(Access::Insert)
        ];
        (spec, access)
    }

    proptest! {
        // Small field values and many cases, so that prefixes equal to, above and below the
        // split points all come up.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The reference's own reading of the contract and the router agree on which
        /// footprints are refused, and why, for every well-formed footprint: they are two
        /// implementations of one rule, so either drifting is a finding.
        #[test]
        fn the_reference_and_the_router_refuse_the_same_footprints(
            partitions in 1u32..6,
            entries in proptest::collection::vec(entry(), 0..5),
        ) {
            let scheme = scheme(partitions);
            let map = PartitionMap::new(scheme.clone()).expect("a valid scheme");
            let mut footprint = Footprint::new();
            for (spec, access) in entries {
                footprint.add(spec, access);
            }
            let txn = Arc::new(Transaction {
                client: ClientId(1),
                seq: RequestSeq(1),
                gateway: NodeId(0),
                procedure: "p".into(),
                args: Vec::new(),
                footprint: footprint.clone(),
            });
            let routed = detflow_scheduler::route(Position::default(), txn, &map);
            let ours = Placement::new(&scheme).refusal(&footprint, "");
            prop_assert_eq!(kind(&ours), kind(&routed.rejected), "{:?}", footprint);
            if let Some(AbortReason::ReplicatedWrite { .. }) = &ours {
                prop_assert_eq!(&ours, &routed.rejected);
            }
        }
    }
}
