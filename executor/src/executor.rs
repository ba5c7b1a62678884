//! The partition executor machine.
//!
//! ```text
//!  Plan(e) ───────────┐            ┌──▶ SendReads { to, reads }   (multi-partition)
//!  RemoteReads(pos) ──┼─▶ Executor ├──▶ Result { gateway, result } (designated only)
//!                     │  (store)   └──▶ EpochApplied(e)
//! ```
//!
//! Plans run strictly in position order. For each transaction the executor reads the keys
//! it owns and sends them to every other executing participant; an executing participant
//! then waits for the reads of every other participant, runs the procedure on the whole
//! read set, and applies only the writes to keys it owns. Every executing participant
//! reaches the same outcome, so no commit protocol is needed (Calvin).
//!
//! One participant's reads of one transaction may take several messages, each bounded in
//! bytes (see [`READS_BYTES_MAX_DEFAULT`](crate::READS_BYTES_MAX_DEFAULT)); a receiver waits
//! for all of them.
//!
//! A partition may have several replicas (its replica set, see
//! [`Placement`](detflow_protocol::Placement)), each an executor on its own node running
//! the same plans from its own store. A replica sends its reads to every replica of each
//! other participant and keeps the first copy it receives of each (position, sending
//! partition): a receiver proceeds as soon as any replica of each peer has answered. Every
//! replica of the designated partition reports the result; the gateway answers with the
//! first and compares the rest.
//!
//! Plans, remote reads, acks and hellos come from peers. Input that contradicts the
//! protocol (a plan for another partition or one no scheduler would write, reads from a
//! partition that does not take part in the transaction) is dropped and counted in
//! [`ExecutorStats`], never a panic; the executor's assertions guard only states it reached
//! by itself.

use crate::chunk::{Chunker, READS_BYTES_MAX_DEFAULT, READS_BYTES_MIN};
use crate::digest::StateDigest;
use crate::feed::Feed;
use crate::mailbox::Outbox;
use crate::registry::Registry;
use crate::serial;
use crate::snapshot::{Retention, VersionStats, Versions};
use crate::store::Store;
use crate::system::{Bookkeeping, is_system_key};
use crate::txn::{Effects, ReadView, VALUE_BYTES_MAX_DEFAULT};
use detflow_protocol::mailbox::Delivery;
use detflow_protocol::message::{CheckpointAnswer, RemoteReads};
use detflow_protocol::snapshot::{
    PartAt, PartOp, PartRows, SCAN_CHUNK_BYTES_MAX, SCAN_ROWS_DEFAULT, SCAN_ROWS_MAX,
    SNAPSHOT_KEYS_MAX, SnapshotError, SnapshotPart, check_snapshot_key,
};
use detflow_protocol::stream::{
    Offset, StreamEvent, StreamPart, event_key, offset_of, stream_prefix,
};
use detflow_protocol::transfer::{StateChunk, StateFetch};
use detflow_protocol::{
    ClientId, Elem, Epoch, ExecutorId, Key, KeySpec, Machine, NodeId, Outcome, Owner,
    PLAN_FORMAT_VERSION, PartitionId, Placement, Plan, Position, RequestSeq, RoutedTxn,
    SYSTEM_TABLE, Time, TxnResult, Value, codec,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

mod transfer;

pub use transfer::{IMAGE_IDLE_US, TRANSFER_STALL_US};

/// An input to the executor.
#[derive(Debug)]
pub enum Input {
    /// A peer acknowledges that it made every epoch up to `durable` durable: the reads sent
    /// to it for those epochs need not be kept.
    Ack {
        /// The acknowledging partition.
        from: PartitionId,
        /// The node of the acknowledging replica.
        node: NodeId,
        /// Its durable epoch.
        durable: Epoch,
    },
    /// The connection to node `node` was (re)established: tell the replicas of other
    /// partitions it runs where this partition stands.
    Connected {
        /// The node.
        node: NodeId,
    },
    /// The connection to a sequencer replica was (re)established: if plans come from it,
    /// subscribe again (what was in flight on the old connection is lost).
    ReplicaConnected(NodeId),
    /// The store made every epoch up to `up_to` durable.
    Durable {
        /// The last durable epoch.
        up_to: Epoch,
    },
    /// A peer (re)connected: it is durable up to `durable` and lacks everything after.
    Hello {
        /// The peer.
        from: PartitionId,
        /// The node of the peer's replica.
        node: NodeId,
        /// Its durable epoch.
        durable: Epoch,
    },
    /// The plan of one epoch for this partition.
    Plan(Plan),
    /// A peer's local reads of a multi-partition transaction.
    RemoteReads(Arc<RemoteReads>),
    /// A gateway asks for the result of a call (a retry found it already in the log).
    ResultQuery {
        /// Where the answer goes.
        gateway: NodeId,
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
    /// The executor (re)started: subscribe to plans and greet every peer, so that each
    /// re-sends the reads this partition lacks.
    Start,
    /// A gateway reads a stream: this partition's events from `from` on.
    StreamRead {
        /// Where the answer goes.
        gateway: NodeId,
        /// The gateway's number for the read.
        read: u64,
        /// The stream.
        stream: String,
        /// The first offset wanted.
        from: Offset,
        /// The most events to return.
        max: u32,
    },
    /// A gateway reads this partition's state at an epoch.
    SnapshotRead {
        /// Where the answer goes.
        gateway: NodeId,
        /// The gateway's number for the read.
        read: u64,
        /// Which epoch.
        at: PartAt,
        /// What.
        op: PartOp,
    },
    /// [`Machine::next_deadline`] passed: check for a silent plan source or stalled work.
    Tick,
    /// The checkpoint of the state after `epoch` (see [`Output::Checkpoint`]) is durable,
    /// or, after a restart, the last checkpoint of this partition the node still holds.
    Checkpointed {
        /// The checkpoint's epoch.
        epoch: Epoch,
    },
    /// Sequencer replica `from` compacted away the plans this replica subscribed from:
    /// its log starts after `log_start`.
    PlansCompacted {
        /// The sequencer replica.
        from: NodeId,
        /// The last epoch compacted away.
        log_start: Epoch,
    },
    /// A peer dropped the reads it sent this partition through `through` (every replica
    /// of it had acknowledged them): this replica cannot replay those epochs.
    ReadsGone {
        /// The peer partition.
        from: PartitionId,
        /// The node of the peer's replica.
        node: NodeId,
        /// The last epoch whose reads it dropped.
        through: Epoch,
    },
    /// Another replica of this partition asks for (more of) an image of its state.
    StateFetch {
        /// The node of the asking replica.
        from: NodeId,
        /// What it asks for.
        fetch: StateFetch,
    },
    /// Another replica of this partition answers a [`Output::FetchState`].
    StateChunk {
        /// The node of the answering replica.
        from: NodeId,
        /// Its answer.
        chunk: StateChunk,
    },
}

/// An effect the driver performs.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Every transaction of the epoch is applied.
    EpochApplied(Epoch),
    /// Report a transaction's result to a gateway.
    Result {
        /// The gateway.
        gateway: NodeId,
        /// The result.
        result: TxnResult,
        /// Whether it comes from the result table (answering a query), not from execution.
        recovered: bool,
    },
    /// The result table holds no result for the queried call (yet).
    ResultUnknown {
        /// The gateway that asked.
        gateway: NodeId,
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
    /// Tell a peer that this partition is durable up to `durable`.
    SendAck {
        /// The peer replica.
        to: ExecutorId,
        /// This partition's durable epoch.
        durable: Epoch,
    },
    /// Tell a peer where this partition stands after a (re)connect, so it resends.
    SendHello {
        /// The peer replica.
        to: ExecutorId,
        /// This partition's durable epoch.
        durable: Epoch,
    },
    /// Send this partition's reads of a transaction to another executor.
    SendReads {
        /// The receiving replica.
        to: ExecutorId,
        /// The reads.
        reads: Arc<RemoteReads>,
    },
    /// Have letters of this partition's outbox delivered: hand the delivery to a gateway,
    /// which orders it as a transaction. Each attempt goes to the next gateway, so a
    /// retry avoids one that died.
    Deliver {
        /// The gateway.
        gateway: NodeId,
        /// The letters.
        delivery: Delivery,
    },
    /// Answer a gateway's stream read.
    StreamPart {
        /// The gateway.
        gateway: NodeId,
        /// The gateway's number for the read.
        read: u64,
        /// This partition's share.
        part: StreamPart,
    },
    /// Answer a gateway's snapshot read.
    SnapshotPart {
        /// The gateway.
        gateway: NodeId,
        /// The gateway's number for the read.
        read: u64,
        /// This partition's answer.
        part: SnapshotPart,
    },
    /// Tell a sequencer replica that this partition's replica has durably applied every
    /// epoch through `durable`: once every replica has, the log may drop them.
    ReportApplied {
        /// The sequencer replica.
        to: NodeId,
        /// This partition's durable epoch.
        durable: Epoch,
    },
    /// The store captured its state after `epoch` ([`Store::checkpoint`]): write that
    /// checkpoint durably, off the executor's path, and report [`Input::Checkpointed`].
    /// A checkpoint the driver drops (one is still being written, or it crashed) only
    /// holds the log's compaction back until the next one.
    Checkpoint(Epoch),
    /// Ask a sequencer replica for the plans of this partition from epoch `from` on.
    Subscribe {
        /// The replica.
        to: NodeId,
        /// The first epoch wanted.
        from: Epoch,
    },
    /// Tell a peer replica that greeted this one from before `through` that the reads
    /// this partition sent it through `through` are gone.
    SendReadsGone {
        /// The peer replica.
        to: ExecutorId,
        /// The last epoch whose reads were dropped.
        through: Epoch,
    },
    /// Ask another replica of this partition for (more of) an image of its state: the
    /// log no longer holds the epochs this one needs.
    FetchState {
        /// The replica asked.
        to: ExecutorId,
        /// What is asked.
        fetch: StateFetch,
    },
    /// Answer another replica's [`Input::StateFetch`].
    SendState {
        /// The asking replica.
        to: ExecutorId,
        /// The answer.
        chunk: StateChunk,
    },
    /// The store now holds a copy of a peer's state after `epoch` (`rows` rows), durably;
    /// the replica resumes from the next epoch.
    StateRestored {
        /// The image's epoch.
        epoch: Epoch,
        /// Rows copied.
        rows: u64,
    },
}

/// Planted bugs, for proving that the simulator's checkers bite. Never set in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutorBugs {
    /// Swap adjacent pairs of single-partition transactions within a plan.
    pub reorder: bool,
    /// Apply every write of a multi-partition transaction, including other partitions' keys.
    pub write_outside_partition: bool,
    /// After a restart, resume one epoch past the right one (skipping an epoch's plan).
    pub replay_from_wrong_epoch: bool,
    /// Never greet the peers again when work stalls (reads lost on a connection that
    /// died unnoticed are then waited for forever).
    pub no_hello_on_stall: bool,
    /// Ask for each delivery once, never again (letters whose delivery was lost with a
    /// gateway or a leader then wait forever).
    pub no_delivery_retry: bool,
    /// A replica other than the first of its partition silently skips one write now and
    /// then: the first write it applies in every epoch whose number is 3 modulo 4.
    pub skip_one_write: bool,
    /// A replica other than the first of its partition sends its reads of a transaction
    /// from a stale position: before the transactions ahead of it in the epoch have run.
    /// When it sends the reads of one multi-partition transaction it also sends those of
    /// every later one of the epoch, read from its store as it is now, and does not send
    /// them again when it reaches them.
    pub stale_remote_reads: bool,
    /// Partition 1 answers a snapshot scan with its state one epoch later than asked (when
    /// it has applied it), as if it had read its latest epoch instead of the one asked.
    pub snapshot_epoch_late: bool,
    /// Reclaim the before-images of one epoch more than the retention window allows,
    /// while still answering reads at that epoch.
    pub reclaim_inside_window: bool,
    /// A snapshot read of an epoch not applied by its deadline waits again instead of
    /// being answered `NotYet`: it is never answered if the epoch never comes.
    pub snapshot_wait_forever: bool,
    /// The running state digest ignores deletes (the rows' digest still counts them).
    pub digest_ignores_deletes: bool,
    /// Report the durable epoch to the sequencer replicas without waiting for a
    /// checkpoint of it: the log may then be compacted past the last checkpoint.
    pub report_uncheckpointed: bool,
    /// The checkpoint of an epoch is captured as if it were of the next one.
    pub checkpoint_mislabeled: bool,
    /// A replica that copied another replica's state resumes one epoch after the copy's
    /// (skipping that epoch's plan).
    pub transfer_resumes_late: bool,
}

/// The most checkpoints asked for on demand that a replica holds, not taken yet.
pub const CHECKPOINTS_ASKED_MAX: usize = 8;

/// How far ahead of a replica a checkpoint may be asked for: far epochs would hold a slot
/// (of [`CHECKPOINTS_ASKED_MAX`]) for hours.
pub const CHECKPOINT_AHEAD_EPOCHS_MAX: u64 = 100_000;

/// How many epochs' digests an executor keeps in memory (see [`Executor::digest_after`]).
pub const DIGESTS_KEPT: usize = 4_096;

/// The durable epoch is reported to the sequencer replicas each time it has advanced this
/// many epochs since the last report (so the log is compacted in steps of about as many).
pub const APPLIED_REPORT_EPOCHS: u64 = 32;

/// How many epochs' digests a partition's store keeps, like its results
/// ([`crate::RESULT_EPOCHS_RETAINED`]): an audit compares each with the log's re-execution.
pub const DIGEST_EPOCHS_RETAINED: u64 = crate::RESULT_EPOCHS_RETAINED;

/// The bookkeeping records of the state digests: `("_sys", "digest", epoch)` → the digest
/// after that epoch, written with the epoch (a restart resumes from the last one, so it
/// need not read every row again) and deleted [`DIGEST_EPOCHS_RETAINED`] epochs later.
fn digests_prefix() -> Key {
    Key::table(SYSTEM_TABLE).str("digest")
}

fn digest_key(epoch: Epoch) -> Key {
    digests_prefix().u64(epoch.0)
}

fn decode_digest(bytes: &[u8]) -> StateDigest {
    codec::decode(bytes).unwrap_or_else(|e| panic!("corrupt state digest record: {e}"))
}

/// The state digest `store` recorded with its last applied epoch, and that epoch; none
/// before an executor applied an epoch to it.
pub fn recorded_digest<S: Store>(store: &S) -> Option<(Epoch, StateDigest)> {
    let epoch = store.applied_epoch();
    store
        .get(&digest_key(epoch))
        .map(|bytes| (epoch, decode_digest(&bytes)))
}

/// Every state digest `store` still holds, by epoch (the last
/// [`DIGEST_EPOCHS_RETAINED`] applied).
pub fn recorded_digests<S: Store>(store: &S) -> BTreeMap<Epoch, StateDigest> {
    store
        .scan_prefix(&digests_prefix())
        .into_iter()
        .filter_map(|(key, bytes)| match key.elems().ok()?.get(2)? {
            Elem::U64(epoch) => Some((Epoch(*epoch), decode_digest(&bytes))),
            _ => None,
        })
        .collect()
}

/// Counters of an executor's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Transactions this partition ran the procedure for.
    pub executed: u64,
    /// Acks and hellos dropped because they name no peer (this partition itself, or a
    /// partition that does not exist).
    pub peer_inputs_dropped: u64,
    /// Plans refused: for another partition, of another format version, or not as a
    /// scheduler writes them (positions out of order or of another epoch, participants
    /// that leave this partition out, owners that are not participants).
    pub plans_dropped: u64,
    /// Plans received again for an epoch already applied or already waiting (re-sent
    /// after a re-subscription).
    pub plans_repeated: u64,
    /// Results reported.
    pub reported: u64,
    /// Remote-read messages sent (each chunk counts, once per receiving replica).
    pub reads_sent: u64,
    /// Remote-read messages not sent because the receiving replica had already made their
    /// epoch durable (this replica was replaying behind it).
    pub reads_skipped: u64,
    /// Remote-read messages dropped as duplicates or late.
    pub reads_dropped: u64,
    /// Remote-read messages refused: from a partition that is not a peer or not a
    /// participant of the transaction, for a position the plan does not hold or that this
    /// partition does not execute, or numbered inconsistently.
    pub reads_refused: u64,
    /// Remote-read messages sent again after a peer's hello.
    pub reads_resent: u64,
    /// Transactions whose local reads this partition split into several messages.
    pub reads_split: u64,
    /// Result queries answered from the result table.
    pub results_found: u64,
    /// Subscriptions moved to another replica after the plan source went silent.
    pub resubscribed: u64,
    /// Times the peers were greeted again because waiting work made no progress.
    pub stall_hellos: u64,
    /// Letters this partition's transactions sent (posted to its outbox).
    pub letters_posted: u64,
    /// Letters consumed by deliveries this partition reported.
    pub letters_consumed: u64,
    /// Deliveries asked for (retries included).
    pub deliveries_requested: u64,
    /// Events this partition's transactions published.
    pub events_published: u64,
    /// Snapshot reads answered (with rows or an error).
    pub snapshot_reads: u64,
    /// Snapshot reads answered `TooOld` or `NotYet`.
    pub snapshot_misses: u64,
    /// State transfers begun (the log no longer held an epoch this replica needed).
    pub transfers_started: u64,
    /// State transfers completed.
    pub transfers_done: u64,
    /// Peers given up during a transfer after asking one chunk of them repeatedly.
    pub transfer_peers_given_up: u64,
    /// Chunks of this replica's state sent to peers.
    pub state_chunks_sent: u64,
    /// Chunks of a peer's state received and stored.
    pub state_chunks_received: u64,
    /// State-transfer inputs dropped: from a node that is not a replica of this partition
    /// (or not a plan source), late, repeated, or not what was asked.
    pub transfer_inputs_dropped: u64,
}

