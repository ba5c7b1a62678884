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
