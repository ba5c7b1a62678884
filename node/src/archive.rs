//! The log archive: where a sequencer replica puts the epochs it compacts away, so that
//! replay, explain and audit can still reach every epoch after the live log dropped it.
//!
//! ```text
//!  ARCHIVE/
//!    log/
//!      00000000000000000001-00000000000000001024.seg   epochs 1..=1024
//!      00000000000000001025-00000000000000002071.seg   epochs 1025..=2071
//! ```
//!
//! Every segment is immutable once written and named by the first and last epoch it holds,
//! zero-padded, so that a directory listing (or an object store's listing by prefix) is
//! the index, in epoch order. The formats and the reading rules are
//! [`detflow_replay::archive`]'s, which the simulator runs too: a segment is a magic, a
//! BLAKE3 hash, then the LZ4-compressed entries. It is written to a temporary name,
//! synced, renamed and the directory synced, before the log drops the entries: a crash
//! leaves no segment (the next compaction writes it again) or a whole one, unless the disk
//! lies. Segments may overlap (a compaction that was archived but not applied before a
//! crash is archived again, perhaps longer); readers take each epoch from the first
//! segment holding it that reads back: a torn or altered segment fails its hash and is
//! passed over.
//!
//! Checkpoints sit beside the log, one directory per epoch, one file per partition:
//!
//! ```text
//!    checkpoints/
//!      00000000000000008192/
//!        partition-0.ckpt      partition 0's rows after epoch 8192
//!        partition-1.ckpt
//! ```
//!
//! A checkpoint file is a magic, then LZ4-compressed MessagePack frames (the partition
//! number and the epoch, then about 1 MiB of rows each, keys and values as binaries
//! encoded straight from the store's bytes, so that the writer never holds a whole
//! partition), then a BLAKE3 hash of all before it; it holds every row of the
//! partition's store (user rows and the executor's bookkeeping, except the reads outbox,
//! which differs between replicas): the replicas of a partition write the same bytes, so
//! the archives of several nodes may share a directory. It is written like a segment.
//! Replay starts from the last epoch at which every partition has a checkpoint that reads
//! back.
//!
//! Retention: [`Archive::retain_after`] deletes the segments that end at or before an
//! epoch, moved back to the last complete checkpoint at or before it (a file of every
//! partition the archive serves, each reading back), and the checkpoints before
//! that one, so that what remains replays on its own. [`Retention`] picks that epoch from
//! the node's limits: the last `archive_retain_epochs` epochs, `archive_retain_bytes`
//! bytes (4 GiB unless set), files younger than `archive_retain_secs` (each if set; the
//! strictest wins).

use anyhow::{Context, Result, anyhow, bail};
use detflow_protocol::{Batch, Epoch, Key, LogEntry, PartitionId, Value};
use detflow_replay::archive::{self as format, segment_name};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use detflow_replay::archive::Rows;

/// One archived checkpoint file, as its name and size describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFile {
    /// The epoch after which it holds the partition's state.
    pub epoch: Epoch,
    /// The partition.
    pub partition: PartitionId,
    /// Its size on disk.
    pub bytes: u64,
    /// The file.
    pub path: PathBuf,
}

/// One archived segment, as its name and size describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The first epoch it holds.
    pub first: Epoch,
    /// The last epoch it holds.
    pub last: Epoch,
    /// Its size on disk.
    pub bytes: u64,
    /// The file.
    pub path: PathBuf,
}

/// How much of the archive a node keeps; each limit that is set applies, and a file goes
/// once any of them says so (moved back to a checkpoint, see [`Archive::retain_after`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the last this many epochs.
    pub epochs: Option<u64>,
    /// Keep at most this many bytes of segments and checkpoints.
    pub bytes: Option<u64>,
    /// Keep the files written in the last this many seconds.
    pub secs: Option<u64>,
}

impl Retention {
    /// Whether it keeps everything.
    pub fn keeps_all(&self) -> bool {
        *self == Retention::default()
    }
}

