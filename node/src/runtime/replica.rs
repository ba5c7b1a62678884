//! The replica task: drives the `Replica` machine and the plan server fed by its commits,
//! appending to the log and syncing it once per round (group commit).

use super::router::Router;
use super::stats::ReasonLabel;
use super::{Clock, Event, NodeStats, drain, sleep_until};
use crate::archive::Archive;
use crate::failstop::fatal;
use crate::storage::LogStore;
use detflow_protocol::message::{LogReply, Message};
use detflow_protocol::{Epoch, ExecutorId, LogEntry, Machine};
use detflow_scheduler::{PartitionMap, PlanServer, plan_server};
use detflow_sequencer::replica::{self, Replica};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

/// Sends the plan server's plans to their partitions; returns the compaction point it
/// announced, if any.
fn send_plans(router: &Router, out: &mut Vec<plan_server::Output>) -> Option<Epoch> {
    let me = router.me;
    let mut compact = None;
    for output in out.drain(..) {
        match output {
            plan_server::Output::Plan { to, node, plan } => {
                let to = ExecutorId {
                    partition: to,
                    node,
                };
                router.to_executor(to, Message::Plan(plan));
            }
            plan_server::Output::Compacted {
                to,
                node,
                log_start,
            } => {
                let msg = Message::PlansCompacted {
                    from: me,
                    partition: to,
                    log_start,
                };
                router.to_executor(
                    ExecutorId {
                        partition: to,
                        node,
                    },
                    msg,
                );
            }
            plan_server::Output::Compact { through } => compact = Some(through),
        }
    }
    compact
}

/// Writes the committed entries the replica's next write drops from the log to the archive
/// as one segment, durably, then applies the archive's retention; any failure stops the
/// node, since the log must not drop what the archive did not take.
fn archive_entries(archive: &ArchiveSink, entries: &[LogEntry]) {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return;
    };
    let (from, to) = (first.epoch(), last.epoch());
    #[allow(clippy::disallowed_methods)] // how long an archive write takes is for the log
    let began = std::time::Instant::now();
    match archive.archive.write_segment(entries) {
        Ok(segment) => tracing::info!(
            first = from.0,
            last = to.0,
            bytes = segment.bytes,
            ms = began.elapsed().as_millis() as u64,
            "epochs archived"
        ),
        Err(e) => fatal(format!("cannot archive epochs {from}..={to}: {e:#}")),
    }
    if archive.retention.keeps_all() {
        return;
    }
    // Age is measured by the files' times, on the wall clock.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    if let Err(e) = archive
        .archive
        .retain(&archive.retention, &archive.hosted, to, now)
    {
        fatal(format!("cannot apply the archive's retention: {e:#}"));
    }
}

/// Where a replica archives compacted epochs, and for how long.
#[derive(Clone)]
pub(super) struct ArchiveSink {
    /// The archive.
    pub(super) archive: Archive,
    /// How much of it to keep.
    pub(super) retention: crate::archive::Retention,
    /// The node's partitions: retention keeps a checkpoint of each of them (and of every
    /// other partition whose checkpoints the archive holds, when the cluster shares it).
    pub(super) hosted: Vec<detflow_protocol::PartitionId>,
}

/// A log read answers with batches of about this many bytes at most (at least one), far
/// below the frame limit.
const LOG_READ_BYTES: usize = 1 << 20;