/// How long a snapshot read at an epoch not applied yet waits for it: 1 s.
pub const SNAPSHOT_WAIT_US: u64 = 1_000_000;

/// The most snapshot reads one executor holds waiting for their epoch; more are answered
/// `NotYet` at once.
pub const SNAPSHOT_WAITING_MAX: usize = 1_024;

/// A snapshot read waiting for its epoch.
#[derive(Debug)]
struct WaitingRead {
    gateway: NodeId,
    read: u64,
    at: PartAt,
    op: PartOp,
    deadline: Time,
}

/// The chunks of one sender's reads of one transaction, as they arrive.
#[derive(Debug)]
struct Received {
    /// How many chunks the sender announced.
    chunks: u32,
    /// The chunks so far, by index.
    parts: BTreeMap<u32, Arc<RemoteReads>>,
}

impl Received {
    fn is_complete(&self) -> bool {
        self.parts.len() as u64 == u64::from(self.chunks)
    }
}

/// Runs one partition's plans in position order against its store.
pub struct Executor<S: Store> {
    partition: PartitionId,
    partitions: u32,
    /// The node this replica runs on.
    me: NodeId,
    /// Every partition's replica set.
    placement: Arc<Placement>,
    registry: Arc<Registry>,
    store: S,
    plans: BTreeMap<Epoch, Plan>,
    next_epoch: Epoch,
    cursor: usize,
    /// Whether this partition's reads of the transaction at `cursor` were sent.
    sent_at_cursor: bool,
    /// Remote reads received for transactions not run yet, by sender.
    inbox: BTreeMap<Position, BTreeMap<PartitionId, Received>>,
    /// The result table and the reads not yet acknowledged, mirrored in the store.
    book: Bookkeeping,
    /// The letters this partition's transactions sent and how far they were consumed.
    outbox: Outbox,
    durable: Epoch,
    /// The durable epoch last reported to the sequencer replicas.
    durable_reported: Epoch,
    /// A checkpoint is taken after every epoch that is a multiple of this (0: none).
    checkpoint_every: u64,
    /// The last epoch whose checkpoint is durable.
    checkpointed: Epoch,
    /// The largest value a transaction may write.
    value_bytes_max: usize,
    /// The bound on one remote-read message, in encoded bytes.
    reads_bytes_max: usize,
    /// The plan subscription and the stall timers.
    feed: Feed,
    /// The gateways that order deliveries, tried in turn; none: letters wait.
    gateways: Vec<NodeId>,
    /// Deliveries asked for so far, to pick the next gateway.
    delivery_attempts: usize,
    bugs: ExecutorBugs,
    /// Planted bugs' own state: the last epoch in which `skip_one_write` skipped a write,
    /// and the positions whose reads `stale_remote_reads` sent ahead of time.
    bug_skipped_in: Option<Epoch>,
    bug_sent_early: BTreeSet<Position>,
    stats: ExecutorStats,
    /// Before-images of the retention window's epochs, for snapshot reads.
    versions: Versions,
    /// The digest of the user rows as they stand (loaded or computed at the first need,
    /// once initial rows are in), and the digests after the last applied epochs.
    digest: Option<StateDigest>,
    digests: VecDeque<(Epoch, StateDigest)>,
    /// Snapshot reads waiting for their epoch, by the epoch and an arrival number.
    waiting: BTreeMap<(Epoch, u64), WaitingRead>,
    waiting_seq: u64,
    /// The copy of a peer's state in progress, if the log lacks epochs this one needs.
    transfer: Option<transfer::Transfer>,
    /// The images of its state this replica serves to peers.
    images: transfer::Images,
    /// Peers that asked for a new image mid-epoch: served once the epoch commits.
    image_waiting: BTreeSet<NodeId>,
    /// Epochs after which a checkpoint was asked for on demand, not reached yet.
    checkpoints_asked: BTreeSet<Epoch>,
    /// The time of the input being handled.
    now: Time,
}

impl<S: Store> Executor<S> {
    /// An executor of `partition` (of `partitions`) over `store`, resuming after the
    /// store's applied epoch, which it takes to be durable.
    pub fn new(
        partition: PartitionId,
        partitions: u32,
        registry: Arc<Registry>,
        store: S,
    ) -> Executor<S> {
        assert!(
            partition.0 < partitions,
            "partition {partition} of {partitions}"
        );
        let next_epoch = store.applied_epoch().next();
        let book = Bookkeeping::load(&store);
        let outbox = Outbox::load(partition, &store);
        let durable = store.applied_epoch();
        Executor {
            partition,
            partitions,
            me: NodeId(0),
            placement: Arc::new(Placement::single(partitions, NodeId(0))),
            registry,
            store,
            plans: BTreeMap::new(),
            next_epoch,
            cursor: 0,
            sent_at_cursor: false,
            inbox: BTreeMap::new(),
            book,
            outbox,
            durable,
            durable_reported: Epoch(0),
            checkpoint_every: 0,
            checkpointed: Epoch(0),
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            reads_bytes_max: READS_BYTES_MAX_DEFAULT,
            feed: Feed::new(partition.0 as usize, Vec::new()),
            gateways: Vec::new(),
            delivery_attempts: 0,
            bugs: ExecutorBugs::default(),
            bug_skipped_in: None,
            bug_sent_early: BTreeSet::new(),
            stats: ExecutorStats::default(),
            versions: Versions::new(durable, Retention::default()),
            digest: None,
            digests: VecDeque::new(),
            waiting: BTreeMap::new(),
            waiting_seq: 0,
            transfer: None,
            images: BTreeMap::new(),
            image_waiting: BTreeSet::new(),
            checkpoints_asked: BTreeSet::new(),
            now: Time::ZERO,
        }
    }

    /// Asks for a checkpoint after epoch `at`, on demand (an operator's `detflow
    /// checkpoint`, which asks every replica for the same epoch). It is taken like a
    /// periodic one ([`Output::Checkpoint`]) when `at` commits; one asked for an epoch
    /// already applied is refused, as are more than [`CHECKPOINTS_ASKED_MAX`] pending.
    /// Requests are kept in memory only: a restart forgets them.
    pub fn request_checkpoint(&mut self, at: Epoch) -> CheckpointAnswer {
        if at < self.next_epoch {
            return CheckpointAnswer::TooLate {
                applied: Epoch(self.next_epoch.0 - 1),
            };
        }
        if at.0
            > self
                .next_epoch
                .0
                .saturating_add(CHECKPOINT_AHEAD_EPOCHS_MAX)
        {
            return CheckpointAnswer::Refused(format!(
                "epoch {at} is more than {CHECKPOINT_AHEAD_EPOCHS_MAX} epochs ahead of this \
                 replica (at epoch {})",
                self.next_epoch
            ));
        }
        if self.checkpoints_asked.len() >= CHECKPOINTS_ASKED_MAX
            && !self.checkpoints_asked.contains(&at)
        {
            return CheckpointAnswer::Refused(format!(
                "{CHECKPOINTS_ASKED_MAX} checkpoints are asked for already, the first after \
                 epoch {}",
                self.checkpoints_asked.first().map_or(0, |e| e.0)
            ));
        }
        self.checkpoints_asked.insert(at);
        CheckpointAnswer::Scheduled
    }

    /// Has the state checkpointed after every epoch that is a multiple of `epochs` (0, the
    /// default: never). With checkpoints, the epoch reported to the sequencer replicas,
    /// below which they may compact the log, is the last one both durable and
    /// checkpointed: a replica that loses its store rebuilds it from a checkpoint and the
    /// log after it, so the log must keep every epoch after the last checkpoint.
    pub fn set_checkpoint_every(&mut self, epochs: u64) {
        self.checkpoint_every = epochs;
    }

    /// Sets how long and how much history this partition keeps for snapshot reads
    /// (default [`Retention::default`]).
    pub fn set_retention(&mut self, retention: Retention) {
        self.versions.set_retention(retention);
    }

    /// The size of the retained versions and the oldest readable epoch.
    pub fn version_stats(&self) -> VersionStats {
        self.versions.stats()
    }