/// An archive directory (created on first write).
#[derive(Clone, Debug)]
pub struct Archive {
    dir: PathBuf,
    /// Checkpoint files this handle has read back whole, by epoch and partition: files are
    /// immutable, so retention checks each once.
    verified: Arc<Mutex<BTreeSet<(Epoch, PartitionId)>>>,
}

impl Archive {
    /// The archive in `dir`; nothing is created until a segment is written.
    pub fn new(dir: &Path) -> Archive {
        Archive {
            dir: dir.to_path_buf(),
            verified: Arc::default(),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Writes `entries` (consecutive epochs) as one segment, durably.
    pub fn write_segment(&self, entries: &[LogEntry]) -> Result<Segment> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            bail!("an empty segment");
        };
        let (first, last) = (first.epoch(), last.epoch());
        let bytes = format::encode_segment(entries).map_err(|e| anyhow!(e))?;
        let path = write_durably(&self.log_dir(), &segment_name(first, last), &bytes)?;
        Ok(Segment {
            first,
            last,
            bytes: bytes.len() as u64,
            path,
        })
    }

    /// Every segment, by first epoch (then last). An archive never written is empty.
    pub fn segments(&self) -> Result<Vec<Segment>> {
        let mut segments = Vec::new();
        for (path, name) in listing(&self.log_dir())? {
            if let Some((first, last)) = format::parse_segment_name(&name) {
                let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                segments.push(Segment {
                    first,
                    last,
                    bytes,
                    path,
                });
            }
        }
        segments.sort_by_key(|s| (s.first, s.last));
        Ok(segments)
    }

    /// The entries of `segment`, checked against its hash and its name.
    pub fn read_segment(&self, segment: &Segment) -> Result<Vec<LogEntry>> {
        let path = &segment.path;
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        format::decode_segment(&bytes, segment.first, segment.last)
            .map_err(|why| anyhow!("segment {} is corrupt: {why}", path.display()))
    }

    /// The batches of epochs `from..=to`, in order, from the segments that hold them (an
    /// unreadable one passed over for another holding its epochs); an error names the
    /// first epoch no readable segment holds.
    pub fn batches(&self, from: Epoch, to: Epoch) -> Result<Vec<Arc<Batch>>> {
        match self.readable_prefix(from, to)? {
            (batches, None) => Ok(batches),
            (_, Some(gap)) => Err(anyhow!(
                "the archive at {} has {}: {gap}",
                self.dir.display(),
                describe(&self.segments()?)
            )),
        }
    }

    /// The batches of epochs `from..=to` the archive holds without a gap, and the gap
    /// where they stop short of `to` (see [`format::gather_prefix`]).
    pub fn readable_prefix(
        &self,
        from: Epoch,
        to: Epoch,
    ) -> Result<(Vec<Arc<Batch>>, Option<format::Gap>)> {
        let segments = self.segments()?;
        let ranges: Vec<(Epoch, Epoch)> = segments.iter().map(|s| (s.first, s.last)).collect();
        Ok(format::gather_prefix(&ranges, from, to, |i| {
            self.read_segment(&segments[i])
                .map_err(|e| format!("{e:#}"))
        }))
    }

    /// Deletes what replay after `epoch` no longer needs: with checkpoints, the segments
    /// that end at or before the last complete checkpoint at or before `epoch` (one that
    /// every partition the archive serves has, each file reading back: see
    /// [`format::retention_cut`]; `hosted` are the node's) and the checkpoints before it
    /// (nothing if none is that old); without, the segments that end at or before `epoch`.
    /// How many files it deleted.
    ///
    /// An incomplete newer set (a partition that skipped it or crashed writing it) keeps
    /// the older complete one and the log after it: what remains always replays.
    pub fn retain_after(&self, epoch: Epoch, hosted: &[PartitionId]) -> Result<usize> {
        let checkpoints = self.checkpoints()?;
        let cut = match checkpoints.is_empty() {
            true => epoch,
            false => match self.newest_sound_checkpoint(&checkpoints, hosted, epoch)? {
                Some(kept) => kept,
                None => return Ok(0),
            },
        };
        let mut deleted = 0;
        for segment in self.segments()?.into_iter().filter(|s| s.last <= cut) {
            fs::remove_file(&segment.path)
                .with_context(|| format!("deleting {}", segment.path.display()))?;
            deleted += 1;
        }
        for old in checkpoints.iter().filter(|c| c.epoch < cut) {
            fs::remove_file(&old.path)
                .with_context(|| format!("deleting {}", old.path.display()))?;
            deleted += 1;
            if let Some(dir) = old.path.parent() {
                // Empty once its last partition's file is gone; otherwise it stays.
                let _ = fs::remove_dir(dir);
            }
        }
        Ok(deleted)
    }

