//! The scheduler: a pure function from a committed batch to one plan per partition.
//!
//! ```text
//!  Batch(e) ──▶ schedule(batch, map) ──▶ [Plan(e, p0), Plan(e, p1), …]   (one per partition,
//!                                                                       possibly empty)
//! ```
//!
//! [`PartitionMap`] routes each footprint entry to its owner: hash and range partitioners
//! per table, and replicated read-only tables held by every partition. Each transaction is
//! routed once into a shared [`RoutedTxn`] carrying its participants and active
//! participants, and appears, in position order, in the plan of every participant.

#![forbid(unsafe_code)]

mod map;
pub mod plan_server;

pub use map::{PartitionMap, RouteError, SchemeError};
pub use plan_server::{PlanServer, PlanServerBugs};

use detflow_protocol::mailbox::{DELIVER_PROCEDURE, outbox_partition};
use detflow_protocol::{
    AbortReason, Batch, Key, LOG_FORMAT_VERSION, Owner, PLAN_FORMAT_VERSION, PartitionId, Plan,
    Position, RoutedTxn, SYSTEM_TABLE, Transaction,
};
use std::sync::Arc;

/// A batch the scheduler cannot plan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The batch was written in a log format this build does not understand.
    #[error("log format version {found} is not supported (this build reads version {supported})")]
    LogVersion {
        /// The batch's version.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
}

/// The plans of one committed batch: entry `p` is partition `p`'s plan.
pub fn schedule(batch: &Batch, map: &PartitionMap) -> Result<Vec<Plan>, ScheduleError> {
    if batch.version != LOG_FORMAT_VERSION {
        return Err(ScheduleError::LogVersion {
            found: batch.version,
            supported: LOG_FORMAT_VERSION,
        });
    }
    let mut plans: Vec<Plan> = (0..map.partitions())
        .map(|p| Plan {
            version: PLAN_FORMAT_VERSION,
            epoch: batch.epoch,
            partition: PartitionId(p),
            txns: Vec::new(),
        })
        .collect();
    for (index, txn) in batch.txns.iter().enumerate() {
        let position = Position::new(batch.epoch, index as u32);
        let routed = Arc::new(route(position, txn.clone(), map));
        for p in &routed.participants {
            plans[p.0 as usize].txns.push(routed.clone());
        }
    }
    Ok(plans)
}

