//! Components starting, crashing and restarting, and the connections between them coming up.

use super::*;
use detflow_executor::Store;
use detflow_protocol::WriteId;

impl World {
    pub(super) fn start(&mut self, addr: Addr) {
        if self.is_up(addr) {
            return;
        }
        match addr {
            Addr::Client(_) | Addr::Reader(_) | Addr::SnapshotReader(_) => {}
            Addr::Replica(r) => self.start_replica(r),
            Addr::Executor(p) => self.start_executor(p),
            Addr::Gateway(g) => {
                let node = &mut self.gateways[g as usize];
                node.incarnation += 1;
                node.timer = Timer::default();
                let mut gateway = Gateway::new(
                    gateway_id(g),
                    self.registry.clone(),
                    self.map.clone(),
                    (0..self.config.replicas).map(replica_id).collect(),
                    FOOTPRINT_ENTRIES_MAX,
                );
                gateway.set_placement(self.placement.clone());
                gateway.set_first_read_id((node.incarnation << 32) | 1);
                gateway.set_bugs(self.config.gateway_bugs);
                node.machine = Some(gateway);
            }
        }
        if self.now > Time::ZERO {
            self.counts.restarts += 1;
            self.reconnected(addr);
        }
    }

    pub(super) fn start_replica(&mut self, r: u32) {
        let durable = self.replicas[r as usize].disk.recover();
        let mut config = ReplicaConfig::new(
            replica_id(r),
            (0..self.config.replicas).map(replica_id).collect(),
        );
        config.batching.epoch_us = self.config.epoch_us;
        config.batching.epoch_min_us = self.timing.epoch_min_us.min(self.config.epoch_us);
        config.batching.batch_txns_max = self.config.batch_txns_max;
        // Compactions and snapshot chunks small enough that every seed meets them.
        config.compact_every_epochs = 16;
        config.snapshot_windows_per_message_max = 4;
        (
            config.election_timeout_min_us,
            config.election_timeout_max_us,
            config.heartbeat_us,
        ) = self.timing.election_us;
        let rng = self.rng.fork(u64::from(r) + 1000);
        let mut machine = Replica::new(config, durable, rng);
        self.raft.restarted(replica_id(r));
        machine.set_bugs(self.config.replica_bugs);
        let node = &mut self.replicas[r as usize];
        node.machine = Some(machine);
        node.incarnation += 1;
        node.timer = Timer::default();
        node.sync_scheduled = false;
        node.last_write = WriteId(0);
        let mut plans = PlanServer::new(self.map.clone(), self.placement.executors());
        plans.set_bugs(self.config.plan_server_bugs);
        node.plans = Some(plans);
        self.arm_replica_timer(r);
    }

    pub(super) fn start_executor(&mut self, e: u32) {
        let node = &mut self.executors[e as usize];
        let store = node.parked.take().expect("a down executor parks its store");
        let id = node.id;
        let mut machine = Executor::new(
            id.partition,
            self.config.partitions,
            self.registry.clone(),
            store,
        );
        machine.set_placement(id.node, self.placement.clone());
        machine.set_bugs(self.config.executor_bugs);
        machine.set_reads_ahead_epochs(self.timing.reads_ahead_epochs);
        machine.set_retention(self.timing.retention);
        machine.set_plan_sources((0..self.config.replicas).map(replica_id).collect());
        machine.set_checkpoint_every(CHECKPOINT_EVERY_EPOCHS);
        // The last checkpoint this replica wrote of the state its store recovered to.
        let applied = machine.store().applied_epoch();
        let checkpointed = self
            .checkpoints
            .iter()
            .filter(|((p, epoch), (by, _))| *p == id.partition && *by == id && *epoch <= applied)
            .map(|((_, epoch), _)| *epoch)
            .max();
        // Executors spread their deliveries over the gateways.
        let gateways = self.config.gateways;
        let first = e % gateways;
        machine.set_delivery_gateways(
            (0..gateways)
                .map(|g| gateway_id((first + g) % gateways))
                .collect(),
        );
        let node = &mut self.executors[e as usize];
        node.machine = Some(machine);
        node.incarnation += 1;
        node.sync_scheduled = false;
        node.timer = Timer::default();
        node.checkpointing = None;
        self.executor_input(e, detflow_executor::Input::Start);
        if let Some(epoch) = checkpointed {
            self.executor_input(e, detflow_executor::Input::Checkpointed { epoch });
        }
    }

