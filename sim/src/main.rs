//! `detflow-sim`: runs seeds of the deterministic simulator and reports failures with the
//! command that replays each one.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use detflow_sim::{
    ExecutorBugs, FaultConfig, FaultCounts, GatewayBugs, LogConfig, LogProbes, PlanServerBugs,
    ReplicaBugs, SessionBugs, SimConfig, run_log_seed, run_seed,
};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "detflow-sim",
    version,
    about = "Deterministic simulation of a detflow cluster",
    long_about = "Runs a sequencer, the scheduler, executors, a gateway and many concurrent \
                  clients on one thread in virtual time. Every random choice derives from the \
                  seed, so a failing seed replays exactly. Each seed is checked for serial \
                  equivalence, exactly-once replies, key placement, liveness and the \
                  workload's invariants."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one seed or a range of seeds and check each.
    Run(RunArgs),
    /// Run the replicated sequencer alone (replicas and submitting clients, no executors)
    /// under harsher faults, checking Raft's safety after every step and liveness after
    /// healing.
    Log(LogArgs),
}

#[derive(clap::Args)]
struct LogArgs {
    /// Run exactly this seed (replaces --seeds/--first-seed).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Print each seed's digest of the committed log; with one seed, the digest is the last
    /// line.
    #[arg(long)]
    digest: bool,
    /// Print every input and output of every replica.
    #[arg(long)]
    trace: bool,
    /// Plant a replica bug, to see the checks catch it.
    #[arg(long, value_enum, hide = true)]
    bug: Option<Bug>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    Bank,
    Ycsb,
    Kv,
    /// TPC-C scaled down 100 times (one warehouse per partition), standard mix.
    Tpcc,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Bank => "bank",
            Workload::Ycsb => "ycsb",
            Workload::Kv => "kv",
            Workload::Tpcc => "tpcc",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Bug {
    /// The executor swaps adjacent single-partition transactions.
    Reorder,
    /// The executor applies writes to keys other partitions own.
    WriteOutsidePartition,
    /// A restarted executor resumes one epoch too late.
    ReplayFromWrongEpoch,
    /// The leader commits a batch before a quorum made it durable.
    AckBeforeQuorum,
    /// A restarted replica forgets its term and vote.
    ForgetVote,
    /// A follower applies batches that are not committed.
    CommitUncommitted,
    /// The leader sequences duplicate submissions again.
    DedupOff,
    /// An executor whose work stalls never greets its peers again.
    NoHelloOnStall,
    /// A client session numbers the call after a retried one with the same number.
    ReuseSeqAfterRetry,
    /// An executor asks for each delivery of its letters once, never again.
    NoDeliveryRetry,
    /// A partition replica other than the first skips one write now and then.
    SkipOneWrite,
    /// A partition replica other than the first sends reads from a stale position.
    StaleRemoteReads,
    /// Partition 1 answers snapshot scans one epoch later than asked.
    SnapshotEpochLate,
    /// Executors reclaim one epoch's versions more than the retention window allows.
    ReclaimInsideWindow,
    /// Executors hold snapshot reads of epochs not applied yet past their deadline.
    SnapshotWaitForever,
    /// Executors' running state digests ignore deletes.
    DigestIgnoresDeletes,
    /// A gateway answers a call only once every replica of its partition reported it.
    AnswerAfterEveryReplica,
    /// The leader commits an entry of an earlier term on a majority (Raft's Figure 8).
    CommitEarlierTerm,
    /// A voter sends its vote before the vote is durable.
    VoteBeforeDurable,
    /// A follower acknowledges entries before they are durable.
    AckBeforeDurable,
    /// A follower drops every entry after the match point on any AppendEntries.
    TruncateOnAppend,
    /// A voter grants its vote whatever the candidate's log.
    VoteIgnoresLog,
    /// A voter compares only the lengths of the logs.
    VoteComparesLength,
    /// A follower commits beyond the entries it shares with the leader.
    CommitBeyondMatch,
    /// A candidate counts granted votes of earlier terms.
    StaleVotesCount,
    /// The leader counts its own entries toward a quorum before they are durable.
    LeaderCountsUnsynced,
    /// A candidate campaigns before its term and self-vote are durable.
    CampaignBeforeDurable,
    /// A compaction snapshot leaves out the de-duplication table.
    SnapshotWithoutDedup,
    /// The log is compacted past the slowest executor replica's durable epoch.
    CompactPastSlowest,
    /// Executors report durable epochs for compaction without waiting for a checkpoint.
    ReportUncheckpointed,
    /// Executors label the checkpoint of an epoch with the next epoch.
    CheckpointMislabeled,
    /// A replica that copied another replica's state resumes one epoch after the copy's.
    TransferResumesLate,
    /// A compaction leaves the last epoch it drops out of the archive.
    ArchiveShort,
    /// The archive reader stops at the first segment that does not read back.
    ArchiveStopsAtTorn,
    /// The archive reader takes a checkpoint that does not read back as an empty partition.
    CheckpointTornAsEmpty,
    /// Archive retention cuts at the last checkpoint file within its limit, complete or not.
    RetentionCutsAtAnyCheckpoint,
}

impl Bug {
    fn flag(self) -> &'static str {
        match self {
            Bug::Reorder => "reorder",
            Bug::SnapshotWithoutDedup => "snapshot-without-dedup",
            Bug::CompactPastSlowest => "compact-past-slowest",
            Bug::ReportUncheckpointed => "report-uncheckpointed",
            Bug::CheckpointMislabeled => "checkpoint-mislabeled",
            Bug::TransferResumesLate => "transfer-resumes-late",
            Bug::ArchiveShort => "archive-short",
            Bug::ArchiveStopsAtTorn => "archive-stops-at-torn",
            Bug::CheckpointTornAsEmpty => "checkpoint-torn-as-empty",
            Bug::RetentionCutsAtAnyCheckpoint => "retention-cuts-at-any-checkpoint",
            Bug::WriteOutsidePartition => "write-outside-partition",
            Bug::ReplayFromWrongEpoch => "replay-from-wrong-epoch",
            Bug::AckBeforeQuorum => "ack-before-quorum",
            Bug::ForgetVote => "forget-vote",
            Bug::CommitUncommitted => "commit-uncommitted",
            Bug::DedupOff => "dedup-off",
            Bug::NoDeliveryRetry => "no-delivery-retry",
            Bug::NoHelloOnStall => "no-hello-on-stall",
            Bug::ReuseSeqAfterRetry => "reuse-seq-after-retry",
            Bug::SkipOneWrite => "skip-one-write",
            Bug::StaleRemoteReads => "stale-remote-reads",
            Bug::SnapshotEpochLate => "snapshot-epoch-late",
            Bug::ReclaimInsideWindow => "reclaim-inside-window",
            Bug::SnapshotWaitForever => "snapshot-wait-forever",
            Bug::DigestIgnoresDeletes => "digest-ignores-deletes",
            Bug::AnswerAfterEveryReplica => "answer-after-every-replica",
            Bug::CommitEarlierTerm => "commit-earlier-term",
            Bug::VoteBeforeDurable => "vote-before-durable",
            Bug::AckBeforeDurable => "ack-before-durable",
            Bug::TruncateOnAppend => "truncate-on-append",
            Bug::VoteIgnoresLog => "vote-ignores-log",
            Bug::VoteComparesLength => "vote-compares-length",
            Bug::CommitBeyondMatch => "commit-beyond-match",
            Bug::StaleVotesCount => "stale-votes-count",
            Bug::LeaderCountsUnsynced => "leader-counts-unsynced",
            Bug::CampaignBeforeDurable => "campaign-before-durable",
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// The workload to drive.
    #[arg(long, value_enum, default_value = "bank")]
    workload: Workload,
    /// Run exactly this seed (replaces --seeds/--first-seed).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Executor partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Calls per seed.
    #[arg(long, default_value_t = 400)]
    txns: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Sequencer replicas (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Replicas of each partition (executors running the same plans): 1, 2 or 3; 0 draws
    /// one per seed.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=3))]
    partition_replicas: u32,
    /// Faults to inject: `all` (every type, swarm mode), `none`, or a comma-separated list
    /// of crashes, torn-writes, partitions, resets, delay-spikes, duplicates, silent-drops,
    /// one-down, disk-loss, swarm.
    #[arg(long, default_value = "none")]
    faults: String,
    /// Epoch length in virtual microseconds.
    #[arg(long, default_value_t = 5_000)]
    epoch_us: u64,
    /// Print each seed's digest; with one seed, the digest is the last line.
    #[arg(long)]
    digest: bool,
    /// Run each seed twice and fail if the digests differ.
    #[arg(long)]
    check_determinism: bool,
    /// Plant a bug, to see the checkers catch it.
    #[arg(long, value_enum, hide = true)]
    bug: Option<Bug>,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("detflow-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    // A panicking seed is reported as a failure with its message; keep stderr to one line.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("panic{at}");
    }));
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Log(args) => log(args),
    }
}

