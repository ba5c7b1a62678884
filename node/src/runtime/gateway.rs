//! The gateway task: drives the `Gateway` machine and holds the clients waiting for their
//! calls' replies.

use super::router::Router;
use super::stats::ReasonLabel;
use super::{Clock, Event, NodeStats, sleep_until};
use detflow_gateway::{self as gateway, Gateway};
use detflow_protocol::CallId;
use detflow_protocol::Machine;
use detflow_protocol::message::{Message, Reply};
use detflow_protocol::snapshot::SnapshotReply;
use detflow_protocol::stream::StreamReply;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Clients waiting for a call's reply, and when the call first arrived.
type Waiting = (Instant, Vec<oneshot::Sender<Reply>>);

/// The metric label of an abort reason.
fn reason_label(reason: &detflow_protocol::AbortReason) -> &'static str {
    use detflow_protocol::AbortReason as A;
    match reason {
        A::BadArgs(_) => "bad_args",
        A::BadValue { .. } => "bad_value",
        A::OutsideFootprint { .. } => "outside_footprint",
        A::ReplicatedWrite { .. } => "replicated_write",
        A::UnknownProcedure(_) => "unknown_procedure",
        A::Unroutable(_) => "unroutable",
        A::User(_) => "user",
        A::FootprintChanged(_) => "footprint_changed",
        A::Panicked(_) => "panicked",
        A::Overflow(_) => "overflow",
        A::BadKey(_) => "bad_key",
        A::ValueTooLarge { .. } => "value_too_large",
        A::BadLetter { .. } => "bad_letter",
    }
}

pub(super) async fn gateway_task(
    mut gateway: Gateway,
    mut inbox: mpsc::Receiver<Event>,
    router: Arc<Router>,
    stats: Arc<NodeStats>,
    clock: Clock,
) {
    let mut waiting: BTreeMap<CallId, Waiting> = BTreeMap::new();
    let mut readers: BTreeMap<u64, oneshot::Sender<StreamReply>> = BTreeMap::new();
    let mut snapshot_readers: BTreeMap<u64, oneshot::Sender<SnapshotReply>> = BTreeMap::new();
    let mut next_reader = 0u64;
    let mut out = Vec::new();
    let mut timed_out = 0;
    loop {
        let deadline = gateway.next_deadline().map(|t| clock.instant(t));
        let ev = tokio::select! {
            ev = inbox.recv() => match ev { Some(ev) => Some(ev), None => return },
            _ = sleep_until(deadline) => None,
        };
        let input = match ev {
            None => gateway::Input::Tick,
            Some(Event::Client { call, reply }) => {
                waiting
                    .entry(CallId::new(call.client, call.seq))
                    .or_insert_with(|| (Instant::now(), Vec::new()))
                    .1
                    .push(reply);
                gateway::Input::Call(call)
            }
            Some(Event::Leader(leader)) => gateway::Input::Leader(leader),
            Some(Event::ClientRead {
                stream,
                from,
                max,
                reply,
            }) => {
                next_reader += 1;
                readers.insert(next_reader, reply);
                gateway::Input::ReadStream {
                    reader: next_reader,
                    stream,
                    from,
                    max,
                }
            }
            Some(Event::Msg(Message::StreamPart { read, part })) => {
                gateway::Input::StreamPart { read, part }
            }
            Some(Event::ClientSnapshot { read, reply }) => {
                next_reader += 1;
                snapshot_readers.insert(next_reader, reply);
                gateway::Input::SnapshotRead {
                    reader: next_reader,
                    read,
                }
            }
            Some(Event::Msg(Message::SnapshotPart { read, part })) => {
                gateway::Input::SnapshotPart { read, part }
            }
            Some(Event::Msg(Message::NotLeader { from, txn, leader })) => {
                gateway::Input::NotLeader { from, txn, leader }
            }
            Some(Event::Msg(Message::Deliver(delivery))) => gateway::Input::Deliver(delivery),
            Some(Event::Msg(Message::Duplicate { client, seq })) => {
                gateway::Input::Duplicate { client, seq }
            }
            Some(Event::Msg(Message::Result {
                from,
                result,
                recovered,
            })) => gateway::Input::Result {
                from,
                result,
                recovered,
            },
            Some(Event::Msg(Message::ResultUnknown { client, seq })) => {
                gateway::Input::ResultUnknown { client, seq }
            }
            _ => continue,
        };
        gateway.handle(clock.now(), input, &mut out);
        for effect in out.drain(..) {
            match effect {
                gateway::Output::Submit { to, txn } => router.to_replica(to, Message::Submit(txn)),
                gateway::Output::StreamQuery {
                    to,
                    read,
                    stream,
                    from,
                    max,
                } => {
                    let msg = Message::StreamQuery {
                        partition: to.partition,
                        read,
                        gateway: router.me,
                        stream,
                        from,
                        max,
                    };
                    router.to_executor(to, msg);
                }
                gateway::Output::SnapshotQuery { to, read, at, op } => {
                    let msg = Message::SnapshotQuery {
                        partition: to.partition,
                        read,
                        gateway: router.me,
                        at,
                        op,
                    };
                    router.to_executor(to, msg);
                }
                gateway::Output::SnapshotAnswer { reader, reply } => {
                    if let Some(waiter) = snapshot_readers.remove(&reader) {
                        let _ = waiter.send(reply);
                    }
                }
                gateway::Output::StreamAnswer { reader, reply } => {
                    if let Some(waiter) = readers.remove(&reader) {
                        let _ = waiter.send(reply);
                    }
                }
                gateway::Output::Query { to, client, seq } => {
                    let msg = Message::Query {
                        client,
                        seq,
                        partition: to.partition,
                        gateway: router.me,
                    };
                    router.to_executor(to, msg);
                }
                gateway::Output::Diverged(divergence) => {
                    stats.determinism_failures.inc();
                    tracing::error!("{divergence}");
                    if let Ok(mut last) = stats.last_divergence.lock() {
                        *last = Some(divergence.to_string());
                    }
                }
                gateway::Output::Reply { client, seq, reply } => {
                    count_reply(&stats, &reply);
                    if let Some((since, waiters)) = waiting.remove(&CallId::new(client, seq)) {
                        stats.call_latency.observe(since.elapsed().as_secs_f64());
                        for waiter in waiters {
                            let _ = waiter.send(reply.clone());
                        }
                    }
                }
            }
        }
        let now_timed_out = gateway.stats().timed_out;
        stats.calls_timed_out.inc_by(now_timed_out - timed_out);
        timed_out = now_timed_out;
    }
}

/// Counts an answer in the node's metrics.
fn count_reply(stats: &NodeStats, reply: &Reply) {
    stats.calls_answered.inc();
    match reply {
        Reply::Done { outcome, .. } => match outcome {
            detflow_protocol::Outcome::Committed(_) => {
                stats.commits.inc();
            }
            detflow_protocol::Outcome::Aborted(reason) => {
                stats.aborts.inc();
                let reason = reason_label(reason);
                stats
                    .aborts_by_reason
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
            }
        },
        Reply::Rejected(_) => {
            stats.calls_refused.inc();
        }
        Reply::Unavailable => {}
    }
}
