//! The executor task: drives one partition's `Executor` machine and syncs its store once
//! per round in which it applied an epoch.

use super::router::Router;
use super::stats::PartitionLabel;
use super::{Clock, Event, NodeStats, drain, sleep_until};
use crate::archive::Archive;
use crate::failstop::fatal;
use crate::storage::{CheckpointJob, FjallStore, StorageError};
use detflow_executor::{Executor, Input, Output, Store};
use detflow_protocol::message::Message;
use detflow_protocol::{Epoch, ExecutorId, Machine, Time};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Sends one of replica `me`'s outputs where it goes; true if it reports an applied epoch
/// (which the caller makes durable).
fn route_output(router: &Router, me: ExecutorId, effect: Output) -> bool {
    match effect {
        Output::EpochApplied(_) => return true,
        // The task takes the captured state from the store (see `start_checkpoint`).
        Output::Checkpoint(_) => {}
        Output::Result {
            gateway,
            result,
            recovered,
        } => {
            let msg = Message::Result {
                from: me.partition,
                result,
                recovered,
            };
            router.to_gateway(gateway, msg);
        }
        Output::ResultUnknown {
            gateway,
            client,
            seq,
        } => router.to_gateway(gateway, Message::ResultUnknown { client, seq }),
        Output::SendAck { to, durable } => {
            let msg = Message::Ack {
                from: me.partition,
                node: me.node,
                to: to.partition,
                durable,
            };
            router.to_executor(to, msg);
        }
        Output::SendHello { to, durable } => {
            let msg = Message::Hello {
                from: me.partition,
                node: me.node,
                to: to.partition,
                durable,
            };
            router.to_executor(to, msg);
        }
        Output::SendReads { to, reads } => {
            let msg = Message::RemoteReads {
                to: to.partition,
                reads,
            };
            router.to_executor(to, msg);
        }
        Output::StreamPart {
            gateway,
            read,
            part,
        } => router.to_gateway(gateway, Message::StreamPart { read, part }),
        Output::SnapshotPart {
            gateway,
            read,
            part,
        } => router.to_gateway(gateway, Message::SnapshotPart { read, part }),
        Output::Deliver { gateway, delivery } => {
            router.to_gateway(gateway, Message::Deliver(delivery));
        }
        Output::ReportApplied { to, durable } => router.to_replica(
            to,
            Message::Applied {
                partition: me.partition,
                node: me.node,
                durable,
            },
        ),
        Output::Subscribe { to, from } => router.to_replica(
            to,
            Message::Subscribe {
                partition: me.partition,
                node: me.node,
                from,
            },
        ),
        Output::SendReadsGone { to, through } => {
            let msg = Message::ReadsGone {
                from: me.partition,
                node: me.node,
                to: to.partition,
                through,
            };
            router.to_executor(to, msg);
        }
        Output::FetchState { to, fetch } => router.to_executor(
            to,
            Message::StateFetch {
                partition: me.partition,
                node: me.node,
                fetch,
            },
        ),
        Output::SendState { to, chunk } => router.to_executor(
            to,
            Message::StateChunk {
                partition: me.partition,
                node: me.node,
                chunk,
            },
        ),
        Output::StateRestored { epoch, rows } => {
            let label = PartitionLabel {
                partition: me.partition.0,
            };
            router.stats.state_transfers.get_or_create(&label).inc();
            tracing::info!(
                "partition {}: copied another replica's state after epoch {epoch} ({rows} rows): \
                 it could not replay the epochs it lacked (compacted away, or their reads \
                 dropped by peers)",
                me.partition
            );
        }
    }
    false
}

/// An executor makes its store durable at most this often, on a blocking thread, one sync
/// at a time. Nothing waits for these syncs but the peers' bookkeeping (results do not wait
/// for durability: the log replays them), so they stay off the executor's path: an fsync
/// inline stalled execution for as long as the disk took, up to hundreds of milliseconds
/// while another store on the same disk flushed, and a sync per epoch bounded a replay at
/// the disk's fsync rate.
const STATE_SYNC_US: u64 = 20_000;

/// A partition that applied no epoch for this long while the log is ahead of it says so,
/// with what it waits for, and again every this long.
const STALLED_US: u64 = 5_000_000;

