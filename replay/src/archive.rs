//! The archive's file formats and reading rules, shared by the node (files in a directory)
//! and the simulator (files in memory, torn by its crashes): which bytes a segment or a
//! checkpoint file holds, how its name indexes it, which segment each epoch is read from
//! and which checkpoints a re-execution starts from. Where the bytes live is the caller's.
//!
//! A segment is [`SEGMENT_MAGIC`], a 32-byte BLAKE3 hash of the rest, then the
//! LZ4-compressed MessagePack of its consecutive [`LogEntry`]s; it is named by its first
//! and last epoch ([`segment_name`]). A checkpoint file is written in frames
//! ([`CheckpointEncoder`]), so that a writer never holds a whole partition, and ends with a
//! hash (the first format, [`CHECKPOINT_MAGIC`], a hash then the whole partition
//! compressed, and the second, [`CHECKPOINT_FRAMED_MAGIC`], framed with each value an
//! array of bytes, are still read). A torn or altered file fails its
//! hash; readers then take its epochs from another segment (segments may overlap: a
//! compaction archived but not applied before a crash is archived again, perhaps longer)
//! and start from an older checkpoint.

use detflow_protocol::mailbox::outbox_partition;
use detflow_protocol::{Batch, Epoch, Key, LogEntry, PartitionId, Value, codec};
use std::sync::Arc;

/// The first bytes of every segment file: the format and its version.
pub const SEGMENT_MAGIC: &[u8; 8] = b"DFLOGSG1";

/// The first bytes of every checkpoint file: the format and its version.
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"DFCKPT01";

/// The file name of the segment holding epochs `first..=last`: zero-padded, so that a
/// listing in name order is the index in epoch order.
pub fn segment_name(first: Epoch, last: Epoch) -> String {
    format!("{:020}-{:020}.seg", first.0, last.0)
}

/// The epochs a segment file name says it holds; none for any other name (temporary
/// files included).
pub fn parse_segment_name(name: &str) -> Option<(Epoch, Epoch)> {
    let (first, last) = name.strip_suffix(".seg")?.split_once('-')?;
    if first.len() != 20 || last.len() != 20 {
        return None;
    }
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first >= 1 && first <= last).then_some((Epoch(first), Epoch(last)))
}

/// The directory name of the checkpoints after `epoch`.
pub fn checkpoint_dir_name(epoch: Epoch) -> String {
    format!("{:020}", epoch.0)
}

/// The epoch a checkpoint directory name stands for.
pub fn parse_checkpoint_dir_name(name: &str) -> Option<Epoch> {
    (name.len() == 20).then(|| name.parse().ok().map(Epoch))?
}

/// The file name of partition `partition`'s checkpoint in its epoch's directory.
pub fn checkpoint_file_name(partition: PartitionId) -> String {
    format!("partition-{}.ckpt", partition.0)
}

/// The partition a checkpoint file name stands for.
pub fn parse_checkpoint_file_name(name: &str) -> Option<PartitionId> {
    let n = name.strip_prefix("partition-")?.strip_suffix(".ckpt")?;
    n.parse().ok().map(PartitionId)
}

/// The bytes of a segment holding `entries`; an error if they are empty or not
/// consecutive epochs.
pub fn encode_segment(entries: &[LogEntry]) -> Result<Vec<u8>, String> {
    let Some(first) = entries.first().map(LogEntry::epoch) else {
        return Err("an empty segment".into());
    };
    if let Some((i, e)) = entries
        .iter()
        .enumerate()
        .find(|(i, e)| e.epoch().0 != first.0 + *i as u64)
    {
        return Err(format!(
            "segment entries are not consecutive at epoch {} (entry {i})",
            e.epoch()
        ));
    }
    Ok(seal(SEGMENT_MAGIC, &codec::encode(entries)))
}

/// The entries of a segment file's `bytes`, checked against its hash and against the
/// epochs `first..=last` its name says; the error says why not.
pub fn decode_segment(bytes: &[u8], first: Epoch, last: Epoch) -> Result<Vec<LogEntry>, String> {
    let raw = open(bytes, SEGMENT_MAGIC, "segment")?;
    let entries: Vec<LogEntry> =
        codec::decode(&raw).map_err(|e| format!("does not decode: {e}"))?;
    let ends = (
        entries.first().map(LogEntry::epoch),
        entries.last().map(LogEntry::epoch),
    );
    if ends != (Some(first), Some(last))
        || entries
            .iter()
            .enumerate()
            .any(|(i, e)| e.epoch().0 != first.0 + i as u64)
    {
        return Err("its epochs are not the ones its name says".into());
    }
    Ok(entries)
}

