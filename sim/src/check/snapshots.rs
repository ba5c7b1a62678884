//! Snapshot reads: every answer equals the serial state after the epoch it names, and a
//! reader's `Latest` reads never go back in time.
//!
//! The serial replay calls [`judge`] with its state between epochs, so each read is
//! compared with the reference's own map at that point: a get value by value, a whole-table
//! scan row by row (a scan that read one partition at another epoch, or a version reclaimed
//! while still in the window, shows as a row that differs).

use crate::check::serial::Reference;
use crate::world::{Outcome, SnapshotRecord};
use detflow_protocol::{Epoch, Key, Value};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Every reader's answered reads, by epoch.
pub(crate) fn by_epoch(run: &Outcome) -> BTreeMap<Epoch, Vec<&SnapshotRecord>> {
    let mut reads: BTreeMap<Epoch, Vec<&SnapshotRecord>> = BTreeMap::new();
    for reader in &run.snapshot_readers {
        for record in &reader.records {
            reads.entry(record.epoch()).or_default().push(record);
        }
    }
    reads
}

/// Compares the reads at `epoch` with `state`, the serial state after it.
pub(crate) fn judge(
    epoch: Epoch,
    records: &[&SnapshotRecord],
    state: &BTreeMap<Key, Value>,
    failures: &mut Vec<String>,
) {
    for record in records {
        match record {
            SnapshotRecord::Get { keys, values, .. } => {
                for (key, got) in keys.iter().zip(values) {
                    let want = state.get(key);
                    if got.as_ref() != want {
                        failures.push(format!(
                            "snapshot get of {key} at epoch {epoch}: got {}, the serial state after \
                             that epoch has {}",
                            show(got.as_ref()),
                            show(want)
                        ));
                    }
                }
            }
            SnapshotRecord::Scan { prefix, rows, .. } => {
                let want: Vec<(&Key, &Value)> = state
                    .range::<Key, _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(k, _)| !k.is_system())
                    .collect();
                let got: Vec<(&Key, &Value)> = rows.iter().map(|(k, v)| (k, v)).collect();
                if got != want {
                    let differs = first_difference(&got, &want);
                    failures.push(format!(
                        "snapshot scan of {prefix} at epoch {epoch}: {} rows, the serial state after \
                         that epoch has {}; {differs}",
                        got.len(),
                        want.len()
                    ));
                }
            }
        }
    }
}

/// The readers' own failures (answers at another epoch than asked, `Latest` going back).
pub(crate) fn check(run: &Outcome, reference: &Reference) -> Vec<String> {
    let mut failures = reference.snapshot_failures.clone();
    for (i, reader) in run.snapshot_readers.iter().enumerate() {
        for failure in &reader.failures {
            failures.push(format!("snapshot reader {i}: {failure}"));
        }
    }
    failures
}

fn first_difference(got: &[(&Key, &Value)], want: &[(&Key, &Value)]) -> String {
    for i in 0..got.len().max(want.len()) {
        match (got.get(i), want.get(i)) {
            (Some(g), Some(w)) if g == w => continue,
            (Some((gk, gv)), Some((wk, wv))) if gk == wk => {
                return format!("key {gk} read {gv:?}, serially {wv:?}");
            }
            (Some((gk, _)), Some((wk, _))) => {
                return format!("read key {gk} where the serial state has {wk}");
            }
            (Some((gk, _)), None) => return format!("read key {gk} past the serial state's end"),
            (None, Some((wk, _))) => return format!("missed key {wk}"),
            (None, None) => break,
        }
    }
    "the same rows".to_owned()
}

fn show(value: Option<&Value>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "nothing".to_owned(),
    }
}
