//! Remote reads in messages of bounded size.
//!
//! One participant's reads of one transaction can be large (a prefix scan, big values),
//! but every message must fit in a frame (16 MiB by default, DESIGN.md §10). The sender
//! splits its reads into chunks of at most `reads_bytes_max` encoded bytes each, numbered
//! `chunk` of `chunks`; the receiver runs the transaction once it holds every chunk of every
//! sender. A prefix scan may continue from one chunk into the next: its rows arrive in key
//! order, chunk after chunk, under the same prefix.
//!
//! Sizes are upper bounds on the MessagePack encoding, computed without encoding: a chunk
//! that holds more than one entry never exceeds the bound. A single entry larger than the
//! bound travels alone; with keys of at most 4 KiB and values of at most 4 MiB (which serde
//! writes in at most 8 MiB + 5 bytes), it still fits in a 16 MiB frame.

use detflow_protocol::message::RemoteReads;
use detflow_protocol::{Key, PartitionId, Position, Value};

/// The default bound on one remote-read message, in encoded bytes: 8 MiB, half the
/// default frame limit, so that a chunk holding one maximal row also fits in a frame.
pub const READS_BYTES_MAX_DEFAULT: usize = 8 << 20;

/// Room kept in every message for what is not an entry: the message's tag, addresses,
/// position, chunk numbers and list headers (under 100 bytes even with field names).
const MESSAGE_OVERHEAD_BYTES: usize = 256;

/// The smallest bound [`Chunker`] accepts: room for the overhead and some entries.
pub(crate) const READS_BYTES_MIN: usize = 2 * MESSAGE_OVERHEAD_BYTES;

/// An upper bound on the encoded size of a key: MessagePack `bin`, a header of at most
/// five bytes and the key's bytes.
fn key_bytes(key: &Key) -> usize {
    5 + key.as_bytes().len()
}

/// An upper bound on the encoded size of a value. Serde writes a `Vec<u8>` as an array of
/// integers (one byte each below 0x80, two from 0x80 on) after a header of at most five
/// bytes; as `bin` it would be smaller still.
fn value_bytes(value: &[u8]) -> usize {
    5 + value.len() + value.iter().filter(|b| **b >= 0x80).count()
}

/// Builds the chunks of one participant's reads of one transaction.
pub(crate) struct Chunker {
    position: Position,
    from: PartitionId,
    /// What the entries of one chunk may take.
    budget: usize,
    done: Vec<RemoteReads>,
    current: RemoteReads,
    /// The bound on the entries of `current` so far.
    bytes: usize,
    /// Entries of `current`: exact keys, prefix rows, and prefixes sent without rows.
    entries: usize,
}

impl Chunker {
    /// Chunks of at most `reads_bytes_max` encoded bytes (at least [`READS_BYTES_MIN`]).
    pub(crate) fn new(position: Position, from: PartitionId, reads_bytes_max: usize) -> Chunker {
        assert!(
            reads_bytes_max >= READS_BYTES_MIN,
            "reads_bytes_max {reads_bytes_max} is below {READS_BYTES_MIN}"
        );
        Chunker {
            position,
            from,
            budget: reads_bytes_max - MESSAGE_OVERHEAD_BYTES,
            done: Vec::new(),
            current: empty(position, from),
            bytes: 0,
            entries: 0,
        }
    }

    /// Adds an exact key and its value (`None`: absent).
    pub(crate) fn exact(&mut self, key: Key, value: Option<Value>) {
        // A two-element array, the key, and the value or nil.
        let cost = 1 + key_bytes(&key) + value.as_deref().map_or(1, value_bytes);
        self.make_room(cost);
        self.current.exact.push((key, value));
        self.add(cost);
    }

    /// Adds a prefix and every row under it, ascending. Rows that do not fit continue in
    /// the next chunk under the same prefix.
    pub(crate) fn prefix(&mut self, prefix: Key, rows: Vec<(Key, Value)>) {
        // A two-element array, the prefix, and the header of the rows' array.
        let header = 1 + key_bytes(&prefix) + 5;
        if rows.is_empty() {
            self.make_room(header);
            self.current.prefixes.push((prefix, Vec::new()));
            self.add(header);
            return;
        }
        // Whether the last prefix of `current` is this one, taking rows.
        let mut open = false;
        for (key, value) in rows {
            let row = 1 + key_bytes(&key) + value_bytes(&value);
            let mut cost = if open { row } else { header + row };
            if !self.fits(cost) {
                self.flush();
                open = false;
                cost = header + row;
            }
            if !open {
                self.current.prefixes.push((prefix.clone(), Vec::new()));
                open = true;
            }
            if let Some((_, entries)) = self.current.prefixes.last_mut() {
                entries.push((key, value));
            }
            self.add(cost);
        }
    }

