//! Partition replicas agree: every replica of a partition ends with the same state, and
//! the state digest it kept is its rows' digest.
//!
//! Replicas run the same plans from the same initial rows, so their stores must be equal
//! key for key, bookkeeping included (result tables, outboxes of letters, stream events),
//! except for the record of remote reads sent and not yet acknowledged, whose deletion
//! depends on when each peer's acknowledgement arrived. The gateways compare the results
//! the replicas report as the run goes (a difference is an online failure); this checker
//! catches what no result shows, such as a write one replica skipped.

use crate::world::Outcome;
use detflow_executor::{MemStore, StateDigest, Store, recorded_digest};
use detflow_protocol::{Key, SYSTEM_TABLE, Value};

/// Whether `key` is a record of reads sent to peers (see the executor's bookkeeping).
fn is_reads_outbox(key: &Key) -> bool {
    key.starts_with(&Key::table(SYSTEM_TABLE).str("outbox"))
}

fn rows(store: &MemStore) -> impl Iterator<Item = (&Key, &Value)> {
    store.iter().filter(|(key, _)| !is_reads_outbox(key))
}

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    let mut failures = digests(run);
    for (p, replicas) in run.replica_stores.iter().enumerate() {
        let Some((first, others)) = replicas.split_first() else {
            continue;
        };
        for (k, other) in others.iter().enumerate() {
            let mut a = rows(first);
            let mut b = rows(other);
            let difference = loop {
                match (a.next(), b.next()) {
                    (None, None) => break None,
                    (Some((key, _)), None) => break Some(format!("only the first has {key}")),
                    (None, Some((key, _))) => break Some(format!("only it has {key}")),
                    (Some((ka, _)), Some((kb, _))) if ka != kb => {
                        break Some(format!("keys differ: {ka} against {kb}"));
                    }
                    (Some((key, va)), Some((_, vb))) if va != vb => {
                        break Some(format!("values of {key} differ"));
                    }
                    _ => {}
                }
            };
            if let Some(difference) = difference {
                failures.push(format!(
                    "replica {} of partition {p} ends with another state than the first: {difference}",
                    k + 1
                ));
            }
        }
    }
    failures
}

/// The state digest each replica kept as it applied epochs (and compared with its
/// siblings' as it went) is the digest of the rows it ends with.
fn digests(run: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    for (p, replicas) in run.replica_stores.iter().enumerate() {
        for (k, store) in replicas.iter().enumerate() {
            let Some((epoch, kept)) = recorded_digest(store) else {
                continue;
            };
            let rows = StateDigest::of_store(store);
            if epoch == store.applied_epoch() && kept != rows {
                failures.push(format!(
                    "replica {k} of partition {p} kept the state digest {kept} through epoch \
                     {epoch}, but its rows' digest is {rows}"
                ));
            }
        }
    }
    failures
}
