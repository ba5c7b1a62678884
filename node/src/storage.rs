//! Durable storage in fjall: the log of a sequencer replica ([`LogStore`]) and the state of
//! an executor partition ([`FjallStore`]), each one fjall database in a directory of its own.
//!
//! # The sequencer log
//!
//! ```text
//!  LogStore::open(dir) ──▶ (store, Durable)    recovered exactly as written, validated
//!  Output::Persist(w) ───▶ store.append(&w)     one atomic fjall batch, not fsynced
//!  … more appends …
//!  store.sync() ─────────▶ Input::Persisted { write: id of the last append }
//! ```
//!
//! A driver appends every [`LogWrite`] in id order as the replica emits it, then makes a
//! group of them durable with one [`LogStore::sync`] and answers `Persisted` with the id of
//! the last write of the group (group commit). An append is atomic: after a crash the log
//! holds a prefix of the appends, each whole; only synced ones are guaranteed.
//!
//! # The executor state
//!
//! ```text
//!  FjallStore::open(dir) ──▶ store        applied_epoch(): the last commit that reached disk
//!  store.load(rows) ───────▶ epoch 0      once per store, synced
//!  Store::{get, scan_prefix, put, delete}  reads see the epoch in progress (overlay)
//!  Store::commit_epoch(e) ─▶ one batch    the epoch's writes + applied epoch, not fsynced
//!  store.sync() ───────────▶ Ok(durable)  every committed epoch is on disk
//! ```
//!
//! Writes of the epoch in progress stay in memory until [`Store::commit_epoch`], which
//! writes them and the applied epoch in one atomic batch, so a reopened store holds exactly
//! the state after some committed epoch, never part of one (DESIGN.md §8). Writes made
//! between epochs join the next commit. The [`Store`] trait cannot return errors: an I/O
//! error there is an environment failure and panics naming the store's directory (the node
//! stops; recovery is restart and replay).
//!
//! # Layout
//!
//! Both stores keep a `meta` keyspace holding the storage format version
//! ([`STORAGE_FORMAT_VERSION`], written at creation and checked at every open) and the kind
//! of store. The log keeps its entries in keyspace `log`, keyed by the big-endian epoch and
//! encoded with [`detflow_protocol::codec`], and its hard state and the snapshot of its
//! compacted prefix in `meta` (a compaction writes the snapshot and removes the entries it
//! covers in one batch). The executor
//! state keeps user rows in keyspace `user`, the executor's bookkeeping (`_sys` keys) in
//! `system`, and its applied epoch and load marker in `meta`.

use detflow_executor::{Store, stored_differs_between_replicas};
use detflow_protocol::{Epoch, Key, LogEntry, LogSnapshot, NodeId, Term, Value, codec};
use detflow_sequencer::replica::{Durable, DurableError, LogWrite};
use fjall::{
    Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Readable, Snapshot,
};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The storage format version this build writes and understands: the layout of keys and
/// records in both stores. A store in another version is refused at open.
pub const STORAGE_FORMAT_VERSION: u32 = 1;

const META: &str = "meta";
const LOG: &str = "log";
const USER: &str = "user";
const SYSTEM: &str = "system";

const FORMAT_VERSION_KEY: &[u8] = b"format_version";
const KIND_KEY: &[u8] = b"kind";
const HARD_STATE_KEY: &[u8] = b"hard_state";
/// The snapshot of the log's compacted prefix, in `meta`.
const SNAPSHOT_KEY: &[u8] = b"log_snapshot";
const APPLIED_EPOCH_KEY: &[u8] = b"applied_epoch";
const LOADED_KEY: &[u8] = b"loaded";

/// Rows per batch while bulk-loading, so a large initial load never sits in one batch.
const LOAD_CHUNK_ROWS: usize = 10_000;

/// fjall's block cache of a partition's state. Procedures read user rows from the
/// in-memory mirror, so fjall serves only bookkeeping reads (result queries, recovery) and
/// whole-store scans (checkpoints, state images). A scan loads every block through the
/// cache: with 256 MiB per partition (sized before the mirror existed, for New-Order's
/// point reads), checkpoints filled it over half an hour and a node's resident memory
/// grew by hundreds of MiB (benches/README.md, the soak with checkpoints).
const STATE_CACHE_BYTES: u64 = 16 << 20;

/// fjall's block cache of the replica log: appends and recent reads only.
const LOG_CACHE_BYTES: u64 = 32 << 20;

/// The most journal a store keeps before fjall flushes the memtables it covers and drops
/// it. A restart replays the whole journal before the node serves: with fjall's default
/// (512 MiB) a partition that had taken a few hundred MB of writes (kv's growing lists)
/// took seconds to reopen, while its replicas' peers waited.
const JOURNAL_BYTES_MAX: u64 = 64 << 20;

/// The memtable size at which a keyspace flushes (fjall's default is 64 MiB). Smaller
/// memtables let the journal be dropped sooner, for the same reason.
const MEMTABLE_BYTES_MAX: u64 = 16 << 20;

/// Which store a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// A sequencer replica's log ([`LogStore`]).
    Log,
    /// An executor partition's state ([`FjallStore`]).
    State,
}

impl StoreKind {
    fn tag(self) -> &'static [u8] {
        match self {
            StoreKind::Log => b"log",
            StoreKind::State => b"state",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreKind::Log => f.write_str("a sequencer log"),
            StoreKind::State => f.write_str("an executor state"),
        }
    }
}

/// Why a store cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A record does not decode: the store is damaged or was written by something else.
    #[error("store at {}: corrupt {what}: {detail}", .path.display())]
    Corrupt {
        /// The store's directory.
        path: PathBuf,
        /// The record.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The recovered log is not one this build can recover from (see [`Durable::validate`]).
    #[error("the log at {} cannot be recovered: {source}", .path.display())]
    Durable {
        /// The store's directory.
        path: PathBuf,
        /// What is wrong with the log.
        source: DurableError,
    },
    /// fjall failed (I/O error, poisoned database, lock held by another process, …).
    #[error("fjall failed at {} while {doing}: {source}", .path.display())]
    Fjall {
        /// The store's directory.
        path: PathBuf,
        /// What the store was doing.
        doing: &'static str,
        /// fjall's error.
        source: fjall::Error,
    },
    /// The directory holds another kind of store.
    #[error("store at {} holds {found:?}, not {expected}", .path.display())]
    Kind {
        /// The store's directory.
        path: PathBuf,
        /// The kind recorded in the store.
        found: String,
        /// The kind the caller opened.
        expected: StoreKind,
    },
    /// Creating a new store failed at the file system (staging directory, rename, sync).
    #[error("creating the store at {} failed while {doing}: {source}", .path.display())]
    Create {
        /// The store's directory.
        path: PathBuf,
        /// What the creation was doing.
        doing: &'static str,
        /// The file system's error.
        source: std::io::Error,
    },
    /// The store is in a storage format version this build does not understand.
    #[error(
        "store at {} is in storage format version {found}; this build understands version \
         {supported}",
        .path.display()
    )]
    Version {
        /// The store's directory.
        path: PathBuf,
        /// The version recorded in the store.
        found: u32,
        /// The version this build reads and writes ([`STORAGE_FORMAT_VERSION`]).
        supported: u32,
    },
}