/// A partition's rows, as a checkpoint holds them.
pub type Rows = Vec<(Key, Value)>;

/// The first bytes of a checkpoint file of the second format: framed, each value a
/// MessagePack array of its bytes (still read, no longer written).
pub const CHECKPOINT_FRAMED_MAGIC: &[u8; 8] = b"DFCKPT02";

/// The first bytes of a checkpoint file written by [`CheckpointEncoder`]: framed, keys and
/// values MessagePack binaries.
pub const CHECKPOINT_BINARY_MAGIC: &[u8; 8] = b"DFCKPT03";

/// Rows a checkpoint frame gathers, in encoded bytes, before it is compressed and written:
/// what a writer holds at a time, whatever the partition's size.
pub const CHECKPOINT_FRAME_BYTES: usize = 1 << 20;

/// Writes a checkpoint a frame at a time, so that the writer holds one frame of rows, not
/// the partition: [`CHECKPOINT_BINARY_MAGIC`]; frames (a 4-byte big-endian length, then
/// LZ4-compressed MessagePack), the first holding the partition and epoch, the next ones
/// an array of rows, each a `[key, value]` pair of binaries; an empty frame; then the
/// BLAKE3 hash of everything before it. Rows are encoded from the bytes as they come, with
/// no copy into keys and values first: a checkpoint reads a whole partition.
pub struct CheckpointEncoder {
    hasher: blake3::Hasher,
    /// The frame's rows, encoded.
    frame: Vec<u8>,
    frame_rows: u32,
    frame_limit: usize,
    rows: u64,
}

impl CheckpointEncoder {
    /// A checkpoint of partition `partition` after `epoch`, with frames of about
    /// `frame_limit` bytes of rows, and its first bytes.
    pub fn new(partition: PartitionId, epoch: Epoch, frame_limit: usize) -> (Self, Vec<u8>) {
        let mut encoder = CheckpointEncoder {
            hasher: blake3::Hasher::new(),
            frame: Vec::new(),
            frame_rows: 0,
            frame_limit: frame_limit.max(1),
            rows: 0,
        };
        let mut bytes = CHECKPOINT_BINARY_MAGIC.to_vec();
        bytes.extend(frame(&codec::encode(&(partition.0, epoch))));
        encoder.hasher.update(&bytes);
        (encoder, bytes)
    }

    /// Adds a row (a key's bytes and its value); the bytes to write next, when a frame
    /// filled.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        // Pushing into a Vec cannot fail.
        let _ = rmp::encode::write_array_len(&mut self.frame, 2);
        for bytes in [key, value] {
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let _ = rmp::encode::write_bin_len(&mut self.frame, len);
            self.frame.extend_from_slice(bytes);
        }
        self.frame_rows += 1;
        self.rows += 1;
        (self.frame.len() >= self.frame_limit).then(|| self.flush())
    }

    /// The last bytes: the rows not yet written, the empty frame and the hash.
    pub fn finish(mut self) -> Vec<u8> {
        let mut bytes = self.flush();
        let end = 0u32.to_be_bytes();
        self.hasher.update(&end);
        bytes.extend_from_slice(&end);
        bytes.extend_from_slice(self.hasher.finalize().as_bytes());
        bytes
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn flush(&mut self) -> Vec<u8> {
        if self.frame_rows == 0 {
            return Vec::new();
        }
        let mut raw = Vec::with_capacity(5 + self.frame.len());
        let _ = rmp::encode::write_array_len(&mut raw, self.frame_rows);
        raw.extend_from_slice(&self.frame);
        self.frame.clear();
        self.frame_rows = 0;
        let bytes = frame(&raw);
        self.hasher.update(&bytes);
        bytes
    }
}

