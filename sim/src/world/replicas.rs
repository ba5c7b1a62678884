//! Driving the sequencer replicas, their simulated disks and the plan servers beside them.

use super::*;

impl World {
    pub(super) fn replica_input(&mut self, r: u32, input: replica::Input) {
        let Some(machine) = self.replicas[r as usize].machine.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let before = machine.stats();
        let commit_before = machine.commit_epoch();
        machine.handle(self.now, input, &mut out);
        let after = machine.stats();
        self.log_compactions.0 += after.compactions - before.compactions;
        self.log_compactions.1 += after.snapshots_installed - before.snapshots_installed;
        if let Err(failure) = self.raft.after_step(machine, &out)
            && self.online_failures.last() != Some(&failure)
        {
            // A second leader stays one until it steps down: report it once per stretch.
            self.online_failures.push(failure);
        }
        for effect in out {
            // A replica that crashed mid-step performs none of the rest.
            if self.replicas[r as usize].machine.is_none() {
                break;
            }
            match effect {
                replica::Output::Committed(batch) => self.on_committed(r, batch),
                replica::Output::Archive(entries) => {
                    self.archive(r, &entries);
                }
                // Written in the background while the log goes on; durable when the
                // write completes.
                replica::Output::ArchiveAhead(entries) => {
                    let node = &mut self.replicas[r as usize];
                    node.archiving = Some(entries);
                    let incarnation = node.incarnation;
                    let delay = 1 + self.archive_rng.below(self.timing.fsync_max_us * 4);
                    let event = Event::ReplicaArchived { r, incarnation };
                    self.schedule(self.now.plus_us(delay), event);
                }
                replica::Output::Duplicate {
                    client,
                    seq,
                    gateway,
                } => {
                    let to = Addr::Gateway(gateway.0 - 200);
                    self.send(Addr::Replica(r), to, Msg::Duplicate { client, seq });
                }
                replica::Output::NotLeader { txn, leader } => {
                    let to = Addr::Gateway(txn.gateway.0 - 200);
                    let from = replica_id(r);
                    self.send(Addr::Replica(r), to, Msg::NotLeader { from, txn, leader });
                }
                replica::Output::Persist(write) => {
                    if let (Some(snapshot), Some(_)) = (&write.snapshot, write.truncate_from) {
                        // An installed snapshot: the replica archived what it knew committed.
                        let skipped = (commit_before.next(), snapshot.epoch);
                        self.replicas[r as usize].not_archived.push(skipped);
                    }
                    self.persist(r, write)
                }
                replica::Output::Send { to, msg } => {
                    let node = &self.replicas[r as usize];
                    if let Some(machine) = &node.machine
                        && let Err(failure) =
                            crate::check::durable_sends::check(machine, &node.disk, to, &msg)
                    {
                        self.online_failures.push(failure);
                    }
                    let from = replica_id(r);
                    self.send(
                        Addr::Replica(r),
                        Addr::Replica(to.0 - 100),
                        Msg::Peer { from, msg },
                    );
                }
                // Node r hosts replica r and (if there is one) gateway r, as in the node
                // runtime: the news needs no network.
                replica::Output::LeaderKnown(leader) => {
                    if r < self.config.gateways {
                        self.gateway_handle(r, detflow_gateway::Input::Leader(leader));
                    }
                }
                replica::Output::Compacted { through } => {
                    self.raft.compacted(replica_id(r), through);
                    self.check_compaction_checkpointed(replica_id(r), through);
                    self.plan_server_input(r, plan_server::Input::Compacted { through });
                }
            }
        }
        self.arm_replica_timer(r);
    }

    pub(super) fn arm_replica_timer(&mut self, r: u32) {
        let node = &mut self.replicas[r as usize];
        let Some(machine) = &node.machine else { return };
        if let Some(at) = node.timer.arm(machine.next_deadline(), self.now) {
            let incarnation = node.incarnation;
            self.schedule(at, Event::ReplicaTimer { r, incarnation });
        }
    }

    pub(super) fn on_replica_timer(&mut self, r: u32, incarnation: u64) {
        let node = &mut self.replicas[r as usize];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        if node.timer.fire(self.now) {
            self.replica_input(r, replica::Input::Tick);
        }
    }

    /// Writes the entries replica `r`'s next write drops to its archive, as the node's
    /// replica task does before that write; or, now and then under crash faults, crashes
    /// the replica in the middle of it.
    /// Replica `r`'s archive write ahead of a compaction completes (or crashes midway).
    pub(super) fn on_replica_archived(&mut self, r: u32, incarnation: u64) {
        let node = &mut self.replicas[r as usize];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        let Some(entries) = node.archiving.take() else {
            return;
        };
        if self.archive(r, &entries) {
            self.replica_input(r, replica::Input::Archived);
        }
    }

    /// Writes `entries` to replica `r`'s archive; whether it did, rather than crash
    /// midway.
    fn archive(&mut self, r: u32, entries: &[LogEntry]) -> bool {
        if !self.archive_write_crashes() {
            self.replicas[r as usize].archive.write_segment(entries);
            if let Some(last) = entries.last() {
                self.apply_retention(r, last.epoch());
            }
            return true;
        }
        let node = &mut self.replicas[r as usize];
        let left = node
            .archive
            .write_segment_crashing(entries, &mut self.archive_rng);
        if left == crate::archive::CrashedWrite::Torn {
            self.counts.torn_segments += 1;
        }
        self.crash_in_archive_write(Addr::Replica(r));
        false
    }

