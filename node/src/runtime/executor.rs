//! The executor task: drives one partition's `Executor` machine and syncs its store once
//! per round in which it applied an epoch.

use super::router::Router;
use super::stats::PartitionLabel;
use super::{Clock, Event, NodeStats, drain, sleep_until};
use crate::failstop::fatal;
use crate::storage::FjallStore;
use detflow_executor::{Executor, Input, Output, Store};
use detflow_protocol::message::Message;
use detflow_protocol::{ExecutorId, Machine, Time};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Sends one of replica `me`'s outputs where it goes; true if it reports an applied epoch
/// (which the caller makes durable).
fn route_output(router: &Router, me: ExecutorId, effect: Output) -> bool {
    match effect {
        Output::EpochApplied(_) => return true,
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
        Output::Deliver { gateway, delivery } => {
            router.to_gateway(gateway, Message::Deliver(delivery));
        }
        Output::Subscribe { to, from } => router.to_replica(
            to,
            Message::Subscribe {
                partition: me.partition,
                node: me.node,
                from,
            },
        ),
    }
    false
}

/// While an executor catches up (more plans waiting than this), it syncs its store at most
/// every [`CATCH_UP_SYNC_US`] instead of after every round: replaying after a restart, a
/// round often applies a single epoch, and a sync per epoch bounded the replay at the disk's
/// fsync rate. Nothing waits for these syncs but the peers' bookkeeping (results do not
/// wait for durability: the log replays them), so this only delays acks.
const CATCH_UP_PLANS: usize = 2;
/// See [`CATCH_UP_PLANS`].
const CATCH_UP_SYNC_US: u64 = 20_000;

pub(super) async fn executor_task(
    mut executor: Executor<FjallStore>,
    mut inbox: mpsc::Receiver<Event>,
    router: Arc<Router>,
    stats: Arc<NodeStats>,
    clock: Clock,
) {
    let me = executor.id();
    let partition = me.partition;
    let mut out = Vec::new();
    executor.handle(clock.now(), Input::Start, &mut out);
    let mut published_drops = 0;
    // When the first epoch applied since the last sync was applied.
    let mut unsynced_since: Option<Time> = None;
    loop {
        let sync_due = unsynced_since.map(|t| t.plus_us(CATCH_UP_SYNC_US));
        let deadline = [executor.next_deadline(), sync_due]
            .into_iter()
            .flatten()
            .min()
            .map(|t| clock.instant(t));
        let first = tokio::select! {
            ev = inbox.recv() => match ev { Some(ev) => Some(ev), None => return },
            _ = sleep_until(deadline) => None,
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
                Event::Msg(Message::Plan(plan)) => Input::Plan((*plan).clone()),
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
        let catching_up = executor.plans_waiting() > CATCH_UP_PLANS;
        let sync_now = unsynced_since
            .is_some_and(|since| !catching_up || clock.now().since_us(since) >= CATCH_UP_SYNC_US);
        if sync_now {
            unsynced_since = None;
            let durable = match tokio::task::block_in_place(|| executor.store_mut().sync()) {
                Ok(epoch) => epoch,
                Err(e) => fatal(format!("cannot fsync partition {partition}: {e}")),
            };
            executor.handle(clock.now(), Input::Durable { up_to: durable }, &mut out);
            for effect in out.drain(..) {
                route_output(&router, me, effect);
            }
        }
        let next = executor.next_epoch().0;
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
        let s = executor.stats();
        let dropped = s.peer_inputs_dropped + s.plans_dropped + s.reads_refused;
        if dropped != published_drops {
            let counter = stats.executor_drops.get_or_create(&label);
            counter.inc_by(dropped.saturating_sub(published_drops));
            published_drops = dropped;
        }
    }
}