/// The replica bug `bug` names, if it names one (the replica's table of bugs uses the same
/// names as the command line).
fn replica_bugs(bug: Option<Bug>) -> ReplicaBugs {
    bug.and_then(|b| ReplicaBugs::named(b.flag()))
        .unwrap_or_default()
}

fn log(args: LogArgs) -> Result<bool> {
    let (first, count) = match args.seed {
        Some(s) => (s, 1),
        None => (args.first_seed, args.seeds),
    };
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut probes = LogProbes::default();
    let mut last_digest = None;
    for seed in first..first.saturating_add(count) {
        let report = run_log_seed(&LogConfig {
            replica_bugs: replica_bugs(args.bug),
            trace: args.trace,
            ..LogConfig::new(seed)
        });
        probes.add(&report.probes);
        match &report.failure {
            None => passed += 1,
            Some(failure) => {
                failed += 1;
                println!("seed {seed} FAILED: {failure}");
            }
        }
        if args.digest && count > 1 {
            println!("seed {seed} digest {}", report.digest);
        }
        last_digest = Some(report.digest);
    }
    println!("{probes:?}");
    finish(passed, failed, args.digest && count == 1, last_digest)
}

fn run(args: RunArgs) -> Result<bool> {
    let (first, count) = match args.seed {
        Some(s) => (s, 1),
        None => (args.first_seed, args.seeds),
    };
    let bugs = ExecutorBugs {
        reorder: matches!(args.bug, Some(Bug::Reorder)),
        write_outside_partition: matches!(args.bug, Some(Bug::WriteOutsidePartition)),
        replay_from_wrong_epoch: matches!(args.bug, Some(Bug::ReplayFromWrongEpoch)),
        no_hello_on_stall: matches!(args.bug, Some(Bug::NoHelloOnStall)),
        no_delivery_retry: matches!(args.bug, Some(Bug::NoDeliveryRetry)),
        skip_one_write: matches!(args.bug, Some(Bug::SkipOneWrite)),
        stale_remote_reads: matches!(args.bug, Some(Bug::StaleRemoteReads)),
        snapshot_epoch_late: matches!(args.bug, Some(Bug::SnapshotEpochLate)),
        reclaim_inside_window: matches!(args.bug, Some(Bug::ReclaimInsideWindow)),
        snapshot_wait_forever: matches!(args.bug, Some(Bug::SnapshotWaitForever)),
        digest_ignores_deletes: matches!(args.bug, Some(Bug::DigestIgnoresDeletes)),
        report_uncheckpointed: matches!(args.bug, Some(Bug::ReportUncheckpointed)),
        checkpoint_mislabeled: matches!(args.bug, Some(Bug::CheckpointMislabeled)),
        transfer_resumes_late: matches!(args.bug, Some(Bug::TransferResumesLate)),
    };
    let session_bugs = SessionBugs {
        reuse_seq_after_retry: matches!(args.bug, Some(Bug::ReuseSeqAfterRetry)),
    };
    let replica_bugs = replica_bugs(args.bug);
    let gateway_bugs = GatewayBugs {
        answer_after_every_replica: matches!(args.bug, Some(Bug::AnswerAfterEveryReplica)),
        ..GatewayBugs::default()
    };
    let fault_config = FaultConfig::parse(&args.faults).map_err(anyhow::Error::msg)?;
    let mut faults = FaultCounts::default();
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut totals = [0u64; 4]; // calls, committed, aborted, epochs
    let mut snapshots = (0u64, 0u64, 0u64);
    let mut compactions = (0u64, 0u64);
    let mut archive_cuts = 0u64;
    let mut last_digest = None;
    let progress_every = (count / 20).max(1);
    // Progress goes to a terminal only; logs and CI get the summary.
    let show_progress = count >= 20 && std::io::stderr().is_terminal();
    for seed in first..first.saturating_add(count) {
        let config = SimConfig {
            partitions: args.partitions,
            txns: args.txns,
            clients: args.clients,
            epoch_us: args.epoch_us,
            replicas: args.replicas,
            partition_replicas: args.partition_replicas,
            faults: fault_config,
            executor_bugs: bugs,
            replica_bugs,
            session_bugs,
            gateway_bugs,
            plan_server_bugs: PlanServerBugs {
                compact_past_slowest: matches!(args.bug, Some(Bug::CompactPastSlowest)),
            },
            archive_stops_at_torn: matches!(args.bug, Some(Bug::ArchiveStopsAtTorn)),
            checkpoint_torn_as_empty: matches!(args.bug, Some(Bug::CheckpointTornAsEmpty)),
            retention_cuts_at_any_checkpoint: matches!(
                args.bug,
                Some(Bug::RetentionCutsAtAnyCheckpoint)
            ),
            ..SimConfig::new(args.workload.name(), seed)
        };
        let mut report = run_seed(&config)?;
        if args.check_determinism {
            let again = run_seed(&config)?;
            if again.digest != report.digest {
                report.failures.push(format!(
                    "nondeterminism: digest {} then {}",
                    report.digest, again.digest
                ));
            }
        }
        faults.add(&report.faults);
        snapshots.0 += report.snapshot_reads.0;
        snapshots.1 += report.snapshot_reads.1;
        snapshots.2 += report.snapshot_misses;
        compactions.0 += report.log_compactions.0;
        compactions.1 += report.log_compactions.1;
        archive_cuts += report.archive_cuts;
        for (total, n) in totals.iter_mut().zip([
            report.calls,
            report.committed,
            report.aborted,
            report.epochs,
        ]) {
            *total += n;
        }
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
            println!(
                "seed {seed} FAILED ({} replicas per partition):",
                report.partition_replicas
            );
            for f in &report.failures {
                println!("  {f}");
            }
            println!("  replay: {}", replay_command(&args, seed));
        }
        if args.digest && count > 1 {
            println!("seed {seed} digest {}", report.digest);
        }
        if show_progress && (seed - first + 1) % progress_every == 0 {
            eprintln!(
                "[{}/{count}] {passed} passed, {failed} failed (last: {} calls, {} epochs, {:.3}s virtual)",
                seed - first + 1,
                report.calls,
                report.epochs,
                report.virtual_us as f64 / 1e6
            );
        }
        last_digest = Some(report.digest);
    }
    let [calls, committed, aborted, epochs] = totals;
    println!(
        "calls: {calls} ({committed} committed, {aborted} aborted, {} refused before ordering); epochs: {epochs}",
        calls - committed - aborted
    );
    println!(
        "snapshot reads checked: {} gets, {} whole-table scans; {} answered too old, not yet \
         applied or unavailable",
        snapshots.0, snapshots.1, snapshots.2
    );
    println!(
        "log compactions: {} ({} snapshots installed from a leader); archive retention cuts: \
         {archive_cuts}",
        compactions.0, compactions.1
    );
    if fault_config.any() {
        println!("{faults}");
    }
    finish(passed, failed, args.digest && count == 1, last_digest)
}

fn replay_command(args: &RunArgs, seed: u64) -> String {
    let mut cmd = format!(
        "cargo run --release -p detflow-sim -- run --workload {} --seed {seed} --partitions {} --replicas {} --partition-replicas {} --txns {} --clients {} --epoch-us {} --faults {}",
        args.workload.name(),
        args.partitions,
        args.replicas,
        args.partition_replicas,
        args.txns,
        args.clients,
        args.epoch_us,
        args.faults
    );
    if let Some(bug) = args.bug {
        cmd.push_str(" --bug ");
        cmd.push_str(bug.flag());
    }
    cmd
}

/// Prints the sweep's tally (and a single seed's digest, when asked) and whether it passed.
fn finish(passed: u64, failed: u64, show_digest: bool, digest: Option<String>) -> Result<bool> {
    println!("seeds: {passed} passed, {failed} failed");
    if show_digest && let Some(d) = digest {
        println!("digest: {d}");
    }
    std::io::stdout().flush()?;
    Ok(failed == 0)
}