/// Routes one transaction: its owners, participants and active participants.
///
/// A transaction that cannot be routed (a key without its routing fields, a prefix
/// spanning partitions, a write to a replicated table) is not dropped: it goes to
/// partition 0 with `rejected` set, and aborts there deterministically.
pub fn route(position: Position, txn: Arc<Transaction>, map: &PartitionMap) -> RoutedTxn {
    let mut owners = Vec::with_capacity(txn.footprint.entries.len());
    let mut rejected = None;
    for (spec, access) in &txn.footprint.entries {
        // A delivery names its sender's outbox, which that partition holds.
        let outbox = match txn.procedure == DELIVER_PROCEDURE {
            true => outbox_partition(spec.key()).filter(|p| p.0 < map.partitions()),
            false => None,
        };
        if let Some(p) = outbox {
            owners.push(Owner::Partition(p));
            continue;
        }
        if spec.key().is_system() || Key::table(SYSTEM_TABLE).starts_with(spec.key()) {
            rejected = Some(AbortReason::Unroutable(format!(
                "{} names the reserved table {SYSTEM_TABLE:?}",
                spec.key()
            )));
            break;
        }
        match map.owner_of_spec(spec) {
            Ok(Owner::Replicated) if access.writes() => {
                rejected = Some(AbortReason::ReplicatedWrite {
                    key: spec.key().clone(),
                });
                break;
            }
            Ok(owner) => owners.push(owner),
            Err(e) => {
                rejected = Some(AbortReason::Unroutable(e.to_string()));
                break;
            }
        }
    }
    if rejected.is_some() {
        return RoutedTxn {
            position,
            txn,
            owners: Vec::new(),
            participants: vec![PartitionId(0)],
            active: Vec::new(),
            rejected,
        };
    }
    let mut participants = Vec::new();
    let mut active = Vec::new();
    for (owner, (_, access)) in owners.iter().zip(&txn.footprint.entries) {
        if let Owner::Partition(p) = *owner {
            participants.push(p);
            if access.writes() {
                active.push(p);
            }
        }
    }
    participants.sort_unstable();
    participants.dedup();
    active.sort_unstable();
    active.dedup();
    if participants.is_empty() {
        participants.push(PartitionId(0));
    }
    RoutedTxn {
        position,
        txn,
        owners,
        participants,
        active,
        rejected: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{
        ClientId, Epoch, Footprint, Key, NodeId, PartitionScheme, RequestSeq, TableRule,
    };
    use proptest::prelude::*;

    fn txn(footprint: Footprint) -> Arc<Transaction> {
        Arc::new(Transaction {
            client: ClientId(1),
            seq: RequestSeq(1),
            gateway: NodeId(0),
            procedure: "p".into(),
            args: Vec::new(),
            footprint,
        })
    }

    fn map(partitions: u32) -> PartitionMap {
        let scheme = PartitionScheme::hashed(partitions)
            .table("item", TableRule::Replicated)
            .table(
                "r",
                TableRule::Range {
                    splits: (1..partitions)
                        .map(|i| Key::table("r").u64(100 * u64::from(i)))
                        .collect(),
                },
            );
        PartitionMap::new(scheme).unwrap()
    }

    #[test]
    fn participants_and_active_sets() {
        let m = map(3);
        let fp = Footprint::new()
            .read(Key::table("r").u64(5))
            .write(Key::table("r").u64(150))
            .read(Key::table("item").u64(9));
        let r = route(Position::default(), txn(fp), &m);
        assert_eq!(r.participants, vec![PartitionId(0), PartitionId(1)]);
        assert_eq!(r.active, vec![PartitionId(1)]);
        assert_eq!(r.designated(), PartitionId(1));
        assert_eq!(r.owners[2], Owner::Replicated);
        assert!(r.rejected.is_none());
    }

    #[test]
    fn read_only_multi_partition_runs_on_the_lowest_participant() {
        let m = map(3);
        let fp = Footprint::new()
            .read(Key::table("r").u64(250))
            .read(Key::table("r").u64(150));
        let r = route(Position::default(), txn(fp), &m);
        assert_eq!(r.executors(), &[PartitionId(1)]);
    }

    #[test]
    fn invalid_footprints_are_rejected_on_partition_zero() {
        let m = map(3);
        let writes_item = Footprint::new().write(Key::table("item").u64(1));
        let r = route(Position::default(), txn(writes_item), &m);
        assert!(matches!(
            r.rejected,
            Some(AbortReason::ReplicatedWrite { .. })
        ));
        assert_eq!(r.participants, vec![PartitionId(0)]);
        let spans = Footprint::new().read_prefix(Key::table("r"));
        let r = route(Position::default(), txn(spans), &m);
        assert!(matches!(r.rejected, Some(AbortReason::Unroutable(_))));
        let reserved = Footprint::new().read(Key::table(SYSTEM_TABLE).str("result"));
        let r = route(Position::default(), txn(reserved), &m);
        assert!(matches!(r.rejected, Some(AbortReason::Unroutable(_))));
        let everything = Footprint::new().read_prefix(Key::default());
        let r = route(Position::default(), txn(everything), &m);
        assert!(matches!(r.rejected, Some(AbortReason::Unroutable(_))));
        let short = Footprint::new().read(Key::table("acct"));
        let r = route(Position::default(), txn(short), &m);
        assert!(matches!(r.rejected, Some(AbortReason::Unroutable(_))));
    }

    #[test]
    fn refuses_unknown_log_versions() {
        let batch = Batch {
            version: 99,
            epoch: Epoch(1),
            txns: Vec::new(),
        };
        let err = schedule(&batch, &map(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "log format version 99 is not supported (this build reads version 1)"
        );
    }

    proptest! {
        #[test]
        fn every_txn_is_in_exactly_its_participants_plans_in_order(
            partitions in 1u32..8,
            footprints in proptest::collection::vec(
                proptest::collection::vec((0u64..50, any::<bool>()), 0..5), 0..30),
        ) {
            let m = map(partitions);
            let batch = Batch {
                version: LOG_FORMAT_VERSION,
                epoch: Epoch(3),
                txns: footprints.iter().map(|keys| {
                    let mut fp = Footprint::new();
                    for (k, w) in keys {
                        let key = Key::table("acct").u64(*k);
                        fp = if *w { fp.write(key) } else { fp.read(key) };
                    }
                    txn(fp)
                }).collect(),
            };
            let plans = schedule(&batch, &m).unwrap();
            prop_assert_eq!(plans.len(), partitions as usize);
            for (p, plan) in plans.iter().enumerate() {
                prop_assert_eq!(plan.partition, PartitionId(p as u32));
                prop_assert!(plan.txns.windows(2).all(|w| w[0].position < w[1].position));
                for t in &plan.txns {
                    prop_assert!(t.participants.contains(&PartitionId(p as u32)));
                }
            }
            for (i, _) in batch.txns.iter().enumerate() {
                let pos = Position::new(Epoch(3), i as u32);
                let holders: Vec<_> = plans.iter()
                    .filter(|plan| plan.txns.iter().any(|t| t.position == pos))
                    .map(|plan| plan.partition).collect();
                let routed = plans.iter().flat_map(|p| &p.txns).find(|t| t.position == pos).unwrap();
                prop_assert_eq!(&holders, &routed.participants);
                for (spec, _, owner) in routed.routes() {
                    if let Owner::Partition(o) = owner {
                        prop_assert_eq!(Ok(Owner::Partition(o)), m.owner(spec.key()));
                    }
                }
            }
        }
    }
}