/// The durable log of one sequencer replica: hard state and entries.
pub struct LogStore {
    path: PathBuf,
    db: Database,
    meta: Keyspace,
    log: Keyspace,
    /// The last epoch compacted away, as written.
    start: u64,
    /// The last epoch in the log as written (synced or not); the start when empty.
    last_epoch: u64,
    /// Whether a write was appended since the last sync.
    unsynced: bool,
}

impl LogStore {
    /// Opens the log in `dir`, creating an empty one if the directory holds none, and
    /// recovers the replica's durable state exactly as written.
    ///
    /// Refuses a store in another storage format version, a store of another kind, a record
    /// that does not decode, and a log that fails [`Durable::validate`].
    pub fn open(dir: &Path) -> Result<(LogStore, Durable), StorageError> {
        let (db, meta, mut spaces) = open_database(dir, StoreKind::Log, &[LOG])?;
        let log = spaces.remove(0);
        let mut store = LogStore {
            path: dir.to_path_buf(),
            db,
            meta,
            log,
            start: 0,
            last_epoch: 0,
            unsynced: false,
        };
        let durable = store.recover()?;
        store.start = durable.log_start().0;
        store.last_epoch = durable.last_epoch().0;
        Ok((store, durable))
    }

    /// Applies one write atomically, as [`Durable::apply`] does: the hard state, then the
    /// snapshot (removing the entries it covers), then the truncation of every entry with
    /// epoch `>= truncate_from`, then the appended entries.
    ///
    /// The write reaches the operating system (it survives a crash of the process) but is
    /// not fsynced: call [`LogStore::sync`] before confirming it. Panics, as
    /// [`Durable::apply`] does, on a truncation from epoch 0 or a non-consecutive append:
    /// both are bugs of the caller. An error means the write may or may not be on disk;
    /// fjall refuses further writes, and the node must stop.
    pub fn append(&mut self, write: &LogWrite) -> Result<(), StorageError> {
        let mut last = self.last_epoch;
        let mut start = self.start;
        let mut compacted = None;
        if let Some(snapshot) = &write.snapshot {
            let through = snapshot.epoch.0;
            assert!(through >= start, "a snapshot older than the log's start");
            compacted = Some(start + 1..=through.min(last));
            start = through;
            last = last.max(through);
        }
        let mut removed = None;
        if let Some(from) = write.truncate_from {
            assert!(from.0 > start, "truncation of a compacted epoch");
            if from.0 <= last {
                removed = Some(from.0..=last);
                last = from.0 - 1;
            }
        }
        for entry in &write.append {
            assert_eq!(
                entry.epoch().0,
                last + 1,
                "a write appends a non-consecutive epoch"
            );
            last += 1;
        }

        let mut batch = self.db.batch();
        if let Some((term, voted_for)) = write.hard_state {
            batch.insert(
                &self.meta,
                HARD_STATE_KEY,
                codec::encode(&(term, voted_for)),
            );
        }
        if let Some(snapshot) = &write.snapshot {
            batch.insert(&self.meta, SNAPSHOT_KEY, codec::encode(&**snapshot));
        }
        for epoch in compacted.into_iter().flatten() {
            batch.remove(&self.log, epoch.to_be_bytes());
        }
        // One batch shares one sequence number, so it must name each key once: an epoch
        // that is truncated and appended again is only inserted.
        let appended = write.append.first().map_or(u64::MAX, |e| e.epoch().0)..=last;
        if let Some(removed) = removed {
            for epoch in removed.filter(|e| !appended.contains(e)) {
                batch.remove(&self.log, epoch.to_be_bytes());
            }
        }
        for entry in &write.append {
            batch.insert(
                &self.log,
                entry.epoch().0.to_be_bytes(),
                codec::encode(entry),
            );
        }
        fjall_op(&self.path, "appending to the log", || batch.commit())?;
        self.start = start;
        self.last_epoch = last;
        self.unsynced = true;
        Ok(())
    }

