//! The replayer's digests are the partitions' digests, and the what-if finds exactly the
//! calls a changed procedure affects.

#[allow(dead_code)]
#[path = "../examples/bank_fee.rs"]
mod bank_fee;

use detflow_executor::{MemStore, Procedure, Registry, StateDigest, Store};
use detflow_protocol::{Epoch, Key, Owner, Value};
use detflow_replay::{ReplayError, Replayer};
use detflow_scheduler::PartitionMap;
use detflow_workloads::Workload;
use detflow_workloads::bank::Transfer;
use detflow_workloads::kv::{Kv, KvConfig};
use std::collections::BTreeMap;

/// A fee changes every transfer that committed (it pays the fee, or aborts for want of
/// it) and nothing else.
#[test]
fn a_fee_changes_exactly_the_transfers_that_committed() {
    let (found, calls, committed) = bank_fee::differences();
    assert!(
        committed > 100,
        "too few transfers to judge: {committed} of {calls}"
    );
    assert_eq!(found.len(), committed, "{found:#?}");
    assert!(found.iter().all(|d| d.procedure == Transfer::NAME));
    assert!(
        found
            .iter()
            .all(|d| d.outcome_differs() || d.writes_differ())
    );
}

/// After every epoch, each partition's digest is the digest of the rows it holds, replicated
/// tables and deletes included (kv deletes); a log out of order is refused.
#[test]
fn digests_are_the_partitions_rows_digests() {
    let mut kv = Kv::new(KvConfig {
        partitions: 3,
        ..KvConfig::default()
    });
    let mut registry = Registry::new();
    kv.register(&mut registry).expect("kv's services");
    let map = PartitionMap::new(kv.scheme()).expect("kv's scheme");
    let initial: BTreeMap<Key, Value> = kv.load().into_iter().collect();
    let log = bank_fee::workload_log(&mut kv, &registry, 11, 30, 40);
    let mut replayer = Replayer::new(&registry, map.clone(), initial);
    for batch in &log {
        replayer.apply(batch).expect("the log replays");
        let mut stores = vec![MemStore::new(); 3];
        for (key, value) in replayer.state() {
            match map.owner(key) {
                _ if key.is_system() => {}
                Ok(Owner::Partition(p)) => stores[p.0 as usize].put(key.clone(), value.clone()),
                Ok(Owner::Replicated) => stores
                    .iter_mut()
                    .for_each(|s| s.put(key.clone(), value.clone())),
                Err(e) => panic!("{key} has no owner: {e}"),
            }
        }
        let rows: Vec<StateDigest> = stores.iter().map(StateDigest::of_store).collect();
        assert_eq!(replayer.digests(), &rows[..], "after epoch {}", batch.epoch);
    }
    assert!(matches!(
        replayer.apply(&log[0]),
        Err(ReplayError::OutOfOrder { .. })
    ));
    // The state after an earlier epoch, from the start again.
    let mut again = Replayer::new(&registry, map, kv.load().into_iter().collect());
    assert_eq!(again.run_to(&log, Epoch(10)).expect("replays"), Epoch(10));
    assert_eq!(again.epoch(), Epoch(10));
}