/// Where an executor writes its checkpoints, and the last one it holds at start.
pub(super) struct Checkpoints {
    /// The archive they go to.
    pub(super) archive: Archive,
    /// The last checkpoint of this partition the archive held at start (0: none).
    pub(super) last: Epoch,
    /// Shared by the node's partitions: one checkpoint is written at a time per node, so
    /// partitions that reach a checkpoint epoch together take turns instead of taking
    /// the node's cores and disk together.
    pub(super) turn: Arc<tokio::sync::Semaphore>,
    /// How fast a checkpoint reads its partition (MiB/s; 0: no limit).
    pub(super) mib_per_sec: u64,
    /// On a node without a sequencer replica (whose compactions apply the archive's
    /// retention elsewhere): the retention to apply after each checkpoint, and the node's
    /// partitions.
    pub(super) retention: Option<(
        crate::archive::Retention,
        Vec<detflow_protocol::PartitionId>,
    )>,
}

/// A background task's result: its value, an error to stop the node with, or its death.
type Joined<T> = Result<anyhow::Result<T>, tokio::task::JoinError>;

/// What woke the executor task.
enum Wake {
    Event(Event),
    /// The store's background sync finished (or its blocking task died).
    Synced(Result<Result<Epoch, StorageError>, tokio::task::JoinError>),
    /// A checkpoint was written (or its blocking task died).
    Checkpointed(Joined<Epoch>),
    /// A deadline passed: the machine's, or a sync's.
    Timer,
}

/// Writes the state `job` captured to the archive as partition `partition`'s checkpoint,
/// on a blocking thread once it is this node's turn, at the node's pace; its epoch once
/// durable.
fn start_checkpoint(
    job: CheckpointJob,
    partition: detflow_protocol::PartitionId,
    checkpoints: &Checkpoints,
) -> tokio::task::JoinHandle<anyhow::Result<Epoch>> {
    let archive = checkpoints.archive.clone();
    let turn = checkpoints.turn.clone();
    let mib_per_sec = checkpoints.mib_per_sec;
    let retention = checkpoints.retention.clone();
    tokio::spawn(async move {
        #[allow(clippy::disallowed_methods)] // how long a checkpoint takes is for the log
        let asked = std::time::Instant::now();
        let _turn = turn
            .acquire_owned()
            .await
            .map_err(|_| anyhow::anyhow!("the node's checkpoint turns ended"))?;
        let waited = asked.elapsed();
        let write = tokio::task::spawn_blocking(move || {
            #[allow(clippy::disallowed_methods)]
            let began = std::time::Instant::now();
            let rows = job.iter_bytes().map(|row| Ok(row?));
            let mut pacer = crate::archive::Pacer::new(mib_per_sec);
            let (file, rows) =
                archive.write_checkpoint_from(partition, job.epoch(), rows, &mut pacer)?;
            tracing::info!(
                %partition,
                epoch = job.epoch().0,
                rows,
                bytes = file.bytes,
                waited_ms = waited.as_millis() as u64,
                ms = began.elapsed().as_millis() as u64,
                "checkpoint written"
            );
            if let Some((retention, hosted)) = retention.filter(|(r, _)| !r.keeps_all()) {
                // Age is measured by the files' times, on the wall clock.
                #[allow(clippy::disallowed_methods)]
                let now = std::time::SystemTime::now();
                archive
                    .retain(&retention, &hosted, job.epoch(), now)
                    .map_err(|e| e.context("applying the archive's retention"))?;
            }
            Ok(job.epoch())
        });
        write
            .await
            .map_err(|e| anyhow::anyhow!("the checkpoint writer died: {e}"))?
    })
}

