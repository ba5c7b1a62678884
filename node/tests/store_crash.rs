//! Crash test of the real partition store (issue #10): a child process runs a real
//! [`Executor`] over [`FjallStore`] until the parent kills it (SIGKILL) at a random moment,
//! many times over the same directory; after every kill the parent reopens the store and
//! checks it against a reference computed from the log alone.
//!
//! The simulator runs a model of the store (`sim/src/store.rs`) that assumes an epoch's
//! rows, its applied epoch, its result-table records and its outbox records become durable
//! in one step. This test holds `FjallStore` to the same contract, so the two cannot drift
//! apart: after any kill, the reopened store must be exactly the state after epochs
//! `1..=E` for its applied epoch `E` (user rows, result table, outbox: nothing of `E + 1`,
//! nothing of `E` missing), and `E` must be the last epoch whose commit returned, or the
//! one being committed when the kill came.
//!
//! ```text
//!  parent                                        child (crash_child: this binary again)
//!  ──────                                        ─────
//!  write the peer's state at E ──────────────▶  open FjallStore (applied E), load once
//!  sleep a seeded random delay                   peer = executor on that state (MemStore)
//!                                                greet each other (Connected → Hello)
//!                                                loop: epoch e, commit (logged before and
//!                                                after), sometimes sync, acks
//!  SIGKILL ──────────────────────────────────▶  dies anywhere: inside a commit, in fsync,
//!                                                executing, during recovery or the load
//!  reopen: applied E', rows, bookkeeping
//!  E' against the log; reference: restart at E, replay to E'; compare every row
//! ```
//!
//! The workload is `kv.txn` over two partitions: partition 0 runs on the store under test,
//! partition 1 is its peer, whose reads make multi-partition transactions (and so outbox
//! records and acks) part of most epochs. The peer is no store under test: it lives in
//! memory and the parent hands the child its state at `E` (the reference's), so the child
//! resumes a whole, consistent system. The epochs are a pure function of the seed, and the
//! child drives both executors in lock-step (every message delivered before the next
//! epoch), so the reference, restarted at the same epochs as the child, emits the same
//! writes in the same order, including the acks that delete outbox records.
//!
//! `the_checker_catches_a_split_commit` plants the bug the test exists to catch (user rows
//! committed in one fjall batch, then a sync, then bookkeeping and the applied epoch in a
//! second one) and requires the checker to report it.
//!
//! Knobs: `DETFLOW_STORE_CRASH_KILLS` (default 30), `DETFLOW_STORE_CRASH_SEED` (default
//! random, printed), `DETFLOW_STORE_CRASH_DIR` (where the store lives; default `/dev/shm`).
//! The long run:
//! `DETFLOW_STORE_CRASH_KILLS=2000 cargo test --release -p detflow-node --test store_crash -- --nocapture`

use detflow_executor::{Executor, Input, MemStore, Output, Procedure, Registry, Store};
use detflow_node::storage::{FjallStore, StorageError};
use detflow_protocol::{
    Batch, ClientId, DetRng, Epoch, Key, LOG_FORMAT_VERSION, Machine, NodeId, Owner, PartitionId,
    Plan, RequestSeq, Time, Transaction, Value, codec,
};
use detflow_scheduler::PartitionMap;
use detflow_workloads::Workload;
use detflow_workloads::kv::{self, AdHoc, Kv, KvConfig, KvTxn};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How many kills the default run makes.
const KILLS_ENV: &str = "DETFLOW_STORE_CRASH_KILLS";
const KILLS_DEFAULT: u64 = 30;
/// The seed of the epochs and the kill delays.
const SEED_ENV: &str = "DETFLOW_STORE_CRASH_SEED";
/// Set by the parent: the directory the child works in (its presence makes it the child).
const CHILD_ENV: &str = "DETFLOW_STORE_CRASH_CHILD";
/// Where the run's directory goes (default: `/dev/shm` if present, else the temp dir).
const DIR_ENV: &str = "DETFLOW_STORE_CRASH_DIR";
/// Set by the parent: `split` plants the split commit in the child.
const MODE_ENV: &str = "DETFLOW_STORE_CRASH_MODE";
/// The ignored test that is the child.
const CHILD_TEST: &str = "crash_child";

/// Kill delays are uniform in `0..=DELAY_MS_MAX`, counted from the moment the child says
/// it is ready (store open, peers greeted). Reopening replays fjall's journal, which grows
/// to tens of MiB between memtable flushes, so start-up alone can take longer than the
/// delay; counting from the spawn would spend most kills there.
const DELAY_MS_MAX: u64 = 100;
/// One kill in this many counts its delay from the spawn instead, so that kills also land
/// during start-up: opening, journal recovery, the initial load, the greeting.
const STARTUP_KILL_ONE_IN: u64 = 8;
/// How often, and how many times, the parent looks for the child's ready line.
const READY_POLL: Duration = Duration::from_millis(1);
const READY_POLLS_MAX: u32 = 60_000;
/// The planted split commit must be caught within this many kills. Every kill that lands
/// between the two halves of a commit of an epoch that wrote a row reveals it, and the
/// pause between them makes that window most of the child's time.
const SPLIT_KILLS_MAX: u64 = 60;
/// The pause between the two halves of a split commit: it stands in for a disk's fsync,
/// which costs nothing on the memory file system the test prefers.
const SPLIT_PAUSE: Duration = Duration::from_millis(2);

