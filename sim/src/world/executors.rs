//! Driving the partition executors and their simulated stores.

use super::*;
use crate::archive::CrashedWrite;

impl World {
    pub(super) fn executor_message(&mut self, p: u32, from: Addr, msg: Msg) {
        use detflow_executor::Input;
        let input = match msg {
            Msg::Ack {
                from,
                node,
                durable,
                ..
            } => Input::Ack {
                from,
                node,
                durable,
            },
            Msg::Hello {
                from,
                node,
                durable,
                ..
            } => Input::Hello {
                from,
                node,
                durable,
            },
            Msg::Plan(plan) => Input::Plan((*plan).clone()),
            Msg::Query { client, seq, .. } => {
                let Addr::Gateway(g) = from else { return };
                Input::ResultQuery {
                    gateway: gateway_id(g),
                    client,
                    seq,
                }
            }
            Msg::RemoteReads { reads, .. } => Input::RemoteReads(reads),
            Msg::SnapshotQuery {
                read,
                gateway,
                at,
                op,
                ..
            } => Input::SnapshotRead {
                gateway,
                read,
                at,
                op,
            },
            Msg::StreamQuery {
                read,
                gateway,
                stream,
                from,
                max,
                ..
            } => Input::StreamRead {
                gateway,
                read,
                stream,
                from,
                max,
            },
            Msg::PlansCompacted {
                from: replica,
                log_start,
                ..
            } => {
                // As a node's router, admit it only from the replica it names.
                if from != Addr::Replica(replica.0.wrapping_sub(100)) {
                    return;
                }
                Input::PlansCompacted {
                    from: replica,
                    log_start,
                }
            }
            Msg::ReadsGone {
                from: partition,
                node,
                through,
                ..
            } => Input::ReadsGone {
                from: partition,
                node,
                through,
            },
            Msg::StateFetch { node, fetch, .. } => {
                if !self.sent_by(from, node) {
                    return;
                }
                Input::StateFetch { from: node, fetch }
            }
            Msg::StateChunk { node, chunk, .. } => {
                if !self.sent_by(from, node) {
                    return;
                }
                Input::StateChunk { from: node, chunk }
            }
            other => panic!("executor got {other:?}"),
        };
        self.executor_input(p, input);
    }

    /// Whether `from` is the executor on `node` (as a node's router checks the sender's
    /// certificate).
    fn sent_by(&self, from: Addr, node: NodeId) -> bool {
        matches!(from, Addr::Executor(e) if self.executors[e as usize].id.node == node)
    }