/// One frame of `raw`: its compressed length, then it compressed.
fn frame(raw: &[u8]) -> Vec<u8> {
    let body = lz4_flex::compress_prepend_size(raw);
    let len = u32::try_from(body.len()).expect("a frame is far below 4 GiB");
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// The bytes of partition `partition`'s checkpoint of `rows` after `epoch`, framed every
/// `frame_limit` bytes of rows.
pub fn encode_checkpoint(
    partition: PartitionId,
    epoch: Epoch,
    rows: &[(Key, Value)],
    frame_limit: usize,
) -> Vec<u8> {
    let (mut encoder, mut bytes) = CheckpointEncoder::new(partition, epoch, frame_limit);
    for (key, value) in rows {
        if let Some(more) = encoder.push(key.as_bytes(), value) {
            bytes.extend(more);
        }
    }
    bytes.extend(encoder.finish());
    bytes
}

/// The rows of a checkpoint file's `bytes` (framed, or in one piece as the first format
/// wrote them), checked against its hash and against the partition and epoch its name
/// says; the error says why not.
pub fn decode_checkpoint(
    bytes: &[u8],
    partition: PartitionId,
    epoch: Epoch,
) -> Result<Vec<(Key, Value)>, String> {
    let (found, at, rows) = match bytes.get(..8) {
        Some(magic) if magic == CHECKPOINT_BINARY_MAGIC => decode_framed(bytes, true)?,
        Some(magic) if magic == CHECKPOINT_FRAMED_MAGIC => decode_framed(bytes, false)?,
        _ => {
            let raw = open(bytes, CHECKPOINT_MAGIC, "checkpoint")?;
            codec::decode(&raw).map_err(|e| format!("does not decode: {e}"))?
        }
    };
    if (PartitionId(found), at) != (partition, epoch) {
        return Err(format!(
            "it holds partition {found} after epoch {at}, not what its name says"
        ));
    }
    Ok(rows)
}

/// A framed checkpoint's partition, epoch and rows; `binary`: its values are MessagePack
/// binaries (the third format), not arrays of bytes.
fn decode_framed(bytes: &[u8], binary: bool) -> Result<(u32, Epoch, Rows), String> {
    let Some(split) = bytes.len().checked_sub(32).filter(|n| *n >= 8) else {
        return Err("too short for a checkpoint (torn?)".into());
    };
    let (content, hash) = bytes.split_at(split);
    if blake3::hash(content).as_bytes() != hash {
        return Err("its content does not match its hash (torn or altered)".into());
    }
    let mut at = 8;
    let mut frames = Vec::new();
    loop {
        let len = content
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or("a frame is cut short")?;
        at += 4;
        if len == 0 {
            break;
        }
        let body = content.get(at..at + len).ok_or("a frame is cut short")?;
        at += len;
        frames.push(
            lz4_flex::decompress_size_prepended(body)
                .map_err(|e| format!("a frame does not decompress: {e}"))?,
        );
    }
    if at != content.len() {
        return Err("bytes after its last frame".into());
    }
    let mut frames = frames.into_iter();
    let header = frames.next().ok_or("no header frame")?;
    let (partition, epoch): (u32, Epoch) =
        codec::decode(&header).map_err(|e| format!("its header does not decode: {e}"))?;
    let mut rows = Vec::new();
    let undecodable = |e| format!("a frame does not decode: {e}");
    for raw in frames {
        if binary {
            let more: Vec<(Key, serde_bytes::ByteBuf)> =
                codec::decode(&raw).map_err(undecodable)?;
            rows.extend(more.into_iter().map(|(k, v)| (k, v.into_vec())));
        } else {
            let more: Vec<(Key, Value)> = codec::decode(&raw).map_err(undecodable)?;
            rows.extend(more);
        }
    }
    Ok((partition, epoch, rows))
}

/// The rows of a checkpoint a re-execution starts from: user rows and outboxes, not the
/// executor's own bookkeeping (which the serial executor does not keep).
pub fn replay_rows(rows: Vec<(Key, Value)>) -> impl Iterator<Item = (Key, Value)> {
    rows.into_iter()
        .filter(|(key, _)| !key.is_system() || outbox_partition(key).is_some())
}

/// `magic`, the BLAKE3 hash of the compressed `raw`, then the compressed `raw`.
fn seal(magic: &[u8; 8], raw: &[u8]) -> Vec<u8> {
    let body = lz4_flex::compress_prepend_size(raw);
    let mut bytes = Vec::with_capacity(8 + 32 + body.len());
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(blake3::hash(&body).as_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// The decompressed content of `bytes` that [`seal`] wrote, checked against its magic and
/// hash; `what` names the kind of file in errors.
fn open(bytes: &[u8], magic: &[u8; 8], what: &str) -> Result<Vec<u8>, String> {
    if bytes.len() < magic.len() + 32 || &bytes[..8] != magic {
        return Err(format!("not a detflow {what} (bad magic)"));
    }
    let (hash, body) = bytes[8..].split_at(32);
    if blake3::hash(body).as_bytes() != hash {
        return Err("its content does not match its hash (torn or altered)".into());
    }
    lz4_flex::decompress_size_prepended(body).map_err(|e| format!("does not decompress: {e}"))
}

/// Why an archive cannot give every epoch asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no readable segment holds epoch {epoch}{}", unreadable_note(.unreadable))]
pub struct Gap {
    /// The first epoch missing.
    pub epoch: Epoch,
    /// The segments that held it (or earlier epochs) but could not be read, and why.
    pub unreadable: Vec<String>,
}

fn unreadable_note(unreadable: &[String]) -> String {
    match unreadable.is_empty() {
        true => String::new(),
        false => format!(" (unreadable: {})", unreadable.join("; ")),
    }
}

/// The batches of epochs `from..=to` in order, from `segments` (their epoch ranges, sorted
/// by first epoch then last): each epoch from the first segment holding it that `read`
/// (given a segment's index) can read. An unreadable segment is passed over, so a torn
/// segment archived again does not hide its epochs; the error names the first epoch no
/// readable segment holds.
pub fn gather<E: std::fmt::Display>(
    segments: &[(Epoch, Epoch)],
    from: Epoch,
    to: Epoch,
    read: impl FnMut(usize) -> Result<Vec<LogEntry>, E>,
) -> Result<Vec<Arc<Batch>>, Gap> {
    match gather_prefix(segments, from, to, read) {
        (batches, None) => Ok(batches),
        (_, Some(gap)) => Err(gap),
    }
}

/// As [`gather`], but the batches before the first gap too: what the archive holds from
/// `from` on, read without a gap, and the gap if it stops before `to`.
pub fn gather_prefix<E: std::fmt::Display>(
    segments: &[(Epoch, Epoch)],
    from: Epoch,
    to: Epoch,
    mut read: impl FnMut(usize) -> Result<Vec<LogEntry>, E>,
) -> (Vec<Arc<Batch>>, Option<Gap>) {
    let mut batches = Vec::new();
    let mut next = from;
    let mut unreadable = Vec::new();
    for (i, (first, last)) in segments.iter().enumerate() {
        if next > to || *first > next {
            break;
        }
        if *last < next {
            continue;
        }
        match read(i) {
            Ok(entries) => {
                for entry in entries {
                    if entry.epoch() == next && next <= to {
                        batches.push(entry.batch);
                        next = next.next();
                    }
                }
            }
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    let gap = (next <= to).then_some(Gap {
        epoch: next,
        unreadable,
    });
    (batches, gap)
}

/// Where a re-execution to `at` starts: the last epoch at or before `at` at which every one
/// of `partitions` has a checkpoint among `files` (epoch, partition) that `read` can read,
/// and their rows by partition; an unreadable file sends it to the epoch before (`skipped`
/// hears why). None if no epoch has a readable set.
pub fn readable_checkpoints<E>(
    files: &[(Epoch, PartitionId)],
    partitions: u32,
    at: Epoch,
    mut read: impl FnMut(Epoch, PartitionId) -> Result<Rows, E>,
    mut skipped: impl FnMut(E),
) -> Option<(Epoch, Vec<Rows>)> {
    'epochs: for epoch in complete_checkpoints(files, partitions, at) {
        let mut rows = Vec::new();
        for p in (0..partitions).map(PartitionId) {
            match read(epoch, p) {
                Ok(file_rows) => rows.push(file_rows),
                Err(e) => {
                    skipped(e);
                    continue 'epochs;
                }
            }
        }
        return Some((epoch, rows));
    }
    None
}

/// Where an archive's retention may cut when its limits let go of everything through `at`:
/// the last epoch at or before `at` at which each partition the archive must serve has a
/// checkpoint among `files` (epoch, partition) that `reads_back`, so that what is kept
/// (that set and the log after it) replays on its own. None: nothing may go.
///
/// The partitions it must serve are `hosted` (those its node restores from it) and every
/// partition with a checkpoint in it: a node's own archive holds its partitions only, an
/// archive the cluster shares holds them all. An archive without any checkpoint is cut at
/// `at` by its owner, and then replays only from its first segment.
pub fn retention_cut(
    files: &[(Epoch, PartitionId)],
    hosted: &[PartitionId],
    at: Epoch,
    mut reads_back: impl FnMut(Epoch, PartitionId) -> bool,
) -> Option<Epoch> {
    let mut required: std::collections::BTreeSet<PartitionId> = hosted.iter().copied().collect();
    required.extend(files.iter().map(|(_, p)| *p));
    let mut by_epoch: std::collections::BTreeMap<Epoch, Vec<PartitionId>> = Default::default();
    for (epoch, partition) in files.iter().filter(|(e, _)| *e <= at) {
        by_epoch.entry(*epoch).or_default().push(*partition);
    }
    by_epoch.into_iter().rev().find_map(|(epoch, mut held)| {
        held.sort_unstable();
        held.dedup();
        let complete = required.iter().all(|p| held.binary_search(p).is_ok());
        (complete && required.iter().all(|p| reads_back(epoch, *p))).then_some(epoch)
    })
}

/// The epochs at or before `at` with a checkpoint of each of the `partitions` among
/// `files` (epoch, partition), newest first: where a re-execution to `at` may start, in
/// the order to try them (an unreadable file sends it to the next).
pub fn complete_checkpoints(
    files: &[(Epoch, PartitionId)],
    partitions: u32,
    at: Epoch,
) -> Vec<Epoch> {
    let mut by_epoch: std::collections::BTreeMap<Epoch, std::collections::BTreeSet<u32>> =
        Default::default();
    for (epoch, partition) in files {
        if *epoch <= at && partition.0 < partitions {
            by_epoch.entry(*epoch).or_default().insert(partition.0);
        }
    }
    by_epoch
        .into_iter()
        .rev()
        .filter(|(_, parts)| parts.len() == partitions as usize)
        .map(|(epoch, _)| epoch)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{LOG_FORMAT_VERSION, Term};

    /// Retention cuts where every partition the archive serves has a checkpoint that reads
    /// back: a node's own archive serves its partitions, a shared one every partition
    /// seen in it.
    #[test]
    fn retention_cuts_at_the_last_set_the_archive_can_replay_from() {
        let (p0, p1) = (PartitionId(0), PartitionId(1));
        let files = |list: &[(u64, u32)]| -> Vec<(Epoch, PartitionId)> {
            list.iter()
                .map(|(e, p)| (Epoch(*e), PartitionId(*p)))
                .collect()
        };
        let all = |_, _| true;
        // A node's own archive: its partition only.
        let own = files(&[(8, 0), (16, 0), (24, 0)]);
        assert_eq!(retention_cut(&own, &[p0], Epoch(20), all), Some(Epoch(16)));
        assert_eq!(retention_cut(&own, &[p0], Epoch(7), all), None);
        // A node hosting two partitions needs both; the newest set lacks one.
        let two = files(&[(8, 0), (8, 1), (16, 0)]);
        assert_eq!(
            retention_cut(&two, &[p0, p1], Epoch(20), all),
            Some(Epoch(8))
        );
        // A shared archive: the other node's partition counts once it has written there.
        assert_eq!(retention_cut(&two, &[p0], Epoch(20), all), Some(Epoch(8)));
        // A file that does not read back sends the cut to the set before.
        let torn = |e: Epoch, p: PartitionId| (e, p) != (Epoch(16), p1);
        let both = files(&[(8, 0), (8, 1), (16, 0), (16, 1)]);
        assert_eq!(
            retention_cut(&both, &[p0, p1], Epoch(20), all),
            Some(Epoch(16))
        );
        assert_eq!(
            retention_cut(&both, &[p0, p1], Epoch(20), torn),
            Some(Epoch(8))
        );
    }

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
    fn a_torn_segment_is_passed_over_for_one_archived_again() {
        let whole = encode_segment(&entries(1, 10)).unwrap();
        let torn = whole[..whole.len() / 2].to_vec();
        let files = [((Epoch(1), Epoch(6)), torn), ((Epoch(1), Epoch(10)), whole)];
        let ranges: Vec<_> = files.iter().map(|(r, _)| *r).collect();
        let read = |i: usize| {
            let ((first, last), bytes) = &files[i];
            decode_segment(bytes, *first, *last)
        };
        let epochs: Vec<u64> = gather(&ranges, Epoch(2), Epoch(9), read)
            .unwrap()
            .iter()
            .map(|b| b.epoch.0)
            .collect();
        assert_eq!(epochs, (2..=9).collect::<Vec<_>>());
        let gap = gather(&ranges, Epoch(2), Epoch(11), read).unwrap_err();
        assert_eq!(gap.epoch, Epoch(11));
        assert!(gap.unreadable[0].contains("torn or altered"), "{gap}");
    }

    #[test]
    fn checkpoints_in_frames_read_back_and_tearing_any_byte_is_seen() {
        let rows: Vec<(Key, Value)> = (0..200u64)
            .map(|i| (Key::table("t").u64(i), vec![i as u8; 40]))
            .collect();
        // Frames of about 1 KiB: twenty or so.
        let bytes = encode_checkpoint(PartitionId(2), Epoch(9), &rows, 1_000);
        assert_eq!(
            decode_checkpoint(&bytes, PartitionId(2), Epoch(9)),
            Ok(rows.clone())
        );
        let (mut encoder, _) = CheckpointEncoder::new(PartitionId(2), Epoch(9), 1_000);
        let frames = rows
            .iter()
            .filter_map(|(k, v)| encoder.push(k.as_bytes(), v))
            .count();
        assert!(frames >= 10, "{frames} frames");
        assert_eq!(encoder.rows(), 200);
        for cut in [
            0,
            7,
            8,
            30,
            bytes.len() / 2,
            bytes.len() - 33,
            bytes.len() - 1,
        ] {
            let torn = decode_checkpoint(&bytes[..cut], PartitionId(2), Epoch(9));
            assert!(torn.is_err(), "cut at {cut}");
        }
        let mut altered = bytes.clone();
        altered[bytes.len() / 3] ^= 1;
        assert!(decode_checkpoint(&altered, PartitionId(2), Epoch(9)).is_err());
        // The first format still reads.
        let old = seal(CHECKPOINT_MAGIC, &codec::encode(&(2u32, Epoch(9), &rows)));
        assert_eq!(
            decode_checkpoint(&old, PartitionId(2), Epoch(9)),
            Ok(rows.clone())
        );
        // So does the second: values as arrays of bytes, in two frames of rows.
        let mut second = CHECKPOINT_FRAMED_MAGIC.to_vec();
        second.extend(frame(&codec::encode(&(2u32, Epoch(9)))));
        for half in rows.chunks(100) {
            second.extend(frame(&codec::encode(half)));
        }
        second.extend(0u32.to_be_bytes());
        let hash = blake3::hash(&second);
        second.extend(hash.as_bytes());
        assert_eq!(
            decode_checkpoint(&second, PartitionId(2), Epoch(9)),
            Ok(rows)
        );
    }

    #[test]
    fn names_and_files_say_what_they_hold() {
        assert_eq!(
            parse_segment_name(&segment_name(Epoch(3), Epoch(9))),
            Some((Epoch(3), Epoch(9)))
        );
        assert_eq!(
            parse_segment_name(".00000000000000000001-x.seg.12.tmp"),
            None
        );
        let bytes = encode_segment(&entries(3, 9)).unwrap();
        assert!(decode_segment(&bytes, Epoch(3), Epoch(8)).is_err());
        assert!(encode_segment(&[entries(1, 1), entries(3, 3)].concat()).is_err());
        let rows = vec![(Key::table("t").u64(1), b"v".to_vec())];
        let ckpt = encode_checkpoint(PartitionId(1), Epoch(4), &rows, CHECKPOINT_FRAME_BYTES);
        assert_eq!(decode_checkpoint(&ckpt, PartitionId(1), Epoch(4)), Ok(rows));
        assert!(decode_checkpoint(&ckpt, PartitionId(0), Epoch(4)).is_err());
        let files = [
            (Epoch(4), PartitionId(0)),
            (Epoch(4), PartitionId(1)),
            (Epoch(8), PartitionId(1)),
            (Epoch(2), PartitionId(0)),
            (Epoch(2), PartitionId(1)),
        ];
        assert_eq!(
            complete_checkpoints(&files, 2, Epoch(9)),
            vec![Epoch(4), Epoch(2)]
        );
        assert_eq!(complete_checkpoints(&files, 2, Epoch(3)), vec![Epoch(2)]);
    }
}