    /// The newest epoch at or before `at` at which every partition the archive serves has
    /// a checkpoint among `files` that reads back (its hash checked, streamed):
    /// [`format::retention_cut`], the simulator's rule too.
    fn newest_sound_checkpoint(
        &self,
        files: &[CheckpointFile],
        hosted: &[PartitionId],
        at: Epoch,
    ) -> Result<Option<Epoch>> {
        let index: Vec<(Epoch, PartitionId)> =
            files.iter().map(|f| (f.epoch, f.partition)).collect();
        let mut failed = None;
        let cut = format::retention_cut(&index, hosted, at, |epoch, partition| {
            let key = (epoch, partition);
            if failed.is_some() {
                return false;
            }
            if self.verified.lock().expect("not poisoned").contains(&key) {
                return true;
            }
            let file = files
                .iter()
                .find(|f| (f.epoch, f.partition) == key)
                .expect("a complete epoch has every partition's file");
            match checkpoint_reads_back(file) {
                Ok(true) => {
                    self.verified.lock().expect("not poisoned").insert(key);
                    true
                }
                Ok(false) => {
                    tracing::warn!(
                        file = %file.path.display(),
                        "an archived checkpoint does not read back (torn or altered); \
                         retention keeps the checkpoint before it"
                    );
                    false
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(cut),
        }
    }

    /// Applies `retention` to the archive of a node hosting `hosted`, whose last epoch is
    /// `last`, at wall-clock time `now`; how many files it deleted.
    pub fn retain(
        &self,
        retention: &Retention,
        hosted: &[PartitionId],
        last: Epoch,
        now: std::time::SystemTime,
    ) -> Result<usize> {
        let segments = self.segments()?;
        let mut cut = Epoch(0);
        if let Some(epochs) = retention.epochs {
            cut = cut.max(Epoch(last.0.saturating_sub(epochs)));
        }
        if let Some(bytes) = retention.bytes {
            // The oldest epochs go until what is left fits.
            let checkpoints = self.checkpoints()?;
            let mut left: u64 = segments.iter().map(|s| s.bytes).sum::<u64>()
                + checkpoints.iter().map(|c| c.bytes).sum::<u64>();
            let mut files: Vec<(Epoch, u64)> = segments.iter().map(|s| (s.last, s.bytes)).collect();
            files.extend(checkpoints.iter().map(|c| (c.epoch, c.bytes)));
            files.sort();
            for (epoch, size) in files {
                if left <= bytes {
                    break;
                }
                left = left.saturating_sub(size);
                cut = cut.max(epoch);
            }
        }
        if let Some(secs) = retention.secs {
            let before = now - std::time::Duration::from_secs(secs);
            for segment in &segments {
                let written = fs::metadata(&segment.path).and_then(|m| m.modified());
                if written.is_ok_and(|t| t < before) {
                    cut = cut.max(segment.last);
                }
            }
        }
        match cut {
            Epoch(0) => Ok(0),
            cut => self.retain_after(cut, hosted),
        }
    }

    fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// Writes partition `partition`'s `rows` after `epoch` as a checkpoint, durably.
    pub fn write_checkpoint(
        &self,
        partition: PartitionId,
        epoch: Epoch,
        rows: &[(Key, Value)],
    ) -> Result<CheckpointFile> {
        let rows = rows.iter().map(|(k, v)| Ok((k.as_bytes(), v)));
        Ok(self
            .write_checkpoint_from(partition, epoch, rows, &mut Pacer::unlimited())?
            .0)
    }

    /// Writes the rows `rows` yields as partition `partition`'s checkpoint after `epoch`,
    /// durably, a frame at a time: it holds one frame of rows
    /// ([`format::CHECKPOINT_FRAME_BYTES`]), whatever the partition's size, reads them no
    /// faster than `pacer` allows, and syncs the file every [`CHECKPOINT_SYNC_BYTES`] so
    /// that the last sync is short. The file, and how many rows it holds.
    pub fn write_checkpoint_from<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        partition: PartitionId,
        epoch: Epoch,
        rows: impl Iterator<Item = Result<(K, V)>>,
        pacer: &mut Pacer,
    ) -> Result<(CheckpointFile, u64)> {
        let dir = self
            .checkpoints_dir()
            .join(format::checkpoint_dir_name(epoch));
        let name = format::checkpoint_file_name(partition);
        let mut count = 0;
        let (path, bytes) = write_durably_with(&dir, &name, |out| {
            let (mut encoder, head) =
                format::CheckpointEncoder::new(partition, epoch, format::CHECKPOINT_FRAME_BYTES);
            out.write_all(&head)?;
            let (mut raw, mut unsynced) = (0, 0);
            for row in rows {
                let (key, value) = row?;
                let (key, value) = (key.as_ref(), value.as_ref());
                raw += (key.len() + value.len()) as u64;
                if let Some(frame) = encoder.push(key, value) {
                    out.write_all(&frame)?;
                    unsynced += frame.len() as u64;
                    if unsynced >= CHECKPOINT_SYNC_BYTES {
                        out.sync()?;
                        unsynced = 0;
                    }
                    pacer.pace(std::mem::take(&mut raw));
                }
            }
            count = encoder.rows();
            out.write_all(&encoder.finish())?;
            Ok(())
        })?;
        let file = CheckpointFile {
            epoch,
            partition,
            bytes,
            path,
        };
        Ok((file, count))
    }

    /// Every checkpoint file, by epoch, then partition.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointFile>> {
        let mut files = Vec::new();
        for (epoch_dir, name) in listing(&self.checkpoints_dir())? {
            let Some(epoch) = format::parse_checkpoint_dir_name(&name) else {
                continue;
            };
            for (path, name) in listing(&epoch_dir)? {
                if let Some(partition) = format::parse_checkpoint_file_name(&name) {
                    let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    files.push(CheckpointFile {
                        epoch,
                        partition,
                        bytes,
                        path,
                    });
                }
            }
        }
        files.sort_by_key(|c| (c.epoch, c.partition));
        Ok(files)
    }

    /// The rows of a checkpoint, checked against its hash and its name.
    pub fn read_checkpoint(&self, file: &CheckpointFile) -> Result<Vec<(Key, Value)>> {
        let path = &file.path;
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        format::decode_checkpoint(&bytes, file.partition, file.epoch)
            .map_err(|why| anyhow!("checkpoint {} is corrupt: {why}", path.display()))
    }

    /// The last epoch at or before `at` with a readable checkpoint of every one of
    /// `partitions`, and their rows by partition; an unreadable file is named on stderr
    /// and the next older epoch tried.
    pub fn complete_checkpoint(
        &self,
        partitions: u32,
        at: Epoch,
    ) -> Result<Option<(Epoch, Vec<Rows>)>> {
        let files = self.checkpoints()?;
        let index: Vec<(Epoch, PartitionId)> =
            files.iter().map(|f| (f.epoch, f.partition)).collect();
        let read = |epoch, partition| {
            let file = files
                .iter()
                .find(|f| (f.epoch, f.partition) == (epoch, partition))
                .expect("a complete epoch has every partition's file");
            self.read_checkpoint(file)
        };
        let warn = |e: anyhow::Error| eprintln!("warning: {e:#}; trying an older checkpoint");
        Ok(format::readable_checkpoints(
            &index, partitions, at, read, warn,
        ))
    }
}

/// Whether a checkpoint file's content matches its hash. The framed formats keep the hash
/// of everything before it in their last 32 bytes, checked while streaming the file; the
/// first format is decoded whole.
fn checkpoint_reads_back(file: &CheckpointFile) -> Result<bool> {
    use std::io::Read;
    let path = &file.path;
    let mut reader = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 8];
    if reader.read_exact(&mut magic).is_err() {
        return Ok(false);
    }
    if magic != *format::CHECKPOINT_BINARY_MAGIC && magic != *format::CHECKPOINT_FRAMED_MAGIC {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(format::decode_checkpoint(&bytes, file.partition, file.epoch).is_ok());
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&magic);
    // The last 32 bytes read so far are held back: they may be the hash.
    let mut tail: Vec<u8> = Vec::with_capacity(32);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut chunk)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 32 {
            let hashed = tail.len() - 32;
            hasher.update(&tail[..hashed]);
            tail.drain(..hashed);
        }
    }
    Ok(tail.len() == 32 && hasher.finalize().as_bytes()[..] == tail[..])
}