    /// The chunks, numbered; at least one, so a participant with nothing to send still
    /// tells the others so.
    pub(crate) fn finish(mut self) -> Vec<RemoteReads> {
        if self.entries > 0 || self.done.is_empty() {
            self.done.push(self.current);
        }
        // Every chunk holds an entry of at least a few bytes of memory: far fewer than
        // 2^32 of them fit in an address space, let alone in one transaction's reads.
        let chunks = u32::try_from(self.done.len()).unwrap_or(u32::MAX);
        for (i, reads) in (0..).zip(self.done.iter_mut()) {
            reads.chunk = i;
            reads.chunks = chunks;
        }
        self.done
    }

    fn fits(&self, cost: usize) -> bool {
        self.entries == 0 || self.bytes + cost <= self.budget
    }

    fn make_room(&mut self, cost: usize) {
        if !self.fits(cost) {
            self.flush();
        }
    }

    fn add(&mut self, cost: usize) {
        self.bytes += cost;
        self.entries += 1;
    }

    fn flush(&mut self) {
        let full = std::mem::replace(&mut self.current, empty(self.position, self.from));
        self.done.push(full);
        self.bytes = 0;
        self.entries = 0;
    }
}

fn empty(position: Position, from: PartitionId) -> RemoteReads {
    RemoteReads {
        position,
        from,
        exact: Vec::new(),
        prefixes: Vec::new(),
        chunk: 0,
        chunks: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::message::Message;
    use detflow_protocol::{Epoch, codec};

    fn chunker(max: usize) -> Chunker {
        Chunker::new(Position::new(Epoch(1), 0), PartitionId(0), max)
    }

    fn encoded(reads: &RemoteReads) -> usize {
        codec::encode_named(&Message::RemoteReads {
            to: PartitionId(1),
            reads: reads.clone().into(),
        })
        .len()
    }

    #[test]
    fn small_reads_make_one_chunk_and_nothing_makes_one_empty_chunk() {
        let mut c = chunker(READS_BYTES_MAX_DEFAULT);
        c.exact(Key::table("t").u64(1), Some(vec![1]));
        c.prefix(Key::table("p"), vec![(Key::table("p").u64(1), vec![2])]);
        let chunks = c.finish();
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].chunk, chunks[0].chunks), (0, 1));
        assert_eq!(chunks[0].exact.len(), 1);
        let none = chunker(READS_BYTES_MIN).finish();
        assert_eq!(none.len(), 1);
        assert!(none[0].exact.is_empty() && none[0].prefixes.is_empty());
    }

    #[test]
    fn a_scan_continues_across_chunks_in_order_and_every_chunk_is_bounded() {
        let max = 1024;
        let prefix = Key::table("p");
        // High bytes encode as two bytes each: the bound must account for them.
        let rows: Vec<(Key, Value)> = (0..40u64)
            .map(|i| (prefix.clone().u64(i), vec![0x80 | i as u8; 100]))
            .collect();
        let mut c = chunker(max);
        c.exact(Key::table("t").u64(1), None);
        c.prefix(prefix.clone(), rows.clone());
        c.exact(Key::table("t").u64(2), Some(vec![0xFF; 300]));
        c.prefix(Key::table("q"), Vec::new());
        let chunks = c.finish();
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        let mut scanned = Vec::new();
        for (i, reads) in chunks.iter().enumerate() {
            assert_eq!(
                (reads.chunk as usize, reads.chunks as usize),
                (i, chunks.len())
            );
            assert!(encoded(reads) <= max, "chunk {i}: {} bytes", encoded(reads));
            for (p, entries) in &reads.prefixes {
                if *p == prefix {
                    assert!(!entries.is_empty(), "no empty continuation");
                    scanned.extend(entries.iter().cloned());
                }
            }
        }
        assert_eq!(scanned, rows);
        let last = chunks.last().unwrap();
        assert_eq!(
            last.prefixes.last().unwrap(),
            &(Key::table("q"), Vec::new())
        );
    }

    #[test]
    fn an_entry_larger_than_the_bound_travels_alone() {
        let max = READS_BYTES_MIN;
        let mut c = chunker(max);
        c.exact(Key::table("t").u64(1), Some(vec![1; 10]));
        c.exact(Key::table("t").u64(2), Some(vec![0xFF; 4 * max]));
        c.exact(Key::table("t").u64(3), Some(vec![1; 10]));
        let chunks = c.finish();
        let sizes: Vec<usize> = chunks.iter().map(|r| r.exact.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
        // The bound holds for the entry: it is what the frame limit is checked against.
        let big = &chunks[1];
        let bound = MESSAGE_OVERHEAD_BYTES
            + 1
            + key_bytes(&big.exact[0].0)
            + value_bytes(&vec![0xFF; 4 * max]);
        assert!(encoded(big) <= bound, "{} > {bound}", encoded(big));
    }
}
