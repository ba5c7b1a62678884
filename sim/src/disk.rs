//! A simulated disk: an append-only file of checksummed records with an fsync boundary.
//!
//! Appends land after the synced prefix. A crash keeps the synced prefix and, like a real
//! page cache, some random prefix of the bytes written since (possibly cutting a record in
//! two: a torn write). Recovery reads records until the first one that is incomplete or
//! fails its checksum and discards the rest, exactly what a production log reader does.
//!
//! A replica's disk ([`ReplicaDisk`]) also keeps what its synced prefix recovers to, so a
//! world can check, as a message leaves the replica, that what the message vouches for is
//! already durable ([`crate::check::durable_sends`]).

use detflow_protocol::WriteId;
use detflow_protocol::{DetRng, LogEntry, codec};
use detflow_sequencer::{Durable, LogWrite};
use std::collections::VecDeque;

/// Bytes of a record header: a 4-byte length and a 4-byte checksum.
const HEADER_BYTES: usize = 8;

/// An append-only file of records.
#[derive(Clone, Debug, Default)]
pub(crate) struct Disk {
    bytes: Vec<u8>,
    synced: usize,
    /// Records appended since the last sync, with their end offsets.
    unsynced_ends: Vec<usize>,
}

/// What a crash did to the unsynced tail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CrashDamage {
    /// Unsynced records lost whole.
    pub(crate) lost: usize,
    /// Whether a record was cut in two.
    pub(crate) torn: bool,
}

impl Disk {
    /// Appends one record (not yet durable).
    pub(crate) fn append(&mut self, record: &[u8]) {
        let len = u32::try_from(record.len()).expect("records are far below 4 GiB");
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(&checksum(record));
        self.bytes.extend_from_slice(record);
        self.unsynced_ends.push(self.bytes.len());
    }

    /// Makes every appended record durable.
    pub(crate) fn sync(&mut self) {
        self.synced = self.bytes.len();
        self.unsynced_ends.clear();
    }

    /// Makes the oldest `count` unsynced records durable (an fsync that finished before
    /// the later writes reached it).
    pub(crate) fn sync_first(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        self.synced = self.unsynced_ends[count - 1];
        self.unsynced_ends.drain(..count);
    }

    /// Records appended but not yet synced.
    pub(crate) fn unsynced(&self) -> usize {
        self.unsynced_ends.len()
    }

    /// Loses what a crash loses: keeps a random number of the unsynced records and, if
    /// `tear` allows, part of the next one.
    pub(crate) fn crash(&mut self, rng: &mut DetRng, tear: bool) -> CrashDamage {
        let total = self.unsynced_ends.len();
        let kept = rng.below(total as u64 + 1) as usize;
        let mut end = if kept == 0 {
            self.synced
        } else {
            self.unsynced_ends[kept - 1]
        };
        let mut damage = CrashDamage {
            lost: total - kept,
            torn: false,
        };
        if tear && kept < total {
            let next_end = self.unsynced_ends[kept];
            end += 1 + rng.below((next_end - end - 1) as u64) as usize;
            damage.torn = true;
        }
        self.bytes.truncate(end);
        // Whatever survived is on the platter now.
        self.synced = self.bytes.len();
        self.unsynced_ends.clear();
        damage
    }

    /// Every complete, valid record, in order; truncates the file after the last one, as
    /// recovery does before appending again.
    pub(crate) fn recover(&mut self) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        let mut at = 0;
        while at + HEADER_BYTES <= self.bytes.len() {
            let len =
                u32::from_be_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let body = at + HEADER_BYTES;
            if body + len > self.bytes.len() {
                break;
            }
            let record = &self.bytes[body..body + len];
            if checksum(record) != self.bytes[at + 4..at + 8] {
                break;
            }
            records.push(record.to_vec());
            at = body + len;
        }
        self.bytes.truncate(at);
        self.synced = at;
        self.unsynced_ends.clear();
        records
    }
}

/// A sequencer replica's disk: its writes as records in a [`Disk`], and the state its
/// synced prefix recovers to, kept write by write.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplicaDisk {
    file: Disk,
    /// The writes appended since the last sync, oldest first.
    unsynced: VecDeque<LogWrite>,
    /// What recovery would return if the replica crashed now and lost every unsynced write.
    synced: Durable,
}