    /// Makes every append so far durable (fsync); returns at once if nothing was appended
    /// since the last sync.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if !self.unsynced {
            return Ok(());
        }
        persist(&self.db, &self.path, "syncing the log")?;
        self.unsynced = false;
        Ok(())
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last epoch in the log, synced or not (0 when the log is empty).
    pub fn last_epoch(&self) -> Epoch {
        Epoch(self.last_epoch)
    }

    /// The last epoch compacted away, synced or not.
    pub fn log_start(&self) -> Epoch {
        Epoch(self.start)
    }

    /// The entries of epochs `from..=to` the log holds, in order.
    pub fn entries(&self, from: Epoch, to: Epoch) -> Result<Vec<LogEntry>, StorageError> {
        let mut entries = Vec::new();
        for guard in self.log.range(from.0.to_be_bytes()..=to.0.to_be_bytes()) {
            let (key, value) = guard
                .into_inner()
                .map_err(fjall_error(&self.path, "reading the log"))?;
            let epoch = decode_u64(&self.path, "log key", &key)?;
            let entry: LogEntry = codec::decode(&value)
                .map_err(|e| corrupt(&self.path, format!("log entry {epoch}"), e.to_string()))?;
            if entry.epoch().0 != epoch {
                return Err(corrupt(
                    &self.path,
                    format!("log entry {epoch}"),
                    format!("holds the batch of epoch {}", entry.epoch()),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn recover(&self) -> Result<Durable, StorageError> {
        let mut durable = Durable::default();
        let hard_state = self
            .meta
            .get(HARD_STATE_KEY)
            .map_err(fjall_error(&self.path, "reading the hard state"))?;
        if let Some(bytes) = hard_state {
            let (term, voted_for): (Term, Option<NodeId>) = codec::decode(&bytes)
                .map_err(|e| corrupt(&self.path, "hard state".into(), e.to_string()))?;
            durable.term = term;
            durable.voted_for = voted_for;
        }
        let snapshot = self
            .meta
            .get(SNAPSHOT_KEY)
            .map_err(fjall_error(&self.path, "reading the log's snapshot"))?;
        if let Some(bytes) = snapshot {
            let snapshot: LogSnapshot = codec::decode(&bytes)
                .map_err(|e| corrupt(&self.path, "log snapshot".into(), e.to_string()))?;
            durable.snapshot = Some(std::sync::Arc::new(snapshot));
        }
        durable.log = self.entries(Epoch(0), Epoch(u64::MAX))?;
        durable.validate().map_err(|source| StorageError::Durable {
            path: self.path.clone(),
            source,
        })?;
        Ok(durable)
    }
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.path)
            .field("last_epoch", &self.last_epoch)
            .finish_non_exhaustive()
    }
}

/// The state of one executor partition in fjall, implementing [`Store`].
///
/// User rows and the executor's bookkeeping (`_sys` keys) live in separate keyspaces. The
/// epoch in progress lives in an in-memory overlay until [`Store::commit_epoch`].
pub struct FjallStore {
    path: PathBuf,
    db: Database,
    meta: Keyspace,
    user: Space,
    system: Space,
    /// Every user row as of the latest write, epoch in progress included: procedures read
    /// from memory, fjall only makes the state durable (see docs/decisions.md).
    mirror: BTreeMap<Key, Value>,
    /// The last epoch committed (written to fjall, perhaps not synced).
    applied: Epoch,
    /// The last epoch committed before the last sync.
    durable: Epoch,
    /// Whether the initial load has completed.
    loaded: bool,
    /// Whether anything was written to fjall since the last sync.
    unsynced: bool,
    /// The state captured by the last [`Store::checkpoint`], not yet taken.
    checkpoint: Option<CheckpointJob>,
    /// The state images peer replicas copy, by epoch (see [`Store::capture_image`]).
    images: BTreeMap<Epoch, Snapshot>,
}

/// The state of a [`FjallStore`] after one epoch, captured as a fjall snapshot so that it
/// can be read on another thread while the executor goes on (see
/// [`FjallStore::take_checkpoint`]).
pub struct CheckpointJob {
    epoch: Epoch,
    snapshot: Snapshot,
    spaces: [Keyspace; 2],
    path: PathBuf,
}

impl CheckpointJob {
    /// The epoch after which it holds the state.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Every row of the captured state, user rows and bookkeeping, except the records
    /// that differ between replicas: what a checkpoint holds. Reads the disk (blocking).
    pub fn rows(&self) -> Result<Vec<(Key, Value)>, StorageError> {
        self.iter().collect()
    }

    /// The rows [`CheckpointJob::rows`] gives, one at a time and as the store holds
    /// them (no key decoded, nothing copied), for a checkpoint writer.
    pub fn iter_bytes(
        &self,
    ) -> impl Iterator<Item = Result<(fjall::Slice, fjall::Slice), StorageError>> + '_ {
        self.spaces
            .iter()
            .flat_map(|space| self.snapshot.iter(space))
            .map(|guard| {
                guard
                    .into_inner()
                    .map_err(fjall_error(&self.path, "reading a checkpoint"))
            })
            .filter(|row| {
                !row.as_ref()
                    .is_ok_and(|(key, _)| stored_differs_between_replicas(key))
            })
    }

    /// The rows [`CheckpointJob::rows`] gives, one at a time, so that a writer need not
    /// hold them all.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Key, Value), StorageError>> + '_ {
        self.iter_bytes().map(|row| {
            let (key, value) = row?;
            let key = Key::from_bytes(key.to_vec())
                .map_err(|e| corrupt(&self.path, "key".into(), e.to_string()))?;
            Ok((key, value.to_vec()))
        })
    }
}

/// A sync of a [`FjallStore`] that may run on another thread (see
/// [`FjallStore::begin_sync`]).
pub struct SyncJob {
    db: Database,
    path: PathBuf,
    epoch: Epoch,
}

impl SyncJob {
    /// Makes the store durable through the epoch committed when the job began (fsync,
    /// blocking); returns that epoch.
    pub fn run(self) -> Result<Epoch, StorageError> {
        persist(&self.db, &self.path, "syncing the state")?;
        Ok(self.epoch)
    }
}

/// One keyspace and the writes of the epoch in progress to it (`None`: deleted).
struct Space {
    tree: Keyspace,
    overlay: BTreeMap<Key, Option<Value>>,
}

impl FjallStore {
    /// Opens the state in `dir`, creating an empty one (applied epoch 0) if the directory
    /// holds none. After a crash, [`Store::applied_epoch`] is the last epoch whose commit
    /// reached the disk, and the rows are exactly those after that epoch.
    ///
    /// Refuses a store in another storage format version or of another kind.
    pub fn open(dir: &Path) -> Result<FjallStore, StorageError> {
        let (db, meta, mut spaces) = open_database(dir, StoreKind::State, &[USER, SYSTEM])?;
        let system = spaces.remove(1);
        let user = spaces.remove(0);
        let path = dir.to_path_buf();
        let applied = match meta
            .get(APPLIED_EPOCH_KEY)
            .map_err(fjall_error(&path, "reading the applied epoch"))?
        {
            Some(bytes) => Epoch(decode_u64(&path, "applied epoch", &bytes)?),
            None => Epoch(0),
        };
        let loaded = meta
            .contains_key(LOADED_KEY)
            .map_err(fjall_error(&path, "reading the load marker"))?;
        let mut mirror = BTreeMap::new();
        for guard in user.iter() {
            let (key, value) = guard
                .into_inner()
                .map_err(fjall_error(&path, "reading the state into memory"))?;
            let key = Key::from_bytes(key.to_vec())
                .map_err(|e| corrupt(&path, "key".into(), e.to_string()))?;
            mirror.insert(key, value.to_vec());
        }
        Ok(FjallStore {
            path,
            db,
            meta,
            mirror,
            user: Space::new(user),
            system: Space::new(system),
            applied,
            // fjall fsyncs the journal it recovers before it opens, so what it recovered
            // is durable.
            durable: applied,
            loaded,
            unsynced: false,
            checkpoint: None,
            images: BTreeMap::new(),
        })
    }

    /// Writes the initial rows as the state before epoch 1, then syncs; returns whether it
    /// loaded them.
    ///
    /// Idempotent across restarts: it loads only into a store that has not been loaded and
    /// has committed no epoch, and records a marker atomically with the last rows. A load
    /// interrupted by a crash is simply done again (it writes the same rows). Rows are
    /// written in chunks, so a large load never sits in one batch.
    ///
    /// Panics if writes of an epoch in progress are pending: load before executing.
    pub fn load(
        &mut self,
        rows: impl IntoIterator<Item = (Key, Value)>,
    ) -> Result<bool, StorageError> {
        assert!(
            self.user.overlay.is_empty() && self.system.overlay.is_empty(),
            "load runs before any write"
        );
        if self.loaded || self.applied > Epoch(0) {
            return Ok(false);
        }
        // A load, restore or state transfer that a crash interrupted left rows of its own.
        self.clear()?;
        self.write_rows(rows, Epoch(0))?;
        Ok(true)
    }