/// The entries of `dir` with their names; none if it does not exist.
fn listing(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let items = match fs::read_dir(dir) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut found = Vec::new();
    for item in items {
        let item = item.with_context(|| format!("listing {}", dir.display()))?;
        if let Some(name) = item.file_name().to_str() {
            found.push((item.path(), name.to_owned()));
        }
    }
    Ok(found)
}

/// Writes `bytes` as `dir/name`: to a temporary name, synced, renamed, and the directory
/// synced. The path.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    Ok(write_durably_with(dir, name, |out| Ok(out.write_all(bytes)?))?.0)
}

/// A checkpoint writer syncs its file each time it wrote this much: a sync of a whole
/// large partition at the end would hold the disk for seconds, and every fsync of the
/// pipeline (the log's, the stores') would wait behind it.
pub const CHECKPOINT_SYNC_BYTES: u64 = 32 << 20;

/// Keeps a writer at or below a rate, by sleeping (it runs on a blocking thread).
pub struct Pacer {
    bytes_per_sec: u64,
    began: std::time::Instant,
    bytes: u64,
}

impl Pacer {
    /// A pacer of `mib_per_sec` MiB per second; 0: no limit.
    pub fn new(mib_per_sec: u64) -> Pacer {
        Pacer {
            bytes_per_sec: mib_per_sec.saturating_mul(1 << 20),
            #[allow(clippy::disallowed_methods)] // pacing is about the wall clock
            began: std::time::Instant::now(),
            bytes: 0,
        }
    }