    /// Sets the largest value a transaction may write, in bytes (default
    /// [`VALUE_BYTES_MAX_DEFAULT`]); a larger write aborts the transaction with
    /// [`AbortReason::ValueTooLarge`](detflow_protocol::AbortReason::ValueTooLarge). The
    /// limit decides outcomes, so every executor of a cluster must use the same one, and it
    /// must keep one row under the frame limit (see
    /// [`set_reads_bytes_max`](Executor::set_reads_bytes_max)).
    pub fn set_value_bytes_max(&mut self, bytes: usize) {
        self.value_bytes_max = bytes;
    }

    /// Sets the bound on one remote-read message, in encoded bytes (default
    /// [`READS_BYTES_MAX_DEFAULT`]). Reads that do not fit are split into several messages;
    /// a single row larger than the bound travels alone, so the frame limit must exceed
    /// this bound plus one maximal row (4 KiB key, value of `value_bytes_max` written as up
    /// to twice its size).
    ///
    /// # Panics
    ///
    /// If `bytes` is below 512, too small for a message's own overhead.
    pub fn set_reads_bytes_max(&mut self, bytes: usize) {
        assert!(
            bytes >= READS_BYTES_MIN,
            "reads_bytes_max {bytes} is below {READS_BYTES_MIN}"
        );
        self.reads_bytes_max = bytes;
    }

    /// Sets the sequencer replicas that serve this partition's plans. On
    /// [`Input::Start`] the executor subscribes to one of them and fails over to the next
    /// when it goes silent (see the `feed` module). Without sources (the default) a driver
    /// hands plans in directly and the executor keeps no timers.
    pub fn set_plan_sources(&mut self, replicas: Vec<NodeId>) {
        // The replicas of one partition start at different sources.
        let spread = self.partition.0 as usize + self.replica_index();
        self.feed = Feed::new(spread, replicas);
    }

    /// Places this executor: it is the replica of its partition on node `me`, and
    /// `placement` names every partition's replicas (by default each partition has one,
    /// on node 0). Set it before [`set_plan_sources`](Executor::set_plan_sources).
    ///
    /// # Panics
    ///
    /// If `placement` has another partition count or does not put this partition on `me`.
    pub fn set_placement(&mut self, me: NodeId, placement: Arc<Placement>) {
        assert_eq!(placement.partitions(), self.partitions, "placement size");
        assert!(
            placement.hosts(self.partition, me),
            "partition {} is not placed on {me}",
            self.partition
        );
        self.me = me;
        self.placement = placement;
    }

    /// This replica's rank in its partition's replica set (0: first).
    fn replica_index(&self) -> usize {
        let replicas = self.placement.replicas(self.partition);
        replicas.iter().position(|n| *n == self.me).unwrap_or(0)
    }

    /// This replica: its partition and node.
    pub fn id(&self) -> ExecutorId {
        ExecutorId {
            partition: self.partition,
            node: self.me,
        }
    }

    /// Sets the gateways that order this partition's deliveries of letters, the preferred
    /// one first (by default none, and letters wait in the outbox).
    pub fn set_delivery_gateways(&mut self, gateways: Vec<NodeId>) {
        self.gateways = gateways;
    }

    /// Plants bugs (tests of the simulator's checkers only).
    pub fn set_bugs(&mut self, bugs: ExecutorBugs) {
        self.versions.bug_reclaim_inside_window = bugs.reclaim_inside_window;
        self.bugs = bugs;
        if bugs.replay_from_wrong_epoch && self.store.applied_epoch() > Epoch(0) {
            self.next_epoch = self.next_epoch.next();
        }
    }

    /// The partition this executor owns.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives up the store (a crash in simulation keeps only what it made durable).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The store, mutably (loading initial data before the first plan).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The next epoch to apply.
    pub fn next_epoch(&self) -> Epoch {
        self.next_epoch
    }

    /// Work counters.
    pub fn stats(&self) -> ExecutorStats {
        self.stats
    }

    /// What the next epoch waits for, in words: the plans held, the transaction at the
    /// cursor and the peers whose reads it lacks, the plan source and the stall counters.
    /// For an operator's log when a partition stops applying.
    pub fn waiting_for(&self) -> String {
        let plans = match (self.plans.first_key_value(), self.plans.last_key_value()) {
            (Some((first, _)), Some((last, _))) => {
                format!(
                    "{} plans, epochs {}..={}",
                    self.plans.len(),
                    first.0,
                    last.0
                )
            }
            _ => "no plan".to_string(),
        };
        let at_cursor = match self
            .plans
            .get(&self.next_epoch)
            .and_then(|plan| plan.txns.get(self.cursor))
        {
            None => "no transaction of the next epoch".to_string(),
            Some(txn) => {
                let received = self.inbox.get(&txn.position);
                let lacking: Vec<u32> = txn
                    .participants
                    .iter()
                    .filter(|p| **p != self.partition)
                    .filter(|p| {
                        !received
                            .and_then(|r| r.get(p))
                            .is_some_and(Received::is_complete)
                    })
                    .map(|p| p.0)
                    .collect();
                format!(
                    "transaction {} lacks the reads of partitions {lacking:?}",
                    txn.position
                )
            }
        };
        let inbox = match self.inbox.first_key_value() {
            Some((first, _)) => format!("{} positions from {first}", self.inbox.len()),
            None => "empty".to_string(),
        };
        if let Some(transfer) = self.transfer_status() {
            return format!("next epoch {}: {transfer}", self.next_epoch.0);
        }
        let s = &self.stats;
        format!(
            "next epoch {}, durable {}; {plans}; {at_cursor}; inbox {inbox}; plan source \
             {:?}; resubscribed {}, stall hellos {}, reads resent {}, dropped {}, refused {}",
            self.next_epoch.0,
            self.durable.0,
            self.feed.source(),
            s.resubscribed,
            s.stall_hellos,
            s.reads_resent,
            s.reads_dropped,
            s.reads_refused
        )
    }

    /// Whether peers sent reads for an epoch past every plan this executor holds: they
    /// follow a replica further ahead than its plan source.
    fn reads_past_plans(&self) -> bool {
        let planned = match self.plans.last_key_value() {
            Some((epoch, _)) => *epoch,
            None => Epoch(self.next_epoch.0.saturating_sub(1)),
        };
        self.inbox
            .last_key_value()
            .is_some_and(|(position, _)| position.epoch > planned)
    }

    /// Whether plans of later epochs wait while the next one's never came: the stream lost
    /// plans (queued on a connection that died, say) and carries on after the gap, so the
    /// source never goes silent. Only a new subscription, from the next epoch, fills it.
    fn plans_missing_next(&self) -> bool {
        self.plans
            .first_key_value()
            .is_some_and(|(epoch, _)| *epoch > self.next_epoch)
    }

    /// Whether no plan and no remote read is waiting.
    pub fn is_idle(&self) -> bool {
        self.plans.is_empty() && self.inbox.is_empty()
    }

    /// Read messages sent and not yet acknowledged.
    pub fn outbox_len(&self) -> usize {
        self.book.outbox_len()
    }

    /// Letters this partition's transactions sent that were not consumed yet.
    pub fn letters_pending(&self) -> u64 {
        self.outbox.pending()
    }

    /// Sets how far ahead of a peer replica's acknowledgements its reads are sent
    /// ([`crate::READS_AHEAD_EPOCHS`] by default; at least 1).
    pub fn set_reads_ahead_epochs(&mut self, epochs: u64) {
        self.book.set_reads_ahead(epochs);
    }

    /// Sets how many epochs of results the result table keeps.
    pub fn set_result_epochs_retained(&mut self, epochs: u64) {
        self.book.set_retained_epochs(epochs);
    }

    /// Asks the current plan source for the plans from the next epoch to apply on.
    fn subscribe(&self, out: &mut Vec<Output>) {
        if let Some(to) = self.feed.source() {
            out.push(Output::Subscribe {
                to,
                from: self.next_epoch,
            });
        }
    }

    /// Tells every peer where this partition stands, so each re-sends what it lacks.
    fn greet_peers(&self, out: &mut Vec<Output>) {
        for to in self.peers() {
            out.push(Output::SendHello {
                to,
                durable: self.durable,
            });
        }
    }