    /// Writes `rows` in chunks, the last with the load marker and, if `epoch` is past 0,
    /// the applied epoch (atomically with the marker), then syncs.
    fn write_rows(
        &mut self,
        rows: impl IntoIterator<Item = (Key, Value)>,
        epoch: Epoch,
    ) -> Result<(), StorageError> {
        // One batch shares one sequence number, so it must name each key once: a chunk
        // keeps the last row of each key; a later chunk overrides an earlier one.
        let mut chunk = BTreeMap::new();
        for (key, value) in rows {
            if !key.is_system() {
                self.mirror.insert(key.clone(), value.clone());
            }
            chunk.insert(key, value);
            if chunk.len() >= LOAD_CHUNK_ROWS {
                self.load_batch(std::mem::take(&mut chunk))
                    .commit()
                    .map_err(fjall_error(&self.path, "loading rows"))?;
            }
        }
        let mut batch = self.load_batch(chunk);
        batch.insert(&self.meta, LOADED_KEY, b"1".as_slice());
        if epoch > Epoch(0) {
            batch.insert(&self.meta, APPLIED_EPOCH_KEY, epoch.0.to_be_bytes());
        }
        batch
            .commit()
            .map_err(fjall_error(&self.path, "loading rows"))?;
        self.loaded = true;
        self.applied = epoch;
        self.unsynced = true;
        self.sync()?;
        self.settle_after_load()
    }

    /// Makes every committed epoch durable (fsync); returns the durable epoch, the last one
    /// committed before this call. Writes of an epoch in progress are not included. Returns
    /// at once if nothing was committed since the last sync.
    pub fn sync(&mut self) -> Result<Epoch, StorageError> {
        if let Some(job) = self.begin_sync() {
            job.run()?;
        }
        self.durable = self.applied;
        Ok(self.durable)
    }

    /// Starts a sync that runs off the executor's thread: the returned job makes every
    /// epoch committed so far durable; hand its result to [`FjallStore::synced`]. `None`
    /// when nothing was committed since the last sync.
    pub fn begin_sync(&mut self) -> Option<SyncJob> {
        if !self.unsynced {
            return None;
        }
        self.unsynced = false;
        Some(SyncJob {
            db: self.db.clone(),
            path: self.path.clone(),
            epoch: self.applied,
        })
    }

    /// The state the last [`Store::checkpoint`] captured, to be written as a checkpoint.
    pub fn take_checkpoint(&mut self) -> Option<CheckpointJob> {
        self.checkpoint.take()
    }

    /// Replaces an empty store's state with a checkpoint's `rows`, the state after
    /// `epoch`, and syncs: a replica whose store was lost resumes from the checkpoint
    /// instead of from the initial rows (whose epochs the log may have dropped).
    pub fn restore(&mut self, epoch: Epoch, rows: Vec<(Key, Value)>) -> Result<(), StorageError> {
        assert!(
            self.applied == Epoch(0) && !self.loaded,
            "a checkpoint is restored into an empty store"
        );
        self.clear()?;
        self.write_rows(rows, epoch)
    }

