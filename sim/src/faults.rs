//! Which faults a run injects, and how many it injected.

use detflow_protocol::DetRng;
use std::fmt;

/// The fault types a run may inject. With `swarm`, each seed enables a random subset of
/// the enabled types at random rates (swarm testing), so that rare combinations get runs of
/// their own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// Crash and restart sequencer replicas, executors and gateways, losing unsynced writes.
    pub crashes: bool,
    /// A crash may leave a torn last write on disk.
    pub torn_writes: bool,
    /// Network partitions: one-way, isolated nodes, minority/majority splits.
    pub partitions: bool,
    /// Connection resets that drop messages in flight.
    pub resets: bool,
    /// Rare long delays on single messages.
    pub delay_spikes: bool,
    /// Re-delivery of recently delivered messages after a reconnect.
    pub duplicates: bool,
    /// Messages on one connection lost for a while without either end noticing (a
    /// connection that died quietly and was replaced before the idle timeout): no reconnect
    /// is announced, so only the machines' own timers recover what was lost.
    pub silent_drops: bool,
    /// One node of every replica set down for the whole fault window and nothing else
    /// failing (a partition's replica, a sequencer replica, a gateway): the cluster must
    /// keep answering meanwhile, each call within [`ONE_DOWN_CALL_BOUND_US`], not only
    /// after healing. In swarm mode a fifth of the seeds run this profile alone.
    ///
    /// [`ONE_DOWN_CALL_BOUND_US`]: crate::ONE_DOWN_CALL_BOUND_US
    pub one_down: bool,
    /// An executor's crash now and then destroys its disk (one replica of a partition at a
    /// time, never a partition's only one): it restarts from the initial rows with no
    /// state of its own, and copies another replica's state, since the log or the peers'
    /// reads no longer hold the epochs it lacks.
    pub disk_loss: bool,
    /// Pick a random subset of the above and random rates per seed.
    pub swarm: bool,
}

impl FaultConfig {
    /// No faults: only seeded delays.
    pub fn none() -> FaultConfig {
        FaultConfig::default()
    }

    /// Every fault type, in swarm mode.
    pub fn all() -> FaultConfig {
        FaultConfig {
            crashes: true,
            torn_writes: true,
            partitions: true,
            resets: true,
            delay_spikes: true,
            duplicates: true,
            silent_drops: true,
            one_down: true,
            disk_loss: true,
            swarm: true,
        }
    }

    /// Whether any fault type is on.
    pub fn any(&self) -> bool {
        self.crashes
            || self.torn_writes
            || self.partitions
            || self.resets
            || self.delay_spikes
            || self.duplicates
            || self.silent_drops
            || self.one_down
            || self.disk_loss
    }

    /// Parses a comma-separated list: `all`, `none`, or fault names
    /// (`crashes,torn-writes,partitions,resets,delay-spikes,duplicates,silent-drops,one-down,disk-loss,swarm`).
    pub fn parse(list: &str) -> Result<FaultConfig, String> {
        let mut config = FaultConfig::none();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => config = FaultConfig::all(),
                "none" => config = FaultConfig::none(),
                "crashes" => config.crashes = true,
                "torn-writes" => config.torn_writes = true,
                "partitions" => config.partitions = true,
                "resets" => config.resets = true,
                "delay-spikes" => config.delay_spikes = true,
                "duplicates" => config.duplicates = true,
                "silent-drops" => config.silent_drops = true,
                "one-down" => config.one_down = true,
                "disk-loss" => config.disk_loss = true,
                "swarm" => config.swarm = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (known: all, none, crashes, torn-writes, \
                         partitions, resets, delay-spikes, duplicates, silent-drops, one-down, swarm)"
                    ));
                }
            }
        }
        Ok(config)
    }
}

/// Per-seed fault rates, drawn from the seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FaultPlan {
    pub(crate) crash_chance: f64,
    /// Chance of crashing a replica right around the sync of a write recording its vote.
    pub(crate) crash_after_vote_chance: f64,
    /// Chance of crashing a replica right around the sync of appended entries.
    pub(crate) crash_after_append_chance: f64,
    pub(crate) tear_chance: f64,
    pub(crate) partition_chance: f64,
    pub(crate) reset_chance: f64,
    pub(crate) spike_chance: f64,
    pub(crate) duplicate_chance: f64,
    /// Chance per fault opportunity of a silent drop window on one connection.
    pub(crate) silent_drop_chance: f64,
    /// Virtual time between fault opportunities.
    pub(crate) interval_us: u64,
    /// The longest a crashed node stays down before it restarts.
    pub(crate) downtime_max_us: u64,
    /// The one-down profile instead of every other fault.
    pub(crate) one_down: bool,
    /// Chance that an executor's crash destroys its disk.
    pub(crate) disk_loss_chance: f64,
    /// Chance that a replica crashes while it writes an archive segment (leaving none, a
    /// torn one or a whole one).
    pub(crate) archive_crash_chance: f64,
}