    /// Every replica of every other partition.
    fn peers(&self) -> impl Iterator<Item = ExecutorId> + '_ {
        let me = self.partition;
        self.placement
            .executors()
            .filter(move |peer| peer.partition != me)
    }

    /// Whether `peer` is a replica of another partition of the cluster.
    fn is_peer(&self, peer: ExecutorId) -> bool {
        peer.partition != self.partition && self.placement.hosts(peer.partition, peer.node)
    }

    /// Whether `p` is another partition of the cluster.
    fn is_peer_partition(&self, p: PartitionId) -> bool {
        p != self.partition && p.0 < self.partitions
    }

    fn on_ack(&mut self, from: ExecutorId, durable: Epoch, out: &mut Vec<Output>) {
        if !self.is_peer(from) {
            self.stats.peer_inputs_dropped += 1;
            return;
        }
        self.book
            .ack(&mut self.store, &self.placement, from, durable);
        self.send_released(from, out);
    }

    /// Sends replica `to` the held-back reads its acknowledgements now let through.
    fn send_released(&mut self, to: ExecutorId, out: &mut Vec<Output>) {
        for reads in self.book.release(to) {
            self.stats.reads_resent += 1;
            out.push(Output::SendReads { to, reads });
        }
    }

    fn on_hello(&mut self, from: ExecutorId, durable: Epoch, out: &mut Vec<Output>) {
        if !self.is_peer(from) {
            self.stats.peer_inputs_dropped += 1;
            return;
        }
        if durable < self.book.acked_through(from) {
            self.book.forget_acks(from, durable);
        }
        // Reads it lacks were dropped once every replica of its partition acknowledged
        // them: it cannot replay those epochs, and must copy another replica's state.
        let released = self.book.released(from.partition);
        if durable < released {
            out.push(Output::SendReadsGone {
                to: from,
                through: released,
            });
        }
        self.book
            .ack(&mut self.store, &self.placement, from, durable);
        self.book.resend_all(from);
        self.send_released(from, out);
    }

    fn on_durable(&mut self, up_to: Epoch, out: &mut Vec<Output>) {
        if up_to <= self.durable {
            return;
        }
        assert!(up_to < self.next_epoch, "durable beyond the applied epoch");
        self.durable = up_to;
        for to in self.peers() {
            out.push(Output::SendAck { to, durable: up_to });
        }
        self.report_applied(out);
    }

    fn on_checkpointed(&mut self, epoch: Epoch, out: &mut Vec<Output>) {
        // A checkpoint of an epoch this store has not applied is not this store's.
        if epoch <= self.checkpointed || epoch >= self.next_epoch {
            return;
        }
        self.checkpointed = epoch;
        self.report_applied(out);
    }

    /// Tells the sequencer replicas how far the log may be compacted for this replica: its
    /// durable epoch, and with checkpoints, no further than the last checkpoint. Without
    /// checkpoints the epoch is reported in steps of [`APPLIED_REPORT_EPOCHS`]; checkpoints
    /// are already that sparse.
    fn report_applied(&mut self, out: &mut Vec<Output>) {
        let compactable = match self.checkpoint_every {
            0 => self.durable,
            _ if self.bugs.report_uncheckpointed => self.durable,
            _ => self.durable.min(self.checkpointed),
        };
        let step = match self.checkpoint_every {
            0 => APPLIED_REPORT_EPOCHS,
            _ => 1,
        };
        if compactable.0 >= self.durable_reported.0 + step {
            self.durable_reported = compactable;
            for &to in self.feed.sources() {
                out.push(Output::ReportApplied {
                    to,
                    durable: compactable,
                });
            }
        }
    }

    fn on_result_query(
        &mut self,
        gateway: NodeId,
        client: ClientId,
        seq: RequestSeq,
        out: &mut Vec<Output>,
    ) {
        match self.book.result(&self.store, client, seq) {
            Some(result) => {
                self.stats.results_found += 1;
                out.push(Output::Result {
                    gateway,
                    result,
                    recovered: true,
                });
            }
            None => out.push(Output::ResultUnknown {
                gateway,
                client,
                seq,
            }),
        }
    }

    fn on_plan(&mut self, plan: Plan, out: &mut Vec<Output>) {
        if plan.partition != self.partition {
            self.stats.plans_dropped += 1;
            return;
        }
        // Plans of later epochs wait here: the plan stream runs ahead of execution.
        if plan.epoch < self.next_epoch || self.plans.contains_key(&plan.epoch) {
            self.stats.plans_repeated += 1;
            return;
        }
        if !self.is_well_formed(&plan) {
            self.stats.plans_dropped += 1;
            return;
        }
        // Reads that came before the plan can be judged now.
        let early: Vec<Position> = self
            .inbox
            .range(Position::new(plan.epoch, 0)..Position::new(plan.epoch.next(), 0))
            .map(|(position, _)| *position)
            .collect();
        for position in early {
            let Some(mut senders) = self.inbox.remove(&position) else {
                continue;
            };
            senders.retain(|from, received| {
                let expected = expects_reads(&plan, self.partition, position, *from);
                if !expected {
                    self.stats.reads_refused += received.parts.len() as u64;
                }
                expected
            });
            if !senders.is_empty() {
                self.inbox.insert(position, senders);
            }
        }
        let mut plan = plan;
        if self.bugs.reorder {
            swap_single_partition_pairs(&mut plan.txns);
        }
        self.plans.insert(plan.epoch, plan);
        self.drive(out);
    }

    /// Whether `plan` is one a scheduler could have written for this partition: its
    /// version, positions of its epoch in ascending order, and for every transaction
    /// participants in ascending order that include this partition, active participants
    /// among them, and (unless rejected) an owner per footprint entry, each a participant.
    /// Execution relies on all of it; a forged plan must not reach it.
    fn is_well_formed(&self, plan: &Plan) -> bool {
        let ascending = |ps: &[PartitionId]| ps.windows(2).all(|w| w[0] < w[1]);
        let positions_ascend = plan.txns.windows(2).all(|w| w[0].position < w[1].position);
        plan.version == PLAN_FORMAT_VERSION
            && positions_ascend
            && plan.txns.iter().all(|txn| {
                let participants = &txn.participants;
                let routed = txn.rejected.is_some()
                    || (txn.owners.len() == txn.txn.footprint.entries.len()
                        && txn.owners.iter().all(|owner| match owner {
                            Owner::Partition(p) => participants.binary_search(p).is_ok(),
                            Owner::Replicated => true,
                        }));
                txn.position.epoch == plan.epoch
                    && ascending(participants)
                    && participants.binary_search(&self.partition).is_ok()
                    && participants.last().is_some_and(|p| p.0 < self.partitions)
                    && ascending(&txn.active)
                    && txn
                        .active
                        .iter()
                        .all(|p| participants.binary_search(p).is_ok())
                    && routed
            })
    }

    fn on_remote_reads(&mut self, reads: Arc<RemoteReads>, out: &mut Vec<Output>) {
        let (position, from) = (reads.position, reads.from);
        // Senders that predate chunking say 0 of 0: one whole message.
        let chunks = reads.chunks.max(1);
        if !self.is_peer_partition(from) || reads.chunk >= chunks {
            self.stats.reads_refused += 1;
            return;
        }
        if self.is_done(position) {
            self.stats.reads_dropped += 1;
            return;
        }
        if let Some(plan) = self.plans.get(&position.epoch)
            && !expects_reads(plan, self.partition, position, from)
        {
            self.stats.reads_refused += 1;
            return;
        }
        let received = self
            .inbox
            .entry(position)
            .or_default()
            .entry(from)
            .or_insert_with(|| Received {
                chunks,
                parts: BTreeMap::new(),
            });
        if received.chunks != chunks {
            self.stats.reads_refused += 1;
            return;
        }
        if received.parts.contains_key(&reads.chunk) {
            // A chunk sent again after a reconnect or a restart.
            self.stats.reads_dropped += 1;
            return;
        }
        received.parts.insert(reads.chunk, reads);
        self.drive(out);
    }

    /// Whether the transaction at `position` is already behind the cursor.
    fn is_done(&self, position: Position) -> bool {
        if position.epoch < self.next_epoch {
            return true;
        }
        position.epoch == self.next_epoch
            && self
                .plans
                .get(&self.next_epoch)
                .and_then(|plan| index_of(plan, position))
                .is_some_and(|i| i < self.cursor)
    }

    /// Runs transactions until one must wait for remote reads or the plans run out.
    fn drive(&mut self, out: &mut Vec<Output>) {
        // The store holds part of a peer's state: nothing applies until all of it does.
        if self.transfer.is_some() {
            return;
        }
        while let Some(plan) = self.plans.get(&self.next_epoch) {
            let Some(txn) = plan.txns.get(self.cursor).cloned() else {
                let epoch = self.next_epoch;
                self.plans.remove(&epoch);
                let digest = *self.running_digest();
                self.store.put(digest_key(epoch), codec::encode(&digest));
                if let Some(old) = epoch.0.checked_sub(DIGEST_EPOCHS_RETAINED) {
                    self.store.delete(&digest_key(Epoch(old)));
                }
                if self.digests.len() == DIGESTS_KEPT {
                    self.digests.pop_front();
                }
                self.digests.push_back((epoch, digest));
                self.book.flush(&mut self.store, epoch);
                self.store.commit_epoch(epoch);
                let periodic =
                    self.checkpoint_every > 0 && epoch.0.is_multiple_of(self.checkpoint_every);
                if self.checkpoints_asked.remove(&epoch) || periodic {
                    match self.bugs.checkpoint_mislabeled {
                        true => self.store.checkpoint(epoch.next()),
                        false => self.store.checkpoint(epoch),
                    }
                    out.push(Output::Checkpoint(epoch));
                }
                self.next_epoch = epoch.next();
                self.cursor = 0;
                self.serve_image_waiting(out);
                self.drop_stale_reads();
                self.versions.applied(epoch, self.now);
                self.serve_waiting(out);
                out.push(Output::EpochApplied(epoch));
                continue;
            };
            if !self.step(&txn, out) {
                return;
            }
            self.cursor += 1;
            self.sent_at_cursor = false;
        }
    }

    /// Forgets reads for epochs already applied. Reads the plan expected were consumed, so
    /// these are what no plan asked for; nothing else would ever remove them.
    fn drop_stale_reads(&mut self) {
        let current = Position::new(self.next_epoch, 0);
        while let Some(entry) = self.inbox.first_entry()
            && *entry.key() < current
        {
            let parts: usize = entry.remove().values().map(|r| r.parts.len()).sum();
            self.stats.reads_dropped += parts as u64;
        }
    }

    /// Advances one transaction; false if it waits for remote reads.
    fn step(&mut self, txn: &RoutedTxn, out: &mut Vec<Output>) -> bool {
        if let Some(reason) = &txn.rejected {
            if txn.designated() == self.partition {
                self.report(txn, Outcome::Aborted(reason.clone()), out);
            }
            return true;
        }
        if txn.is_single_partition() {
            self.execute_local(txn, out);
            return true;
        }
        if !self.sent_at_cursor {
            // Planted bug `stale_remote_reads`: reads sent ahead of time are not sent again.
            if !self.bug_sent_early.remove(&txn.position) {
                self.send_reads(txn, out);
                self.send_reads_early(out);
            }
            self.sent_at_cursor = true;
        }
        if !txn.is_executor(self.partition) {
            return true;
        }
        let mut others = txn.participants.iter().filter(|p| **p != self.partition);
        let received = self.inbox.get(&txn.position);
        let have_all = others.all(|p| {
            received
                .and_then(|r| r.get(p))
                .is_some_and(Received::is_complete)
        });
        if !have_all {
            return false;
        }
        let remote: BTreeMap<PartitionId, Vec<Arc<RemoteReads>>> = self
            .inbox
            .remove(&txn.position)
            .unwrap_or_default()
            .into_iter()
            .map(|(p, received)| (p, received.parts.into_values().collect()))
            .collect();
        self.execute_distributed(txn, &remote, out);
        true
    }

    fn execute_local(&mut self, txn: &RoutedTxn, out: &mut Vec<Output>) {
        self.stats.executed += 1;
        let (outcome, effects) = serial::run(
            &self.registry,
            &txn.txn,
            &StoreView(&self.store),
            self.value_bytes_max,
        );
        let mut effects = effects.unwrap_or_default();
        for (key, value) in std::mem::take(&mut effects.writes) {
            self.apply(key, value);
        }
        self.keep_sent(txn.position, effects);
        self.report(txn, outcome, out);
    }

    fn execute_distributed(
        &mut self,
        txn: &RoutedTxn,
        remote: &BTreeMap<PartitionId, Vec<Arc<RemoteReads>>>,
        out: &mut Vec<Output>,
    ) {
        self.stats.executed += 1;
        let view = DistributedView {
            store: &self.store,
            me: self.partition,
            txn,
            remote,
        };
        let (outcome, effects) = serial::run(&self.registry, &txn.txn, &view, self.value_bytes_max);
        let mut effects = effects.unwrap_or_default();
        for (key, value) in std::mem::take(&mut effects.writes) {
            let owned = owner_of(txn, &key) == Some(Owner::Partition(self.partition));
            if owned || self.bugs.write_outside_partition {
                self.apply(key, value);
            }
        }
        if txn.designated() == self.partition {
            self.keep_sent(txn.position, effects);
            self.report(txn, outcome, out);
        }
    }

    /// Keeps what a committed transaction sent beyond its writes (only the designated
    /// participant does, so each is kept once): its letters, posted to this partition's
    /// outbox, and its events, at their offsets. Counts the letters it consumed.
    fn keep_sent(&mut self, position: Position, effects: Effects) {
        self.stats.letters_consumed += effects.consumed.len() as u64;
        if !effects.letters.is_empty() {
            self.stats.letters_posted += effects.letters.len() as u64;
            for (key, value) in self.outbox.post(effects.letters) {
                self.store.put(key, value);
            }
        }
        self.stats.events_published += effects.events.len() as u64;
        for (index, (stream, data)) in effects.events.into_iter().enumerate() {
            let offset = Offset {
                position,
                index: index as u32,
            };
            self.store.put(event_key(&stream, offset), data);
        }
    }

    /// This partition's events of `stream` from `from` on, at most `max` of them.
    fn stream_part(&self, stream: &str, from: Offset, max: u32) -> StreamPart {
        let applied = Epoch(self.next_epoch.0 - 1);
        let max = max.max(1) as usize;
        // One more than asked tells whether the limit cut them.
        let rows = self
            .store
            .scan_from(&stream_prefix(stream), &event_key(stream, from), max + 1);
        let complete = rows.len() <= max;
        let events = rows
            .into_iter()
            .take(max)
            .filter_map(|(key, data)| {
                let offset = offset_of(&key)?;
                (offset.position.epoch <= applied).then_some(StreamEvent { offset, data })
            })
            .collect();
        StreamPart {
            partition: self.partition,
            events,
            applied,
            complete,
        }
    }

    /// Asks for the next delivery of this partition's letters, if one is due. Only once
    /// caught up with the plans received: an executor replaying would ask on a stale mark.
    fn poll_outbox(&mut self, now: Time, out: &mut Vec<Output>) {
        if !self.can_ask_delivery() {
            return;
        }
        self.outbox.refresh(&self.store);
        let retry = !self.bugs.no_delivery_retry;
        if let Some(delivery) = self.outbox.poll(now, &self.store, retry) {
            self.stats.deliveries_requested += 1;
            let gateway = self.gateways[self.delivery_attempts % self.gateways.len()];
            self.delivery_attempts += 1;
            out.push(Output::Deliver { gateway, delivery });
        }
    }

    /// Whether a delivery may be asked for now: caught up, and with a gateway to ask.
    fn can_ask_delivery(&self) -> bool {
        self.plans.is_empty() && !self.gateways.is_empty() && self.transfer.is_none()
    }

    fn apply(&mut self, key: Key, value: Option<Value>) {
        // Planted bug `skip_one_write`.
        if self.bugs.skip_one_write
            && self.replica_index() >= 1
            && self.next_epoch.0 % 4 == 3
            && self.bug_skipped_in != Some(self.next_epoch)
        {
            self.bug_skipped_in = Some(self.next_epoch);
            return;
        }
        if is_system_key(&key) {
            match value {
                Some(v) => self.store.put(key, v),
                None => self.store.delete(&key),
            }
            return;
        }
        // Planted bug `digest_ignores_deletes`.
        let digested = !(self.bugs.digest_ignores_deletes && value.is_none());
        if digested {
            // Before the store changes: the first use computes the digest from it.
            self.running_digest().replace(&key, None, value.as_ref());
        }
        let old = self.store.replace(key.clone(), value);
        if digested {
            self.running_digest().replace(&key, old.as_ref(), None);
        }
        self.versions.before_write(self.next_epoch, key, old);
    }

    /// The digest of the user rows as they stand: the one recorded with the last applied
    /// epoch, or, in a store that has none (initial rows only), computed from every row.
    fn running_digest(&mut self) -> &mut StateDigest {
        let store = &self.store;
        self.digest.get_or_insert_with(|| {
            recorded_digest(store).map_or_else(|| StateDigest::of_store(store), |(_, d)| d)
        })
    }

    /// The digest of this partition's user rows after `epoch`, if it is among the last
    /// [`DIGESTS_KEPT`] epochs this replica applied since it started. Every replica of a
    /// partition has the same digest after the same epoch.
    pub fn digest_after(&self, epoch: Epoch) -> Option<StateDigest> {
        let i = self.digests.partition_point(|(e, _)| *e < epoch);
        self.digests
            .get(i)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, d)| *d)
    }

    /// The last epoch wholly applied.
    fn applied_epoch(&self) -> Epoch {
        Epoch(self.next_epoch.0 - 1)
    }

    fn on_snapshot_read(
        &mut self,
        gateway: NodeId,
        read: u64,
        at: PartAt,
        op: PartOp,
        out: &mut Vec<Output>,
    ) {
        let wanted = match at {
            PartAt::Latest { not_before } => not_before,
            PartAt::Epoch(e) => e,
        };
        if wanted > self.applied_epoch() && self.waiting.len() < SNAPSHOT_WAITING_MAX {
            self.waiting_seq += 1;
            let waiting = WaitingRead {
                gateway,
                read,
                at,
                op,
                deadline: self.now.plus_us(SNAPSHOT_WAIT_US),
            };
            self.waiting.insert((wanted, self.waiting_seq), waiting);
            return;
        }
        self.answer_snapshot(gateway, read, at, &op, out);
    }

    fn answer_snapshot(
        &mut self,
        gateway: NodeId,
        read: u64,
        at: PartAt,
        op: &PartOp,
        out: &mut Vec<Output>,
    ) {
        let part = self.snapshot_part(at, op);
        self.stats.snapshot_reads += 1;
        if matches!(
            part.answer,
            Err(SnapshotError::TooOld { .. } | SnapshotError::NotYet { .. })
        ) {
            self.stats.snapshot_misses += 1;
        }
        out.push(Output::SnapshotPart {
            gateway,
            read,
            part,
        });
    }

    /// Answers the waiting snapshot reads whose epoch is applied, and those past their
    /// deadline (`NotYet`).
    fn serve_waiting(&mut self, out: &mut Vec<Output>) {
        let applied = self.applied_epoch();
        let now = self.now;
        let due: Vec<(Epoch, u64)> = self
            .waiting
            .iter()
            .filter(|((epoch, _), w)| *epoch <= applied || w.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let w = self.waiting.remove(&key).expect("just listed");
            // Planted bug `snapshot_wait_forever`: a read past its deadline waits again.
            if self.bugs.snapshot_wait_forever && key.0 > applied {
                let deadline = now.plus_us(SNAPSHOT_WAIT_US);
                self.waiting.insert(key, WaitingRead { deadline, ..w });
                continue;
            }
            self.answer_snapshot(w.gateway, w.read, w.at, &w.op, out);
        }
    }

    /// This partition's answer to a snapshot read, now.
    fn snapshot_part(&mut self, at: PartAt, op: &PartOp) -> SnapshotPart {
        let applied = self.applied_epoch();
        let oldest = self.versions.oldest();
        let (epoch, wanted) = match at {
            PartAt::Latest { not_before } => (applied, not_before),
            PartAt::Epoch(e) => (e, e),
        };
        // Mid-copy, the store holds part of a peer's state.
        let answer = if self.transfer.is_some() {
            Err(SnapshotError::Unavailable)
        } else if wanted > applied {
            Err(SnapshotError::NotYet {
                asked: wanted,
                partition: self.partition,
                applied,
            })
        } else if epoch < oldest {
            Err(SnapshotError::TooOld {
                asked: epoch,
                oldest,
            })
        } else {
            self.read_snapshot(epoch, op)
        };
        SnapshotPart {
            partition: self.partition,
            applied,
            oldest,
            answer,
        }
    }

    fn read_snapshot(&mut self, epoch: Epoch, op: &PartOp) -> Result<PartRows, SnapshotError> {
        match op {
            PartOp::Epoch => Ok(PartRows::Nothing),
            PartOp::Get(keys) => {
                if keys.len() > SNAPSHOT_KEYS_MAX {
                    return Err(SnapshotError::Refused(format!(
                        "{} keys asked; at most {SNAPSHOT_KEYS_MAX} per read",
                        keys.len()
                    )));
                }
                for key in keys {
                    check_snapshot_key(key).map_err(SnapshotError::Refused)?;
                }
                let values = keys
                    .iter()
                    .map(|key| self.versions.get(&self.store, key, epoch))
                    .collect();
                Ok(PartRows::Values { epoch, values })
            }
            PartOp::Scan {
                range,
                after,
                limit,
            } => {
                check_snapshot_key(&range.prefix).map_err(SnapshotError::Refused)?;
                let limit = match *limit {
                    0 => SCAN_ROWS_DEFAULT,
                    n => n.min(SCAN_ROWS_MAX),
                };
                // Planted bug `snapshot_epoch_late`.
                let read_at = match self.bugs.snapshot_epoch_late && self.partition.0 == 1 {
                    true => Epoch(epoch.0 + 1).min(self.applied_epoch()),
                    false => epoch,
                };
                let (rows, more) = self.versions.scan(
                    &self.store,
                    range,
                    after.as_ref(),
                    read_at,
                    limit as usize,
                    SCAN_CHUNK_BYTES_MAX,
                );
                Ok(PartRows::Rows { epoch, rows, more })
            }
        }
    }

    fn send_reads(&mut self, txn: &RoutedTxn, out: &mut Vec<Output>) {
        let mut chunker = Chunker::new(txn.position, self.partition, self.reads_bytes_max);
        let me = Owner::Partition(self.partition);
        // Inserted-into prefixes are never read, so their rows stay home.
        let mine = txn
            .routes()
            .filter(|(_, access, owner)| *owner == me && access.reads());
        for (spec, _, _) in mine {
            match spec {
                KeySpec::Exact(k) => chunker.exact(k.clone(), self.store.get(k)),
                KeySpec::Prefix(p) => chunker.prefix(p.clone(), self.store.scan_prefix(p)),
            }
        }
        let chunks: Vec<Arc<RemoteReads>> = chunker.finish().into_iter().map(Arc::new).collect();
        if chunks.len() > 1 {
            self.stats.reads_split += 1;
        }
        let epoch = txn.position.epoch;
        for to in txn.executors().iter().filter(|p| **p != self.partition) {
            // A replica that already made this epoch durable has no use for its reads: this
            // one is replaying behind it (after a restart), and would otherwise make every
            // peer decode and drop a whole outage's worth of reads while it catches up.
            let replicas = self.placement.replicas(*to);
            let lacking: Vec<ExecutorId> = replicas
                .iter()
                .map(|node| ExecutorId {
                    partition: *to,
                    node: *node,
                })
                .filter(|peer| self.book.acked_through(*peer) < epoch)
                .collect();
            self.stats.reads_skipped += ((replicas.len() - lacking.len()) * chunks.len()) as u64;
            if lacking.is_empty() {
                // Nobody keeps them: a replica of `to` that loses its disk must be told.
                self.book.note_released(&mut self.store, *to, epoch);
                continue;
            }
            // A replica far behind gets these once it has caught up to them.
            let now: Vec<ExecutorId> = lacking
                .into_iter()
                .filter(|peer| self.book.send_now(*peer, epoch))
                .collect();
            for reads in &chunks {
                self.book.record_sent(*to, epoch, reads.clone());
                for peer in &now {
                    self.stats.reads_sent += 1;
                    out.push(Output::SendReads {
                        to: *peer,
                        reads: reads.clone(),
                    });
                }
            }
        }
    }

    /// Planted bug `stale_remote_reads`: in a replica other than the first, sends the reads
    /// of every later multi-partition transaction of the epoch now, from the store as it is
    /// before the transactions between have run.
    fn send_reads_early(&mut self, out: &mut Vec<Output>) {
        if !self.bugs.stale_remote_reads || self.replica_index() == 0 {
            return;
        }
        let Some(plan) = self.plans.get(&self.next_epoch) else {
            return;
        };
        let later: Vec<Arc<RoutedTxn>> = plan.txns[self.cursor + 1..]
            .iter()
            .filter(|t| t.rejected.is_none() && !t.is_single_partition())
            .filter(|t| !self.bug_sent_early.contains(&t.position))
            .cloned()
            .collect();
        for txn in later {
            self.send_reads(&txn, out);
            self.bug_sent_early.insert(txn.position);
        }
    }

    fn report(&mut self, txn: &RoutedTxn, outcome: Outcome, out: &mut Vec<Output>) {
        if txn.designated() != self.partition {
            return;
        }
        self.stats.reported += 1;
        let result = TxnResult {
            client: txn.txn.client,
            seq: txn.txn.seq,
            position: txn.position,
            outcome,
        };
        self.book.record_result(result.clone());
        out.push(Output::Result {
            gateway: txn.txn.gateway,
            result,
            recovered: false,
        });
    }
}