    /// Removes every row, the load marker and the applied epoch: what a load or a restore
    /// that a crash interrupted left, or a state a transfer replaces.
    ///
    /// The markers go first, then the rows in batches of [`LOAD_CHUNK_ROWS`]: a crash
    /// partway leaves a store that says it holds nothing (which a start loads, restores or
    /// copies again), never a loaded one with rows missing, and no batch holds a whole
    /// large partition's removals.
    fn clear(&mut self) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        batch.remove(&self.meta, LOADED_KEY);
        batch.remove(&self.meta, APPLIED_EPOCH_KEY);
        fjall_op(&self.path, "clearing the store", || batch.commit())?;
        for space in [&self.user, &self.system] {
            // The iterator reads the keyspace as it was when it began.
            let (mut batch, mut removals) = (self.db.batch(), 0);
            for guard in space.tree.iter() {
                let key = guard
                    .key()
                    .map_err(fjall_error(&self.path, "clearing the store"))?;
                batch.remove(&space.tree, key);
                removals += 1;
                if removals == LOAD_CHUNK_ROWS {
                    let full = std::mem::replace(&mut batch, self.db.batch());
                    fjall_op(&self.path, "clearing the store", || full.commit())?;
                    removals = 0;
                }
            }
            fjall_op(&self.path, "clearing the store", || batch.commit())?;
        }
        self.user.overlay.clear();
        self.system.overlay.clear();
        self.mirror.clear();
        self.loaded = false;
        self.applied = Epoch(0);
        self.durable = Epoch(0);
        self.unsynced = true;
        Ok(())
    }

    /// The rows of image `epoch` from `after` on, read from its snapshot.
    fn try_image_rows(
        &self,
        epoch: Epoch,
        after: Option<&Key>,
        bytes_max: usize,
    ) -> Result<Option<detflow_executor::ImageChunk>, StorageError> {
        let Some(snapshot) = self.images.get(&epoch) else {
            return Ok(None);
        };
        let failed = std::cell::RefCell::new(None);
        let rows = |tree: &Keyspace, from: Bound<&Key>| {
            let from = from.map(|k| k.as_bytes().to_vec());
            let path = &self.path;
            let failed = &failed;
            Box::new(
                snapshot
                    .range(tree, (from, Bound::<Vec<u8>>::Unbounded))
                    .map_while(move |guard| {
                        let row = guard
                            .into_inner()
                            .map_err(fjall_error(path, "reading a state image"))
                            .and_then(|(key, value)| {
                                let key = Key::from_bytes(key.to_vec())
                                    .map_err(|e| corrupt(path, "key".into(), e.to_string()))?;
                                Ok((key, value.to_vec()))
                            });
                        match row {
                            Ok(row) => Some(row),
                            Err(e) => {
                                *failed.borrow_mut() = Some(e);
                                None
                            }
                        }
                    }),
            ) as Box<dyn Iterator<Item = (Key, Value)> + '_>
        };
        let chunk = detflow_executor::image_chunk(
            |from| rows(&self.user.tree, from),
            |from| rows(&self.system.tree, from),
            after,
            bytes_max,
        );
        match failed.into_inner() {
            Some(e) => Err(e),
            None => Ok(Some(chunk)),
        }
    }

    /// Writes one chunk of a state transfer's rows.
    fn try_restore_rows(&mut self, rows: Vec<(Key, Value)>) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for (key, value) in rows {
            if !key.is_system() {
                self.mirror.insert(key.clone(), value.clone());
            }
            batch.insert(&self.space(&key).tree, key.as_bytes(), value);
        }
        fjall_op(&self.path, "writing a copied state", || batch.commit())
    }

    /// Marks a state transfer's copy complete, at `epoch`, and syncs.
    fn try_restore_finish(&mut self, epoch: Epoch) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        batch.insert(&self.meta, LOADED_KEY, b"1".as_slice());
        batch.insert(&self.meta, APPLIED_EPOCH_KEY, epoch.0.to_be_bytes());
        fjall_op(&self.path, "writing a copied state", || batch.commit())?;
        self.loaded = true;
        self.applied = epoch;
        self.unsynced = true;
        self.sync()?;
        Ok(())
    }

    /// Records a finished [`SyncJob`]: `epoch` and every one before it are durable.
    pub fn synced(&mut self, epoch: Epoch) {
        self.durable = self.durable.max(epoch);
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last epoch known durable: committed before the last [`FjallStore::sync`], or
    /// recovered at open.
    pub fn durable_epoch(&self) -> Epoch {
        self.durable
    }

    /// Whether the initial load has completed.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Every user row (bookkeeping excluded), ascending, including writes of the epoch in
    /// progress: for checkers.
    pub fn user_rows(&self) -> Result<Vec<(Key, Value)>, StorageError> {
        Ok(self
            .mirror
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// Every bookkeeping row (`_sys` keys), ascending, including writes of the epoch in
    /// progress.
    pub fn system_rows(&self) -> Result<Vec<(Key, Value)>, StorageError> {
        self.try_scan(&self.system, &Key::default(), &Key::default(), usize::MAX)
    }

    /// Flushes the loaded rows and compacts them into one sorted run, now, while nothing
    /// else runs. Left to the background, compacting a large load (a million TPC-C rows per
    /// partition) started some 30 s into a benchmark and halved its throughput for ~10 s on
    /// a 2-core machine. (fjall marks both calls `doc(hidden)`; they are what its own tests
    /// use to settle a tree.)
    fn settle_after_load(&self) -> Result<(), StorageError> {
        self.user
            .tree
            .rotate_memtable_and_wait()
            .map_err(fjall_error(&self.path, "flushing the loaded rows"))?;
        self.user
            .tree
            .major_compact()
            .map_err(fjall_error(&self.path, "compacting the loaded rows"))
    }

    /// The in-memory user rows under `prefix`, ascending.
    fn mirror_rows<'a>(&'a self, prefix: &'a Key) -> impl Iterator<Item = (Key, Value)> + 'a {
        self.mirror
            .range::<Key, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
    }

    fn load_batch(&self, rows: BTreeMap<Key, Value>) -> OwnedWriteBatch {
        let mut batch = self.db.batch();
        for (key, value) in rows {
            batch.insert(&self.space(&key).tree, key.as_bytes(), value);
        }
        batch
    }

    fn space(&self, key: &Key) -> &Space {
        if key.is_system() {
            &self.system
        } else {
            &self.user
        }
    }

    fn space_mut(&mut self, key: &Key) -> &mut Space {
        if key.is_system() {
            &mut self.system
        } else {
            &mut self.user
        }
    }

    fn try_get(&self, key: &Key) -> Result<Option<Value>, StorageError> {
        if !key.is_system() {
            return Ok(self.mirror.get(key).cloned());
        }
        let space = self.space(key);
        if let Some(pending) = space.overlay.get(key) {
            return Ok(pending.clone());
        }
        let value = space
            .tree
            .get(key.as_bytes())
            .map_err(fjall_error(&self.path, "reading a key"))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// At most `limit` rows of `space` under `prefix` from `from` on, ascending: fjall's
    /// rows merged with the epoch's pending writes, which win on equal keys and hide
    /// deleted ones.
    fn try_scan(
        &self,
        space: &Space,
        prefix: &Key,
        from: &Key,
        limit: usize,
    ) -> Result<Vec<(Key, Value)>, StorageError> {
        let from = from.max(prefix);
        let mut rows = Vec::new();
        let mut pending = space
            .overlay
            .range::<Key, _>((Bound::Included(from), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        for guard in space.tree.range(from.as_bytes().to_vec()..) {
            if rows.len() >= limit {
                break;
            }
            let (key, value) = guard
                .into_inner()
                .map_err(fjall_error(&self.path, "scanning"))?;
            if !key.starts_with(prefix.as_bytes())
                || key.get(prefix.as_bytes().len()) == Some(&0xFF)
            {
                break;
            }
            while let Some((k, v)) = pending.next_if(|(k, _)| k.as_bytes() < &*key) {
                if let Some(v) = v {
                    rows.push((k.clone(), v.clone()));
                }
            }
            match pending.next_if(|(k, _)| k.as_bytes() == &*key) {
                Some((k, Some(v))) => rows.push((k.clone(), v.clone())),
                Some((_, None)) => {}
                None => {
                    let key = Key::from_bytes(key.to_vec())
                        .map_err(|e| corrupt(&self.path, "key".into(), e.to_string()))?;
                    rows.push((key, value.to_vec()));
                }
            }
        }
        rows.extend(pending.filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone()))));
        rows.truncate(limit);
        Ok(rows)
    }

    fn try_commit(&mut self, epoch: Epoch) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for space in [&mut self.user, &mut self.system] {
            write_overlay(&mut batch, space);
        }
        batch.insert(&self.meta, APPLIED_EPOCH_KEY, epoch.0.to_be_bytes());
        fjall_op(&self.path, "committing an epoch", || batch.commit())
    }

    /// Stops the node on an environment failure inside a [`Store`] method, which cannot
    /// return errors (STYLE.md: log with context and stop; recovery is restart + replay).
    #[cold]
    fn fail(&self, error: StorageError) -> ! {
        crate::failstop::fatal(format!(
            "partition store {} failed: {error}",
            self.path.display()
        ))
    }
}

impl Space {
    fn new(tree: Keyspace) -> Space {
        Space {
            tree,
            overlay: BTreeMap::new(),
        }
    }
}

fn write_overlay(batch: &mut OwnedWriteBatch, space: &mut Space) {
    for (key, value) in std::mem::take(&mut space.overlay) {
        match value {
            Some(v) => batch.insert(&space.tree, key.as_bytes(), v),
            None => batch.remove(&space.tree, key.as_bytes()),
        }
    }
}

impl Store for FjallStore {
    fn get(&self, key: &Key) -> Option<Value> {
        self.try_get(key).unwrap_or_else(|e| self.fail(e))
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        if !prefix.is_system() {
            return self.mirror_rows(prefix).collect();
        }
        self.try_scan(self.space(prefix), prefix, prefix, usize::MAX)
            .unwrap_or_else(|e| self.fail(e))
    }

    fn scan_from(&self, prefix: &Key, from: &Key, limit: usize) -> Vec<(Key, Value)> {
        if !prefix.is_system() {
            return self
                .mirror_rows(prefix)
                .filter(|(k, _)| k >= from)
                .take(limit)
                .collect();
        }
        self.try_scan(self.space(prefix), prefix, from, limit)
            .unwrap_or_else(|e| self.fail(e))
    }

    fn scan_range(
        &self,
        prefix: &Key,
        from: Bound<&Key>,
        to: Option<&Key>,
        limit: usize,
    ) -> Vec<(Key, Value)> {
        // Snapshot scans read user tables only, and the mirror holds all of them.
        detflow_executor::range_rows(&self.mirror, prefix, from, to, limit)
    }

    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        if !prefix.is_system() {
            return self.mirror_rows(prefix).next();
        }
        self.try_scan(self.space(prefix), prefix, prefix, 1)
            .unwrap_or_else(|e| self.fail(e))
            .into_iter()
            .next()
    }

    fn put(&mut self, key: Key, value: Value) {
        if !key.is_system() {
            self.mirror.insert(key.clone(), value.clone());
        }
        self.space_mut(&key).overlay.insert(key, Some(value));
    }

    fn delete(&mut self, key: &Key) {
        if !key.is_system() {
            self.mirror.remove(key);
        }
        self.space_mut(key).overlay.insert(key.clone(), None);
    }

    fn replace(&mut self, key: Key, value: Option<Value>) -> Option<Value> {
        if key.is_system() {
            let old = self.get(&key);
            self.space_mut(&key).overlay.insert(key, value);
            return old;
        }
        let old = match &value {
            Some(v) => self.mirror.insert(key.clone(), v.clone()),
            None => self.mirror.remove(&key),
        };
        self.space_mut(&key).overlay.insert(key, value);
        old
    }

    fn commit_epoch(&mut self, epoch: Epoch) {
        assert!(epoch > self.applied, "epochs commit in increasing order");
        // Set first: a failed commit may have reached the journal partly.
        self.unsynced = true;
        if let Err(e) = self.try_commit(epoch) {
            self.fail(e);
        }
        self.applied = epoch;
    }

    fn applied_epoch(&self) -> Epoch {
        self.applied
    }

    fn checkpoint(&mut self, epoch: Epoch) {
        assert_eq!(
            epoch, self.applied,
            "a checkpoint of the epoch just committed"
        );
        self.checkpoint = Some(CheckpointJob {
            epoch,
            snapshot: self.db.snapshot(),
            spaces: [self.user.tree.clone(), self.system.tree.clone()],
            path: self.path.clone(),
        });
    }

    fn capture_image(&mut self) -> Epoch {
        // Writes of the epoch in progress wait in the overlays: a snapshot holds only
        // committed epochs.
        self.images.insert(self.applied, self.db.snapshot());
        self.applied
    }

    fn image_rows(
        &self,
        epoch: Epoch,
        after: Option<&Key>,
        bytes_max: usize,
    ) -> Option<(Vec<(Key, Value)>, bool)> {
        self.try_image_rows(epoch, after, bytes_max)
            .unwrap_or_else(|e| self.fail(e))
    }

    fn release_image(&mut self, epoch: Epoch) {
        self.images.remove(&epoch);
    }

    fn restore_begin(&mut self) {
        if let Err(e) = self.clear() {
            self.fail(e);
        }
    }

    fn restore_rows(&mut self, rows: Vec<(Key, Value)>) {
        if let Err(e) = self.try_restore_rows(rows) {
            self.fail(e);
        }
    }

    fn restore_finish(&mut self, epoch: Epoch) {
        if let Err(e) = self.try_restore_finish(epoch) {
            self.fail(e);
        }
    }
}