const UNDER_TEST: PartitionId = PartitionId(0);
const PEER: PartitionId = PartitionId(1);
const PARTITIONS: u32 = 2;
/// Short, so that results age out of the table (deletes of bookkeeping) every epoch.
const RESULT_EPOCHS_RETAINED: u64 = 4;
/// Keys `kv 0..LIST_KEYS` are lists (appends, deletes, gets); the next `REGISTER_KEYS` are
/// registers (puts, compare-and-sets, deletes, gets), as in the `kv` workload.
const LIST_KEYS: u64 = 24;
const REGISTER_KEYS: u64 = 24;
/// Transactions per epoch: `0..=TXNS_MAX` (empty epochs commit only their applied epoch).
const TXNS_MAX: u64 = 12;
/// Operations per transaction: `1..=OPS_MAX`.
const OPS_MAX: u64 = 5;
/// Register values carry `0..=PAD_BYTES_MAX` bytes of padding, and in one epoch in
/// `BIG_EPOCH_ONE_IN` up to `BIG_PAD_BYTES_MAX`. fjall writes a batch through an 8 KiB
/// buffer and then writes the rest out, so a batch larger than the buffer reaches the OS
/// in several writes, and a kill between them leaves a torn batch, which recovery must
/// drop whole. Most epochs stay small, so that the journal (replayed at every reopen)
/// grows slowly.
const PAD_BYTES_MAX: u64 = 300;
const BIG_PAD_BYTES_MAX: u64 = 6_000;
const BIG_EPOCH_ONE_IN: u64 = 5;
/// The child syncs after an epoch with this probability, so several committed epochs
/// often wait for one sync, as in the node when plans queue up.
const SYNC_CHANCE: f64 = 0.3;
/// A bound on the messages of one lock-step delivery (an epoch has at most a few dozen).
const DELIVERIES_MAX: usize = 100_000;
/// In split mode the store's own epoch is the test's epoch shifted by this many bits, so
/// that the first half of a commit can take a number between two test epochs.
const SPLIT_SHIFT: u32 = 20;

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn fjall_store_survives_kills_during_epoch_commits() {
    let seed = seed();
    let kills = env_u64(KILLS_ENV).unwrap_or(KILLS_DEFAULT);
    eprintln!(
        "store_crash: seed {seed}, {kills} kills; replay: {SEED_ENV}={seed} {KILLS_ENV}={kills} \
         cargo test --release -p detflow-node --test store_crash -- --nocapture"
    );
    match crash_run(seed, kills, Mode::Atomic) {
        Ok(figures) => {
            eprintln!("store_crash: seed {seed}: {figures}");
            assert!(
                figures.epoch > Epoch(0),
                "the child never committed an epoch: nothing was tested"
            );
        }
        Err(failure) => panic!(
            "seed {seed}, kill {}: {}\nreplay (the same epochs and delays; where the kills \
             land depends on timing): {SEED_ENV}={seed} {KILLS_ENV}={kills} cargo test \
             --release -p detflow-node --test store_crash -- --nocapture",
            failure.kill, failure.message
        ),
    }
}

#[test]
fn the_checker_catches_a_split_commit() {
    let seed = seed();
    match crash_run(seed, SPLIT_KILLS_MAX, Mode::Split) {
        Ok(figures) => {
            panic!("seed {seed}: a commit split in two batches went unnoticed through {figures}")
        }
        Err(failure) => {
            assert!(
                failure.caught,
                "seed {seed}: the run failed before the checker: {}",
                failure.message
            );
            eprintln!(
                "store_crash: seed {seed}: the split commit was caught at kill {}: {}",
                failure.kill, failure.message
            );
        }
    }
}