pub(super) async fn executor_task(
    mut executor: Executor<FjallStore>,
    mut inbox: mpsc::Receiver<Event>,
    router: Arc<Router>,
    stats: Arc<NodeStats>,
    clock: Clock,
    checkpoints: Option<Checkpoints>,
) {
    let me = executor.id();
    let partition = me.partition;
    let mut out = Vec::new();
    executor.handle(clock.now(), Input::Start, &mut out);
    if let Some(last) = checkpoints.as_ref().map(|c| c.last) {
        executor.handle(clock.now(), Input::Checkpointed { epoch: last }, &mut out);
    }
    // One checkpoint is written at a time; one captured meanwhile is dropped (the next
    // one lets the log be compacted as far).
    let mut checkpointing: Option<tokio::task::JoinHandle<anyhow::Result<Epoch>>> = None;
    let mut published_drops = 0;
    // When the first epoch applied since the last sync began was applied.
    let mut unsynced_since: Option<Time> = None;
    let mut syncing: Option<tokio::task::JoinHandle<Result<Epoch, StorageError>>> = None;
    // The last epoch seen applied, when, and when a stall was last logged.
    let (mut last_next, mut progressed_at, mut reported_at) = (0, clock.now(), Time::ZERO);
    loop {
        let sync_due = unsynced_since
            .filter(|_| syncing.is_none())
            .map(|t| t.plus_us(STATE_SYNC_US));
        let deadline = [executor.next_deadline(), sync_due]
            .into_iter()
            .flatten()
            .min()
            .map(|t| clock.instant(t));
        let sync_done = async {
            match syncing.as_mut() {
                Some(job) => job.await,
                None => std::future::pending().await,
            }
        };
        let checkpoint_done = async {
            match checkpointing.as_mut() {
                Some(job) => job.await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            ev = inbox.recv() => match ev { Some(ev) => Wake::Event(ev), None => return },
            done = sync_done => Wake::Synced(done),
            done = checkpoint_done => Wake::Checkpointed(done),
            _ = sleep_until(deadline) => Wake::Timer,
        };
        let first = match first {
            Wake::Event(ev) => Some(ev),
            Wake::Synced(done) => {
                syncing = None;
                let durable = match done {
                    Ok(Ok(epoch)) => epoch,
                    Ok(Err(e)) => fatal(format!("cannot fsync partition {partition}: {e}")),
                    Err(e) => fatal(format!("the fsync of partition {partition} failed: {e}")),
                };
                executor.store_mut().synced(durable);
                executor.handle(clock.now(), Input::Durable { up_to: durable }, &mut out);
                for effect in out.drain(..) {
                    route_output(&router, me, effect);
                }
                None
            }
            Wake::Checkpointed(done) => {
                checkpointing = None;
                let epoch = match done {
                    Ok(Ok(epoch)) => epoch,
                    Ok(Err(e)) => fatal(format!(
                        "cannot write a checkpoint of partition {partition}: {e:#}"
                    )),
                    Err(e) => fatal(format!(
                        "the checkpoint of partition {partition} failed: {e}"
                    )),
                };
                executor.handle(clock.now(), Input::Checkpointed { epoch }, &mut out);
                let label = PartitionLabel {
                    partition: partition.0,
                };
                stats.checkpoint_epoch.get_or_create(&label).set(epoch.0);
                for effect in out.drain(..) {
                    route_output(&router, me, effect);
                }
                None
            }
            Wake::Timer => None,
        };
        let mut events = Vec::new();
        match first {
            Some(ev) => events.push(ev),
            None if executor.next_deadline().is_some_and(|t| t <= clock.now()) => {
                executor.handle(clock.now(), Input::Tick, &mut out)
            }
            None => {}
        }
        drain(&mut inbox, &mut events);
        for ev in events {
            let input = match ev {
                // A plan from the wire is not shared: no copy.
                Event::Msg(Message::Plan(plan)) => Input::Plan(Arc::unwrap_or_clone(plan)),
                Event::Msg(Message::RemoteReads { reads, .. }) => Input::RemoteReads(reads),
                Event::Msg(Message::Ack {
                    from,
                    node,
                    durable,
                    ..
                }) => Input::Ack {
                    from,
                    node,
                    durable,
                },
                Event::Msg(Message::Hello {
                    from,
                    node,
                    durable,
                    ..
                }) => Input::Hello {
                    from,
                    node,
                    durable,
                },
                Event::Msg(Message::SnapshotQuery {
                    read,
                    gateway,
                    at,
                    op,
                    ..
                }) => Input::SnapshotRead {
                    gateway,
                    read,
                    at,
                    op,
                },
                Event::Msg(Message::StreamQuery {
                    read,
                    gateway,
                    stream,
                    from,
                    max,
                    ..
                }) => Input::StreamRead {
                    gateway,
                    read,
                    stream,
                    from,
                    max,
                },
                Event::Msg(Message::Query {
                    client,
                    seq,
                    gateway,
                    ..
                }) => Input::ResultQuery {
                    gateway,
                    client,
                    seq,
                },
                Event::Msg(Message::PlansCompacted {
                    from, log_start, ..
                }) => Input::PlansCompacted { from, log_start },
                Event::Msg(Message::ReadsGone {
                    from,
                    node,
                    through,
                    ..
                }) => Input::ReadsGone {
                    from,
                    node,
                    through,
                },
                Event::Msg(Message::StateFetch { node, fetch, .. }) => {
                    Input::StateFetch { from: node, fetch }
                }
                Event::Msg(Message::StateChunk { node, chunk, .. }) => {
                    Input::StateChunk { from: node, chunk }
                }
                Event::ClientCheckpoint { at, reply } => {
                    let answer = executor.request_checkpoint(at);
                    let _ = reply.send((partition, answer));
                    continue;
                }
                Event::LinkUp(node) => {
                    // The machine decides what a new connection means: a replica may be
                    // its plan source, a partition may lack reads.
                    executor.handle(clock.now(), Input::ReplicaConnected(node), &mut out);
                    executor.handle(clock.now(), Input::Connected { node }, &mut out);
                    continue;
                }
                _ => continue,
            };
            executor.handle(clock.now(), input, &mut out);
        }
        let mut applied = false;
        for effect in out.drain(..) {
            applied |= route_output(&router, me, effect);
        }
        if applied && unsynced_since.is_none() {
            unsynced_since = Some(clock.now());
        }
        if let Some(job) = executor.store_mut().take_checkpoint()
            && let Some(checkpoints) = &checkpoints
            && checkpointing.is_none()
        {
            checkpointing = Some(start_checkpoint(job, partition, checkpoints));
        }
        let sync_now = syncing.is_none()
            && unsynced_since.is_some_and(|since| clock.now().since_us(since) >= STATE_SYNC_US);
        if sync_now {
            unsynced_since = None;
            if let Some(job) = executor.store_mut().begin_sync() {
                syncing = Some(tokio::task::spawn_blocking(move || job.run()));
            }
        }
        let next = executor.next_epoch().0;
        let now = clock.now();
        if next != last_next {
            (last_next, progressed_at) = (next, now);
            let applied = Epoch(next.saturating_sub(1));
            if let (Some(digest), Ok(mut digests)) =
                (executor.digest_after(applied), stats.digests.lock())
            {
                digests.insert(partition, (applied.0, digest.to_string()));
            }
        } else if stats.commit.get() >= next
            && now.since_us(progressed_at) >= STALLED_US
            && now.since_us(reported_at) >= STALLED_US
        {
            reported_at = now;
            tracing::warn!(
                %partition,
                for_s = now.since_us(progressed_at) / 1_000_000,
                "partition applies no epoch: {}",
                executor.waiting_for()
            );
        }
        if let Ok(mut parts) = stats.partitions.lock() {
            let durable = executor.store().applied_epoch().0;
            parts.insert(partition, (next, durable));
        }
        let label = PartitionLabel {
            partition: partition.0,
        };
        stats.partition_next_epoch.get_or_create(&label).set(next);
        let lag = stats.commit.get().saturating_sub(next.saturating_sub(1));
        stats.partition_lag.get_or_create(&label).set(lag);
        let versions = executor.version_stats();
        stats
            .snapshot_retained_bytes
            .get_or_create(&label)
            .set(versions.bytes);
        stats
            .snapshot_oldest_epoch
            .get_or_create(&label)
            .set(versions.oldest.0);
        let s = executor.stats();
        let dropped = s.peer_inputs_dropped + s.plans_dropped + s.reads_refused;
        if dropped != published_drops {
            let counter = stats.executor_drops.get_or_create(&label);
            counter.inc_by(dropped.saturating_sub(published_drops));
            published_drops = dropped;
        }
    }
}