impl fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .field("applied", &self.applied)
            .field("durable", &self.durable)
            .field("loaded", &self.loaded)
            .field("pending_user_writes", &self.user.overlay.len())
            .field("pending_system_writes", &self.system.overlay.len())
            .finish_non_exhaustive()
    }
}

/// Opens the database in `dir` and its `meta` keyspace, checks (or, for a new store,
/// writes) the format version and kind, then opens the `data` keyspaces in order.
fn open_database(
    dir: &Path,
    kind: StoreKind,
    data: &[&str],
) -> Result<(Database, Keyspace, Vec<Keyspace>), StorageError> {
    let cache_bytes = match kind {
        StoreKind::Log => LOG_CACHE_BYTES,
        StoreKind::State => STATE_CACHE_BYTES,
    };
    if is_absent(dir)? {
        create_staged(dir, kind, cache_bytes)?;
    }
    let db = database_builder(dir, cache_bytes)
        .open()
        .map_err(fjall_error(dir, "opening the database"))?;
    // The header is checked before the data keyspaces are opened, so opening a store of
    // another version or kind creates nothing in it.
    let others = db.keyspace_count();
    let meta = db
        .keyspace(META, KeyspaceCreateOptions::default)
        .map_err(fjall_error(dir, "opening the meta keyspace"))?;
    let version = meta
        .get(FORMAT_VERSION_KEY)
        .map_err(fjall_error(dir, "reading the format version"))?;
    match version {
        Some(bytes) => check_header(dir, &meta, kind, &bytes)?,
        None => {
            let meta_empty = meta
                .is_empty()
                .map_err(fjall_error(dir, "reading the meta keyspace"))?;
            if others > 0 || !meta_empty {
                return Err(corrupt(
                    dir,
                    "header".into(),
                    "the database holds data but no storage format version".into(),
                ));
            }
            write_header(&db, &meta, kind, dir)?;
        }
    }
    let spaces = data
        .iter()
        .map(|name| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES_MAX)
            })
            .map_err(fjall_error(dir, "opening a keyspace"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((db, meta, spaces))
}

/// fjall's settings for every store of a node.
fn database_builder(dir: &Path, cache_bytes: u64) -> fjall::DatabaseBuilder<Database> {
    Database::builder(dir)
        .cache_size(cache_bytes)
        .max_journaling_size(JOURNAL_BYTES_MAX)
        // Compressing large values in the journal cost CPU on every write and again on
        // every restart's replay (lz4 was most of a reopen's profile), to save disk bytes
        // the next flush would reclaim anyway.
        .journal_compression(fjall::CompressionType::None)
        // A node opens several stores (its log and one per partition replica) on a machine
        // whose cores its tasks already use: one flush-and-compaction thread each, not one
        // per core each.
        .worker_threads(1)
}

/// Writes and syncs a new store's header: the format version and the kind.
fn write_header(
    db: &Database,
    meta: &Keyspace,
    kind: StoreKind,
    dir: &Path,
) -> Result<(), StorageError> {
    let mut batch = db.batch();
    batch.insert(
        meta,
        FORMAT_VERSION_KEY,
        STORAGE_FORMAT_VERSION.to_be_bytes(),
    );
    batch.insert(meta, KIND_KEY, kind.tag());
    batch
        .commit()
        .map_err(fjall_error(dir, "writing the header"))?;
    persist(db, dir, "syncing the header")
}

/// Whether `dir` holds no store yet: it does not exist or is an empty directory.
fn is_absent(dir: &Path) -> Result<bool, StorageError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(StorageError::Create {
            path: dir.to_path_buf(),
            doing: "listing the directory",
            source,
        }),
    }
}