impl<S: Store> Machine for Executor<S> {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Output>) {
        self.now = now;
        let applied = self.next_epoch;
        match input {
            Input::Ack {
                from,
                node,
                durable,
            } => self.on_ack(
                ExecutorId {
                    partition: from,
                    node,
                },
                durable,
                out,
            ),
            Input::Connected { node } => {
                let durable = self.durable;
                let on_node: Vec<_> = self.peers().filter(|peer| peer.node == node).collect();
                for to in on_node {
                    out.push(Output::SendHello { to, durable });
                }
            }
            Input::ReplicaConnected(replica) => {
                if self.feed.source() == Some(replica) {
                    self.subscribe(out);
                }
            }
            Input::Durable { up_to } => self.on_durable(up_to, out),
            Input::Checkpointed { epoch } => self.on_checkpointed(epoch, out),
            Input::PlansCompacted { from, log_start } => {
                self.on_plans_compacted(from, log_start, out)
            }
            Input::ReadsGone {
                from,
                node,
                through,
            } => self.on_reads_gone(
                ExecutorId {
                    partition: from,
                    node,
                },
                through,
                out,
            ),
            Input::StateFetch { from, fetch } => self.on_state_fetch(from, fetch, out),
            Input::StateChunk { from, chunk } => self.on_state_chunk(from, chunk, out),
            Input::Hello {
                from,
                node,
                durable,
            } => self.on_hello(
                ExecutorId {
                    partition: from,
                    node,
                },
                durable,
                out,
            ),
            Input::Plan(plan) => {
                if plan.partition == self.partition {
                    self.feed.plan_arrived(now);
                }
                self.on_plan(plan, out);
            }
            Input::RemoteReads(reads) => self.on_remote_reads(reads, out),
            // Mid-copy, the store holds part of a peer's state: no answer (the gateway's
            // deadline answers, and the caller asks again).
            Input::ResultQuery { .. } | Input::StreamRead { .. } if self.transfer.is_some() => {}
            Input::ResultQuery {
                gateway,
                client,
                seq,
            } => self.on_result_query(gateway, client, seq, out),
            Input::StreamRead {
                gateway,
                read,
                stream,
                from,
                max,
            } => {
                let part = self.stream_part(&stream, from, max);
                out.push(Output::StreamPart {
                    gateway,
                    read,
                    part,
                });
            }
            Input::Start => {
                self.feed.start(now);
                self.subscribe(out);
                self.greet_peers(out);
                self.poll_outbox(now, out);
            }
            Input::SnapshotRead {
                gateway,
                read,
                at,
                op,
            } => self.on_snapshot_read(gateway, read, at, op, out),
            Input::Tick => {
                self.versions.reclaim(now);
                self.serve_waiting(out);
                self.poll_outbox(now, out);
                self.transfer_tick(out);
                // While a peer's state is copied, no plan is wanted: the log lacks them.
                let actions = match self.transfer {
                    Some(_) => Default::default(),
                    None => self.feed.check(now, !self.is_idle()),
                };
                if actions.resubscribe.is_some() {
                    self.stats.resubscribed += 1;
                    self.subscribe(out);
                }
                if actions.hello && !self.bugs.no_hello_on_stall {
                    self.stats.stall_hellos += 1;
                    self.greet_peers(out);
                }
            }
        }
        if self.next_epoch != applied {
            self.feed.progressed(now);
            self.poll_outbox(now, out);
        }
        self.feed
            .note_behind(now, self.reads_past_plans() || self.plans_missing_next());
    }

    fn next_deadline(&self) -> Option<Time> {
        // Only when a poll could ask (see `poll_outbox`); otherwise the next applied epoch
        // polls, and a deadline left in the past would fire without end.
        let retry = match self.bugs.no_delivery_retry || !self.can_ask_delivery() {
            true => None,
            false => self.outbox.deadline(),
        };
        let snapshot = self.waiting.values().map(|w| w.deadline).min();
        // While a peer's state is copied, the feed is not checked (see `Input::Tick`).
        let feed = match self.transfer {
            Some(_) => None,
            None => self.feed.deadline(),
        };
        [feed, retry, snapshot, self.transfer_deadline()]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The index of the transaction at `position` in `plan`, whose positions ascend.
fn index_of(plan: &Plan, position: Position) -> Option<usize> {
    plan.txns
        .binary_search_by_key(&position, |t| t.position)
        .ok()
}

/// Whether `plan` has `me` wait for reads `from` for the transaction at `position`: the
/// transaction is there, multi-partition, run by `me`, and `from` takes part in it.
fn expects_reads(plan: &Plan, me: PartitionId, position: Position, from: PartitionId) -> bool {
    index_of(plan, position).is_some_and(|i| {
        let txn = &plan.txns[i];
        txn.rejected.is_none()
            && !txn.is_single_partition()
            && txn.is_executor(me)
            && from != me
            && txn.participants.binary_search(&from).is_ok()
    })
}

/// The owner of the first footprint entry that may write `key`.
fn owner_of(txn: &RoutedTxn, key: &Key) -> Option<Owner> {
    txn.routes()
        .find(|(spec, access, _)| access.writes() && spec.covers(key))
        .map(|(_, _, owner)| owner)
}

fn swap_single_partition_pairs(txns: &mut [Arc<RoutedTxn>]) {
    let mut i = 0;
    while i + 1 < txns.len() {
        if txns[i].is_single_partition() && txns[i + 1].is_single_partition() {
            txns.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
}

struct StoreView<'a, S: Store>(&'a S);

impl<S: Store> ReadView for StoreView<'_, S> {
    fn get(&self, key: &Key) -> Option<Value> {
        self.0.get(key)
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        self.0.scan_prefix(prefix)
    }

    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        self.0.first_in(prefix)
    }
}