impl FaultPlan {
    pub(crate) fn draw(config: &FaultConfig, rng: &mut DetRng) -> FaultPlan {
        let swarm = config.swarm;
        let on = |rng: &mut DetRng, enabled: bool, rates: &[f64]| -> f64 {
            let picked = *rng.pick(rates);
            let kept = !swarm || rng.chance(0.75);
            if enabled && kept { picked } else { 0.0 }
        };
        let mut plan = FaultPlan {
            crash_chance: on(rng, config.crashes, &[0.05, 0.1, 0.2]),
            crash_after_vote_chance: on(rng, config.crashes, &[0.05, 0.2, 0.5]),
            crash_after_append_chance: on(rng, config.crashes, &[0.001, 0.01, 0.03]),
            tear_chance: on(rng, config.torn_writes, &[0.3, 0.7, 1.0]),
            partition_chance: on(rng, config.partitions, &[0.03, 0.08, 0.15]),
            reset_chance: on(rng, config.resets, &[0.05, 0.15, 0.3]),
            spike_chance: on(rng, config.delay_spikes, &[0.005, 0.02, 0.05]),
            duplicate_chance: on(rng, config.duplicates, &[0.3, 0.6, 1.0]),
            interval_us: *rng.pick(&[10_000, 30_000, 100_000]),
            downtime_max_us: *rng.pick(&[50_000, 300_000, 1_000_000]),
            silent_drop_chance: 0.0,
            one_down: false,
            disk_loss_chance: 0.0,
            archive_crash_chance: 0.0,
        };
        // Drawn last, so that adding this fault type left every other draw as it was.
        plan.silent_drop_chance = on(rng, config.silent_drops, &[0.02, 0.05, 0.1]);
        if config.one_down && (!swarm || rng.chance(0.2)) {
            // The profile is the promise "one node per replica set down, nothing else":
            // any other fault would void it.
            plan = FaultPlan {
                one_down: true,
                crash_chance: 0.0,
                crash_after_vote_chance: 0.0,
                crash_after_append_chance: 0.0,
                tear_chance: plan.tear_chance,
                partition_chance: 0.0,
                reset_chance: 0.0,
                spike_chance: 0.0,
                duplicate_chance: 0.0,
                silent_drop_chance: 0.0,
                ..plan
            };
        }
        plan
    }

    /// Draws the disk-loss rate, from a generator of its own, so that every seed's other
    /// draws stay what they were before this fault type.
    pub(crate) fn draw_disk_loss(&mut self, config: &FaultConfig, rng: &mut DetRng) {
        let rate = *rng.pick(&[0.1, 0.3, 0.6]);
        let kept = !config.swarm || rng.chance(0.75);
        if config.disk_loss && kept && !self.one_down {
            self.disk_loss_chance = rate;
        }
    }

    /// Draws the rate of crashes during archive writes (crashes and torn writes both on),
    /// from a generator of its own, so that every seed's other draws stay what they were.
    pub(crate) fn draw_archive_crash(&mut self, config: &FaultConfig, rng: &mut DetRng) {
        let rate = *rng.pick(&[0.05, 0.2, 0.5]);
        let kept = !config.swarm || rng.chance(0.75);
        if config.crashes && config.torn_writes && kept && !self.one_down {
            self.archive_crash_chance = rate;
        }
    }

    pub(crate) fn any(&self) -> bool {
        self.crash_chance > 0.0
            || self.crash_after_vote_chance > 0.0
            || self.crash_after_append_chance > 0.0
            || self.partition_chance > 0.0
            || self.reset_chance > 0.0
            || self.duplicate_chance > 0.0
            || self.silent_drop_chance > 0.0
            || self.one_down
            || self.disk_loss_chance > 0.0
            || self.archive_crash_chance > 0.0
    }
}

/// How many faults of each type a run injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Nodes crashed.
    pub crashes: u64,
    /// Nodes restarted.
    pub restarts: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Connections reset.
    pub resets: u64,
    /// Crashes that tore a write.
    pub torn_writes: u64,
    /// Messages delivered twice.
    pub duplicates: u64,
    /// Messages delayed by a spike.
    pub delay_spikes: u64,
    /// Silent drop windows.
    pub silent_drops: u64,
    /// Executor disks destroyed.
    pub disks_lost: u64,
    /// Partition replicas rebuilt by copying another replica's state.
    pub state_transfers: u64,
    /// Replicas crashed in the middle of an archive write (a segment or a checkpoint).
    pub archive_crashes: u64,
    /// Of those, the ones that left a torn segment under its final name.
    pub torn_segments: u64,
    /// Of those, the ones that left a torn checkpoint under its final name.
    pub torn_checkpoints: u64,
}

impl FaultCounts {
    /// Adds `other` into this.
    pub fn add(&mut self, other: &FaultCounts) {
        self.crashes += other.crashes;
        self.restarts += other.restarts;
        self.partitions += other.partitions;
        self.resets += other.resets;
        self.torn_writes += other.torn_writes;
        self.duplicates += other.duplicates;
        self.delay_spikes += other.delay_spikes;
        self.silent_drops += other.silent_drops;
        self.disks_lost += other.disks_lost;
        self.state_transfers += other.state_transfers;
        self.archive_crashes += other.archive_crashes;
        self.torn_segments += other.torn_segments;
        self.torn_checkpoints += other.torn_checkpoints;
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "faults: crashes={} restarts={} partitions={} resets={} torn_writes={} duplicates={} delay_spikes={} silent_drops={} disks_lost={} \
             state_transfers={} archive_crashes={} torn_segments={} torn_checkpoints={}",
            self.crashes,
            self.restarts,
            self.partitions,
            self.resets,
            self.torn_writes,
            self.duplicates,
            self.delay_spikes,
            self.silent_drops,
            self.disks_lost,
            self.state_transfers,
            self.archive_crashes,
            self.torn_segments,
            self.torn_checkpoints
        )
    }
}