/// Creates a store with its header in a staging directory beside `dir` and renames it into
/// place, so that `dir` holds either nothing or a whole store with its header.
///
/// fjall's first open writes several files; a process killed in the middle of it used to
/// leave a directory that fjall refused to open again ("File exists"), and a node that
/// could never restart. A staging directory left by such a kill is removed and redone.
fn create_staged(dir: &Path, kind: StoreKind, cache_bytes: u64) -> Result<(), StorageError> {
    let create_error = |doing: &'static str| {
        let path = dir.to_path_buf();
        move |source| StorageError::Create {
            path,
            doing,
            source,
        }
    };
    let name = dir.file_name().ok_or_else(|| StorageError::Create {
        path: dir.to_path_buf(),
        doing: "naming the staging directory",
        source: std::io::Error::other("the store's path has no last component"),
    })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut staged_name = std::ffi::OsString::from(".");
    staged_name.push(name);
    staged_name.push(".creating");
    let staged = parent.join(staged_name);
    std::fs::create_dir_all(&parent).map_err(create_error("creating the parent directory"))?;
    match std::fs::remove_dir_all(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(create_error("removing an unfinished creation")(e)),
    }
    {
        let db = database_builder(&staged, cache_bytes)
            .open()
            .map_err(fjall_error(&staged, "creating the database"))?;
        let meta = db
            .keyspace(META, KeyspaceCreateOptions::default)
            .map_err(fjall_error(&staged, "creating the meta keyspace"))?;
        write_header(&db, &meta, kind, &staged)?;
    }
    // rename(2) replaces an empty directory atomically; a non-empty one it refuses, which
    // is what we want if something appeared in `dir` meanwhile.
    std::fs::rename(&staged, dir).map_err(create_error("moving the new store into place"))?;
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(create_error("syncing the parent directory"))?;
    Ok(())
}

/// Checks the version first: a future version may record the kind differently.
fn check_header(
    dir: &Path,
    meta: &Keyspace,
    kind: StoreKind,
    version: &[u8],
) -> Result<(), StorageError> {
    let found = <[u8; 4]>::try_from(version)
        .map(u32::from_be_bytes)
        .map_err(|_| {
            corrupt(
                dir,
                "format version".into(),
                format!("{} bytes, expected 4", version.len()),
            )
        })?;
    if found != STORAGE_FORMAT_VERSION {
        return Err(StorageError::Version {
            path: dir.to_path_buf(),
            found,
            supported: STORAGE_FORMAT_VERSION,
        });
    }
    let tag = meta
        .get(KIND_KEY)
        .map_err(fjall_error(dir, "reading the store kind"))?;
    if tag.as_deref() != Some(kind.tag()) {
        return Err(StorageError::Kind {
            path: dir.to_path_buf(),
            found: tag.map_or_else(
                || "no kind".to_string(),
                |t| String::from_utf8_lossy(&t).into_owned(),
            ),
            expected: kind,
        });
    }
    Ok(())
}

fn decode_u64(path: &Path, what: &str, bytes: &[u8]) -> Result<u64, StorageError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| {
            corrupt(
                path,
                what.to_string(),
                format!("{} bytes, expected 8", bytes.len()),
            )
        })
}

fn corrupt(path: &Path, what: String, detail: String) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        what,
        detail,
    }
}

/// A storage operation slower than this is logged: a stall here stalls every epoch.
const SLOW_STORAGE_OP: Duration = Duration::from_millis(100);

/// Runs the fjall operation `op` (`doing` on the store at `path`), logs it if it was
/// slow, and names the store and the operation in its error.
#[allow(clippy::disallowed_methods)] // how long the disk took is the point
fn fjall_op<T>(
    path: &Path,
    doing: &'static str,
    op: impl FnOnce() -> Result<T, fjall::Error>,
) -> Result<T, StorageError> {
    let start = Instant::now();
    let result = op();
    let took = start.elapsed();
    if took >= SLOW_STORAGE_OP {
        tracing::warn!(path = %path.display(), "slow storage operation: {doing} took {took:?}");
    }
    result.map_err(fjall_error(path, doing))
}

/// Makes every write to `db` so far durable (fsync).
fn persist(db: &Database, path: &Path, doing: &'static str) -> Result<(), StorageError> {
    fjall_op(path, doing, || db.persist(PersistMode::SyncAll))
}

