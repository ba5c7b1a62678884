//! The network model: FIFO connections with seeded delays, partitions, resets and
//! incarnations, and the routing of each delivered message to its component.

use super::*;

/// The message as the receiving process would decode it from a frame.
fn through_the_wire(msg: &Msg) -> Msg {
    use detflow_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES, FrameDecoder};
    let bytes = frame::encode(msg, DEFAULT_MAX_FRAME_BYTES)
        .unwrap_or_else(|e| panic!("a message does not encode: {e}: {msg:?}"));
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    decoder.push(&bytes);
    match decoder.next_frame::<Msg>() {
        Ok(Some(decoded)) => decoded,
        other => panic!("a message does not survive the wire: {other:?}: {msg:?}"),
    }
}

impl World {
    pub(super) fn incarnation(&self, addr: Addr) -> u64 {
        match addr {
            Addr::Client(_) | Addr::Reader(_) | Addr::SnapshotReader(_) => 0,
            Addr::Executor(p) => self.executors[p as usize].incarnation,
            Addr::Gateway(g) => self.gateways[g as usize].incarnation,
            Addr::Replica(r) => self.replicas[r as usize].incarnation,
        }
    }

    pub(super) fn is_up(&self, addr: Addr) -> bool {
        match addr {
            Addr::Client(_) | Addr::Reader(_) | Addr::SnapshotReader(_) => true,
            Addr::Executor(p) => self.executors[p as usize].machine.is_some(),
            Addr::Gateway(g) => self.gateways[g as usize].machine.is_some(),
            Addr::Replica(r) => self.replicas[r as usize].machine.is_some(),
        }
    }

    /// Sends over the FIFO connection `from → to` with a seeded delay.
    pub(super) fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        if !self.is_up(from) || !self.is_up(to) || self.net.is_blocked(from, to) {
            return;
        }
        let msg = if self.timing.wire {
            through_the_wire(&msg)
        } else {
            msg
        };
        let mut delay = 1 + self.rng.below(self.timing.latency_max_us);
        if self.rng.chance(self.plan.spike_chance) && !self.healed {
            delay += self.rng.range(10_000, 200_000);
            self.counts.delay_spikes += 1;
        }
        let at = self.net.arrival(from, to, self.now.plus_us(delay));
        let delivery = Delivery {
            from,
            to,
            from_incarnation: self.incarnation(from),
            to_incarnation: self.incarnation(to),
            link_generation: self.net.generation(from, to),
            msg,
        };
        self.schedule(at, Event::Deliver(delivery));
    }

    pub(super) fn on_deliver(&mut self, d: Delivery) {
        let live = self.is_up(d.to)
            && self.incarnation(d.to) == d.to_incarnation
            && self.incarnation(d.from) == d.from_incarnation
            && self.net.generation(d.from, d.to) == d.link_generation
            && !self.net.is_blocked(d.from, d.to);
        if !live {
            return;
        }
        if self.plan.duplicate_chance > 0.0 {
            self.net.remember(d.from, d.to, d.msg.clone());
        }
        self.deliver(d.from, d.to, d.msg);
    }

    pub(super) fn deliver(&mut self, from: Addr, to: Addr, msg: Msg) {
        match (to, msg) {
            (Addr::Client(c), Msg::Reply { client, seq, reply }) => {
                self.on_reply(c, from, client, seq, reply)
            }
            (Addr::Gateway(g), msg) => self.gateway_input(g, from, msg),
            (Addr::Reader(i), Msg::Events(reply)) => self.on_stream_reply(i, reply),
            (Addr::SnapshotReader(i), Msg::Snapshot(reply)) => self.on_snapshot_reply(i, reply),
            (Addr::Replica(r), Msg::Peer { from: sender, msg }) => {
                // The connection, not the message, says who sent it.
                let Addr::Replica(from) = from else { return };
                assert_eq!(sender, replica_id(from), "a replica misnamed itself");
                self.replica_input(
                    r,
                    replica::Input::Peer {
                        from: replica_id(from),
                        msg,
                    },
                );
            }
            (Addr::Replica(r), Msg::Submit(txn)) => {
                self.replica_input(r, replica::Input::Submit(txn))
            }
            (
                Addr::Replica(r),
                Msg::Subscribe {
                    partition,
                    node,
                    from: epoch,
                },
            ) => {
                // As a node's router, admit a subscription only for the sender itself.
                let Addr::Executor(e) = from else { return };
                if self.executors[e as usize].id != (ExecutorId { partition, node }) {
                    return;
                }
                let input = plan_server::Input::Subscribe {
                    partition,
                    node,
                    from: epoch,
                };
                self.plan_server_input(r, input);
            }
            (
                Addr::Replica(r),
                Msg::Applied {
                    partition,
                    node,
                    durable,
                },
            ) => {
                // As a node's router, admit a report only from the replica it names.
                let Addr::Executor(e) = from else { return };
                if self.executors[e as usize].id != (ExecutorId { partition, node }) {
                    return;
                }
                let input = plan_server::Input::Applied {
                    partition,
                    node,
                    durable,
                };
                self.plan_server_input(r, input);
            }
            (Addr::Executor(p), msg) => self.executor_message(p, from, msg),
            (to, msg) => panic!("simulator routed {msg:?} to {to:?}"),
        }
    }
}
