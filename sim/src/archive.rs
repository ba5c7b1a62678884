//! A node's archive in simulation: its files by name, in memory, written in the formats
//! and read by the rules of [`detflow_replay::archive`], as `detflow replay` reads a
//! directory. A crash in the middle of a write leaves what a disk may leave: no file, a
//! whole one, or (a disk that acknowledged a sync it did not do) a torn one under its
//! final name, which readers must pass over.

use detflow_protocol::{Batch, DetRng, Epoch, Key, LogEntry, PartitionId, Value};
use detflow_replay::archive::{self as format, Gap};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Checkpoint frames this small, so that every checkpoint of a seed has several.
const FRAME_BYTES: usize = 512;

/// What a crash during a file's write left of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CrashedWrite {
    /// Nothing under its name (the rename never happened).
    Absent,
    /// Part of it under its name.
    Torn,
    /// All of it (the crash came after the rename).
    Whole,
}

/// One archive: segment and checkpoint files by path.
#[derive(Clone, Debug, Default)]
pub(crate) struct SimArchive {
    files: BTreeMap<String, Vec<u8>>,
}

impl SimArchive {
    /// Writes `entries` as a segment, whole.
    pub(crate) fn write_segment(&mut self, entries: &[LogEntry]) {
        if let Some((name, bytes)) = segment_file(entries) {
            self.files.insert(name, bytes);
        }
    }

    /// Writes `entries` as a segment, interrupted by a crash: what the crash left, drawn
    /// from `rng`.
    pub(crate) fn write_segment_crashing(
        &mut self,
        entries: &[LogEntry],
        rng: &mut DetRng,
    ) -> CrashedWrite {
        let Some((name, bytes)) = segment_file(entries) else {
            return CrashedWrite::Absent;
        };
        self.write_crashing(name, bytes, rng)
    }

    /// Writes file `name` interrupted by a crash: what the crash left, drawn from `rng`.
    fn write_crashing(&mut self, name: String, bytes: Vec<u8>, rng: &mut DetRng) -> CrashedWrite {
        let left = *rng.pick(&[
            CrashedWrite::Absent,
            CrashedWrite::Torn,
            CrashedWrite::Whole,
        ]);
        match left {
            CrashedWrite::Absent => {}
            CrashedWrite::Torn => {
                let cut = rng.below(bytes.len() as u64) as usize;
                self.files.insert(name, bytes[..cut].to_vec());
            }
            CrashedWrite::Whole => {
                self.files.insert(name, bytes);
            }
        }
        left
    }

    /// Writes partition `partition`'s `rows` after `epoch` as a checkpoint, whole.
    pub(crate) fn write_checkpoint(
        &mut self,
        partition: PartitionId,
        epoch: Epoch,
        rows: &[(Key, Value)],
    ) {
        let (name, bytes) = checkpoint_file(partition, epoch, rows);
        self.files.insert(name, bytes);
    }

    /// Writes a checkpoint as [`SimArchive::write_checkpoint`] does, interrupted by a
    /// crash: what the crash left, drawn from `rng`.
    pub(crate) fn write_checkpoint_crashing(
        &mut self,
        partition: PartitionId,
        epoch: Epoch,
        rows: &[(Key, Value)],
        rng: &mut DetRng,
    ) -> CrashedWrite {
        let (name, bytes) = checkpoint_file(partition, epoch, rows);
        self.write_crashing(name, bytes, rng)
    }

    /// The segments by first epoch, then last (the name order), with their bytes.
    fn segments(&self) -> Vec<((Epoch, Epoch), &[u8])> {
        self.files
            .range("log/".to_owned().."log0".to_owned())
            .filter_map(|(name, bytes)| {
                let range = format::parse_segment_name(name.strip_prefix("log/")?)?;
                Some((range, bytes.as_slice()))
            })
            .collect()
    }

    /// The batches of epochs `from..=to` as `detflow replay` reads them; with
    /// `stop_at_unreadable` (a planted bug), the first segment that does not read back ends
    /// the reading.
    pub(crate) fn batches(
        &self,
        from: Epoch,
        to: Epoch,
        stop_at_unreadable: bool,
    ) -> Result<Vec<Arc<Batch>>, Gap> {
        let segments = self.segments();
        let ranges: Vec<(Epoch, Epoch)> = segments.iter().map(|(r, _)| *r).collect();
        let mut stopped = false;
        format::gather(&ranges, from, to, |i| {
            let ((first, last), bytes) = segments[i];
            if stopped {
                return Err("read after an unreadable segment".to_owned());
            }
            let read = format::decode_segment(bytes, first, last);
            stopped = stop_at_unreadable && read.is_err();
            read
        })
    }

    /// Every epoch some readable segment holds, as merged ranges.
    pub(crate) fn readable_ranges(&self) -> Vec<(Epoch, Epoch)> {
        let mut ranges: Vec<(Epoch, Epoch)> = Vec::new();
        for ((first, last), bytes) in self.segments() {
            if format::decode_segment(bytes, first, last).is_err() {
                continue;
            }
            match ranges.last_mut() {
                Some((_, end)) if first.0 <= end.0 + 1 => *end = (*end).max(last),
                _ => ranges.push((first, last)),
            }
        }
        ranges
    }

