//! Driving the gateway machines.

use super::*;

impl World {
    pub(super) fn gateway_input(&mut self, g: u32, from: Addr, msg: Msg) {
        use detflow_gateway::Input;
        let input = match msg {
            Msg::Call(call) => Input::Call(call),
            Msg::NotLeader { txn, leader, .. } => {
                // The connection, not the message, says who sent it.
                let Addr::Replica(r) = from else { return };
                Input::NotLeader {
                    from: replica_id(r),
                    txn,
                    leader,
                }
            }
            Msg::Deliver(delivery) => {
                let Addr::Executor(_) = from else { return };
                Input::Deliver(delivery)
            }
            Msg::Duplicate { client, seq } => Input::Duplicate { client, seq },
            Msg::ReadStream {
                stream,
                from: offset,
                max,
            } => {
                let Addr::Reader(i) = from else { return };
                Input::ReadStream {
                    reader: u64::from(i),
                    stream,
                    from: offset,
                    max,
                }
            }
            Msg::StreamPart { read, part } => Input::StreamPart { read, part },
            Msg::SnapshotRead(read) => {
                let Addr::SnapshotReader(i) = from else {
                    return;
                };
                Input::SnapshotRead {
                    reader: u64::from(i),
                    read,
                }
            }
            Msg::SnapshotPart { read, part } => Input::SnapshotPart { read, part },
            Msg::Result {
                from,
                result,
                recovered,
            } => Input::Result {
                from,
                result,
                recovered,
            },
            Msg::ResultUnknown { client, seq } => Input::ResultUnknown { client, seq },
            other => panic!("gateway got {other:?}"),
        };
        self.gateway_handle(g, input);
    }

    pub(super) fn gateway_handle(&mut self, g: u32, input: detflow_gateway::Input) {
        use detflow_gateway::Output;
        let Some(gateway) = self.gateways[g as usize].machine.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        gateway.handle(self.now, input, &mut out);
        for effect in out {
            match effect {
                Output::Query { to, client, seq } => {
                    let msg = Msg::Query {
                        client,
                        seq,
                        partition: to.partition,
                        gateway: gateway_id(g),
                    };
                    self.send_to_executor(Addr::Gateway(g), to, msg);
                }
                Output::Diverged(divergence) => {
                    self.online_failures
                        .push(format!("gateway {g} at {}: {divergence}", self.now));
                }
                Output::Reply { client, seq, reply } => {
                    let to = Addr::Client(client.0 as u32);
                    self.send(Addr::Gateway(g), to, Msg::Reply { client, seq, reply });
                }
                Output::StreamQuery {
                    to,
                    read,
                    stream,
                    from,
                    max,
                } => {
                    let msg = Msg::StreamQuery {
                        partition: to.partition,
                        read,
                        gateway: gateway_id(g),
                        stream,
                        from,
                        max,
                    };
                    self.send_to_executor(Addr::Gateway(g), to, msg);
                }
                Output::SnapshotQuery { to, read, at, op } => {
                    let msg = Msg::SnapshotQuery {
                        partition: to.partition,
                        read,
                        gateway: gateway_id(g),
                        at,
                        op,
                    };
                    self.send_to_executor(Addr::Gateway(g), to, msg);
                }
                Output::SnapshotAnswer { reader, reply } => {
                    let to = Addr::SnapshotReader(reader as u32);
                    self.send(Addr::Gateway(g), to, Msg::Snapshot(reply));
                }
                Output::StreamAnswer { reader, reply } => {
                    let to = Addr::Reader(reader as u32);
                    self.send(Addr::Gateway(g), to, Msg::Events(reply));
                }
                Output::Submit { to, txn } => {
                    self.send(
                        Addr::Gateway(g),
                        Addr::Replica(to.0 - 100),
                        Msg::Submit(txn),
                    );
                }
            }
        }
        self.arm_gateway_timer(g);
    }

    fn arm_gateway_timer(&mut self, g: u32) {
        let node = &mut self.gateways[g as usize];
        let Some(machine) = &node.machine else { return };
        if let Some(at) = node.timer.arm(machine.next_deadline(), self.now) {
            let incarnation = node.incarnation;
            self.schedule(at, Event::GatewayTimer { g, incarnation });
        }
    }

    pub(super) fn on_gateway_timer(&mut self, g: u32, incarnation: u64) {
        let node = &mut self.gateways[g as usize];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        if node.timer.fire(self.now) {
            self.gateway_handle(g, detflow_gateway::Input::Tick);
        }
    }
}
