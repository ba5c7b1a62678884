//! The gateway task: drives the `Gateway` machine and holds the clients waiting for their
//! calls' replies.

use super::router::Router;
use super::stats::ReasonLabel;
use super::{Event, NodeStats};
use detflow_gateway::{self as gateway, Gateway};
use detflow_protocol::CallId;
use detflow_protocol::message::{Message, Reply};
use detflow_protocol::{Machine, Time};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often the gateway task forgets clients that stopped waiting.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    }
}

pub(super) async fn gateway_task(
    mut gateway: Gateway,
    mut inbox: mpsc::Receiver<Event>,
    router: Arc<Router>,
    stats: Arc<NodeStats>,
) {
    let mut waiting: BTreeMap<CallId, Waiting> = BTreeMap::new();
    let mut out = Vec::new();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        let ev = tokio::select! {
            ev = inbox.recv() => match ev { Some(ev) => ev, None => return },
            _ = sweep.tick() => {
                // Waiters whose client stopped waiting (the call deadline passed, the
                // stream was reset) would otherwise stay here forever.
                waiting.retain(|CallId { client, seq }, (_, waiters)| {
                    waiters.retain(|w| !w.is_closed());
                    if waiters.is_empty() {
                        let forget = gateway::Input::Forget { client: *client, seq: *seq };
                        gateway.handle(Time::ZERO, forget, &mut out);
                    }
                    !waiters.is_empty()
                });
                continue;
            }
        };
        let input = match ev {
            Event::Client { call, reply } => {
                waiting
                    .entry(CallId::new(call.client, call.seq))
                    .or_insert_with(|| (Instant::now(), Vec::new()))
                    .1
                    .push(reply);
                gateway::Input::Call(call)
            }
            Event::Leader(leader) => gateway::Input::Leader(leader),
            Event::Msg(Message::NotLeader { from, txn, leader }) => {
                gateway::Input::NotLeader { from, txn, leader }
            }
            Event::Msg(Message::Duplicate { client, seq }) => {
                gateway::Input::Duplicate { client, seq }
            }
            Event::Msg(Message::Result { result, recovered }) => {
                gateway::Input::Result { result, recovered }
            }
            Event::Msg(Message::ResultUnknown { client, seq }) => {
                gateway::Input::ResultUnknown { client, seq }
            }
            _ => continue,
        };
        // The gateway keeps no timers, so the time it is handed does not matter.
        gateway.handle(Time::ZERO, input, &mut out);
        for effect in out.drain(..) {
            match effect {
                gateway::Output::Submit { to, txn } => router.to_replica(to, Message::Submit(txn)),
                gateway::Output::Query { to, client, seq } => {
                    let msg = Message::Query {
                        client,
                        seq,
                        partition: to,
                        gateway: router.me,
                    };
                    router.to_executor(to, msg);
                }
                gateway::Output::Reply { client, seq, reply } => {
                    stats.calls_answered.inc();
                    if let Reply::Done { outcome, .. } = &reply {
                        match outcome {
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
                        }
                    }
                    if let Some((since, waiters)) = waiting.remove(&CallId::new(client, seq)) {
                        stats.call_latency.observe(since.elapsed().as_secs_f64());
                        for waiter in waiters {
                            let _ = waiter.send(reply.clone());
                        }
                    }
                }
            }
        }
    }
}