    pub(super) fn executor_input(&mut self, p: u32, input: detflow_executor::Input) {
        use detflow_executor::Output;
        let Some(machine) = self.executors[p as usize].machine.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        machine.handle(self.now, input, &mut out);
        let digests: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::EpochApplied(epoch) => Some((*epoch, machine.digest_after(*epoch))),
                _ => None,
            })
            .collect();
        let me = Addr::Executor(p);
        let id = self.executors[p as usize].id;
        for (epoch, digest) in digests {
            self.check_digest(id, epoch, digest);
        }
        for effect in out {
            match effect {
                Output::EpochApplied(_) => self.schedule_executor_sync(p),
                Output::Checkpoint(_) => self.start_checkpoint(p),
                Output::Result {
                    gateway,
                    result,
                    recovered,
                } => {
                    let msg = Msg::Result {
                        from: id.partition,
                        result,
                        recovered,
                    };
                    self.send(me, Addr::Gateway(gateway.0 - 200), msg);
                }
                Output::ResultUnknown {
                    gateway,
                    client,
                    seq,
                } => {
                    self.send(
                        me,
                        Addr::Gateway(gateway.0 - 200),
                        Msg::ResultUnknown { client, seq },
                    );
                }
                Output::SendAck { to, durable } => {
                    let msg = Msg::Ack {
                        from: id.partition,
                        node: id.node,
                        to: to.partition,
                        durable,
                    };
                    self.send_to_executor(me, to, msg);
                }
                Output::SendHello { to, durable } => {
                    let msg = Msg::Hello {
                        from: id.partition,
                        node: id.node,
                        to: to.partition,
                        durable,
                    };
                    self.send_to_executor(me, to, msg);
                }
                Output::SendReads { to, reads } => {
                    let msg = Msg::RemoteReads {
                        to: to.partition,
                        reads,
                    };
                    self.send_to_executor(me, to, msg);
                }
                Output::StreamPart {
                    gateway,
                    read,
                    part,
                } => {
                    let msg = Msg::StreamPart { read, part };
                    self.send(me, Addr::Gateway(gateway.0 - 200), msg);
                }
                Output::SnapshotPart {
                    gateway,
                    read,
                    part,
                } => {
                    let msg = Msg::SnapshotPart { read, part };
                    self.send(me, Addr::Gateway(gateway.0 - 200), msg);
                }
                Output::Deliver { gateway, delivery } => {
                    self.send(me, Addr::Gateway(gateway.0 - 200), Msg::Deliver(delivery));
                }
                Output::ReportApplied { to, durable } => {
                    let msg = Msg::Applied {
                        partition: id.partition,
                        node: id.node,
                        durable,
                    };
                    self.send(me, Addr::Replica(to.0 - 100), msg);
                }
                Output::Subscribe { to, from } => {
                    let msg = Msg::Subscribe {
                        partition: id.partition,
                        node: id.node,
                        from,
                    };
                    self.send(me, Addr::Replica(to.0 - 100), msg);
                }
                Output::SendReadsGone { to, through } => {
                    let msg = Msg::ReadsGone {
                        from: id.partition,
                        node: id.node,
                        to: to.partition,
                        through,
                    };
                    self.send_to_executor(me, to, msg);
                }
                Output::FetchState { to, fetch } => {
                    let msg = Msg::StateFetch {
                        partition: id.partition,
                        node: id.node,
                        fetch,
                    };
                    self.send_to_executor(me, to, msg);
                }
                Output::SendState { to, chunk } => {
                    let msg = Msg::StateChunk {
                        partition: id.partition,
                        node: id.node,
                        chunk,
                    };
                    self.send_to_executor(me, to, msg);
                }
                Output::StateRestored { .. } => self.counts.state_transfers += 1,
            }
        }
        self.arm_executor_timer(p);
        let letters = self.letters_pending();
        if letters != self.letters {
            self.letters = letters;
            self.last_letter = self.now;
        }
    }

    /// Sends to the executor that is replica `to`; a machine naming a replica that does
    /// not exist is a bug of the machine.
    /// Every replica of a partition must reach the same state digest after each epoch:
    /// the first that differs from the first replica to apply the epoch is reported, with
    /// the epoch, which is where the replicas diverged.
    fn check_digest(
        &mut self,
        id: ExecutorId,
        epoch: Epoch,
        digest: Option<detflow_executor::StateDigest>,
    ) {
        let Some(digest) = digest else {
            self.online_failures.push(format!(
                "replica {id} applied epoch {epoch} and keeps no state digest for it"
            ));
            return;
        };
        let seen = self.digests.entry((id.partition, epoch)).or_default();
        seen.push((id, digest));
        let (first, expected) = seen[0];
        if expected != digest && self.diverged.insert(id.partition) {
            self.online_failures.push(format!(
                "state digests diverge: replica {id} has {digest} after epoch {epoch}, \
                 replica {first} had {expected}"
            ));
        }
    }

    pub(super) fn send_to_executor(&mut self, from: Addr, to: ExecutorId, msg: Msg) {
        let addr = self
            .executor_addr(to)
            .unwrap_or_else(|| panic!("no executor is {to}"));
        self.send(from, addr, msg);
    }

    pub(super) fn arm_executor_timer(&mut self, p: u32) {
        let node = &mut self.executors[p as usize];
        let Some(machine) = &node.machine else { return };
        if let Some(at) = node.timer.arm(machine.next_deadline(), self.now) {
            let incarnation = node.incarnation;
            self.schedule(at, Event::ExecutorTimer { p, incarnation });
        }
    }

    pub(super) fn on_executor_timer(&mut self, p: u32, incarnation: u64) {
        let node = &mut self.executors[p as usize];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        if node.timer.fire(self.now) {
            self.executor_input(p, detflow_executor::Input::Tick);
        }
    }

    pub(super) fn schedule_executor_sync(&mut self, p: u32) {
        let node = &mut self.executors[p as usize];
        if node.sync_scheduled {
            return;
        }
        node.sync_scheduled = true;
        let incarnation = node.incarnation;
        let delay = self.rng.below(self.timing.fsync_max_us);
        self.schedule(
            self.now.plus_us(delay),
            Event::ExecutorSynced { p, incarnation },
        );
    }

    /// An operator's `detflow checkpoint`, now and then while calls are issued: every
    /// running executor is asked for a checkpoint after the same epoch, a few past the
    /// furthest any has reached (so some may find it too late, and a down one misses it).
    /// They are written and checked like periodic ones.
    pub(super) fn on_checkpoint_ask(&mut self) {
        if self.issued >= self.config.txns {
            return;
        }
        let furthest = (self.executors.iter())
            .filter_map(|e| e.machine.as_ref())
            .map(|m| m.next_epoch())
            .max()
            .unwrap_or(Epoch(1));
        let at = Epoch(furthest.0 + self.checkpoint_rng.below(8));
        for node in &mut self.executors {
            if let Some(machine) = node.machine.as_mut() {
                let _ = machine.request_checkpoint(at);
            }
        }
        let next = 200_000 + self.checkpoint_rng.below(500_000);
        self.schedule(self.now.plus_us(next), Event::CheckpointAsk);
    }

    /// Takes the state the store captured and writes it as a checkpoint, which takes a
    /// while; one is written at a time, and one captured meanwhile is dropped, as in the
    /// node.
    fn start_checkpoint(&mut self, p: u32) {
        let node = &mut self.executors[p as usize];
        let Some(machine) = node.machine.as_mut() else {
            return;
        };
        let captured = machine.store_mut().take_checkpoint();
        if node.checkpointing.is_some() || captured.is_none() {
            return;
        }
        node.checkpointing = captured;
        let incarnation = node.incarnation;
        let delay = self.rng.below(CHECKPOINT_WRITE_MAX_US);
        self.schedule(
            self.now.plus_us(delay),
            Event::ExecutorCheckpointed { p, incarnation },
        );
    }

    /// A checkpoint is durable: every replica's of the same epoch must hold the same
    /// rows. Then the executor learns it.
    pub(super) fn on_executor_checkpointed(&mut self, p: u32, incarnation: u64) {
        let node = &mut self.executors[p as usize];
        if node.incarnation != incarnation {
            return;
        }
        let Some((epoch, rows)) = node.checkpointing.take() else {
            return;
        };
        let id = node.id;
        match self.checkpoints.get(&(id.partition, epoch)) {
            // Once per partition: every later checkpoint of diverged replicas differs too.
            Some((first, kept)) if *kept != rows && self.diverged.insert(id.partition) => {
                self.online_failures.push(format!(
                    "replicas {first} and {id} checkpointed different states of partition {} \
                     after epoch {epoch}",
                    id.partition
                ))
            }
            Some(_) => {}
            None => {
                // Replicas write the same bytes under the same name: one file serves all.
                if !self.write_checkpoint(p, epoch, rows) {
                    return;
                }
            }
        }
        self.executor_input(p, detflow_executor::Input::Checkpointed { epoch });
    }

    /// Writes executor `p`'s checkpoint after `epoch` to the archive; whether it did,
    /// rather than crash midway (leaving no file, a whole one or a torn one, which the
    /// executor never hears of: its last checkpoint stays the one before).
    fn write_checkpoint(&mut self, p: u32, epoch: Epoch, rows: Vec<(Key, Value)>) -> bool {
        let id = self.executors[p as usize].id;
        if !self.archive_write_crashes() {
            self.checkpoint_archive
                .write_checkpoint(id.partition, epoch, &rows);
            self.checkpoints.insert((id.partition, epoch), (id, rows));
            return true;
        }
        let left = self.checkpoint_archive.write_checkpoint_crashing(
            id.partition,
            epoch,
            &rows,
            &mut self.archive_rng,
        );
        match left {
            CrashedWrite::Torn => self.counts.torn_checkpoints += 1,
            // Renamed before the crash: it is in the archive, readable.
            CrashedWrite::Whole => {
                self.checkpoints.insert((id.partition, epoch), (id, rows));
            }
            CrashedWrite::Absent => {}
        }
        self.crash_in_archive_write(Addr::Executor(p));
        false
    }

    /// A replica compacted its log through `through`: every partition must have a
    /// durable checkpoint at or after it, or a replica that lost its state could not be
    /// rebuilt (the epochs between its last checkpoint and `through` are gone).
    pub(super) fn check_compaction_checkpointed(&mut self, replica: NodeId, through: Epoch) {
        for p in 0..self.config.partitions {
            let p = PartitionId(p);
            let last = self
                .checkpoints
                .range((p, Epoch(0))..=(p, Epoch(u64::MAX)))
                .next_back()
                .map(|((_, epoch), _)| *epoch);
            if last.is_none_or(|last| last < through) {
                self.online_failures.push(format!(
                    "replica {replica} compacted its log through epoch {through}, but partition \
                     {p}'s last durable checkpoint is {}: a replica of it that lost its store \
                     could not be rebuilt",
                    last.map_or("none".into(), |e| format!("after epoch {e}"))
                ));
                return;
            }
        }
    }

    pub(super) fn on_executor_synced(&mut self, p: u32, incarnation: u64) {
        let node = &mut self.executors[p as usize];
        if node.incarnation != incarnation {
            return;
        }
        let Some(machine) = node.machine.as_mut() else {
            return;
        };
        node.sync_scheduled = false;
        let store = machine.store_mut();
        if !store.has_unsynced() {
            return;
        }
        let up_to = store.sync();
        self.executor_input(p, detflow_executor::Input::Durable { up_to });
    }
}