    /// How many files do not read back.
    pub(crate) fn unreadable(&self) -> usize {
        self.segments()
            .into_iter()
            .filter(|((first, last), bytes)| format::decode_segment(bytes, *first, *last).is_err())
            .count()
    }

    /// Where a re-execution to `at` starts, as `detflow replay` picks it: the last epoch at
    /// or before `at` with a readable checkpoint of every one of `partitions`, and the
    /// state then; none without one. With `torn_as_empty` (a planted bug), a checkpoint
    /// that does not read back counts as a partition without rows.
    pub(crate) fn start(
        &self,
        partitions: u32,
        at: Epoch,
        torn_as_empty: bool,
    ) -> Option<(Epoch, BTreeMap<Key, Value>)> {
        let files = self.checkpoint_files();
        let index: Vec<(Epoch, PartitionId)> = files.keys().copied().collect();
        let read = |e, p| match format::decode_checkpoint(files[&(e, p)], p, e) {
            Err(_) if torn_as_empty => Ok(Default::default()),
            read => read,
        };
        let (epoch, rows) = format::readable_checkpoints(&index, partitions, at, read, drop)?;
        Some((
            epoch,
            rows.into_iter().flat_map(format::replay_rows).collect(),
        ))
    }
}

impl SimArchive {
    /// The checkpoint files by epoch and partition, with their bytes.
    fn checkpoint_files(&self) -> BTreeMap<(Epoch, PartitionId), &[u8]> {
        self.files
            .range("checkpoints/".to_owned().."checkpoints0".to_owned())
            .filter_map(|(name, bytes)| {
                let (dir, file) = name.strip_prefix("checkpoints/")?.split_once('/')?;
                let key = (
                    format::parse_checkpoint_dir_name(dir)?,
                    format::parse_checkpoint_file_name(file)?,
                );
                Some((key, bytes.as_slice()))
            })
            .collect()
    }

    /// Where the node's retention cuts when its limits let go of everything through `at`,
    /// by [`format::retention_cut`] for an archive every host shares (so each of the
    /// `partitions`); with `any_checkpoint` (a planted bug), at the last
    /// checkpoint file at or before `at`, complete or not, as the node once did.
    pub(crate) fn retention_cut(
        &self,
        partitions: u32,
        at: Epoch,
        any_checkpoint: bool,
    ) -> Option<Epoch> {
        let files = self.checkpoint_files();
        let index: Vec<(Epoch, PartitionId)> = files.keys().copied().collect();
        if any_checkpoint {
            return index.iter().rev().map(|(e, _)| *e).find(|e| *e <= at);
        }
        let all: Vec<PartitionId> = (0..partitions).map(PartitionId).collect();
        format::retention_cut(&index, &all, at, |e, p| {
            format::decode_checkpoint(files[&(e, p)], p, e).is_ok()
        })
    }

    /// Whether it holds any checkpoint file.
    pub(crate) fn has_checkpoints(&self) -> bool {
        !self.checkpoint_files().is_empty()
    }

    /// Of `partitions`, how many have a checkpoint file after `epoch`, and how many of
    /// those read back.
    pub(crate) fn checkpoints_at(&self, partitions: u32, epoch: Epoch) -> (u32, u32) {
        let files = self.checkpoint_files();
        let mut present = 0;
        let mut readable = 0;
        for p in (0..partitions).map(PartitionId) {
            if let Some(bytes) = files.get(&(epoch, p)) {
                present += 1;
                readable += u32::from(format::decode_checkpoint(bytes, p, epoch).is_ok());
            }
        }
        (present, readable)
    }

    /// Deletes the segments that end at or before `cut`, as the node's retention does.
    pub(crate) fn drop_segments_through(&mut self, cut: Epoch) {
        let gone: Vec<String> = (self.segments().into_iter())
            .filter(|((_, last), _)| *last <= cut)
            .map(|((first, last), _)| format!("log/{}", format::segment_name(first, last)))
            .collect();
        for name in gone {
            self.files.remove(&name);
        }
    }

    /// Deletes the checkpoints of epochs before `cut`, as the node's retention does.
    pub(crate) fn drop_checkpoints_before(&mut self, cut: Epoch) {
        let gone: Vec<(Epoch, PartitionId)> = (self.checkpoint_files().into_keys())
            .filter(|(epoch, _)| *epoch < cut)
            .collect();
        for (epoch, partition) in gone {
            self.files.remove(&checkpoint_name(partition, epoch));
        }
    }
}

/// A checkpoint file's path.
fn checkpoint_name(partition: PartitionId, epoch: Epoch) -> String {
    format!(
        "checkpoints/{}/{}",
        format::checkpoint_dir_name(epoch),
        format::checkpoint_file_name(partition)
    )
}

/// A checkpoint's path and bytes.
fn checkpoint_file(
    partition: PartitionId,
    epoch: Epoch,
    rows: &[(Key, Value)],
) -> (String, Vec<u8>) {
    (
        checkpoint_name(partition, epoch),
        format::encode_checkpoint(partition, epoch, rows, FRAME_BYTES),
    )
}

/// A segment's path and bytes; none for no entries.
fn segment_file(entries: &[LogEntry]) -> Option<(String, Vec<u8>)> {
    let (first, last) = (entries.first()?.epoch(), entries.last()?.epoch());
    let bytes = format::encode_segment(entries).expect("a replica archives consecutive epochs");
    Some((format!("log/{}", format::segment_name(first, last)), bytes))
}