#[test]
#[ignore = "the child half of the crash tests: they run it and kill it"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let seed = env_u64(SEED_ENV).expect("the parent passes the seed");
    let mode = Mode::from_env();
    if let Err(e) = child_main(Path::new(&dir), seed, mode) {
        panic!("crash child: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// The epochs: a pure function of the seed.

/// The seeded workload: its partition map, procedures and epochs.
struct World {
    seed: u64,
    map: PartitionMap,
    registry: Arc<Registry>,
    kv: Kv,
}

impl World {
    fn new(seed: u64) -> World {
        let kv = Kv::new(KvConfig {
            keys: LIST_KEYS + REGISTER_KEYS,
            register_keys: REGISTER_KEYS,
            ops_max: OPS_MAX as usize,
            partitions: PARTITIONS,
            ..KvConfig::default()
        });
        let map = PartitionMap::new(kv.scheme()).expect("the kv scheme is valid");
        let mut registry = Registry::new();
        kv.register(&mut registry).expect("the service registers");
        World {
            seed,
            map,
            registry: Arc::new(registry),
            kv,
        }
    }

    /// The rows `partition` loads before epoch 1: its share of the kv registers.
    fn initial_rows(&self, partition: PartitionId) -> Vec<(Key, Value)> {
        let mut rows = self.kv.load();
        rows.retain(|(key, _)| self.map.owner(key) == Ok(Owner::Partition(partition)));
        rows
    }

    /// The generator of epoch `e`, independent of every other epoch's draws, so that a
    /// process resuming at any epoch sees the same epochs.
    fn rng(&self, e: Epoch, stream: u64) -> DetRng {
        DetRng::new(self.seed ^ e.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream)
    }

    /// Whether the child syncs (and the executors exchange acks) after epoch `e`.
    fn syncs_after(&self, e: Epoch) -> bool {
        self.rng(e, 0x5EED_0001).chance(SYNC_CHANCE)
    }

    /// Epoch `e`'s plans, one per partition.
    fn plans(&self, e: Epoch) -> Vec<Plan> {
        let mut rng = self.rng(e, 0);
        let pad_max = if rng.below(BIG_EPOCH_ONE_IN) == 0 {
            BIG_PAD_BYTES_MAX
        } else {
            PAD_BYTES_MAX
        };
        let txns = (0..rng.range(0, TXNS_MAX))
            .map(|t| {
                let args = kv_txn(&mut rng, e, t, pad_max);
                Arc::new(Transaction {
                    client: ClientId(1),
                    seq: RequestSeq(e.0 * (TXNS_MAX + 1) + t + 1),
                    gateway: NodeId(0),
                    procedure: AdHoc::NAME.to_string(),
                    footprint: AdHoc::footprint(&args),
                    args: codec::encode(&args),
                })
            })
            .collect();
        let batch = Batch {
            version: LOG_FORMAT_VERSION,
            epoch: e,
            txns,
        };
        detflow_scheduler::schedule(&batch, &self.map).expect("the batch is of this build")
    }
}

/// Transaction `t` of epoch `e`: list appends and deletes, register puts, compare-and-sets
/// and deletes, and gets, over few keys of both partitions. Lists are deleted now and then,
/// so they stay short; compare-and-sets often fail, so epochs carry aborts too.
fn kv_txn(rng: &mut DetRng, e: Epoch, t: u64, pad_max: u64) -> KvTxn {
    let mut txn = KvTxn::new();
    for o in 0..rng.range(1, OPS_MAX) {
        let tag = format!("e{}t{t}o{o}", e.0).into_bytes();
        if rng.chance(0.5) {
            let key = kv::key(rng.below(LIST_KEYS));
            txn = match rng.below(10) {
                0..6 => txn.append(key, tag),
                6 => txn.delete(key),
                _ => txn.get(key),
            };
        } else {
            let key = kv::key(LIST_KEYS + rng.below(REGISTER_KEYS));
            let mut value = tag;
            value.resize(value.len() + rng.range(0, pad_max) as usize, b'.');
            txn = match rng.below(10) {
                0..4 => txn.put(key, value),
                4..6 => {
                    let expected = rng.chance(0.5).then(|| kv::REGISTER_INITIAL.to_vec());
                    txn.cas(key, expected, Some(value))
                }
                6 => txn.delete(key),
                _ => txn.get(key),
            };
        }
    }
    txn
}

// ---------------------------------------------------------------------------------------
// The lock-step driver, shared by the child and the reference.

/// The executor under test and its peer, driven in lock-step: every message is delivered
/// before the next epoch begins, so a run is a pure function of the stores it starts from
/// and of the epochs.
struct Pair<S: Store> {
    under: Executor<S>,
    peer: Executor<MemStore>,
}

impl<S: Store> Pair<S> {
    /// Restarts both executors on these stores, as a restarted node does: each greets the
    /// other, which acknowledges what the greeter made durable and re-sends what it lacks.
    fn start(world: &World, under: S, peer: MemStore) -> Result<Pair<S>, String> {
        if under.applied_epoch() != peer.applied_epoch() {
            return Err(format!(
                "the store is at epoch {} but the peer at {}",
                under.applied_epoch(),
                peer.applied_epoch()
            ));
        }
        let mut under = Executor::new(UNDER_TEST, PARTITIONS, world.registry.clone(), under);
        let mut peer = Executor::new(PEER, PARTITIONS, world.registry.clone(), peer);
        under.set_result_epochs_retained(RESULT_EPOCHS_RETAINED);
        peer.set_result_epochs_retained(RESULT_EPOCHS_RETAINED);
        let mut pair = Pair { under, peer };
        pair.deliver(vec![
            // Both run on node 0, where executors are placed by default.
            (UNDER_TEST, Input::Connected { node: NodeId(0) }),
            (PEER, Input::Connected { node: NodeId(0) }),
        ])?;
        Ok(pair)
    }

    /// Runs epoch `e` on both executors, to its commit.
    fn run_epoch(&mut self, world: &World, e: Epoch) -> Result<(), String> {
        let mut plans = world.plans(e).into_iter();
        let (Some(under), Some(peer)) = (plans.next(), plans.next()) else {
            return Err(format!("epoch {e} has no plan for each partition"));
        };
        self.deliver(vec![
            (UNDER_TEST, Input::Plan(under)),
            (PEER, Input::Plan(peer)),
        ])?;
        let next = (self.under.next_epoch(), self.peer.next_epoch());
        if next != (e.next(), e.next()) {
            return Err(format!("epoch {e} did not complete: next epochs {next:?}"));
        }
        Ok(())
    }

    /// Tells both executors that the store under test is durable up to `durable` (the peer
    /// is durable up to what it applied); they acknowledge it to each other.
    fn synced(&mut self, durable: Epoch) -> Result<(), String> {
        let peer = self.peer.store().applied_epoch();
        self.deliver(vec![
            (UNDER_TEST, Input::Durable { up_to: durable }),
            (PEER, Input::Durable { up_to: peer }),
        ])
    }

    /// Delivers `inputs` and every message they cause, first in, first out.
    fn deliver(&mut self, inputs: Vec<(PartitionId, Input)>) -> Result<(), String> {
        let mut queue = VecDeque::from(inputs);
        let mut out = Vec::new();
        let mut delivered = 0;
        while let Some((to, input)) = queue.pop_front() {
            delivered += 1;
            if delivered > DELIVERIES_MAX {
                return Err(format!("more than {DELIVERIES_MAX} messages in one step"));
            }
            match to {
                UNDER_TEST => self.under.handle(Time(0), input, &mut out),
                PEER => self.peer.handle(Time(0), input, &mut out),
                other => return Err(format!("a message for partition {other}")),
            }
            let from = to;
            for output in out.drain(..) {
                match output {
                    Output::SendReads { to, reads } => {
                        queue.push_back((to.partition, Input::RemoteReads(reads)));
                    }
                    Output::SendAck { to, durable } => {
                        let node = NodeId(0);
                        let ack = Input::Ack {
                            from,
                            node,
                            durable,
                        };
                        queue.push_back((to.partition, ack));
                    }
                    Output::SendHello { to, durable } => {
                        let node = NodeId(0);
                        let hello = Input::Hello {
                            from,
                            node,
                            durable,
                        };
                        queue.push_back((to.partition, hello));
                    }
                    // Results go to gateways and applied epochs to the driver: neither
                    // touches a store (the result table is checked where it is kept).
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The store the child writes through, and the planted bug.

/// Whether the child commits epochs as `FjallStore` does or with the planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `FjallStore` as it is: one batch per epoch.
    Atomic,
    /// The planted bug: an epoch's user rows commit first (with an applied epoch that still
    /// names the previous epoch), then a sync, then its bookkeeping and its applied epoch.
    Split,
}

impl Mode {
    fn from_env() -> Mode {
        match std::env::var(MODE_ENV).as_deref() {
            Ok("split") => Mode::Split,
            _ => Mode::Atomic,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Atomic => "atomic",
            Mode::Split => "split",
        }
    }
}

/// [`FjallStore`], or in [`Mode::Split`] a wrapper that commits each epoch in two batches.
///
/// The split needs no hook in `FjallStore`: store epoch `e << SPLIT_SHIFT` is test epoch
/// `e`, and every store epoch below `(e + 1) << SPLIT_SHIFT` still reads as `e`. To commit
/// epoch `e + 1` the wrapper holds its bookkeeping writes back, commits its user rows under
/// a store epoch just above `e << SPLIT_SHIFT`, and then the bookkeeping under
/// `(e + 1) << SPLIT_SHIFT`. Killed in between, the directory holds the rows of `e + 1`
/// beside the applied epoch and bookkeeping of `e`: what a non-atomic commit leaves.
struct CrashStore {
    inner: FjallStore,
    mode: Mode,
    /// Split mode: the bookkeeping writes of the epoch in progress (`None`: deleted).
    held: BTreeMap<Key, Option<Value>>,
    /// The child's progress log: a line before and after each commit, and after each sync.
    log: Option<File>,
}

impl CrashStore {
    fn open(dir: &Path, mode: Mode) -> Result<CrashStore, StorageError> {
        Ok(CrashStore {
            inner: FjallStore::open(dir)?,
            mode,
            held: BTreeMap::new(),
            log: None,
        })
    }

    /// Logs every commit and sync to `log` from now on (see [`Step`]).
    fn log_to(&mut self, log: File) {
        self.log = Some(log);
    }

    fn load(&mut self, rows: Vec<(Key, Value)>) -> Result<bool, StorageError> {
        self.inner.load(rows)
    }

    fn sync(&mut self) -> Result<Epoch, StorageError> {
        let stored = self.inner.sync()?;
        let durable = self.test_epoch(stored);
        self.log_line("synced", durable);
        Ok(durable)
    }

    /// Appends one line in one write, so a kill leaves whole lines and at most one torn
    /// last line (which the parent ignores). An unbuffered write reaches the OS at once
    /// and survives the kill. The [`Store`] methods that log cannot return errors, and a
    /// failed write is the harness failing: the child stops, and the parent reports it.
    fn log_line(&mut self, what: &str, epoch: Epoch) {
        if let Some(log) = &mut self.log {
            let line = format!("{what} {}\n", epoch.0);
            if let Err(e) = log.write_all(line.as_bytes()) {
                panic!("writing the progress log: {e}");
            }
        }
    }

    /// The planted bug's commit: the user rows first, under a store epoch that still reads
    /// as the previous epoch, then a sync (and a pause), then the bookkeeping and the
    /// applied epoch.
    fn commit_split(&mut self, epoch: Epoch) {
        // After a kill between the halves the store epoch is already above the previous
        // epoch's; the next attempt's first half takes the number after it.
        let rows_at = self.inner.applied_epoch().next();
        let whole_at = Epoch(epoch.0 << SPLIT_SHIFT);
        assert!(rows_at < whole_at, "split epochs exhausted");
        self.inner.commit_epoch(rows_at);
        if let Err(e) = self.inner.sync() {
            panic!("split commit: {e}");
        }
        std::thread::sleep(SPLIT_PAUSE);
        for (key, value) in std::mem::take(&mut self.held) {
            match value {
                Some(v) => self.inner.put(key, v),
                None => self.inner.delete(&key),
            }
        }
        self.inner.commit_epoch(whole_at);
    }

    /// The test's epoch of a store epoch.
    fn test_epoch(&self, stored: Epoch) -> Epoch {
        match self.mode {
            Mode::Atomic => stored,
            Mode::Split => Epoch(stored.0 >> SPLIT_SHIFT),
        }
    }

    /// Whether the planted bug holds `key` back.
    fn holds(&self, key: &Key) -> bool {
        self.mode == Mode::Split && key.is_system()
    }
}

impl Store for CrashStore {
    fn get(&self, key: &Key) -> Option<Value> {
        match self.held.get(key) {
            Some(held) if self.holds(key) => held.clone(),
            _ => self.inner.get(key),
        }
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        if !self.holds(prefix) {
            return self.inner.scan_prefix(prefix);
        }
        let mut rows: BTreeMap<Key, Option<Value>> = self
            .inner
            .scan_prefix(prefix)
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        let held = self.held.iter().filter(|(k, _)| k.starts_with(prefix));
        rows.extend(held.map(|(k, v)| (k.clone(), v.clone())));
        rows.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }

    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        if !self.holds(prefix) {
            return self.inner.first_in(prefix);
        }
        self.scan_prefix(prefix).into_iter().next()
    }

    fn put(&mut self, key: Key, value: Value) {
        if self.holds(&key) {
            self.held.insert(key, Some(value));
        } else {
            self.inner.put(key, value);
        }
    }

    fn delete(&mut self, key: &Key) {
        if self.holds(key) {
            self.held.insert(key.clone(), None);
        } else {
            self.inner.delete(key);
        }
    }

    fn commit_epoch(&mut self, epoch: Epoch) {
        self.log_line("commit", epoch);
        match self.mode {
            Mode::Atomic => self.inner.commit_epoch(epoch),
            Mode::Split => self.commit_split(epoch),
        }
        self.log_line("committed", epoch);
    }

    fn applied_epoch(&self) -> Epoch {
        self.test_epoch(self.inner.applied_epoch())
    }

    // No state transfer in this test: the store's own.
    fn capture_image(&mut self) -> Epoch {
        self.inner.capture_image()
    }

    fn image_rows(
        &self,
        epoch: Epoch,
        after: Option<&Key>,
        bytes_max: usize,
    ) -> Option<(Vec<(Key, Value)>, bool)> {
        self.inner.image_rows(epoch, after, bytes_max)
    }

    fn release_image(&mut self, epoch: Epoch) {
        self.inner.release_image(epoch);
    }

    fn restore_begin(&mut self) {
        self.inner.restore_begin();
    }

    fn restore_rows(&mut self, rows: Vec<(Key, Value)>) {
        self.inner.restore_rows(rows);
    }

    fn restore_finish(&mut self, epoch: Epoch) {
        self.inner.restore_finish(epoch);
    }
}

// ---------------------------------------------------------------------------------------
// The child.

/// Opens the store (loading it the first time), takes the peer's state from the parent,
/// and runs epochs until killed; the store logs each commit and sync.
fn child_main(dir: &Path, seed: u64, mode: Mode) -> Result<(), String> {
    let world = World::new(seed);
    let mut store = CrashStore::open(&dir.join("state"), mode).map_err(|e| e.to_string())?;
    store
        .load(world.initial_rows(UNDER_TEST))
        .map_err(|e| e.to_string())?;
    let log = OpenOptions::new()
        .append(true)
        .open(dir.join("progress"))
        .map_err(|e| format!("opening the progress log: {e}"))?;
    store.log_to(log);
    let peer = read_peer(&dir.join("peer"))?;
    let mut pair = Pair::start(&world, store, peer)?;
    let ready = pair.under.store().applied_epoch();
    pair.under.store_mut().log_line("ready", ready);
    let mut e = ready.next();
    loop {
        pair.run_epoch(&world, e)?;
        if world.syncs_after(e) {
            let durable = pair.under.store_mut().sync().map_err(|e| e.to_string())?;
            pair.synced(durable)?;
        }
        // A parent that died without killing the child took its directory with it.
        if e.0.is_multiple_of(64) && !dir.exists() {
            return Ok(());
        }
        e = e.next();
    }
}

// ---------------------------------------------------------------------------------------
// The parent.

/// Why a run stopped.
#[derive(Debug)]
struct Failure {
    /// The kill after which it stopped, from 1.
    kill: u64,
    /// Whether the checker found the reopened store wrong (rather than the harness
    /// failing, or the store not reopening at all).
    caught: bool,
    message: String,
}

impl Failure {
    fn caught(kill: u64, message: String) -> Failure {
        Failure {
            kill,
            caught: true,
            message,
        }
    }

    fn other(kill: u64, message: String) -> Failure {
        Failure {
            kill,
            caught: false,
            message,
        }
    }
}

/// What a run did, and where its kills landed (code probes: a run whose kills never
/// landed inside a commit would prove little).
#[derive(Debug, Default)]
struct Figures {
    kills: u64,
    /// The applied epoch after the last kill.
    epoch: Epoch,
    /// Kills before the child began a commit (during start-up, recovery, the load or the
    /// greeting, or just after).
    early: u64,
    /// Kills inside a commit that recovery dropped whole (torn or not yet written out).
    in_commit_dropped: u64,
    /// Kills inside a commit that had reached the OS before the kill.
    in_commit_kept: u64,
    /// Kills between commits (executing, syncing, exchanging reads and acks).
    between: u64,
    /// Kills after which committed but unsynced epochs survived.
    unsynced_kept: u64,
    elapsed: Duration,
}

impl Figures {
    fn count(&mut self, progress: &Progress, previous: Epoch, recovered: Epoch) {
        self.kills += 1;
        self.epoch = recovered;
        match progress.last {
            None => self.early += 1,
            Some(Step::Begun(e)) if recovered < e => self.in_commit_dropped += 1,
            Some(Step::Begun(_)) => self.in_commit_kept += 1,
            Some(Step::Committed(_)) => self.between += 1,
        }
        if recovered > progress.synced.unwrap_or_default().max(previous) {
            self.unsynced_kept += 1;
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kills in {:.1} s, applied epoch {} at the end; kills inside a commit {} \
             (dropped {}, kept {}), between commits {}, before the first commit {}; \
             unsynced epochs kept {} times",
            self.kills,
            self.elapsed.as_secs_f64(),
            self.epoch,
            self.in_commit_dropped + self.in_commit_kept,
            self.in_commit_dropped,
            self.in_commit_kept,
            self.between,
            self.early,
            self.unsynced_kept
        )
    }
}

/// The state of both partitions after epochs `1..=epoch`, exactly as on disk after the
/// commit of `epoch`, for a child that restarted at every epoch the parent found so far.
struct Reference {
    epoch: Epoch,
    under: MemStore,
    peer: MemStore,
}

impl Reference {
    fn new(world: &World) -> Reference {
        let load = |partition| {
            let mut store = MemStore::new();
            for (key, value) in world.initial_rows(partition) {
                store.put(key, value);
            }
            store
        };
        Reference {
            epoch: Epoch(0),
            under: load(UNDER_TEST),
            peer: load(PEER),
        }
    }

    /// Restarts at the current epoch, as the child did, and runs to `target`, stopping
    /// right after its commit: the child's later steps died with it.
    fn advance_to(&mut self, world: &World, target: Epoch) -> Result<(), String> {
        if target < self.epoch {
            return Err(format!("the reference cannot go back from {}", self.epoch));
        }
        if target == self.epoch {
            return Ok(());
        }
        let mut pair = Pair::start(world, self.under.clone(), self.peer.clone())?;
        let mut e = self.epoch.next();
        while e <= target {
            pair.run_epoch(world, e)?;
            if e < target && world.syncs_after(e) {
                pair.synced(e)?;
            }
            e = e.next();
        }
        self.under = pair.under.into_store();
        self.peer = pair.peer.into_store();
        self.epoch = target;
        Ok(())
    }
}

/// Kills a child `kills` times over one directory, checking the store after each kill.
#[allow(clippy::disallowed_methods)] // the run's duration is a figure for the report
fn crash_run(seed: u64, kills: u64, mode: Mode) -> Result<Figures, Failure> {
    let began = std::time::Instant::now();
    let world = World::new(seed);
    let tmp = run_dir().map_err(|e| Failure::other(0, e))?;
    let dir = tmp.path();
    // fjall cannot reopen a database whose creation was killed (its journal file exists,
    // its version marker does not), so the children only ever open an existing store.
    drop(FjallStore::open(&dir.join("state")).map_err(|e| Failure::other(0, e.to_string()))?);
    let mut reference = Reference::new(&world);
    let mut delays = DetRng::new(seed ^ 0xDE1A_7000);
    let mut figures = Figures::default();
    for kill in 1..=kills {
        let at = KillAt {
            from_spawn: delays.below(STARTUP_KILL_ONE_IN) == 0,
            delay: Duration::from_millis(delays.range(0, DELAY_MS_MAX)),
        };
        let progress =
            run_and_kill(dir, seed, mode, &reference, at).map_err(|e| Failure::other(kill, e))?;
        let mut store = CrashStore::open(&dir.join("state"), mode)
            .map_err(|e| Failure::other(kill, format!("the store does not reopen: {e}")))?;
        let recovered = store.applied_epoch();
        let previous = reference.epoch;
        check_epoch(recovered, previous, &progress).map_err(|e| Failure::caught(kill, e))?;
        reference
            .advance_to(&world, recovered)
            .map_err(|e| Failure::other(kill, e))?;
        check_rows(&mut store, &reference).map_err(|e| Failure::caught(kill, e))?;
        figures.count(&progress, previous, recovered);
        figures.elapsed = began.elapsed();
        if kill.is_multiple_of(100) {
            eprintln!("store_crash: seed {seed}: kill {kill}: {figures}");
        }
    }
    Ok(figures)
}

/// The run's directory: under `DETFLOW_STORE_CRASH_DIR`, else under `/dev/shm` where
/// there is one, else in the system's temporary directory. A SIGKILL keeps what reached
/// the OS whatever the file system, so memory serves as well as a disk; there fsync costs
/// nothing, and kills land among commits rather than mostly inside fsync.
fn run_dir() -> Result<tempfile::TempDir, String> {
    let parent = std::env::var_os(DIR_ENV)
        .map(std::path::PathBuf::from)
        .or_else(|| Some(Path::new("/dev/shm").to_path_buf()).filter(|p| p.is_dir()));
    let dir = match parent {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    };
    dir.map_err(|e| format!("creating the run's directory: {e}"))
}

/// The child's last commit step, as it logged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// It began to commit this epoch.
    Begun(Epoch),
    /// The commit of this epoch returned.
    Committed(Epoch),
}

/// What the child logged before it was killed.
#[derive(Debug, Default)]
struct Progress {
    /// Whether the child got as far as running epochs.
    ready: bool,
    last: Option<Step>,
    synced: Option<Epoch>,
}

/// When to kill the child.
#[derive(Clone, Copy, Debug)]
struct KillAt {
    /// Count the delay from the spawn, not from the child's ready line.
    from_spawn: bool,
    delay: Duration,
}

/// Runs the child from the reference's state, then kills it as `at` says.
fn run_and_kill(
    dir: &Path,
    seed: u64,
    mode: Mode,
    reference: &Reference,
    at: KillAt,
) -> Result<Progress, String> {
    write_peer(&dir.join("peer"), &reference.peer)?;
    let progress_path = dir.join("progress");
    File::create(&progress_path).map_err(|e| format!("progress log: {e}"))?;
    let stderr_path = dir.join("child.stderr");
    let stderr = File::create(&stderr_path).map_err(|e| format!("child stderr: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let child = Command::new(exe)
        .args([CHILD_TEST, "--exact", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(SEED_ENV, seed.to_string())
        .env(MODE_ENV, mode.name())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let mut child = Killed(child);
    if !at.from_spawn {
        wait_ready(&mut child.0, &progress_path, &stderr_path)?;
    }
    std::thread::sleep(at.delay);
    let early = child.0.try_wait().map_err(|e| format!("try_wait: {e}"))?;
    if let Some(status) = early {
        return Err(child_stopped(status, &stderr_path));
    }
    child.0.kill().map_err(|e| format!("kill: {e}"))?;
    child.0.wait().map_err(|e| format!("wait: {e}"))?;
    read_progress(&progress_path)
}

/// Waits until the child logs that it is ready.
fn wait_ready(child: &mut Child, progress: &Path, stderr: &Path) -> Result<(), String> {
    for _ in 0..READY_POLLS_MAX {
        if read_progress(progress)?.ready {
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(|e| format!("try_wait: {e}"))? {
            return Err(child_stopped(status, stderr));
        }
        std::thread::sleep(READY_POLL);
    }
    Err(format!(
        "the child was not ready after {READY_POLLS_MAX} polls of {READY_POLL:?}"
    ))
}

fn child_stopped(status: ExitStatus, stderr: &Path) -> String {
    let output = fs::read_to_string(stderr).unwrap_or_default();
    let lines: Vec<&str> = output.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("the child stopped by itself ({status}) before the kill:\n{tail}")
}

/// A child process, killed if the parent gives up on it (a failed check unwinds).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // Already reaped on the normal path; these then fail harmlessly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_progress(path: &Path) -> Result<Progress, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading progress: {e}"))?;
    let mut progress = Progress::default();
    // Only whole lines: a kill may tear the last one.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in whole.lines() {
        let parsed = line
            .split_once(' ')
            .and_then(|(what, n)| Some((what, Epoch(n.parse().ok()?))));
        match parsed {
            Some(("commit", e)) => progress.last = Some(Step::Begun(e)),
            Some(("committed", e)) => progress.last = Some(Step::Committed(e)),
            Some(("synced", e)) => progress.synced = Some(e),
            Some(("ready", _)) => progress.ready = true,
            _ => return Err(format!("a malformed progress line {line:?}")),
        }
    }
    Ok(progress)
}

/// Checks the recovered applied epoch against what the child logged. A commit that
/// returned has reached the OS (fjall writes its journal out at every batch; only fsync
/// is deferred to the sync), which a killed process keeps: the store must be at the last
/// epoch whose commit returned, or, killed inside a commit, at that epoch or the one
/// before. With nothing logged it must be where the child started.
fn check_epoch(recovered: Epoch, previous: Epoch, progress: &Progress) -> Result<(), String> {
    let (allowed, why) = match progress.last {
        None => (
            [previous, previous],
            "the child began no commit".to_string(),
        ),
        Some(Step::Begun(e)) => (
            [Epoch(e.0.saturating_sub(1)), e],
            format!("the child was killed inside the commit of epoch {e}"),
        ),
        Some(Step::Committed(e)) => ([e, e], format!("the commit of epoch {e} returned")),
    };
    if allowed.contains(&recovered) {
        return Ok(());
    }
    Err(format!(
        "applied epoch {recovered} after the kill, but {why} (last sync logged: {:?}; epoch \
         at the start: {previous})",
        progress.synced
    ))
}

/// Compares the reopened store with the reference at its applied epoch: the user rows, and
/// the bookkeeping (result-table and outbox records), exactly.
fn check_rows(store: &mut CrashStore, reference: &Reference) -> Result<(), String> {
    let epoch = reference.epoch;
    if !store.inner.is_loaded() {
        let empty = store
            .inner
            .user_rows()
            .map_err(|e| e.to_string())?
            .is_empty();
        return if epoch == Epoch(0) && empty {
            Ok(())
        } else {
            Err(format!("no load marker at epoch {epoch}, but rows"))
        };
    }
    let user = store.inner.user_rows().map_err(|e| e.to_string())?;
    let system = store.inner.system_rows().map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    problems.extend(diff("user row", &user, reference.under.map()));
    problems.extend(diff("bookkeeping row", &system, reference.under.system()));
    // What the executor reads after a restart must be the same rows.
    let seen = store.scan_prefix(&Key::default());
    if seen != user {
        problems.push("scan_prefix of the reopened store differs from its rows".to_string());
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the store reopened at epoch {epoch} is not the state after epochs 1..={epoch}:\n  {}",
        problems.join("\n  ")
    ))
}

/// The differences between `got` and `want`, a few of each kind.
fn diff(what: &str, got: &[(Key, Value)], want: &BTreeMap<Key, Value>) -> Vec<String> {
    const SHOWN: usize = 4;
    let got: BTreeMap<&Key, &Value> = got.iter().map(|(k, v)| (k, v)).collect();
    let mut problems = Vec::new();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(**k)).collect();
    let changed: Vec<_> = want
        .iter()
        .filter_map(|(k, v)| got.get(k).filter(|g| **g != v).map(|g| (k, g, v)))
        .collect();
    for k in missing.iter().take(SHOWN) {
        problems.push(format!("{what} {k} missing"));
    }
    for k in extra.iter().take(SHOWN) {
        problems.push(format!(
            "{what} {k} present, but no epoch up to here wrote it"
        ));
    }
    for (k, g, v) in changed.iter().take(SHOWN) {
        problems.push(format!("{what} {k} is {}, expected {}", show(g), show(v)));
    }
    let total = missing.len() + extra.len() + changed.len();
    if total > SHOWN * 3 {
        problems.push(format!("… {total} {what}s differ in all"));
    }
    problems
}

fn show(value: &[u8]) -> String {
    const BYTES: usize = 24;
    let shown = String::from_utf8_lossy(&value[..value.len().min(BYTES)]).into_owned();
    if value.len() > BYTES {
        format!("{shown:?}… ({} bytes)", value.len())
    } else {
        format!("{shown:?}")
    }
}

// ---------------------------------------------------------------------------------------
// The peer's state, handed from the parent to the child.

type Rows = Vec<(Key, Value)>;

fn write_peer(path: &Path, peer: &MemStore) -> Result<(), String> {
    let user: Rows = peer.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let system: Rows = peer
        .system()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bytes = codec::encode(&(peer.applied_epoch(), user, system));
    fs::write(path, bytes).map_err(|e| format!("writing the peer's state: {e}"))
}

fn read_peer(path: &Path) -> Result<MemStore, String> {
    let bytes = fs::read(path).map_err(|e| format!("reading the peer's state: {e}"))?;
    let (epoch, user, system): (Epoch, Rows, Rows) =
        codec::decode(&bytes).map_err(|e| format!("decoding the peer's state: {}", e.0))?;
    let mut peer = MemStore::new();
    for (key, value) in user.into_iter().chain(system) {
        peer.put(key, value);
    }
    if epoch > Epoch(0) {
        peer.commit_epoch(epoch);
    }
    Ok(peer)
}

// ---------------------------------------------------------------------------------------
// Knobs.

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(n) => Some(n),
        Err(e) => panic!("{name}={value:?}: {e}"),
    }
}

/// The run's seed: `DETFLOW_STORE_CRASH_SEED`, else a fresh one (printed with the replay
/// command), so that every run tries other epochs and other kill delays.
fn seed() -> u64 {
    env_u64(SEED_ENV).unwrap_or_else(|| {
        let mut bytes = [0u8; 8];
        getrandom::getrandom(&mut bytes).expect("OS randomness");
        u64::from_le_bytes(bytes)
    })
}
