//! Fault injection: crashes, partitions, resets and silent drops, drawn per tick from the seed's plan.

use super::*;

impl World {
    pub(super) fn on_fault_tick(&mut self) {
        if self.healed {
            return;
        }
        if self.issued >= self.config.txns || self.now.0 >= FAULT_WINDOW_US {
            self.heal_all();
            return;
        }
        if self.plan.one_down {
            // Once the cluster serves: a cluster still electing its first leader is not
            // one that lost a node.
            if self.one_down.is_none() && self.answered > 0 {
                self.take_one_node_down();
            }
            self.schedule(self.now.plus_us(self.plan.interval_us), Event::FaultTick);
            return;
        }
        let servers = self.servers();
        if self.rng.chance(self.plan.crash_chance) {
            // Replicas are where ordering is decided: they take half the crashes.
            let victim = if self.rng.chance(0.5) {
                Addr::Replica(self.rng.below(u64::from(self.config.replicas)) as u32)
            } else {
                *self.rng.pick(&servers)
            };
            let downtime = self.rng.range(1_000, self.plan.downtime_max_us);
            self.crash(victim, downtime);
        }
        if self.rng.chance(self.plan.partition_chance) {
            self.start_partition(&servers);
        }
        if self.rng.chance(self.plan.reset_chance) {
            let a = *self.rng.pick(&servers);
            let b = *self.rng.pick(&servers);
            if a != b {
                self.reset(a, b);
            }
        }
        if self.plan.silent_drop_chance > 0.0 && self.rng.chance(self.plan.silent_drop_chance) {
            self.start_silent_drop(&servers);
        }
        self.schedule(self.now.plus_us(self.plan.interval_us), Event::FaultTick);
    }

    /// The one-down profile: crashes one replica of every partition (all on one simulated
    /// node) and one node's sequencer replica and gateway (the leader's node half the
    /// time), where the cluster has more than one of each, until the faults heal.
    fn take_one_node_down(&mut self) {
        let mut victims = Vec::new();
        let r = self.partition_replicas;
        if r >= 2 {
            let host = executor_host(self.rng.below(u64::from(r)) as u32);
            victims.extend(
                (0..self.executors.len() as u32)
                    .filter(|&e| self.executors[e as usize].id.node == host)
                    .map(Addr::Executor),
            );
        }
        // Node n runs sequencer replica n and gateway n (as in the node runtime): they go
        // down together, the leader's node half the time.
        let nodes = self.config.replicas.max(self.config.gateways);
        let leader = (0..self.config.replicas).find(|&i| {
            self.replicas[i as usize]
                .machine
                .as_ref()
                .is_some_and(|m| m.is_leader())
        });
        let n = match leader {
            Some(l) if self.rng.chance(0.5) => l,
            _ => self.rng.below(u64::from(nodes)) as u32,
        };
        if self.config.replicas >= 3 && n < self.config.replicas {
            victims.push(Addr::Replica(n));
        }
        if self.config.gateways >= 2 && n < self.config.gateways {
            victims.push(Addr::Gateway(n));
        }
        for victim in &victims {
            // Down until the faults heal, which restarts every node.
            self.crash(*victim, FAULT_WINDOW_US);
        }
        self.one_down = Some(OneDown {
            since: self.now,
            victims,
            late: 0,
        });
    }

    /// Under the one-down profile, a call must be answered within
    /// [`ONE_DOWN_CALL_BOUND_US`] of its issue, or of the victims' crash if it was in flight
    /// then.
    pub(super) fn check_one_down_call(&mut self, call: CallId, issued: Time) {
        let Some(down) = self.one_down.as_mut() else {
            return;
        };
        // A call in flight when the victims went down has to fail over: the bound runs
        // from then.
        let took = self.now.since_us(issued.max(down.since));
        if took <= ONE_DOWN_CALL_BOUND_US {
            return;
        }
        down.late += 1;
        if down.late <= ONE_DOWN_REPORTS_MAX {
            let victims: Vec<String> = down.victims.iter().map(|v| format!("{v:?}")).collect();
            self.online_failures.push(format!(
                "liveness under one node down: call {}/{} issued at {issued}, while only {} \
                 were down (since {}), took {:.2}s from then (bound {:.1}s)",
                call.client.0,
                call.seq.0,
                victims.join(", "),
                down.since,
                took as f64 / 1e6,
                ONE_DOWN_CALL_BOUND_US as f64 / 1e6,
            ));
        }
    }

    pub(super) fn reset(&mut self, a: Addr, b: Addr) {
        self.counts.resets += 1;
        self.net.reset(a, b);
        if self.is_up(a) && self.is_up(b) {
            self.link_up(a, b);
        }
    }

    pub(super) fn start_partition(&mut self, servers: &[Addr]) {
        self.counts.partitions += 1;
        let replicas: Vec<Addr> = (0..self.config.replicas).map(Addr::Replica).collect();
        let cut = crate::network::draw_partition(&mut self.rng, servers, &replicas);
        let id = self.net.cut(cut, false);
        let duration = self.rng.range(50_000, 2_000_000);
        self.schedule(self.now.plus_us(duration), Event::HealPartition(id));
    }

    /// Drops what one connection carries, one way, for a while, and tells nobody: the
    /// sender's messages vanish as on a connection that died quietly, and no reconnect is
    /// announced when it ends. Half the time between two executors (their remote reads),
    /// else between any two servers.
    pub(super) fn start_silent_drop(&mut self, servers: &[Addr]) {
        let executors = self.executors.len() as u32;
        let (from, to) = if executors > 1 && self.rng.chance(0.5) {
            let a = self.rng.below(u64::from(executors)) as u32;
            let b = (a + 1 + self.rng.below(u64::from(executors) - 1) as u32) % executors;
            (Addr::Executor(a), Addr::Executor(b))
        } else {
            (*self.rng.pick(servers), *self.rng.pick(servers))
        };
        if from == to {
            return;
        }
        self.counts.silent_drops += 1;
        let id = self.net.cut(BTreeSet::from([(from, to)]), true);
        let duration = self.rng.range(20_000, 1_000_000);
        self.schedule(self.now.plus_us(duration), Event::HealPartition(id));
    }

    pub(super) fn heal_partition(&mut self, id: u64) {
        for (a, b) in self.net.heal(id) {
            if self.is_up(a)
                && self.is_up(b)
                && !self.net.is_blocked(a, b)
                && !self.net.is_blocked(b, a)
            {
                self.link_up(a, b);
            }
        }
    }

    pub(super) fn heal_all(&mut self) {
        self.healed = true;
        self.healed_at = self.now;
        for id in self.net.cuts() {
            self.heal_partition(id);
        }
        for addr in self.servers() {
            self.start(addr);
        }
    }
}