/// Local keys from the store, other partitions' keys from their remote reads.
struct DistributedView<'a, S: Store> {
    store: &'a S,
    me: PartitionId,
    txn: &'a RoutedTxn,
    /// Each other participant's reads, its chunks in order.
    remote: &'a BTreeMap<PartitionId, Vec<Arc<RemoteReads>>>,
}

impl<S: Store> DistributedView<'_, S> {
    /// The reads of the partition holding what `covers` accepts, or `None` if it is local.
    fn remote_for(&self, covers: impl Fn(&KeySpec) -> bool) -> Option<&[Arc<RemoteReads>]> {
        let (_, _, owner) = self.txn.routes().find(|(spec, _, _)| covers(spec))?;
        match owner {
            Owner::Partition(p) if p != self.me => self.remote.get(&p).map(Vec::as_slice),
            _ => None,
        }
    }

    /// The rows under `prefix` in `chunks`, ascending. They come from the first shipped
    /// prefix covering it, whose rows may continue over several chunks; an overlapping
    /// prefix of the footprint holds the same rows again and is not added twice.
    fn remote_rows<'c>(
        chunks: &'c [Arc<RemoteReads>],
        prefix: &'c Key,
    ) -> impl Iterator<Item = &'c (Key, Value)> + 'c {
        let pieces = || chunks.iter().flat_map(|c| c.prefixes.iter());
        let shipped = pieces().map(|(p, _)| p).find(|p| prefix.starts_with(p));
        pieces()
            .filter(move |(p, _)| Some(p) == shipped)
            .flat_map(|(_, rows)| rows.iter())
            .filter(move |(k, _)| k.starts_with(prefix))
    }
}

