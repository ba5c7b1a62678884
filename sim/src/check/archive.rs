//! The archives: every epoch a replica's durable log dropped is in a segment of its own
//! archive that reads back (torn segments passed over), holding the committed batch; and
//! re-executing from an archive, as `detflow replay --at E` does (from the last complete
//! checkpoint at or before E, then the archived epochs), gives the serial state after E
//! (checked for the archive holding most, at two epochs). Retention (the node's rule, in
//! seeds that keep a limited number of epochs) may delete what precedes its cut, never
//! more, and cuts only where every partition's checkpoint reads back.

use crate::world::Outcome;
use detflow_protocol::{Epoch, Key, Value};
use detflow_replay::Replayer;
use std::collections::BTreeMap;

/// Stretches of epochs, first and last.
type Ranges = Vec<(Epoch, Epoch)>;

/// Where an archive is re-executed to.
pub(crate) struct Targets {
    /// The replica whose archive it is.
    replica: usize,
    /// The stretches its readable segments hold.
    ranges: Ranges,
    /// The epochs.
    pub(crate) epochs: Vec<Epoch>,
}

/// Every replica's archive holds every epoch its log dropped, readable, with the committed
/// batches; and the epochs to re-execute one archive to (the one holding most, to the end
/// of its last stretch but one and a third into its first: re-executing costs as much as the
/// serial reference, whose states at those epochs the audit keeps).
pub(crate) fn contents(run: &Outcome) -> (Vec<String>, Option<Targets>) {
    let mut failures = Vec::new();
    // The replica whose archive holds most, how many epochs, and its stretches.
    let mut replayed: Option<(usize, u64, Ranges)> = None;
    for (r, kept) in run.archives.iter().enumerate() {
        let (archive, dropped, not_archived) = (&kept.archive, kept.dropped, &kept.not_archived);
        let ranges = archive.readable_ranges();
        let excused = |e: Epoch| not_archived.iter().any(|(a, b)| *a <= e && e <= *b);
        let held = |e: Epoch| ranges.iter().any(|(a, b)| *a <= e && e <= *b);
        // Retention may have deleted the epochs through its cut.
        let kept_from = kept.retained_after.0 + 1;
        if let Some(missing) = (kept_from..=dropped.0)
            .map(Epoch)
            .find(|e| !excused(*e) && !held(*e))
        {
            failures.push(format!(
                "archive: replica {r}'s log dropped the epochs up to {dropped}, but no segment \
                 of its archive that reads back holds epoch {missing} (it holds {ranges:?}, \
                 {} unreadable segments; retention cut after epoch {})",
                archive.unreadable(),
                kept.retained_after
            ));
            continue;
        }
        for (first, last) in &ranges {
            let batches = match archive.batches(*first, *last, run.archive_stops_at_torn) {
                Ok(batches) => batches,
                Err(gap) => {
                    failures.push(format!(
                        "archive: replica {r}'s archive holds epochs {first}..={last}, but \
                         reading them fails: {gap}"
                    ));
                    break;
                }
            };
            let differs = batches
                .iter()
                .find(|b| run.log.get(b.epoch.0 as usize - 1) != Some(b));
            if let Some(batch) = differs {
                failures.push(format!(
                    "archive: replica {r}'s archive holds another batch for epoch {} than the \
                     one committed",
                    batch.epoch
                ));
                break;
            }
        }
        let held: u64 = ranges.iter().map(|(a, b)| b.0 - a.0 + 1).sum();
        if replayed.as_ref().is_none_or(|(_, most, _)| held > *most) {
            replayed = Some((r, held, ranges));
        }
    }
    failures.extend(retention_cut_replays(run));
    if !failures.is_empty() {
        return (failures, None);
    }
    let targets = replayed.map(|(r, _, ranges)| {
        // Compactions follow checkpoints, so a stretch ends at one: the epoch before
        // replays most of a checkpoint interval.
        let mut epochs: Vec<Epoch> = (ranges.last().into_iter())
            .map(|(first, last)| Epoch(last.0.saturating_sub(1).max(first.0)))
            .collect();
        if let Some((first, last)) = ranges.first() {
            epochs.push(Epoch(first.0 + (last.0 - first.0) / 3));
        }
        epochs.dedup();
        Targets {
            replica: r,
            ranges,
            epochs,
        }
    });
    (failures, targets)
}

/// Retention cuts where replay can start: the checkpoints before the highest cut are gone,
/// so at that cut every partition has a checkpoint that reads back (or, in an archive
/// that had no checkpoints when it was cut, none has). Whole checkpoint files are never
/// written again, so what read back at the cut still does.
fn retention_cut_replays(run: &Outcome) -> Option<String> {
    let floor = run.archives.iter().map(|a| a.retained_after).max()?;
    if floor == Epoch(0) {
        return None;
    }
    let partitions = run.map.partitions();
    let (present, readable) = run.checkpoint_archive.checkpoints_at(partitions, floor);
    (present > 0 && (present < partitions || readable < present)).then(|| {
        format!(
            "archive: retention cut the archive after epoch {floor}, where {present} of \
             {partitions} partitions have a checkpoint ({readable} reading back): the \
             checkpoints and log before it are gone, and replay cannot start there"
        )
    })
}

/// Re-executing the archive `targets` names to each of its epochs gives the serial state
/// after it (`serial`, by epoch).
pub(crate) fn replays(
    run: &Outcome,
    targets: Option<Targets>,
    serial: &BTreeMap<Epoch, BTreeMap<Key, Value>>,
) -> Vec<String> {
    let Some(targets) = targets else {
        return Vec::new();
    };
    (targets.epochs.iter())
        .filter_map(|at| replay_to(run, &targets, *at, serial.get(at)?))
        .collect()
}

/// Re-executes the archive `targets` names to `at`, as `detflow replay` does; a failure if that
/// is not the serial state `expected`. Nothing when the archive does not reach `at` from
/// a start it has (the coverage check above judges what it must hold).
fn replay_to(
    run: &Outcome,
    targets: &Targets,
    at: Epoch,
    expected: &BTreeMap<Key, Value>,
) -> Option<String> {
    let (r, ranges) = (targets.replica, &targets.ranges);
    let archive = &run.archives[r].archive;
    let (start, state) = run
        .checkpoint_archive
        .start(run.map.partitions(), at, run.checkpoint_torn_as_empty)
        .unwrap_or_else(|| (Epoch(0), run.initial.iter().cloned().collect()));
    if start < at
        && !ranges
            .iter()
            .any(|(first, last)| *first <= start.next() && at <= *last)
    {
        return None;
    }
    let batches = match start < at {
        true => match archive.batches(start.next(), at, run.archive_stops_at_torn) {
            Ok(batches) => batches,
            Err(gap) => {
                return Some(format!(
                    "archive: replaying replica {r}'s archive to epoch {at} fails: {gap}"
                ));
            }
        },
        false => Vec::new(),
    };
    let mut replayer = Replayer::at_checkpoint(&run.registry, run.map.clone(), start, state);
    for batch in &batches {
        if let Err(e) = replayer.apply(batch) {
            return Some(format!(
                "archive: replica {r}'s archive does not replay at epoch {}: {e}",
                batch.epoch
            ));
        }
    }
    (replayer.state() != expected).then(|| {
        format!(
            "archive: replaying replica {r}'s archive to epoch {at} (from {}) ends in another \
             state than the serial one after that epoch",
            match start {
                Epoch(0) => "the initial rows".to_owned(),
                e => format!("the checkpoints after epoch {e}"),
            }
        )
    })
}