    /// Applies the archive's retention after replica `r` archived through `last`, as the
    /// node does after each compaction: its segments that end at or before the cut go, and
    /// the checkpoints before it.
    fn apply_retention(&mut self, r: u32, last: Epoch) {
        let Some(keep) = self.config.archive_retain_epochs else {
            return;
        };
        let at = Epoch(last.0.saturating_sub(keep));
        if at == Epoch(0) {
            return;
        }
        let checkpoints = &self.checkpoint_archive;
        let cut = match checkpoints.has_checkpoints() {
            // Without checkpoints the node cuts at the limit: replay then starts at the
            // first segment kept.
            false => Some(at),
            true => checkpoints.retention_cut(
                self.map.partitions(),
                at,
                self.config.retention_cuts_at_any_checkpoint,
            ),
        };
        let Some(cut) = cut else {
            return;
        };
        if cut <= self.replicas[r as usize].retained_after {
            return;
        }
        self.archive_cuts += 1;
        let node = &mut self.replicas[r as usize];
        node.archive.drop_segments_through(cut);
        node.retained_after = node.retained_after.max(cut);
        self.checkpoint_archive.drop_checkpoints_before(cut);
    }

    /// Whether the archive write about to happen is interrupted by a crash.
    pub(super) fn archive_write_crashes(&mut self) -> bool {
        let chance = self.plan.archive_crash_chance;
        !self.healed && chance > 0.0 && self.archive_rng.chance(chance)
    }

    /// Crashes `addr` in the middle of an archive write.
    pub(super) fn crash_in_archive_write(&mut self, addr: Addr) {
        self.counts.archive_crashes += 1;
        let downtime = self.rng.range(100, 10_000);
        self.crash(addr, downtime);
    }

    pub(super) fn persist(&mut self, r: u32, write: LogWrite) {
        let aimed = if write.hard_state.is_some() {
            self.plan.crash_after_vote_chance
        } else if !write.append.is_empty() {
            self.plan.crash_after_append_chance
        } else {
            0.0
        };
        if !self.healed && aimed > 0.0 && self.rng.chance(aimed) {
            let incarnation = self.replicas[r as usize].incarnation;
            let at = self
                .now
                .plus_us(1 + self.rng.below(self.timing.fsync_max_us * 2));
            self.schedule(at, Event::StepCrash { r, incarnation });
        }
        let node = &mut self.replicas[r as usize];
        node.last_write = write.id;
        node.disk.append(write);
        if !node.sync_scheduled {
            node.sync_scheduled = true;
            let incarnation = node.incarnation;
            let delay = self.rng.below(self.timing.fsync_max_us);
            self.schedule(
                self.now.plus_us(delay),
                Event::ReplicaSynced { r, incarnation },
            );
        }
    }

    pub(super) fn on_replica_synced(&mut self, r: u32, incarnation: u64) {
        let node = &mut self.replicas[r as usize];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        node.sync_scheduled = false;
        node.disk.sync();
        let write = node.last_write;
        self.replica_input(r, replica::Input::Persisted { write });
    }

    pub(super) fn on_committed(&mut self, r: u32, batch: Arc<Batch>) {
        let term = self.replicas[r as usize]
            .machine
            .as_ref()
            .map_or(detflow_protocol::Term(0), |m| m.term());
        if let Err(failure) = self.raft.committed(replica_id(r), term, &batch) {
            self.online_failures.push(failure);
        }
        self.plan_server_input(r, plan_server::Input::Committed(batch));
    }

    /// Runs one input through the plan server beside replica `r` and sends its plans.
    pub(super) fn plan_server_input(&mut self, r: u32, input: plan_server::Input) {
        let Some(server) = self.replicas[r as usize].plans.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        server.handle(self.now, input, &mut out);
        for output in out {
            match output {
                plan_server::Output::Plan { to, node, plan } => {
                    // A subscription names the replica that sent it (the network says so).
                    let to = ExecutorId {
                        partition: to,
                        node,
                    };
                    self.send_to_executor(Addr::Replica(r), to, Msg::Plan(plan));
                }
                plan_server::Output::Compacted {
                    to,
                    node,
                    log_start,
                } => {
                    let msg = Msg::PlansCompacted {
                        from: replica_id(r),
                        partition: to,
                        log_start,
                    };
                    let to = ExecutorId {
                        partition: to,
                        node,
                    };
                    self.send_to_executor(Addr::Replica(r), to, msg);
                }
                // After the replica's current step (its writes keep their order), as the
                // node's replica task feeds it in its next round.
                plan_server::Output::Compact { through } => {
                    let incarnation = self.replicas[r as usize].incarnation;
                    let event = Event::ReplicaCompact {
                        r,
                        incarnation,
                        through,
                    };
                    self.schedule(self.now, event);
                }
            }
        }
    }
}
