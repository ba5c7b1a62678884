//! Snapshot reads: the state of every partition after one epoch, read without entering
//! the log.
//!
//! Every partition applies the same prefix of one log, so "the state after epoch E" is one
//! consistent cut across all partitions with no coordination. An executor keeps the
//! before-images of what the last epochs overwrote (its retention window), so it can
//! answer a read at any epoch from the oldest it retains to the last it applied, while it
//! goes on applying later ones.
//!
//! A client asks a gateway ([`SnapshotRead`]); the gateway asks one replica of each
//! partition involved ([`PartQuery`]) and answers with rows all read at one epoch
//! ([`SnapshotReply`]). A scan reads one partition's rows of one table in bounded chunks:
//! the client asks each partition in turn (or in parallel) and resumes after the last key
//! of a chunk, at the same epoch, so a scan of millions of rows is never buffered whole.

use crate::ids::{Epoch, PartitionId};
use crate::key::Key;
use crate::txn::Value;
use serde::{Deserialize, Serialize};

/// The most keys one snapshot `get` asks for.
pub const SNAPSHOT_KEYS_MAX: usize = 4_096;

/// The most rows one scan chunk returns by default.
pub const SCAN_ROWS_DEFAULT: u32 = 1_000;

/// The most rows one scan chunk returns, whatever is asked.
pub const SCAN_ROWS_MAX: u32 = 10_000;

/// The most value bytes one scan chunk carries: a chunk stops after the row that reaches
/// it, so a table of large values still travels in bounded messages.
pub const SCAN_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Which epoch a snapshot reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum At {
    /// The latest epoch every partition involved has applied, and not before `not_before`
    /// (the last epoch the reading session wrote in, for read-your-writes).
    Latest {
        /// The earliest acceptable epoch.
        not_before: Epoch,
    },
    /// Exactly this epoch: the state after it was applied.
    Epoch(Epoch),
}

/// Which rows of one table a scan reads: those under `prefix`, from `from` (inclusive) to
/// `to` (exclusive), ascending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRange {
    /// The rows' common prefix; it starts with the table name.
    pub prefix: Key,
    /// The first key wanted (inclusive), if not the first under `prefix`.
    pub from: Option<Key>,
    /// The key to stop before (exclusive), if not the end of `prefix`.
    pub to: Option<Key>,
}

impl ScanRange {
    /// Every row under `prefix`.
    pub fn prefix(prefix: Key) -> ScanRange {
        ScanRange {
            prefix,
            from: None,
            to: None,
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &Key) -> bool {
        key.starts_with(&self.prefix)
            && self.from.as_ref().is_none_or(|from| key >= from)
            && self.to.as_ref().is_none_or(|to| key < to)
    }

    /// The first key of the range.
    pub fn start(&self) -> &Key {
        match &self.from {
            Some(from) if from > &self.prefix => from,
            _ => &self.prefix,
        }
    }
}

/// What a client reads from a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotOp {
    /// These keys' values (each on whichever partition owns it).
    Get(Vec<Key>),
    /// One chunk of one partition's rows in a range: at most `limit` rows (0: the default),
    /// after the key `after` (the last of the previous chunk) if given.
    Scan {
        /// The partition.
        partition: PartitionId,
        /// The rows.
        range: ScanRange,
        /// Where the previous chunk ended.
        after: Option<Key>,
        /// The most rows wanted.
        limit: u32,
    },
    /// Only which epoch `At` resolves to over every partition, and how many partitions
    /// there are: a scan of several partitions fixes its epoch with this first.
    Epoch,
}

/// A client's snapshot read, as it reaches a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRead {
    /// Which epoch.
    pub at: At,
    /// What.
    pub op: SnapshotOp,
}

/// Why a snapshot read got no rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SnapshotError {
    /// The epoch is older than a partition's retention window.
    #[error("epoch {asked} is no longer retained; the oldest readable epoch is {oldest}")]
    TooOld {
        /// The epoch asked for.
        asked: Epoch,
        /// The oldest epoch that partition can still read.
        oldest: Epoch,
    },
    /// A partition has not applied the epoch, and did not within the read's wait.
    #[error("epoch {asked} is not applied yet; partition {partition} has applied {applied}")]
    NotYet {
        /// The epoch asked for.
        asked: Epoch,
        /// The lagging partition.
        partition: PartitionId,
        /// What it has applied.
        applied: Epoch,
    },
    /// Not every partition involved answered in time; read again (through any gateway).
    #[error("not every partition answered in time; read again")]
    Unavailable,
    /// The read is malformed or not allowed (the reason says how); reading again will not
    /// help.
    #[error("snapshot read refused: {0}")]
    Refused(String),
}