fn fjall_error(path: &Path, doing: &'static str) -> impl FnOnce(fjall::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Fjall {
        path,
        doing,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_meta(dir: &Path, key: &[u8], value: &[u8]) {
        let db = Database::builder(dir).open().unwrap();
        let meta = db.keyspace(META, KeyspaceCreateOptions::default).unwrap();
        meta.insert(key, value).unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }

    #[test]
    fn log_store_refuses_another_format_version() {
        let dir = tempfile::tempdir().unwrap();
        drop(LogStore::open(dir.path()).unwrap());
        set_meta(dir.path(), FORMAT_VERSION_KEY, &7u32.to_be_bytes());
        let err = LogStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Version {
                    found: 7,
                    supported: STORAGE_FORMAT_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("version 7") && message.contains("version 1"),
            "{message}"
        );
    }

    #[test]
    fn fjall_store_refuses_another_format_version() {
        let dir = tempfile::tempdir().unwrap();
        drop(FjallStore::open(dir.path()).unwrap());
        set_meta(dir.path(), FORMAT_VERSION_KEY, &2u32.to_be_bytes());
        let err = FjallStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::Version { found: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn stores_refuse_each_other() {
        let log = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        drop(LogStore::open(log.path()).unwrap());
        drop(FjallStore::open(state.path()).unwrap());
        let err = FjallStore::open(log.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Kind {
                    expected: StoreKind::State,
                    ..
                }
            ),
            "{err}"
        );
        let err = LogStore::open(state.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Kind {
                    expected: StoreKind::Log,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let other = db
                .keyspace("other", KeyspaceCreateOptions::default)
                .unwrap();
            other.insert("a", "b").unwrap();
        }
        let err = FjallStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_corrupt_log_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(LogStore::open(dir.path()).unwrap());
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let log = db.keyspace(LOG, KeyspaceCreateOptions::default).unwrap();
            log.insert(1u64.to_be_bytes(), b"\xc1".as_slice()).unwrap();
        }
        let err = LogStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }

    /// `replace` answers what `get` would have, and leaves what `put`/`delete` would, for
    /// user rows (the mirror) and bookkeeping (fjall under the epoch's pending writes),
    /// across a commit and a reopen.
    #[test]
    fn replace_returns_the_old_value_and_writes_like_put_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let user = Key::table("t").u64(1);
        let system = Key::table(detflow_protocol::SYSTEM_TABLE)
            .str("results")
            .u64(1);
        {
            let mut store = FjallStore::open(dir.path()).unwrap();
            for key in [&user, &system] {
                assert_eq!(store.replace(key.clone(), Some(vec![1])), None);
                assert_eq!(store.replace(key.clone(), Some(vec![2])), Some(vec![1]));
            }
            store.commit_epoch(Epoch(1));
            for key in [&user, &system] {
                assert_eq!(store.replace(key.clone(), None), Some(vec![2]));
                assert_eq!(store.get(key), None);
                assert_eq!(store.replace(key.clone(), Some(vec![3])), None);
            }
            store.commit_epoch(Epoch(2));
            assert_eq!(store.replace(user.clone(), None), Some(vec![3]));
            store.commit_epoch(Epoch(3));
        }
        let reopened = FjallStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get(&user), None);
        assert_eq!(reopened.get(&system), Some(vec![3]));
    }

    /// A checkpoint is the state after its epoch, whatever the store does after it, less
    /// the reads outbox; restored into an empty store, it is that state at that epoch,
    /// across a reopen.
    #[test]
    fn a_checkpoint_holds_its_epoch_and_restores_into_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FjallStore::open(dir.path()).unwrap();
        let (a, b) = (Key::table("t").u64(1), Key::table("t").u64(2));
        let outbox = Key::table(detflow_protocol::SYSTEM_TABLE)
            .str("outbox")
            .u64(0)
            .u64(1);
        let results = Key::table(detflow_protocol::SYSTEM_TABLE)
            .str("results")
            .u64(1);
        store.put(a.clone(), vec![1]);
        store.put(outbox.clone(), vec![7]);
        store.put(results.clone(), vec![8]);
        store.commit_epoch(Epoch(1));
        store.checkpoint(Epoch(1));
        // Later epochs change the store, not the checkpoint.
        store.put(a.clone(), vec![2]);
        store.put(b.clone(), vec![3]);
        store.commit_epoch(Epoch(2));
        let job = store.take_checkpoint().expect("captured");
        assert!(store.take_checkpoint().is_none(), "taken once");
        assert_eq!(job.epoch(), Epoch(1));
        let rows = job.rows().unwrap();
        assert_eq!(rows, [(a.clone(), vec![1]), (results.clone(), vec![8])]);

        let other = tempfile::tempdir().unwrap();
        let mut restored = FjallStore::open(other.path()).unwrap();
        restored.restore(Epoch(1), rows).unwrap();
        drop(restored);
        let reopened = FjallStore::open(other.path()).unwrap();
        assert_eq!(reopened.applied_epoch(), Epoch(1));
        assert!(reopened.is_loaded());
        assert_eq!(reopened.get(&a), Some(vec![1]));
        assert_eq!(reopened.get(&b), None);
        assert_eq!(reopened.get(&results), Some(vec![8]));
        assert_eq!(reopened.get(&outbox), None);
    }

    #[test]
    fn a_checkpoint_writer_reads_the_same_rows_as_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FjallStore::open(dir.path()).unwrap();
        let system = |name: &str| Key::table(detflow_protocol::SYSTEM_TABLE).str(name).u64(1);
        for key in [
            Key::table("t").u64(1),
            system("outbox"),
            system("released"),
            system("results"),
            Key::table(detflow_protocol::SYSTEM_TABLE).str("outboxes"),
        ] {
            store.put(key, vec![1, 2, 3]);
        }
        store.commit_epoch(Epoch(1));
        store.checkpoint(Epoch(1));
        let job = store.take_checkpoint().expect("captured");
        let rows: Vec<(Vec<u8>, Vec<u8>)> = job
            .rows()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect();
        let bytes: Vec<(Vec<u8>, Vec<u8>)> = job
            .iter_bytes()
            .map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(bytes, rows);
        assert_eq!(
            rows.len(),
            3,
            "the outbox and its release mark are left out"
        );
    }

    #[test]
    fn a_state_transfer_clears_a_large_store_in_batches_markers_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FjallStore::open(dir.path()).unwrap();
        let rows = (0..2 * LOAD_CHUNK_ROWS as u64 + 7).map(|i| (Key::table("t").u64(i), vec![1]));
        assert!(store.load(rows).unwrap());
        store.commit_epoch(Epoch(1));
        store.sync().unwrap();
        store.restore_begin();
        assert!(!store.is_loaded());
        assert_eq!(store.applied_epoch(), Epoch(0));
        store.sync().unwrap();
        drop(store);
        let reopened = FjallStore::open(dir.path()).unwrap();
        assert!(!reopened.is_loaded());
        assert_eq!(reopened.user.tree.iter().count(), 0, "every row is gone");
    }

    #[test]
    fn scans_from_a_key_see_committed_and_pending_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FjallStore::open(dir.path()).unwrap();
        let prefix = Key::table(detflow_protocol::SYSTEM_TABLE)
            .str("stream")
            .str("s");
        for i in [1u64, 3, 5] {
            store.put(prefix.clone().u64(i), vec![i as u8]);
        }
        store.commit_epoch(Epoch(1));
        store.put(prefix.clone().u64(4), vec![4]);
        store.delete(&prefix.clone().u64(5));
        store.put(
            Key::table(detflow_protocol::SYSTEM_TABLE)
                .str("stream")
                .str("t")
                .u64(2),
            vec![9],
        );
        let from = prefix.clone().u64(2);
        let got: Vec<u8> = store
            .scan_from(&prefix, &from, 10)
            .into_iter()
            .map(|(_, v)| v[0])
            .collect();
        assert_eq!(got, [3, 4]);
        assert_eq!(store.scan_from(&prefix, &prefix, 2).len(), 2);
    }

    #[test]
    fn stored_rows_of_another_schema_are_named() {
        use detflow_executor::{FieldType, Registry, Service, Table};
        let dir = tempfile::tempdir().unwrap();
        let mut store = FjallStore::open(dir.path()).unwrap();
        // A shop's stock: (stock, item) -> units.
        let rows = vec![(
            Key::table("stock").u64(1),
            detflow_protocol::codec::encode(&40u64),
        )];
        store.load(rows).unwrap();
        // The same table as another service declares it: (stock, w, i) -> a record.
        let stock = Table::new("stock")
            .key("w_id", FieldType::U64)
            .key("i_id", FieldType::U64)
            .column("quantity", FieldType::I64)
            .column("data", FieldType::Str);
        let mut registry = Registry::new();
        registry
            .add_service(Service::new("warehouse").table(stock))
            .unwrap();
        let err = registry.check_stored(&store, 1_000).unwrap_err();
        assert_eq!(err.table, "stock");
        assert!(err.reason.contains("1 fields"), "{err}");
    }
}