    /// A pacer that never waits.
    pub fn unlimited() -> Pacer {
        Pacer::new(0)
    }

    /// Counts `bytes` more and sleeps until they are due at the pacer's rate.
    pub fn pace(&mut self, bytes: u64) {
        let wait = self.wait(bytes, self.began.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Counts `bytes` more: how long to wait, `elapsed` after the pacer began, until
    /// every byte counted is due.
    fn wait(&mut self, bytes: u64, elapsed: std::time::Duration) -> std::time::Duration {
        self.bytes += bytes;
        if self.bytes_per_sec == 0 {
            return std::time::Duration::ZERO;
        }
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        due.saturating_sub(elapsed)
    }
}

/// Writes what `write` writes as `dir/name`, as [`write_durably`] does. The path and the
/// size written.
fn write_durably_with(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut Counted<std::io::BufWriter<fs::File>>) -> Result<()>,
) -> Result<(PathBuf, u64)> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    // Named for this process: nodes that share an archive may write the same file at once.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = Counted {
        inner: std::io::BufWriter::new(file),
        bytes: 0,
    };
    write(&mut out).with_context(|| format!("writing {}", tmp.display()))?;
    let bytes = out.bytes;
    out.inner
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok((path, bytes))
}

/// A writer that counts the bytes through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl Counted<std::io::BufWriter<fs::File>> {
    /// Writes out what is buffered and syncs the file's data so far.
    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.flush()?;
        self.inner.get_ref().sync_data()
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The epoch ranges `segments` (in [`Archive::segments`] order) cover, merged.
pub fn ranges(segments: &[Segment]) -> Vec<(Epoch, Epoch)> {
    let mut ranges: Vec<(Epoch, Epoch)> = Vec::new();
    for s in segments {
        match ranges.last_mut() {
            Some((_, last)) if s.first.0 <= last.0 + 1 => *last = (*last).max(s.last),
            _ => ranges.push((s.first, s.last)),
        }
    }
    ranges
}