/// The answer to a snapshot read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotReply {
    /// The values of the keys asked for, in the order asked (`None`: absent), at `epoch`.
    Values {
        /// The epoch read.
        epoch: Epoch,
        /// One per key asked.
        #[serde(with = "crate::bin::option_values")]
        values: Vec<Option<Value>>,
    },
    /// One chunk of a scan, at `epoch`.
    Rows {
        /// The epoch read.
        epoch: Epoch,
        /// Rows in ascending key order.
        #[serde(with = "crate::bin::pairs")]
        rows: Vec<(Key, Value)>,
        /// Whether the partition holds more rows in the range after the last one.
        more: bool,
    },
    /// The epoch `At` resolved to, and how many partitions there are.
    Epoch {
        /// The epoch.
        epoch: Epoch,
        /// The cluster's partitions.
        partitions: u32,
    },
    /// No rows: why.
    Failed(SnapshotError),
}

/// What a gateway asks one replica of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartOp {
    /// These keys' values.
    Get(Vec<Key>),
    /// A chunk of rows in a range.
    Scan {
        /// The rows.
        range: ScanRange,
        /// Where the previous chunk ended.
        after: Option<Key>,
        /// The most rows.
        limit: u32,
    },
    /// Nothing but the epochs this partition can read.
    Epoch,
}

/// Which epoch a partition reads: as asked, or its own latest (at least `not_before`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartAt {
    /// Its latest applied epoch, waiting (bounded) for `not_before` if it is behind.
    Latest {
        /// The earliest acceptable epoch.
        not_before: Epoch,
    },
    /// Exactly this epoch, waiting (bounded) for it if it is not applied yet.
    Epoch(Epoch),
}

/// One partition's answer to a [`PartOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// The answering partition.
    pub partition: PartitionId,
    /// The last epoch it applied.
    pub applied: Epoch,
    /// The oldest epoch it can read.
    pub oldest: Epoch,
    /// The rows, or why not.
    pub answer: Result<PartRows, SnapshotError>,
}

/// The rows one partition read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartRows {
    /// Values of the keys asked for, in order.
    Values {
        /// The epoch read.
        epoch: Epoch,
        /// One per key.
        #[serde(with = "crate::bin::option_values")]
        values: Vec<Option<Value>>,
    },
    /// A chunk of a scan.
    Rows {
        /// The epoch read.
        epoch: Epoch,
        /// Ascending.
        #[serde(with = "crate::bin::pairs")]
        rows: Vec<(Key, Value)>,
        /// Whether more rows follow in the range.
        more: bool,
    },
    /// Nothing read ([`PartOp::Epoch`]).
    Nothing,
}

impl PartRows {
    /// The epoch read, if rows were.
    pub fn epoch(&self) -> Option<Epoch> {
        match self {
            PartRows::Values { epoch, .. } | PartRows::Rows { epoch, .. } => Some(*epoch),
            PartRows::Nothing => None,
        }
    }
}

/// Whether a client may read `key` in a snapshot: a well-formed key of a user table (the
/// executors' bookkeeping is not part of the state a snapshot shows).
pub fn check_snapshot_key(key: &Key) -> Result<(), String> {
    key.validate().map_err(|e| format!("malformed key: {e}"))?;
    if key.table_name().is_none() {
        return Err("a key starts with its table name".to_owned());
    }
    if key.is_system() {
        return Err("the system table is not part of the state a snapshot shows".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_contains_what_lies_under_its_prefix_between_its_bounds() {
        let t = |v: u64| Key::table("t").u64(v);
        let range = ScanRange {
            prefix: Key::table("t"),
            from: Some(t(2)),
            to: Some(t(5)),
        };
        assert!(!range.contains(&t(1)));
        assert!(range.contains(&t(2)));
        assert!(range.contains(&t(4)));
        assert!(!range.contains(&t(5)));
        assert!(!range.contains(&Key::table("u").u64(3)));
        assert_eq!(range.start(), &t(2));
        assert_eq!(ScanRange::prefix(t(1)).start(), &t(1));
    }

    #[test]
    fn only_user_tables_are_readable() {
        assert!(check_snapshot_key(&Key::table("t").u64(1)).is_ok());
        assert!(check_snapshot_key(&Key::table(crate::SYSTEM_TABLE).u64(1)).is_err());
    }
}