impl ReplicaDisk {
    /// Appends `write` (not yet durable).
    pub(crate) fn append(&mut self, write: LogWrite) {
        self.file.append(&log_record(&write));
        self.unsynced.push_back(write);
    }

    /// Makes every appended write durable; returns the id of the last, if any.
    pub(crate) fn sync(&mut self) -> Option<WriteId> {
        self.sync_first(self.unsynced.len())
    }

    /// Makes the oldest `count` unsynced writes durable (an fsync that finished before the
    /// later writes reached it); returns the id of the last of them, if any.
    pub(crate) fn sync_first(&mut self, count: usize) -> Option<WriteId> {
        let count = count.min(self.unsynced.len());
        self.file.sync_first(count);
        let mut last = None;
        for write in self.unsynced.drain(..count) {
            self.synced.apply(&write);
            last = Some(write.id);
        }
        last
    }

    /// The ids of the writes appended but not yet synced, oldest first.
    pub(crate) fn unsynced(&self) -> impl DoubleEndedIterator<Item = WriteId> + '_ {
        self.unsynced.iter().map(|w| w.id)
    }

    /// The state the synced prefix recovers to: what a message leaving now may vouch for.
    pub(crate) fn synced(&self) -> &Durable {
        &self.synced
    }

    /// Loses what a crash loses (see [`Disk::crash`]); the writes that survive whole are
    /// durable from now on.
    pub(crate) fn crash(&mut self, rng: &mut DetRng, tear: bool) -> CrashDamage {
        let damage = self.file.crash(rng, tear);
        let kept = self.unsynced.len() - damage.lost;
        for write in self.unsynced.drain(..kept) {
            self.synced.apply(&write);
        }
        self.unsynced.clear();
        damage
    }

    /// The durable state a replica restarts from, read back from the records. It must be
    /// what the synced writes added up to: the file and the writes tell one story.
    pub(crate) fn recover(&mut self) -> Durable {
        assert!(
            self.unsynced.is_empty(),
            "recovering a disk with unsynced writes: a replica restarts only after a crash"
        );
        let durable = recover_replica(&mut self.file);
        assert_eq!(
            durable, self.synced,
            "the disk's records recover to other state than its synced writes"
        );
        // Share the recovered batches, so later comparisons are pointer comparisons.
        self.synced = durable.clone();
        durable
    }
}

/// The record a replica's [`LogWrite`] is stored as.
pub(crate) fn log_record(write: &LogWrite) -> Vec<u8> {
    codec::encode(&(
        write.id,
        write.hard_state,
        &write.snapshot,
        write.truncate_from,
        &write.append,
    ))
}

/// The durable state a replica restarts from: every record that survived, applied in order.
fn recover_replica(disk: &mut Disk) -> Durable {
    let mut durable = Durable::default();
    for record in disk.recover() {
        let (id, hard_state, snapshot, truncate_from, append): (WriteId, _, _, _, Vec<LogEntry>) =
            codec::decode(&record).expect("the simulated disk returns only valid records");
        durable.apply(&LogWrite {
            id,
            hard_state,
            snapshot,
            truncate_from,
            append,
        });
    }
    durable
}

fn checksum(record: &[u8]) -> [u8; 4] {
    let hash = blake3::hash(record);
    let mut out = [0u8; 4];
    out.copy_from_slice(&hash.as_bytes()[..4]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_records_survive_and_torn_tails_are_discarded() {
        let mut rng = DetRng::new(5);
        for _ in 0..200 {
            let mut disk = Disk::default();
            disk.append(b"one");
            disk.append(b"two");
            disk.sync();
            for i in 0..4u8 {
                disk.append(&[i; 40]);
            }
            let damage = disk.crash(&mut rng, true);
            let records = disk.recover();
            assert_eq!(&records[..2], &[b"one".to_vec(), b"two".to_vec()]);
            assert_eq!(records.len(), 2 + 4 - damage.lost);
            for (i, r) in records[2..].iter().enumerate() {
                assert_eq!(r, &vec![i as u8; 40]);
            }
            // Recovery leaves a clean file to append to.
            disk.append(b"after");
            assert_eq!(
                disk.recover().last().map(Vec::as_slice),
                Some(&b"after"[..])
            );
        }
    }
}