impl<S: Store> ReadView for DistributedView<'_, S> {
    fn get(&self, key: &Key) -> Option<Value> {
        let Some(chunks) = self.remote_for(|spec| spec.covers(key)) else {
            return self.store.get(key);
        };
        let exact = chunks
            .iter()
            .flat_map(|c| c.exact.iter())
            .find(|(k, _)| k == key);
        if let Some((_, v)) = exact {
            return v.clone();
        }
        // Each chunk's rows under a prefix ascend: search each piece.
        chunks
            .iter()
            .flat_map(|c| c.prefixes.iter())
            .filter(|(p, _)| key.starts_with(p))
            .find_map(|(_, rows)| {
                let at = rows.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
                Some(rows[at].1.clone())
            })
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        let Some(chunks) = self.remote_for(|spec| spec.covers_prefix(prefix)) else {
            return self.store.scan_prefix(prefix);
        };
        Self::remote_rows(chunks, prefix).cloned().collect()
    }

    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        let Some(chunks) = self.remote_for(|spec| spec.covers_prefix(prefix)) else {
            return self.store.first_in(prefix);
        };
        Self::remote_rows(chunks, prefix).next().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemStore, Procedure, Txn};
    use detflow_protocol::{
        AbortReason, Batch, ClientId, Footprint, LOG_FORMAT_VERSION, PartitionScheme, RequestSeq,
        Transaction, codec,
    };
    use detflow_scheduler::{PartitionMap, schedule};

    /// Moves one unit from one counter to another; aborts if the source is empty.
    struct Move;

    impl Procedure for Move {
        const NAME: &'static str = "test.move";
        type Args = (Key, Key);
        type Output = u64;

        fn footprint((from, to): &(Key, Key)) -> Footprint {
            Footprint::new().write(from.clone()).write(to.clone())
        }

        fn execute(tx: &mut Txn<'_>, (from, to): (Key, Key)) -> Result<u64, AbortReason> {
            let a: u64 = tx.get_as(&from)?.unwrap_or(0);
            let b: u64 = tx.get_as(&to)?.unwrap_or(0);
            if a == 0 {
                return Err(AbortReason::User("source is empty".into()));
            }
            tx.put_as(from, &(a - 1))?;
            tx.put_as(to, &(b + 1))?;
            Ok(b + 1)
        }
    }

    struct Fixture {
        map: PartitionMap,
        executors: Vec<Executor<MemStore>>,
        a: Key,
        b: Key,
    }

    /// Two partitions; counter `a` (value 5) on partition 0, counter `b` (0) on partition 1.
    fn fixture() -> Fixture {
        let map = PartitionMap::new(PartitionScheme::hashed(2)).unwrap();
        let on = |p: u32| {
            (0..)
                .map(|i| Key::table("c").u64(i))
                .find(|k| map.owner(k) == Ok(Owner::Partition(PartitionId(p))))
                .unwrap()
        };
        let (a, b) = (on(0), on(1));
        let mut registry = Registry::new();
        registry.register::<Move>();
        let registry = Arc::new(registry);
        let mut executors: Vec<_> = (0..2)
            .map(|p| Executor::new(PartitionId(p), 2, registry.clone(), MemStore::new()))
            .collect();
        executors[0]
            .store_mut()
            .put(a.clone(), codec::encode(&5u64));
        Fixture {
            map,
            executors,
            a,
            b,
        }
    }

    fn plans(f: &Fixture, moves: &[(Key, Key)]) -> Vec<Plan> {
        let txns = moves
            .iter()
            .enumerate()
            .map(|(i, args)| {
                Arc::new(Transaction {
                    client: ClientId(1),
                    seq: RequestSeq(i as u64 + 1),
                    gateway: NodeId(3),
                    procedure: Move::NAME.into(),
                    args: codec::encode(args),
                    footprint: Move::footprint(args),
                })
            })
            .collect();
        let batch = Batch {
            version: LOG_FORMAT_VERSION,
            epoch: Epoch(1),
            txns,
        };
        schedule(&batch, &f.map).unwrap()
    }

    fn feed(e: &mut Executor<MemStore>, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        e.handle(Time::ZERO, input, &mut out);
        out
    }

    fn counter(e: &Executor<MemStore>, key: &Key) -> Option<u64> {
        Store::get(e.store(), key).map(|v| codec::decode(&v).unwrap())
    }

    /// Partition `p`'s replica on node 0, where executors are placed by default.
    fn peer(p: u32) -> ExecutorId {
        ExecutorId {
            partition: PartitionId(p),
            node: NodeId(0),
        }
    }

    fn at(e: &mut Executor<MemStore>, now: Time, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        e.handle(now, input, &mut out);
        out
    }

    #[test]
    fn plans_come_from_one_replica_and_a_stall_moves_on_and_greets_the_peers() {
        use crate::STALL_US;
        let mut f = fixture();
        let [p0, _]: [Plan; 2] = plans(&f, &[(f.a.clone(), f.b.clone())]).try_into().unwrap();
        let e = &mut f.executors[0];
        e.set_plan_sources(vec![NodeId(1), NodeId(2)]);
        let subscribe = |to, from| Output::Subscribe {
            to: NodeId(to),
            from: Epoch(from),
        };
        let hello = Output::SendHello {
            to: peer(1),
            durable: Epoch(0),
        };
        // Partition 0 starts at the first replica, and greets its peer.
        assert_eq!(
            at(e, Time(0), Input::Start),
            [subscribe(1, 1), hello.clone()]
        );
        assert_eq!(e.next_deadline(), Some(Time(STALL_US)));
        // A reconnect to the source renews the subscription; to another replica, nothing.
        let renewed = at(e, Time(1), Input::ReplicaConnected(NodeId(1)));
        assert_eq!(renewed, [subscribe(1, 1)]);
        assert!(at(e, Time(1), Input::ReplicaConnected(NodeId(2))).is_empty());
        // The plan comes; the transaction waits for partition 1's reads.
        let out = at(e, Time(STALL_US / 2), Input::Plan(p0));
        assert!(matches!(&out[..], [Output::SendReads { .. }]), "{out:?}");
        // No plan for a stall period: the next replica. Waiting work, no progress: Hello.
        let stalled = at(e, Time(2 * STALL_US), Input::Tick);
        assert_eq!(stalled, [subscribe(2, 1), hello]);
        assert_eq!(e.stats().resubscribed, 1);
        assert_eq!(e.stats().stall_hellos, 1);
        // A tick before the deadline does nothing.
        assert!(at(e, Time(2 * STALL_US + 1), Input::Tick).is_empty());
        // With the planted bug, a stall never greets the peers.
        e.set_bugs(ExecutorBugs {
            no_hello_on_stall: true,
            ..ExecutorBugs::default()
        });
        let stalled = at(e, Time(4 * STALL_US), Input::Tick);
        assert_eq!(stalled, [subscribe(1, 1)]);
    }

    /// Partition 0's plan of an empty epoch.
    fn empty_plan(f: &Fixture, epoch: u64) -> Plan {
        let batch = Batch {
            version: LOG_FORMAT_VERSION,
            epoch: Epoch(epoch),
            txns: Vec::new(),
        };
        schedule(&batch, &f.map).unwrap().swap_remove(0)
    }

    /// A replica whose next epoch the log compacted away copies its peer's state in
    /// bounded chunks, asking again when a chunk is lost, and resumes after the copy's
    /// epoch in step with the peer.
    #[test]
    fn a_replica_the_log_left_behind_copies_a_peers_state_in_chunks() {
        use detflow_protocol::transfer::{STATE_CHUNK_BYTES_MAX, StateChunk, StateFetch};
        let f = fixture();
        let placement = Arc::new(Placement::spread(2, &[NodeId(1), NodeId(2)], 2));
        let registry = Arc::new({
            let mut r = Registry::new();
            r.register::<Move>();
            r
        });
        let replica = |node| {
            let mut e = Executor::new(PartitionId(0), 2, registry.clone(), MemStore::new());
            e.set_placement(NodeId(node), placement.clone());
            e.set_plan_sources(vec![NodeId(100)]);
            e
        };
        let (mut peer, mut lost) = (replica(1), replica(2));
        // Enough bytes for three chunks.
        for i in 0..40u64 {
            peer.store_mut()
                .put(Key::table("big").u64(i), vec![i as u8; 30_000]);
        }
        at(&mut peer, Time(0), Input::Start);
        for e in 1..=3 {
            at(&mut peer, Time(0), Input::Plan(empty_plan(&f, e)));
        }
        assert_eq!(peer.next_epoch(), Epoch(4));

        at(&mut lost, Time(0), Input::Start);
        let compacted = || Input::PlansCompacted {
            from: NodeId(100),
            log_start: Epoch(2),
        };
        let fetch = |out: Vec<Output>| -> StateFetch {
            let asks: Vec<StateFetch> = out
                .into_iter()
                .filter_map(|o| match o {
                    Output::FetchState { to, fetch } => {
                        assert_eq!(to.node, NodeId(1));
                        Some(fetch)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(asks.len(), 1, "one ask at a time");
            asks.into_iter().next().unwrap()
        };
        let serve = |peer: &mut Executor<MemStore>, now, fetch| -> StateChunk {
            let out = at(
                peer,
                now,
                Input::StateFetch {
                    from: NodeId(2),
                    fetch,
                },
            );
            match out.as_slice() {
                [Output::SendState { to, chunk }] if to.node == NodeId(2) => chunk.clone(),
                other => panic!("expected one chunk, got {other:?}"),
            }
        };
        let mut ask = fetch(at(&mut lost, Time(0), compacted()));
        assert_eq!(ask.image, None, "a new image first");
        // An image of an epoch no epoch can follow is malformed: dropped, counted.
        let absurd = StateChunk::Rows {
            epoch: Epoch(u64::MAX),
            after: None,
            rows: Vec::new(),
            done: true,
        };
        let out = at(
            &mut lost,
            Time(0),
            Input::StateChunk {
                from: NodeId(1),
                chunk: absurd,
            },
        );
        assert!(out.is_empty());
        // A compaction notice while copying starts nothing.
        assert!(at(&mut lost, Time(0), compacted()).is_empty());
        // The first answer is lost: the replica asks again after the stall.
        let _lost_answer = serve(&mut peer, Time(0), ask.clone());
        ask = fetch(at(&mut lost, Time(TRANSFER_STALL_US), Input::Tick));
        assert_eq!(ask.image, None);
        let mut chunks = 0;
        let mut now = Time(TRANSFER_STALL_US);
        let restored = loop {
            let chunk = serve(&mut peer, now, ask.clone());
            if let StateChunk::Rows { epoch, rows, .. } = &chunk {
                assert_eq!(*epoch, Epoch(3));
                let bytes: usize = rows.iter().map(|(k, v)| k.as_bytes().len() + v.len()).sum();
                assert!(bytes < STATE_CHUNK_BYTES_MAX + 31_000, "a chunk is bounded");
            }
            chunks += 1;
            let out = at(
                &mut lost,
                now,
                Input::StateChunk {
                    from: NodeId(1),
                    chunk,
                },
            );
            if let Some(restored) = out.iter().find_map(|o| match o {
                Output::StateRestored { epoch, rows } => Some((*epoch, *rows)),
                _ => None,
            }) {
                assert!(out.contains(&Output::Subscribe {
                    to: NodeId(100),
                    from: Epoch(4)
                }));
                break restored;
            }
            ask = fetch(out);
            now = now.plus_us(1);
            // Mid-copy, its store holds part of the peer's state: no snapshot reads.
            let read = Input::SnapshotRead {
                gateway: NodeId(7),
                read: 1,
                at: PartAt::Latest {
                    not_before: Epoch(0),
                },
                op: PartOp::Get(vec![Key::table("big").u64(1)]),
            };
            match at(&mut lost, now, read).as_slice() {
                [Output::SnapshotPart { part, .. }] => {
                    assert_eq!(part.answer, Err(SnapshotError::Unavailable))
                }
                other => panic!("expected a snapshot answer, got {other:?}"),
            }
        };
        assert_eq!(chunks, 3);
        assert_eq!(restored.0, Epoch(3));
        assert_eq!(lost.next_epoch(), Epoch(4));
        assert_eq!(lost.store().map(), peer.store().map());
        let without_outbox = |s: &MemStore| -> Vec<(Key, Value)> {
            (s.system().iter())
                .filter(|(k, _)| !crate::differs_between_replicas(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        assert_eq!(without_outbox(lost.store()), without_outbox(peer.store()));
        assert_eq!(restored.1 as usize, 40 + without_outbox(peer.store()).len());

        // Both go on in step.
        for e in [&mut peer, &mut lost] {
            at(e, now, Input::Plan(empty_plan(&f, 4)));
        }
        assert_eq!(lost.next_epoch(), Epoch(5));
        assert_eq!(lost.digest_after(Epoch(4)), peer.digest_after(Epoch(4)));
        // A late chunk, a stranger's ask: dropped and counted.
        let late = StateChunk::Unavailable;
        assert!(
            at(
                &mut lost,
                now,
                Input::StateChunk {
                    from: NodeId(1),
                    chunk: late
                }
            )
            .is_empty()
        );
        let stranger = Input::StateFetch {
            from: NodeId(9),
            fetch: StateFetch { image: None },
        };
        assert!(at(&mut peer, now, stranger).is_empty());
        assert_eq!(lost.stats().transfer_inputs_dropped, 2);
        assert_eq!(peer.stats().transfer_inputs_dropped, 1);
        assert_eq!(
            (lost.stats().transfers_started, lost.stats().transfers_done),
            (1, 1)
        );
    }

    /// Plans lost from the stream (queued on a connection that died) while later ones keep
    /// coming: the source never goes silent, so the gap itself moves the subscription on.
    #[test]
    fn a_gap_in_the_plan_stream_moves_the_subscription_on() {
        use crate::STALL_US;
        let mut f = fixture();
        let (p1, p2, p3) = (empty_plan(&f, 1), empty_plan(&f, 2), empty_plan(&f, 3));
        let e = &mut f.executors[0];
        e.set_plan_sources(vec![NodeId(1), NodeId(2)]);
        at(e, Time(0), Input::Start);
        // Epoch 1's plan is lost; 2 and 3 come, one a stall period apart from the next.
        at(e, Time(STALL_US / 2), Input::Plan(p2));
        at(e, Time(3 * STALL_US / 2), Input::Plan(p3));
        let stalled = at(e, Time(2 * STALL_US), Input::Tick);
        assert!(
            stalled.contains(&Output::Subscribe {
                to: NodeId(2),
                from: Epoch(1),
            }),
            "{stalled:?}"
        );
        let out = at(e, Time(2 * STALL_US + 1), Input::Plan(p1));
        assert!(out.contains(&Output::EpochApplied(Epoch(3))), "{out:?}");
        assert_eq!(e.next_epoch(), Epoch(4));
    }

    /// With checkpoints, the epoch reported for compaction is the last one both durable
    /// and checkpointed; the planted bug reports the durable epoch alone.
    #[test]
    fn compaction_is_reported_no_further_than_the_last_checkpoint() {
        let reported = |out: &[Output]| -> Vec<u64> {
            out.iter()
                .filter_map(|o| match o {
                    Output::ReportApplied { durable, .. } => Some(durable.0),
                    _ => None,
                })
                .collect()
        };
        for bug in [false, true] {
            let mut f = fixture();
            let plans: Vec<Plan> = (1..=10).map(|e| empty_plan(&f, e)).collect();
            let e = &mut f.executors[0];
            e.set_plan_sources(vec![NodeId(1)]);
            e.set_checkpoint_every(4);
            e.set_bugs(ExecutorBugs {
                report_uncheckpointed: bug,
                ..ExecutorBugs::default()
            });
            at(e, Time(0), Input::Start);
            let mut taken = Vec::new();
            for plan in plans {
                for o in at(e, Time(1), Input::Plan(plan)) {
                    if let Output::Checkpoint(epoch) = o {
                        taken.push(epoch.0);
                    }
                }
            }
            assert_eq!(taken, [4, 8], "a checkpoint after every fourth epoch");
            let durable = at(e, Time(2), Input::Durable { up_to: Epoch(10) });
            if bug {
                assert_eq!(reported(&durable), [10]);
                continue;
            }
            assert!(
                reported(&durable).is_empty(),
                "no checkpoint is durable yet"
            );
            let out = at(e, Time(3), Input::Checkpointed { epoch: Epoch(4) });
            assert_eq!(reported(&out), [4]);
            // A checkpoint beyond what this store applied is not its own.
            assert!(at(e, Time(4), Input::Checkpointed { epoch: Epoch(12) }).is_empty());
            let out = at(e, Time(4), Input::Checkpointed { epoch: Epoch(8) });
            assert_eq!(reported(&out), [8]);
        }
    }

    #[test]
    fn a_checkpoint_asked_for_on_demand_is_taken_at_that_epoch() {
        let mut f = fixture();
        let plans: Vec<Plan> = (1..=6).map(|e| empty_plan(&f, e)).collect();
        let e = &mut f.executors[0];
        at(e, Time(0), Input::Start);
        assert_eq!(e.request_checkpoint(Epoch(3)), CheckpointAnswer::Scheduled);
        let mut taken = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            if i == 4 {
                assert_eq!(
                    e.request_checkpoint(Epoch(2)),
                    CheckpointAnswer::TooLate { applied: Epoch(4) }
                );
            }
            for o in at(e, Time(1), Input::Plan(plan)) {
                if let Output::Checkpoint(epoch) = o {
                    taken.push(epoch.0);
                }
            }
        }
        assert_eq!(
            taken,
            [3],
            "once, at the epoch asked, with periodic ones off"
        );
        // A bounded number wait.
        for k in 0..CHECKPOINTS_ASKED_MAX as u64 {
            assert_eq!(
                e.request_checkpoint(Epoch(100 + k)),
                CheckpointAnswer::Scheduled
            );
        }
        assert_eq!(
            e.request_checkpoint(Epoch(100)),
            CheckpointAnswer::Scheduled
        );
        assert!(matches!(
            e.request_checkpoint(Epoch(200)),
            CheckpointAnswer::Refused(_)
        ));
        assert!(matches!(
            e.request_checkpoint(Epoch(u64::MAX)),
            CheckpointAnswer::Refused(_)
        ));
    }

    #[test]
    fn a_directly_fed_executor_never_subscribes() {
        let mut f = fixture();
        let e = &mut f.executors[1];
        let out = at(e, Time(0), Input::Start);
        assert_eq!(
            out,
            [Output::SendHello {
                to: peer(0),
                durable: Epoch(0)
            }]
        );
        assert_eq!(e.next_deadline(), None);
    }

    #[test]
    fn multi_partition_transaction_exchanges_reads_and_commits_on_both() {
        let mut f = fixture();
        let [p0, p1]: [Plan; 2] = plans(&f, &[(f.a.clone(), f.b.clone())]).try_into().unwrap();

        // Each active participant sends its reads to the other, then waits.
        let out0 = feed(&mut f.executors[0], Input::Plan(p0));
        let [Output::SendReads { to, reads: r0 }] = &out0[..] else {
            panic!("expected one SendReads, got {out0:?}")
        };
        assert_eq!(*to, peer(1));
        assert_eq!(r0.exact, vec![(f.a.clone(), Some(codec::encode(&5u64)))]);
        let out1 = feed(&mut f.executors[1], Input::Plan(p1));
        let [Output::SendReads { to, reads: r1 }] = &out1[..] else {
            panic!("expected one SendReads, got {out1:?}")
        };
        assert_eq!(*to, peer(0));

        // With the peer's reads both execute; only partition 0, the designated one, reports.
        let out1 = feed(&mut f.executors[1], Input::RemoteReads(r0.clone()));
        assert_eq!(out1, vec![Output::EpochApplied(Epoch(1))]);
        let out0 = feed(&mut f.executors[0], Input::RemoteReads(r1.clone()));
        assert_eq!(
            out0,
            vec![
                Output::Result {
                    gateway: NodeId(3),
                    result: TxnResult {
                        client: ClientId(1),
                        seq: RequestSeq(1),
                        position: Position::new(Epoch(1), 0),
                        outcome: Outcome::Committed(codec::encode(&1u64)),
                    },
                    recovered: false,
                },
                Output::EpochApplied(Epoch(1)),
            ]
        );
        // Each partition holds only its own user key.
        assert_eq!(counter(&f.executors[0], &f.a), Some(4));
        assert_eq!(counter(&f.executors[0], &f.b), None);
        assert_eq!(counter(&f.executors[1], &f.b), Some(1));
        assert_eq!(counter(&f.executors[1], &f.a), None);
        assert!(f.executors.iter().all(|e| e.is_idle()));
    }

    /// Moves a unit from counter `.0` into a new row under prefix `.1`, at index `.2`.
    struct Spill;

    impl Procedure for Spill {
        const NAME: &'static str = "test.spill";
        type Args = (Key, Key, u64);
        type Output = ();

        fn footprint((from, log, _): &(Key, Key, u64)) -> Footprint {
            Footprint::new()
                .write(from.clone())
                .insert_prefix(log.clone())
        }

        fn execute(tx: &mut Txn<'_>, (from, log, i): (Key, Key, u64)) -> Result<(), AbortReason> {
            let a: u64 = tx.get_as(&from)?.unwrap_or(0);
            tx.put_as(from, &(a - 1))?;
            tx.put_as(log.u64(i), &a)
        }
    }

    #[test]
    fn inserted_into_prefixes_are_not_shipped() {
        let f = fixture();
        // A prefix of partition 1 that already holds rows.
        let log = (0..)
            .map(|i| Key::table("log").u64(i))
            .find(|k| f.map.owner(k) == Ok(Owner::Partition(PartitionId(1))))
            .unwrap();
        let mut registry = Registry::new();
        registry.register::<Spill>();
        let registry = Arc::new(registry);
        let mut e1 = Executor::new(PartitionId(1), 2, registry.clone(), MemStore::new());
        e1.store_mut().put(log.clone().u64(0), vec![1]);
        let args = (f.a.clone(), log.clone(), 1u64);
        let batch = Batch {
            version: LOG_FORMAT_VERSION,
            epoch: Epoch(1),
            txns: vec![Arc::new(Transaction {
                client: ClientId(1),
                seq: RequestSeq(1),
                gateway: NodeId(3),
                procedure: Spill::NAME.into(),
                args: codec::encode(&args),
                footprint: Spill::footprint(&args),
            })],
        };
        let [_, p1]: [Plan; 2] = schedule(&batch, &f.map).unwrap().try_into().unwrap();
        let out = feed(&mut e1, Input::Plan(p1));
        let [Output::SendReads { reads, .. }] = &out[..] else {
            panic!("expected one SendReads, got {out:?}")
        };
        assert!(
            reads.exact.is_empty() && reads.prefixes.is_empty(),
            "{reads:?}"
        );
    }

    #[test]
    fn unacknowledged_reads_survive_a_restart_and_are_resent_on_hello() {
        let mut f = fixture();
        let [p0, p1]: [Plan; 2] = plans(&f, &[(f.a.clone(), f.b.clone())]).try_into().unwrap();
        let out = feed(&mut f.executors[0], Input::Plan(p0));
        let [Output::SendReads { reads, .. }] = &out[..] else {
            panic!("{out:?}")
        };
        let out = feed(&mut f.executors[1], Input::Plan(p1));
        let [Output::SendReads { reads: r1, .. }] = &out[..] else {
            panic!("{out:?}")
        };
        // The epoch completes; its unacknowledged reads are now in the store.
        feed(&mut f.executors[0], Input::RemoteReads(r1.clone()));
        assert_eq!(f.executors[0].next_epoch(), Epoch(2));
        assert_eq!(f.executors[0].outbox_len(), 1);

        // A restart from the same store finds the unacknowledged reads again.
        let store = f.executors[0].store().clone();
        let registry = f.executors[0].registry.clone();
        let mut restarted = Executor::new(PartitionId(0), 2, registry, store);
        assert_eq!(restarted.outbox_len(), 1);
        assert_eq!(
            feed(
                &mut restarted,
                Input::Hello {
                    from: PartitionId(1),
                    node: NodeId(0),
                    durable: Epoch(0)
                }
            ),
            vec![Output::SendReads {
                to: peer(1),
                reads: reads.clone()
            }]
        );
        // Once the peer is durable past the epoch, the reads are forgotten, in the store too.
        assert!(
            feed(
                &mut restarted,
                Input::Ack {
                    from: PartitionId(1),
                    node: NodeId(0),
                    durable: Epoch(1)
                }
            )
            .is_empty()
        );
        assert_eq!(restarted.outbox_len(), 0);
        let again = Executor::new(
            PartitionId(0),
            2,
            restarted.registry.clone(),
            restarted.store().clone(),
        );
        assert_eq!(again.outbox_len(), 0);
        assert_eq!(
            feed(&mut restarted, Input::Connected { node: NodeId(0) }),
            vec![Output::SendHello {
                to: peer(1),
                durable: Epoch(1)
            }]
        );
    }

    #[test]
    fn result_table_answers_retried_calls() {
        let mut f = fixture();
        let [p0, _]: [Plan; 2] = plans(&f, &[(f.a.clone(), f.a.clone())]).try_into().unwrap();
        let out = feed(&mut f.executors[0], Input::Plan(p0));
        let Some(Output::Result { result, .. }) = out.first() else {
            panic!("{out:?}")
        };
        let query = |seq| Input::ResultQuery {
            gateway: NodeId(9),
            client: ClientId(1),
            seq: RequestSeq(seq),
        };
        assert_eq!(
            feed(&mut f.executors[0], query(1)),
            vec![Output::Result {
                gateway: NodeId(9),
                result: result.clone(),
                recovered: true,
            }]
        );
        assert_eq!(
            feed(&mut f.executors[0], query(2)),
            vec![Output::ResultUnknown {
                gateway: NodeId(9),
                client: ClientId(1),
                seq: RequestSeq(2)
            }]
        );
        assert_eq!(
            feed(&mut f.executors[0], Input::Durable { up_to: Epoch(1) }),
            vec![Output::SendAck {
                to: peer(1),
                durable: Epoch(1)
            }]
        );
    }

    #[test]
    fn early_reads_wait_for_the_plan_and_duplicates_are_dropped() {
        let mut f = fixture();
        let [p0, p1]: [Plan; 2] = plans(&f, &[(f.b.clone(), f.a.clone())]).try_into().unwrap();
        let out1 = feed(&mut f.executors[1], Input::Plan(p1));
        let [Output::SendReads { reads: r1, .. }] = &out1[..] else {
            panic!("{out1:?}")
        };
        // Partition 1's reads reach partition 0 before its plan does.
        assert!(feed(&mut f.executors[0], Input::RemoteReads(r1.clone())).is_empty());
        assert!(feed(&mut f.executors[0], Input::RemoteReads(r1.clone())).is_empty());
        assert_eq!(f.executors[0].stats().reads_dropped, 1);
        let out0 = feed(&mut f.executors[0], Input::Plan(p0));
        // b is empty: the procedure aborts on both partitions; nothing is written.
        assert!(matches!(
            &out0[..],
            [Output::SendReads { .. }, Output::Result { result, .. }, Output::EpochApplied(_)]
                if matches!(result.outcome, Outcome::Aborted(AbortReason::User(_)))
        ));
        assert_eq!(counter(&f.executors[0], &f.a), Some(5));
    }

    #[test]
    fn unknown_procedures_and_undecodable_arguments_abort_with_typed_reasons() {
        let mut f = fixture();
        let [mut p0, _]: [Plan; 2] = plans(
            &f,
            &[(f.a.clone(), f.a.clone()), (f.a.clone(), f.a.clone())],
        )
        .try_into()
        .unwrap();
        let mut unknown = (*p0.txns[0]).clone();
        Arc::make_mut(&mut unknown.txn).procedure = "no.such".into();
        let mut garbage = (*p0.txns[1]).clone();
        Arc::make_mut(&mut garbage.txn).args = vec![0xc1];
        p0.txns = vec![Arc::new(unknown), Arc::new(garbage)];
        let outcomes: Vec<_> = feed(&mut f.executors[0], Input::Plan(p0))
            .into_iter()
            .filter_map(|o| match o {
                Output::Result { result, .. } => Some(result.outcome),
                _ => None,
            })
            .collect();
        assert_eq!(outcomes.len(), 2);
        assert_eq!(
            outcomes[0],
            Outcome::Aborted(AbortReason::UnknownProcedure("no.such".into()))
        );
        assert!(matches!(
            outcomes[1],
            Outcome::Aborted(AbortReason::BadArgs(_))
        ));
        assert_eq!(counter(&f.executors[0], &f.a), Some(5));
    }

    #[test]
    fn planted_reorder_swaps_single_partition_neighbours() {
        let mut f = fixture();
        f.executors[0].set_bugs(ExecutorBugs {
            reorder: true,
            ..ExecutorBugs::default()
        });
        let a = f.a.clone();
        let [p0, _]: [Plan; 2] = plans(&f, &[(a.clone(), a.clone()), (a.clone(), a.clone())])
            .try_into()
            .unwrap();
        let first = p0.txns[0].position;
        let out = feed(&mut f.executors[0], Input::Plan(p0));
        let reported: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Result { result, .. } => Some(result.position),
                _ => None,
            })
            .collect();
        assert_eq!(reported.len(), 2);
        assert_ne!(
            reported[0], first,
            "the planted bug runs the second transaction first"
        );
    }

    #[test]
    fn replicas_share_reads_keep_the_first_copy_and_free_reads_only_when_all_acked() {
        let mut f = fixture();
        // Both partitions on nodes 1 and 2; executors[0] is partition 0 on node 1.
        let placement = Arc::new(Placement::spread(2, &[NodeId(1), NodeId(2)], 2));
        let mut sibling = Executor::new(
            PartitionId(1),
            2,
            f.executors[1].registry.clone(),
            MemStore::new(),
        );
        f.executors[0].set_placement(NodeId(1), placement.clone());
        f.executors[1].set_placement(NodeId(2), placement.clone());
        sibling.set_placement(NodeId(1), placement);
        let [p0, p1]: [Plan; 2] = plans(&f, &[(f.a.clone(), f.b.clone())]).try_into().unwrap();
        let at = |p: u32, n: u32| ExecutorId {
            partition: PartitionId(p),
            node: NodeId(n),
        };
        // Partition 0's reads go to both replicas of partition 1.
        let out0 = feed(&mut f.executors[0], Input::Plan(p0));
        let sent: Vec<_> = out0
            .iter()
            .map(|o| match o {
                Output::SendReads { to, .. } => *to,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent, [at(1, 2), at(1, 1)]);
        let Output::SendReads { reads: r0, .. } = &out0[0] else {
            unreachable!()
        };
        // Both replicas of partition 1 send theirs; the first copy runs the transaction.
        let r1a = feed(&mut f.executors[1], Input::Plan(p1.clone()));
        let r1b = feed(&mut sibling, Input::Plan(p1));
        let reads = |out: &[Output]| match &out[0] {
            Output::SendReads { reads, .. } => reads.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(reads(&r1a), reads(&r1b), "replicas read the same");
        let done = feed(&mut f.executors[0], Input::RemoteReads(reads(&r1b)));
        assert!(
            done.iter().any(|o| matches!(o, Output::Result { .. })),
            "{done:?}"
        );
        let late = feed(&mut f.executors[0], Input::RemoteReads(reads(&r1a)));
        assert!(late.is_empty(), "{late:?}");
        assert_eq!(f.executors[0].stats().reads_dropped, 1);
        // Both replicas of partition 1 apply the same writes.
        feed(&mut f.executors[1], Input::RemoteReads(r0.clone()));
        feed(&mut sibling, Input::RemoteReads(r0.clone()));
        assert_eq!(counter(&f.executors[1], &f.b), Some(1));
        assert_eq!(counter(&sibling, &f.b), Some(1));
        // The reads are kept until every replica of partition 1 acked them.
        let e = &mut f.executors[0];
        let ack = |node| Input::Ack {
            from: PartitionId(1),
            node: NodeId(node),
            durable: Epoch(1),
        };
        assert_eq!(e.outbox_len(), 1);
        feed(e, ack(2));
        assert_eq!(e.outbox_len(), 1, "one replica acked");
        // The one that did not ack gets them again on its hello; the other gets nothing.
        let hello = |node| Input::Hello {
            from: PartitionId(1),
            node: NodeId(node),
            durable: Epoch(0),
        };
        assert_eq!(feed(e, hello(1)).len(), 1);
        feed(e, ack(1));
        assert_eq!(e.outbox_len(), 0);
        // A node that runs no replica of partition 1 is not a peer.
        feed(e, ack(7));
        assert_eq!(e.stats().peer_inputs_dropped, 1);
    }

    #[test]
    fn a_replica_replaying_behind_its_peers_sends_reads_only_to_those_that_lack_them() {
        let mut f = fixture();
        let placement = Arc::new(Placement::spread(2, &[NodeId(1), NodeId(2)], 2));
        f.executors[0].set_placement(NodeId(1), placement);
        let [p0, _]: [Plan; 2] = plans(&f, &[(f.a.clone(), f.b.clone())]).try_into().unwrap();
        let e = &mut f.executors[0];
        // Partition 1's replica on node 2 already made epoch 1 durable; node 1's has not.
        feed(
            e,
            Input::Ack {
                from: PartitionId(1),
                node: NodeId(2),
                durable: Epoch(1),
            },
        );
        let out = feed(e, Input::Plan(p0));
        let sent: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::SendReads { to, .. } => Some(*to),
                _ => None,
            })
            .collect();
        let lacking = ExecutorId {
            partition: PartitionId(1),
            node: NodeId(1),
        };
        assert_eq!(sent, [lacking]);
        assert_eq!(e.stats().reads_skipped, 1);
        // Kept until the one that lacks them acks.
        assert_eq!(e.outbox_len(), 1);
        feed(
            e,
            Input::Ack {
                from: PartitionId(1),
                node: NodeId(1),
                durable: Epoch(1),
            },
        );
        assert_eq!(e.outbox_len(), 0);
        // A replica of partition 1 that lost its disk greets from before them: told.
        let out = feed(
            e,
            Input::Hello {
                from: PartitionId(1),
                node: NodeId(2),
                durable: Epoch(0),
            },
        );
        assert!(out.contains(&Output::SendReadsGone {
            to: ExecutorId {
                partition: PartitionId(1),
                node: NodeId(2),
            },
            through: Epoch(1),
        }));
    }

    /// Reads nobody keeps (every replica of the receiver had made the epoch durable when a
    /// replica replaying behind ran it) are gone as well.
    #[test]
    fn reads_a_replaying_replica_never_kept_are_reported_gone() {
        let mut f = fixture();
        let placement = Arc::new(Placement::spread(2, &[NodeId(1), NodeId(2)], 2));
        f.executors[0].set_placement(NodeId(1), placement);
        let [p0, _]: [Plan; 2] = plans(&f, &[(f.a.clone(), f.b.clone())]).try_into().unwrap();
        let e = &mut f.executors[0];
        for node in [1, 2] {
            feed(
                e,
                Input::Ack {
                    from: PartitionId(1),
                    node: NodeId(node),
                    durable: Epoch(1),
                },
            );
        }
        feed(e, Input::Plan(p0));
        assert_eq!((e.stats().reads_skipped, e.outbox_len()), (2, 0));
        let out = feed(
            e,
            Input::Hello {
                from: PartitionId(1),
                node: NodeId(1),
                durable: Epoch(0),
            },
        );
        assert!(out.iter().any(|o| matches!(
            o,
            Output::SendReadsGone { through, .. } if *through == Epoch(1)
        )));
    }
}