    /// Whether executor `e`'s disk may be destroyed now: its partition has another
    /// replica, and none of the others lost its own and is still behind where it was.
    /// (A partition's only replica that loses its disk is not recovered yet: the archive's
    /// checkpoint holds its state, but peers drop the reads they sent it once it reported
    /// them durable, so the epochs after the checkpoint cannot be replayed.)
    fn disk_may_be_lost(&self, e: u32) -> bool {
        let id = self.executors[e as usize].id;
        let others: Vec<&ExecutorNode> = (self.executors.iter())
            .filter(|x| x.id.partition == id.partition && x.id != id)
            .collect();
        let recovering = |x: &&ExecutorNode| {
            x.recovering.is_some_and(|was| {
                x.machine
                    .as_ref()
                    .is_none_or(|m| m.is_transferring() || m.next_epoch() <= was)
            })
        };
        !others.is_empty() && !others.iter().any(recovering)
    }

    pub(super) fn crash(&mut self, addr: Addr, downtime_us: u64) {
        if !self.is_up(addr) {
            return;
        }
        self.counts.crashes += 1;
        let tear = self.rng.chance(self.plan.tear_chance);
        match addr {
            Addr::Client(_) | Addr::Reader(_) | Addr::SnapshotReader(_) => {}
            Addr::Replica(r) => {
                let node = &mut self.replicas[r as usize];
                node.machine = None;
                node.plans = None;
                // An archive write in flight never finished: its temporary file is lost.
                node.archiving = None;
                let damage = node.disk.crash(&mut self.rng, tear);
                if damage.torn {
                    self.counts.torn_writes += 1;
                }
            }
            Addr::Executor(p) => {
                let node = &mut self.executors[p as usize];
                let machine = node.machine.take().expect("checked up");
                let mut store = machine.into_store();
                let damage = store.crash_and_recover(&mut self.rng, tear);
                if damage.torn {
                    self.counts.torn_writes += 1;
                }
                let chance = self.plan.disk_loss_chance;
                let may = chance > 0.0 && self.disk_may_be_lost(p);
                let node = &mut self.executors[p as usize];
                if may && self.disk_rng.chance(chance) {
                    let p = node.id.partition.0 as usize;
                    // Lost again while recovering: it is behind where it was the first time.
                    let was = node.recovering.unwrap_or(Epoch(0));
                    node.recovering = Some(store.applied_epoch().max(was));
                    store = SimStore::loaded(self.initial_rows[p].clone());
                    self.counts.disks_lost += 1;
                }
                node.parked = Some(store);
            }
            Addr::Gateway(g) => self.gateways[g as usize].machine = None,
        }
        self.schedule(self.now.plus_us(downtime_us), Event::Restart(addr));
    }

    /// A node's connection to `peer` was re-established after a reset, partition or
    /// restart: the endpoints resume their replayable channels.
    pub(super) fn reconnected(&mut self, addr: Addr) {
        let peers: Vec<Addr> = self.servers().into_iter().filter(|a| *a != addr).collect();
        for peer in peers {
            self.link_up(addr, peer);
        }
    }

    pub(super) fn link_up(&mut self, a: Addr, b: Addr) {
        for (x, y) in [(a, b), (b, a)] {
            match (x, y) {
                (Addr::Executor(p), Addr::Executor(q)) if self.is_up(x) => {
                    let node = self.executors[q as usize].id.node;
                    self.executor_input(p, detflow_executor::Input::Connected { node });
                }
                (Addr::Executor(p), Addr::Replica(r)) if self.is_up(x) => {
                    self.executor_input(
                        p,
                        detflow_executor::Input::ReplicaConnected(replica_id(r)),
                    );
                }
                _ => {}
            }
        }
        if self.plan.duplicate_chance > 0.0 && self.rng.chance(self.plan.duplicate_chance) {
            self.redeliver(a, b);
        }
    }

    /// Delivers again what was recently delivered on a connection, as a sender that
    /// re-sends after a reconnect would.
    pub(super) fn redeliver(&mut self, a: Addr, b: Addr) {
        for (from, to) in [(a, b), (b, a)] {
            for msg in self.net.recent(from, to) {
                self.counts.duplicates += 1;
                self.send(from, to, msg);
            }
        }
    }

    pub(super) fn servers(&self) -> Vec<Addr> {
        (0..self.config.replicas)
            .map(Addr::Replica)
            .chain((0..self.executors.len() as u32).map(Addr::Executor))
            .chain((0..self.config.gateways).map(Addr::Gateway))
            .collect()
    }
}