/// The committed batches of `replica`'s log from `from` on, as many as fit one answer.
fn read_log(replica: &Replica, from: Epoch) -> LogReply {
    let log_start = replica.log_start();
    if from <= log_start {
        return LogReply::Compacted { log_start };
    }
    let commit = replica.commit_epoch();
    let (mut batches, mut bytes) = (Vec::new(), 0);
    let mut epoch = from;
    while epoch <= commit && (batches.is_empty() || bytes < LOG_READ_BYTES) {
        let Some(entry) = replica.entry(epoch) else {
            break;
        };
        // Exact, so that no answer nears the frame limit; log reads are rare.
        bytes += detflow_protocol::codec::encode(&*entry.batch).len();
        batches.push(entry.batch.clone());
        epoch = epoch.next();
    }
    LogReply::Batches { commit, batches }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn replica_task(
    mut replica: Replica,
    mut log: LogStore,
    archive: ArchiveSink,
    mut inbox: mpsc::Receiver<Event>,
    router: Arc<Router>,
    map: PartitionMap,
    executors: Vec<ExecutorId>,
    stats: Arc<NodeStats>,
    clock: Clock,
) {
    let mut server = PlanServer::new(map, executors);
    let mut plans = Vec::new();
    let mut out = Vec::new();
    // When this replica, leading, wrote each epoch: for the epoch commit latency.
    let mut closed_at: BTreeMap<Epoch, Instant> = BTreeMap::new();
    let mut published_drops = 0;
    // The archive write the replica asked for ahead of a compaction, on a blocking thread.
    let mut archiving: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let deadline = replica.next_deadline().map(|t| clock.instant(t));
        let archived = async {
            match archiving.as_mut() {
                Some(job) => job.await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            ev = inbox.recv() => match ev { Some(ev) => Some(ev), None => return },
            done = archived => {
                archiving = None;
                if let Err(e) = done {
                    fatal(format!("the archive writer failed: {e}"));
                }
                replica.handle(clock.now(), replica::Input::Archived, &mut out);
                None
            }
            _ = sleep_until(deadline) => {
                replica.handle(clock.now(), replica::Input::Tick, &mut out);
                None
            }
        };
        let mut inputs = Vec::new();
        if let Some(ev) = first {
            inputs.push(ev);
        }
        drain(&mut inbox, &mut inputs);
        for ev in inputs {
            let input = match ev {
                Event::Msg(Message::Peer { from, msg }) => replica::Input::Peer { from, msg },
                Event::Msg(Message::Submit(txn)) => replica::Input::Submit(txn),
                Event::Msg(Message::Subscribe {
                    partition,
                    node,
                    from,
                }) => {
                    let input = plan_server::Input::Subscribe {
                        partition,
                        node,
                        from,
                    };
                    server.handle(clock.now(), input, &mut plans);
                    send_plans(&router, &mut plans);
                    continue;
                }
                Event::Msg(Message::Applied {
                    partition,
                    node,
                    durable,
                }) => {
                    let input = plan_server::Input::Applied {
                        partition,
                        node,
                        durable,
                    };
                    server.handle(clock.now(), input, &mut plans);
                    match send_plans(&router, &mut plans) {
                        Some(through) => replica::Input::Compact { through },
                        None => continue,
                    }
                }
                Event::ClientLog { from, reply } => {
                    let _ = reply.send(read_log(&replica, from));
                    continue;
                }
                _ => continue,
            };
            replica.handle(clock.now(), input, &mut out);
        }
        // Perform effects; one fsync covers every write of this round (group commit).
        loop {
            let mut last_write = None;
            for effect in out.drain(..) {
                match effect {
                    replica::Output::Committed(batch) => {
                        if let Some(closed) = closed_at.remove(&batch.epoch) {
                            stats.epoch_latency.observe(closed.elapsed().as_secs_f64());
                            stats.epoch_transactions.observe(batch.txns.len() as f64);
                        }
                        server.handle(
                            clock.now(),
                            plan_server::Input::Committed(batch),
                            &mut plans,
                        );
                    }
                    replica::Output::Duplicate {
                        client,
                        seq,
                        gateway,
                    } => {
                        router.to_gateway(gateway, Message::Duplicate { client, seq });
                    }
                    replica::Output::NotLeader { txn, leader } => {
                        let gateway = txn.gateway;
                        let from = replica.id();
                        router.to_gateway(gateway, Message::NotLeader { from, txn, leader });
                    }
                    // Before the write that drops them, which comes next.
                    replica::Output::Archive(entries) => {
                        tokio::task::block_in_place(|| archive_entries(&archive, &entries));
                    }
                    // In the background: the compaction waits for `Archived`, the log not.
                    replica::Output::ArchiveAhead(entries) => {
                        assert!(archiving.is_none(), "one archive write at a time");
                        let archive = archive.clone();
                        archiving = Some(tokio::task::spawn_blocking(move || {
                            archive_entries(&archive, &entries)
                        }));
                    }
                    replica::Output::Persist(write) => {
                        if replica.is_leader() {
                            for entry in &write.append {
                                closed_at.insert(entry.epoch(), Instant::now());
                            }
                        }
                        if let Err(e) = log.append(&write) {
                            fatal(format!("cannot append to the log: {e}"));
                        }
                        last_write = Some(write.id);
                    }
                    replica::Output::LeaderKnown(leader) => router.leader_changed(leader),
                    replica::Output::Compacted { through } => {
                        let input = plan_server::Input::Compacted { through };
                        server.handle(clock.now(), input, &mut plans);
                        stats.log_start.set(through.0);
                    }
                    replica::Output::Send { to, msg } => {
                        router.to_replica(
                            to,
                            Message::Peer {
                                from: replica.id(),
                                msg,
                            },
                        );
                    }
                }
            }
            let Some(write) = last_write else { break };
            if let Err(e) = tokio::task::block_in_place(|| log.sync()) {
                fatal(format!("cannot fsync the log: {e}"));
            }
            replica.handle(clock.now(), replica::Input::Persisted { write }, &mut out);
        }
        send_plans(&router, &mut plans);
        stats.term.store(replica.term().0, Ordering::Relaxed);
        stats.leader.store(
            replica.leader().map_or(0, |l| u64::from(l.0)),
            Ordering::Relaxed,
        );
        stats.commit.set(replica.commit_epoch().0);
        // Drops are rare: publish them only when they change, not every round.
        let dropped = replica.stats().peer_messages_dropped;
        if dropped != published_drops {
            for (reason, n) in replica.stats().peer_drops.by_reason() {
                let reason = reason.name();
                let counter = stats.replica_drops.get_or_create(&ReasonLabel { reason });
                // The machine's count is the truth; the metric catches up with it.
                counter.inc_by(n.saturating_sub(counter.get()));
            }
            published_drops = dropped;
        }
    }
}