/// The ranges `segments` cover, merged, e.g. "epochs 1..=2048, 3001..=4000".
pub fn describe(segments: &[Segment]) -> String {
    let ranges = ranges(segments);
    if ranges.is_empty() {
        return "no epochs".into();
    }
    let ranges: Vec<String> = ranges.iter().map(|(f, l)| format!("{f}..={l}")).collect();
    format!("epochs {}", ranges.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{LOG_FORMAT_VERSION, Term};

    fn entries(first: u64, last: u64) -> Vec<LogEntry> {
        (first..=last)
            .map(|e| LogEntry {
                term: Term(1),
                batch: Arc::new(Batch {
                    version: LOG_FORMAT_VERSION,
                    epoch: Epoch(e),
                    txns: Vec::new(),
                }),
            })
            .collect()
    }

    #[test]
    fn segments_round_trip_overlap_and_name_their_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::new(dir.path());
        assert!(archive.segments().unwrap().is_empty());
        archive.write_segment(&entries(1, 10)).unwrap();
        // Archived again, longer, as after a crash between archive and compaction.
        archive.write_segment(&entries(1, 14)).unwrap();
        archive.write_segment(&entries(15, 20)).unwrap();
        archive.write_segment(&entries(31, 40)).unwrap();
        // The first, torn (by a disk that lied about its sync): its epochs are read from
        // the one archived again.
        let torn = archive.segments().unwrap()[0].clone();
        assert_eq!((torn.first, torn.last), (Epoch(1), Epoch(10)));
        let bytes = fs::read(&torn.path).unwrap();
        fs::write(&torn.path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(archive.read_segment(&torn).is_err());
        let epochs: Vec<u64> = archive
            .batches(Epoch(3), Epoch(20))
            .unwrap()
            .iter()
            .map(|b| b.epoch.0)
            .collect();
        assert_eq!(epochs, (3..=20).collect::<Vec<_>>());
        let gap = archive
            .batches(Epoch(1), Epoch(35))
            .unwrap_err()
            .to_string();
        assert!(gap.contains("holds epoch 21"), "{gap}");
        assert!(gap.contains("torn or altered"), "{gap}");
        assert!(gap.contains("epochs 1..=20, 31..=40"), "{gap}");
        assert_eq!(
            archive.retain_after(Epoch(14), &[PartitionId(0)]).unwrap(),
            2
        );
        assert_eq!(
            describe(&archive.segments().unwrap()),
            "epochs 15..=20, 31..=40"
        );
    }

    fn rows(n: u64) -> Vec<(Key, Value)> {
        (0..n)
            .map(|i| (Key::table("t").u64(i), i.to_le_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn checkpoints_round_trip_and_retention_keeps_what_replays_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::new(dir.path());
        assert_eq!(archive.complete_checkpoint(2, Epoch(100)).unwrap(), None);
        archive.write_segment(&entries(1, 10)).unwrap();
        archive.write_segment(&entries(11, 20)).unwrap();
        archive.write_segment(&entries(21, 30)).unwrap();
        for p in 0..2 {
            archive
                .write_checkpoint(PartitionId(p), Epoch(8), &rows(3))
                .unwrap();
        }
        // Epoch 16 has partition 0's only: not a place replay can start from.
        let file = archive
            .write_checkpoint(PartitionId(0), Epoch(16), &rows(5))
            .unwrap();
        assert_eq!(archive.read_checkpoint(&file).unwrap(), rows(5));
        let (epoch, files) = archive.complete_checkpoint(2, Epoch(30)).unwrap().unwrap();
        assert_eq!((epoch, files.len()), (Epoch(8), 2));
        assert_eq!(archive.complete_checkpoint(2, Epoch(7)).unwrap(), None);

        let left = |archive: &Archive| -> Vec<(u64, u32)> {
            let files = archive.checkpoints().unwrap();
            files.iter().map(|c| (c.epoch.0, c.partition.0)).collect()
        };
        // Keeping epochs after 25 keeps the last complete checkpoint (8, not 16, which
        // partition 1 lacks) and every segment after it: what is left replays.
        assert_eq!(
            archive
                .retain_after(Epoch(25), &[PartitionId(0), PartitionId(1)])
                .unwrap(),
            0
        );
        assert_eq!(describe(&archive.segments().unwrap()), "epochs 1..=30");
        assert_eq!(left(&archive), [(8, 0), (8, 1), (16, 0)]);
        // Once 16 is complete, it is the one kept.
        archive
            .write_checkpoint(PartitionId(1), Epoch(16), &rows(5))
            .unwrap();
        assert_eq!(
            archive
                .retain_after(Epoch(25), &[PartitionId(0), PartitionId(1)])
                .unwrap(),
            3
        );
        assert_eq!(describe(&archive.segments().unwrap()), "epochs 11..=30");
        assert_eq!(left(&archive), [(16, 0), (16, 1)]);

        // A checkpoint named for another partition than it holds is refused.
        let mut moved = file.clone();
        moved.partition = PartitionId(1);
        let error = archive.read_checkpoint(&moved).unwrap_err().to_string();
        assert!(error.contains("not what its name says"), "{error}");
    }

    #[test]
    fn a_torn_checkpoint_sends_replay_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::new(dir.path());
        for (epoch, n) in [(8, 3), (16, 5)] {
            for p in 0..2 {
                archive
                    .write_checkpoint(PartitionId(p), Epoch(epoch), &rows(n))
                    .unwrap();
            }
        }
        let newest = archive.checkpoints().unwrap().pop().unwrap();
        assert_eq!(
            (newest.epoch, newest.partition),
            (Epoch(16), PartitionId(1))
        );
        let bytes = fs::read(&newest.path).unwrap();
        fs::write(&newest.path, &bytes[..bytes.len() / 2]).unwrap();
        let (epoch, partitions) = archive.complete_checkpoint(2, Epoch(20)).unwrap().unwrap();
        assert_eq!(epoch, Epoch(8));
        assert_eq!(partitions, vec![rows(3), rows(3)]);
        // Retention keeps the set replay starts from, not the torn one's.
        assert_eq!(
            archive
                .retain_after(Epoch(20), &[PartitionId(0), PartitionId(1)])
                .unwrap(),
            0
        );
        assert_eq!(archive.checkpoints().unwrap().len(), 4);
        // A whole file reads back, streamed; a torn one, an empty one and one altered
        // under a valid length do not.
        let whole = archive.checkpoints().unwrap()[0].clone();
        assert!(checkpoint_reads_back(&whole).unwrap());
        assert!(!checkpoint_reads_back(&newest).unwrap());
        fs::write(&newest.path, b"").unwrap();
        assert!(!checkpoint_reads_back(&newest).unwrap());
        let mut altered = bytes.clone();
        altered[bytes.len() / 2] ^= 1;
        fs::write(&newest.path, &altered).unwrap();
        assert!(!checkpoint_reads_back(&newest).unwrap());
        fs::write(&newest.path, &bytes).unwrap();
        assert!(checkpoint_reads_back(&newest).unwrap());
        assert_eq!(
            archive
                .retain_after(Epoch(20), &[PartitionId(0), PartitionId(1)])
                .unwrap(),
            2
        );
    }

    #[test]
    fn the_pacer_holds_a_writer_to_its_rate() {
        use std::time::Duration;
        let mib = 1 << 20;
        let mut pacer = Pacer::new(4);
        // 2 MiB at 4 MiB/s are due 0.5 s after the start.
        assert_eq!(
            pacer.wait(2 * mib, Duration::ZERO),
            Duration::from_millis(500)
        );
        assert_eq!(
            pacer.wait(0, Duration::from_millis(200)),
            Duration::from_millis(300)
        );
        // A writer already behind its rate does not wait.
        assert_eq!(pacer.wait(mib, Duration::from_secs(2)), Duration::ZERO);
        // The rate holds over the whole write: 4 MiB counted are due at 1 s.
        assert_eq!(
            pacer.wait(mib, Duration::from_millis(900)),
            Duration::from_millis(100)
        );
        let mut unlimited = Pacer::unlimited();
        assert_eq!(unlimited.wait(1 << 40, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_checkpoint_larger_than_its_sync_step_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::new(dir.path());
        // Incompressible values, so that the file passes several sync steps.
        let mut seed = 1u64;
        let rows: Vec<(Key, Value)> = (0..80)
            .map(|i| {
                let value: Vec<u8> = (0..1 << 20)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (seed >> 56) as u8
                    })
                    .collect();
                (Key::table("t").u64(i), value)
            })
            .collect();
        let file = archive
            .write_checkpoint(PartitionId(0), Epoch(8), &rows)
            .unwrap();
        assert!(
            file.bytes > 2 * CHECKPOINT_SYNC_BYTES,
            "{} bytes",
            file.bytes
        );
        assert_eq!(archive.read_checkpoint(&file).unwrap(), rows);
    }

    #[test]
    fn retention_by_epochs_size_and_age_cuts_at_the_strictest() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::new(dir.path());
        let mut sizes = Vec::new();
        for first in [1, 11, 21, 31] {
            sizes.push(
                archive
                    .write_segment(&entries(first, first + 9))
                    .unwrap()
                    .bytes,
            );
        }
        // The files' times are on the wall clock.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        let left = |archive: &Archive| describe(&archive.segments().unwrap());
        // Nothing set, or limits that hold: nothing goes.
        assert_eq!(
            archive
                .retain(&Retention::default(), &[PartitionId(0)], Epoch(40), now)
                .unwrap(),
            0
        );
        let roomy = Retention {
            epochs: Some(100),
            bytes: Some(1 << 30),
            secs: Some(3_600),
        };
        assert_eq!(
            archive
                .retain(&roomy, &[PartitionId(0)], Epoch(40), now)
                .unwrap(),
            0
        );
        // By size: the oldest segments go until the rest fits.
        let two = Retention {
            bytes: Some(sizes[2] + sizes[3]),
            ..Retention::default()
        };
        assert_eq!(
            archive
                .retain(&two, &[PartitionId(0)], Epoch(40), now)
                .unwrap(),
            2
        );
        assert_eq!(left(&archive), "epochs 21..=40");
        // By age: a segment written over an hour ago goes.
        let old = archive.segments().unwrap()[0].path.clone();
        let an_hour_ago = now - std::time::Duration::from_secs(3_700);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let hour = Retention {
            secs: Some(3_600),
            ..Retention::default()
        };
        assert_eq!(
            archive
                .retain(&hour, &[PartitionId(0)], Epoch(40), now)
                .unwrap(),
            1
        );
        assert_eq!(left(&archive), "epochs 31..=40");
        // By epochs, the strictest of the three.
        let five = Retention {
            epochs: Some(5),
            ..roomy
        };
        assert_eq!(
            archive
                .retain(&five, &[PartitionId(0)], Epoch(40), now)
                .unwrap(),
            0
        );
        assert_eq!(
            archive
                .retain(&five, &[PartitionId(0)], Epoch(45), now)
                .unwrap(),
            1
        );
        assert_eq!(left(&archive), "no epochs");
    }

    #[test]
    fn a_torn_segment_fails_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::new(dir.path());
        let segment = archive.write_segment(&entries(1, 5)).unwrap();
        let mut bytes = fs::read(&segment.path).unwrap();
        bytes.truncate(bytes.len() - 3);
        fs::write(&segment.path, bytes).unwrap();
        let error = archive.read_segment(&segment).unwrap_err().to_string();
        assert!(error.contains("does not match its hash"), "{error}");
    }
}
