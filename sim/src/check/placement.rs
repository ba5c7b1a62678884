//! Every key lives only on the partition that owns it (replicated keys everywhere, equal);
//! merges the partitions into one state.

use crate::world::Outcome;
use detflow_executor::is_system_key;
use detflow_protocol::{Key, Owner, PartitionId, Value};
use std::collections::BTreeMap;

pub(crate) fn merged_state(run: &Outcome) -> (BTreeMap<Key, Value>, Vec<String>) {
    let mut failures = Vec::new();
    let mut state = BTreeMap::new();
    let mut replicated: BTreeMap<Key, (usize, Value)> = BTreeMap::new();
    for (p, store) in run.stores.iter().enumerate() {
        for (key, value) in store.iter().filter(|(k, _)| !is_system_key(k)) {
            match run.map.owner(key) {
                Ok(Owner::Partition(owner)) if owner == PartitionId(p as u32) => {
                    state.insert(key.clone(), value.clone());
                }
                Ok(Owner::Partition(owner)) => failures.push(format!(
                    "partition {p} holds key {key}, which partition {owner} owns"
                )),
                Ok(Owner::Replicated) => {
                    let entry = replicated.entry(key.clone()).or_insert((0, value.clone()));
                    entry.0 += 1;
                    if entry.1 != *value {
                        failures.push(format!("replicated key {key} differs on partition {p}"));
                    }
                }
                Err(e) => failures.push(format!("partition {p} holds unroutable key {key}: {e}")),
            }
        }
    }
    for (key, (copies, value)) in replicated {
        if copies != run.stores.len() {
            failures.push(format!(
                "replicated key {key} is on {copies} of {} partitions",
                run.stores.len()
            ));
        }
        state.insert(key, value);
    }
    (state, failures)
}
