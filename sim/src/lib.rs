//! detflow's deterministic simulator.
//!
//! One seed derives a whole run: a replicated sequencer, the scheduler, P executors,
//! gateways and many concurrent clients on an in-memory network with seeded delays, in
//! virtual time, on one thread, with (optionally) crashes, torn writes, partitions, resets,
//! delay spikes and duplicate deliveries. The very same state machines run in production;
//! only the driver differs. After the run, the checkers judge it:
//!
//! - replica agreement: all sequencer replicas hold the same committed prefix;
//! - serial equivalence: the final state and every result equal executing the committed
//!   log one transaction at a time on a single map, by a reference that never routes (it
//!   judges footprints from the workload's declared scheme itself);
//! - valid calls: no call the workload made is refused or aborted as malformed or
//!   unroutable, and no malformed call the simulator planted is ordered;
//! - exactly once: every answered call is in the log exactly once, at the position its
//!   answer names, and every answer to it is the same; nothing executes twice;
//! - every key only on its owner;
//! - partition replicas agree: every replica of a partition ends with the same state, and
//!   the gateways found no two replicas reporting different results for a call (checked
//!   as the run goes);
//! - liveness: after healing, every call is answered and every partition applies the whole
//!   log within a bounded virtual time;
//! - the workload's own invariants.
//!
//! The replicas are also checked as the run goes, after every step: at most one leader per
//! term, logs that share an entry (same epoch and term) are identical up to it, a new
//! leader of term T holds every batch committed in an earlier term, and each replica
//! reports committed batches in order. As a replica's messages leave, a granted vote or a
//! successful append acknowledgement must vouch only for what its simulated disk already
//! holds durably.
//!
//! [`run_seed`] runs and checks one seed; the `detflow-sim` binary runs many.
//!
//! A second world, the log-only one ([`run_log_seed`], `detflow-sim log`), runs the
//! replicated sequencer alone with simple submitting clients on the same network and disk
//! models, under harsher faults (single messages lost or duplicated, partial fsyncs,
//! crashes right after a vote, buggify, narrow election timeouts, and faults aimed at
//! elections: partial appends, crashes between append and commit, deposed leaders, one-way
//! links around the leader, late votes), with the same safety checks after every step and
//! liveness after healing.

#![forbid(unsafe_code)]

mod archive;
mod check;
mod disk;
mod events;
mod faults;
mod log_world;
mod network;
mod store;
mod world;

pub use detflow_executor::ExecutorBugs;
pub use detflow_gateway::GatewayBugs;
pub use detflow_protocol::session::SessionBugs;
pub use detflow_scheduler::PlanServerBugs;
pub use detflow_sequencer::replica::ReplicaBugs;
pub use faults::{FaultConfig, FaultCounts};
pub use log_world::{LogConfig, LogProbes, LogReport, run_log_seed};
pub use world::{
    CallRecord, ONE_DOWN_CALL_BOUND_US, SetupError, SimConfig, SimWorkload, WorkloadFactory,
};

use detflow_protocol::CallId;
use detflow_protocol::codec;

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Checker failures; empty when the seed passed.
    pub failures: Vec<String>,
    /// A digest of the committed log, every reply and the final state.
    pub digest: String,
    /// Calls made.
    pub calls: u64,
    /// Transactions committed / aborted, per the log's serial execution.
    pub committed: u64,
    /// Transactions that aborted deterministically.
    pub aborted: u64,
    /// Epochs in the log.
    pub epochs: u64,
    /// Virtual time the run took, in microseconds.
    pub virtual_us: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Replicas of each partition in the run.
    pub partition_replicas: u32,
    /// Snapshot reads answered and checked against the serial state: gets, then
    /// whole-table scans.
    pub snapshot_reads: (u64, u64),
    /// Snapshot reads answered with an error (too old, not yet applied, unavailable).
    pub snapshot_misses: u64,
    /// Log compactions and snapshots installed from a leader, over all replicas.
    pub log_compactions: (u64, u64),
    /// Times archive retention deleted files, over all replicas.
    pub archive_cuts: u64,
}

impl SeedReport {
    /// Whether every checker passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs and checks one seed. A panic inside a machine (a broken assertion) is a failure of
/// the seed, reported with its message, not the end of the sweep.
pub fn run_seed(config: &SimConfig) -> Result<SeedReport, SetupError> {
    let world = world::World::new(config.clone())?;
    let run = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run())) {
        Ok(run) => run,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            return Ok(SeedReport {
                seed: config.seed,
                failures: vec![format!("panicked: {message}")],
                digest: String::new(),
                calls: 0,
                committed: 0,
                aborted: 0,
                epochs: 0,
                virtual_us: 0,
                faults: FaultCounts::default(),
                partition_replicas: config.partition_replicas,
                snapshot_reads: (0, 0),
                snapshot_misses: 0,
                log_compactions: (0, 0),
                archive_cuts: 0,
            });
        }
    };
    let verdict = check::check_all(&run);
    let digest = digest(&run, &verdict.state);
    Ok(SeedReport {
        seed: config.seed,
        failures: check::capped(verdict.failures, 20),
        digest,
        calls: run.calls.len() as u64,
        committed: verdict.committed,
        aborted: verdict.aborted,
        epochs: run.log.len() as u64,
        virtual_us: run.end.0,
        faults: run.faults,
        partition_replicas: run.partition_replicas,
        snapshot_reads: run.snapshot_readers.iter().fold((0, 0), |(g, s), r| {
            let scans = r
                .records
                .iter()
                .filter(|x| matches!(x, world::SnapshotRecord::Scan { .. }))
                .count() as u64;
            (g + r.records.len() as u64 - scans, s + scans)
        }),
        snapshot_misses: run.snapshot_readers.iter().map(|r| r.misses).sum(),
        log_compactions: run.log_compactions,
        archive_cuts: run.archive_cuts,
    })
}

/// A digest of what a run decided: the committed log, every reply and the final state.
fn digest(
    run: &world::Outcome,
    state: &std::collections::BTreeMap<detflow_protocol::Key, detflow_protocol::Value>,
) -> String {
    let mut hasher = blake3::Hasher::new();
    for batch in &run.log {
        hasher.update(&codec::encode(&**batch));
    }
    for (CallId { client, seq }, record) in &run.calls {
        hasher.update(&codec::encode(&(client, seq, &record.replies)));
    }
    for (key, value) in state {
        hasher.update(&codec::encode(&(key, value)));
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

/// Runs the seeds `seeds` of `config(seed)` and panics with the first failing seed's
/// failures and how to replay it; returns the number of seeds run. It makes a simulation of
/// an application's workload a one-line test:
///
/// ```no_run
/// # fn shop(partitions: u32) -> Box<dyn detflow_workloads::Workload> { unimplemented!() }
/// use detflow_sim::{FaultConfig, SimConfig, assert_seeds_pass};
/// assert_seeds_pass(0..50, |seed| SimConfig {
///     faults: FaultConfig::all(),
///     ..SimConfig::custom("shop", shop, seed)
/// });
/// ```
pub fn assert_seeds_pass(seeds: std::ops::Range<u64>, config: impl Fn(u64) -> SimConfig) -> u64 {
    let mut ran = 0;
    for seed in seeds {
        let config = config(seed);
        let report = match run_seed(&config) {
            Ok(report) => report,
            Err(e) => panic!("the simulation cannot be set up: {e}"),
        };
        ran += 1;
        assert!(
            report.passed(),
            "seed {seed} of workload {} failed; replay it alone with the same config and \
             seed {seed}:\n  {}",
            config.workload.name(),
            report.failures.join("\n  ")
        );
    }
    ran
}
