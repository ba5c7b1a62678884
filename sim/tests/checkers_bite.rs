//! Every checker must catch the class of bug it exists for: a planted bug must make some
//! seed fail within a bounded number of seeds. A checker that cannot fail proves nothing.

mod support;

use detflow_sim::{
    ExecutorBugs, FaultConfig, GatewayBugs, LogConfig, PlanServerBugs, ReplicaBugs, SessionBugs,
    SimConfig, run_log_seed, run_seed,
};

/// How many seeds a planted bug may survive before the test fails. Replica bugs need the
/// rarer interleavings (a split vote meeting a restart; a lost unsynced append), so they get
/// more.
const SEEDS_MAX: u64 = 40;
const REPLICA_SEEDS_MAX: u64 = 250;

fn first_failure(config: impl Fn(u64) -> SimConfig) -> Option<(u64, Vec<String>)> {
    first_failure_within(SEEDS_MAX, config)
}

fn first_failure_within(
    seeds: u64,
    config: impl Fn(u64) -> SimConfig,
) -> Option<(u64, Vec<String>)> {
    (0..seeds).find_map(|seed| {
        let report = run_seed(&config(seed)).expect("valid config");
        (!report.passed()).then_some((seed, report.failures))
    })
}

fn with_executor_bug(bugs: ExecutorBugs, faults: FaultConfig) -> impl Fn(u64) -> SimConfig {
    move |seed| SimConfig {
        executor_bugs: bugs,
        faults,
        txns: 200,
        ..SimConfig::new("bank", seed)
    }
}

/// Two replicas per partition, so that a bug of the replicas other than the first has one
/// to live in.
fn with_partition_replica_bug(bugs: ExecutorBugs, txns: u64) -> impl Fn(u64) -> SimConfig {
    move |seed| SimConfig {
        executor_bugs: bugs,
        partition_replicas: 2,
        txns,
        ..SimConfig::new("bank", seed)
    }
}

/// The seeds a planted executor bug was hunted over pass without it: the failures are the
/// bug's, not the configuration's.
fn passes_without_the_bug(config: impl Fn(u64) -> SimConfig, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let config = SimConfig {
            executor_bugs: ExecutorBugs::default(),
            ..config(seed)
        };
        let report = run_seed(&config).expect("valid config");
        assert!(report.passed(), "seed {seed}: {:?}", report.failures);
    }
}

/// Five replicas, so that a minority can hold entries the majority never saw.
fn with_replica_bug(bugs: ReplicaBugs) -> impl Fn(u64) -> SimConfig {
    with_replica_bug_on(bugs, 5)
}

fn with_replica_bug_on(bugs: ReplicaBugs, replicas: u32) -> impl Fn(u64) -> SimConfig {
    move |seed| SimConfig {
        replica_bugs: bugs,
        faults: FaultConfig::all(),
        replicas,
        txns: 100,
        ..SimConfig::new("bank", seed)
    }
}

#[test]
fn applying_transactions_out_of_position_order_is_caught() {
    let bugs = ExecutorBugs {
        reorder: true,
        ..ExecutorBugs::default()
    };
    let (seed, failures) = first_failure(with_executor_bug(bugs, FaultConfig::none()))
        .expect("reorder bug went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("serial execution")),
        "seed {seed}: {failures:?}"
    );
}

#[test]
fn writing_outside_the_partition_is_caught() {
    let bugs = ExecutorBugs {
        write_outside_partition: true,
        ..ExecutorBugs::default()
    };
    let (seed, failures) = first_failure(with_executor_bug(bugs, FaultConfig::none()))
        .expect("write-outside-partition bug went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("which partition")),
        "seed {seed}: {failures:?}"
    );
}

#[test]
fn replaying_from_the_wrong_epoch_is_caught() {
    let bugs = ExecutorBugs {
        replay_from_wrong_epoch: true,
        ..ExecutorBugs::default()
    };
    first_failure(with_executor_bug(bugs, FaultConfig::all()))
        .expect("replay-from-wrong-epoch bug went unnoticed");
}

#[test]
fn acknowledging_before_a_quorum_is_durable_is_caught() {
    first_failure_within(
        REPLICA_SEEDS_MAX,
        with_replica_bug(ReplicaBugs {
            ack_before_quorum: true,
            ..ReplicaBugs::default()
        }),
    )
    .expect("ack-before-quorum bug went unnoticed");
}

#[test]
fn forgetting_the_vote_after_a_restart_is_caught() {
    // A double vote needs a split vote meeting a restart: likeliest with three replicas.
    first_failure_within(
        REPLICA_SEEDS_MAX,
        with_replica_bug_on(
            ReplicaBugs {
                forget_vote_on_restart: true,
                ..ReplicaBugs::default()
            },
            3,
        ),
    )
    .expect("forget-vote bug went unnoticed");
}

#[test]
fn applying_an_uncommitted_batch_is_caught() {
    first_failure_within(
        REPLICA_SEEDS_MAX,
        with_replica_bug(ReplicaBugs {
            commit_uncommitted: true,
            ..ReplicaBugs::default()
        }),
    )
    .expect("commit-uncommitted bug went unnoticed");
}

#[test]
fn turning_deduplication_off_is_caught() {
    let (seed, failures) = first_failure_within(
        REPLICA_SEEDS_MAX,
        with_replica_bug(ReplicaBugs {
            dedup_off: true,
            ..ReplicaBugs::default()
        }),
    )
    .expect("dedup-off bug went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("more than once")),
        "seed {seed}: {failures:?}"
    );
}

/// The classic Raft mistakes planted in the replica, hunted in the log-only world (whose
/// faults aim at elections) up to this many seeds. Each is caught far sooner than that;
/// `cargo test --release -p detflow-sim --test log_world bug_detection_rates -- --ignored
/// --nocapture` measures how often.
const RAFT_SEEDS_MAX: u64 = 1_000;

/// The first log-world seed below [`RAFT_SEEDS_MAX`] that catches the replica bug `name`,
/// with its failure (printed with the seed).
fn log_world_catches(name: &str) -> (u64, String) {
    let bugs = ReplicaBugs::named(name).expect("a planted replica bug");
    let (seed, failure) = (0..RAFT_SEEDS_MAX)
        .find_map(|seed| {
            let report = run_log_seed(&LogConfig {
                replica_bugs: bugs,
                ..LogConfig::new(seed)
            });
            report.failure.map(|f| (seed, f))
        })
        .unwrap_or_else(|| panic!("{name} survived {RAFT_SEEDS_MAX} log-world seeds"));
    println!("{name} caught at log-world seed {seed}: {failure}");
    (seed, failure)
}

#[test]
fn committing_an_earlier_terms_entry_on_a_majority_is_caught() {
    // Figure 8 of the Raft paper: needs an entry of an old term replicated alone to a
    // majority by a later leader, which then fails, and a rival with a newer entry there.
    log_world_catches("commit-earlier-term");
}

#[test]
fn voting_before_the_vote_is_durable_is_caught() {
    let (seed, failure) = log_world_catches("vote-before-durable");
    assert!(
        failure.contains("before the vote was durable"),
        "seed {seed}"
    );
}

#[test]
fn acknowledging_entries_before_they_are_durable_is_caught() {
    let (seed, failure) = log_world_catches("ack-before-durable");
    assert!(failure.contains("before it was durable"), "seed {seed}");
}

#[test]
fn durability_before_a_vote_or_an_acknowledgement_is_checked_in_the_full_world_too() {
    for (name, needle) in [
        ("vote-before-durable", "before the vote was durable"),
        ("ack-before-durable", "before it was durable"),
    ] {
        let bugs = ReplicaBugs::named(name).expect("a planted replica bug");
        let (seed, failures) = first_failure_within(REPLICA_SEEDS_MAX, with_replica_bug(bugs))
            .unwrap_or_else(|| panic!("{name} went unnoticed"));
        assert!(
            failures.iter().any(|f| f.contains(needle)),
            "{name}, seed {seed}: {failures:?}"
        );
    }
}

#[test]
fn truncating_matching_entries_on_a_stale_append_is_caught() {
    log_world_catches("truncate-on-append");
}

#[test]
fn voting_without_the_log_check_is_caught() {
    log_world_catches("vote-ignores-log");
}

#[test]
fn comparing_only_log_lengths_in_a_vote_is_caught() {
    log_world_catches("vote-compares-length");
}

#[test]
fn committing_beyond_the_entries_shared_with_the_leader_is_caught() {
    log_world_catches("commit-beyond-match");
}

#[test]
fn counting_a_vote_of_an_earlier_term_is_caught() {
    log_world_catches("stale-votes-count");
}

#[test]
fn a_leader_counting_its_own_unsynced_entries_is_caught() {
    log_world_catches("leader-counts-unsynced");
}

#[test]
fn campaigning_before_the_term_and_vote_are_durable_is_caught() {
    log_world_catches("campaign-before-durable");
}

#[test]
fn compacting_past_the_slowest_executor_is_caught() {
    // A replica that restarts behind the compaction point finds the epochs it needs gone
    // from every log: it never catches up (liveness), and its state differs from its
    // partition's other replicas; before that, the log drops epochs after the slower
    // partitions' last checkpoints.
    let bugs = PlanServerBugs {
        compact_past_slowest: true,
    };
    let config = move |seed| SimConfig {
        plan_server_bugs: bugs,
        faults: FaultConfig::all(),
        txns: 200,
        ..SimConfig::new("bank", seed)
    };
    let (seed, failures) = first_failure(config).expect("compact-past-slowest caught");
    println!("compact-past-slowest caught at seed {seed}: {failures:?}");
    // With checkpoints, the compaction check sees it first: the log drops epochs after a
    // slower partition's last checkpoint.
    assert!(
        failures
            .iter()
            .any(|f| f.contains("stopped before epoch") || f.contains("last durable checkpoint")),
        "{failures:?}"
    );
    passes_without_the_bug(
        move |seed| SimConfig {
            plan_server_bugs: PlanServerBugs::default(),
            ..config(seed)
        },
        0..seed + 1,
    );
}

#[test]
fn compacting_past_the_last_checkpoint_is_caught() {
    // Executors that report their durable epoch without waiting for its checkpoint let
    // the log drop epochs that a replica rebuilding from its last checkpoint needs.
    let bugs = ExecutorBugs {
        report_uncheckpointed: true,
        ..ExecutorBugs::default()
    };
    let config = move |seed| SimConfig {
        executor_bugs: bugs,
        txns: 200,
        ..SimConfig::new("bank", seed)
    };
    let (seed, failures) = first_failure(config).expect("report-uncheckpointed caught");
    println!("report-uncheckpointed caught at seed {seed}: {failures:?}");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("last durable checkpoint")),
        "{failures:?}"
    );
    passes_without_the_bug(
        move |seed| SimConfig {
            executor_bugs: ExecutorBugs::default(),
            ..config(seed)
        },
        0..seed + 1,
    );
}

#[test]
fn a_checkpoint_of_another_epoch_is_caught() {
    // The audit replays the log and compares each checkpoint with the state after its
    // epoch; replaying from the last checkpoints must end where replaying it all does.
    let bugs = ExecutorBugs {
        checkpoint_mislabeled: true,
        ..ExecutorBugs::default()
    };
    let config = move |seed| SimConfig {
        executor_bugs: bugs,
        txns: 200,
        ..SimConfig::new("bank", seed)
    };
    let (seed, failures) = first_failure(config).expect("checkpoint-mislabeled caught");
    println!("checkpoint-mislabeled caught at seed {seed}: {failures:?}");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("checkpoint of partition")),
        "{failures:?}"
    );
}

#[test]
fn a_snapshot_without_the_deduplication_table_is_caught() {
    // A replica that restarts from (or installs) such a snapshot takes a client's retry
    // of a compacted call as new: the call is committed twice.
    let (_, failure) = log_world_catches("snapshot-without-dedup");
    assert!(failure.contains("committed twice"), "{failure}");
}

#[test]
fn a_correct_engine_passes_every_workload_with_and_without_faults() {
    for workload in ["bank", "ycsb", "kv"] {
        for seed in 0..3 {
            for faults in [FaultConfig::none(), FaultConfig::all()] {
                let config = SimConfig {
                    faults,
                    ..SimConfig::new(workload, seed)
                };
                let report = run_seed(&config).unwrap();
                assert!(report.passed(), "{config:?}: {:?}", report.failures);
                assert!(
                    report.committed > 0,
                    "{workload} seed {seed} committed nothing"
                );
            }
        }
    }
}

/// Reads lost on a connection that died unnoticed are re-sent only when the waiting
/// executor greets its peers again; silent drops are the fault that needs it.
#[test]
fn a_stall_that_never_greets_the_peers_again_is_caught() {
    let bugs = ExecutorBugs {
        no_hello_on_stall: true,
        ..ExecutorBugs::default()
    };
    let faults = FaultConfig {
        silent_drops: true,
        ..FaultConfig::none()
    };
    let (seed, failures) = first_failure(with_executor_bug(bugs, faults))
        .expect("the no-hello-on-stall bug went unnoticed");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("unanswered") || f.contains("caught up") || f.contains("applied")),
        "seed {seed}: {failures:?}"
    );
}

/// A session that reuses a number gets the earlier call's result for a new call.
#[test]
fn a_session_that_reuses_a_number_after_a_retry_is_caught() {
    let session_bugs = SessionBugs {
        reuse_seq_after_retry: true,
    };
    let (seed, failures) = first_failure(move |seed| SimConfig {
        session_bugs,
        faults: FaultConfig::all(),
        txns: 200,
        ..SimConfig::new("bank", seed)
    })
    .expect("the reuse-seq-after-retry bug went unnoticed");
    println!("seed {seed}: {failures:?}");
}

/// A gateway that refuses valid calls for their footprint leaves nothing in the log, so no
/// checker but the valid-calls one can see it: serial equivalence judges ordered
/// transactions only, every call is answered, and a refused transfer conserves the bank.
///
/// The planted bug refuses every call whose exact keys live on more than one partition.
#[test]
fn refusing_valid_calls_for_their_footprint_is_caught() {
    let (seed, failures) = first_failure(|seed| SimConfig {
        gateway_bugs: GatewayBugs {
            refuse_multi_partition: true,
            ..GatewayBugs::default()
        },
        txns: 200,
        ..SimConfig::new("bank", seed)
    })
    .expect("refusing valid calls went unnoticed");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("valid call the workload made")),
        "seed {seed}: {failures:?}"
    );
}

/// A gateway that stops answering calls past their deadline but keeps them grows without
/// bound while clients retry elsewhere; every call still gets its answer, so only the
/// check that no gateway holds a call past its deadline sees it.
#[test]
fn a_gateway_that_keeps_expired_calls_is_caught() {
    // It needs a call to expire at a gateway while faults strike: seed 43 of the current
    // schedules (the on-demand checkpoints moved it past the usual 40).
    let (seed, failures) = first_failure_within(100, |seed| SimConfig {
        gateway_bugs: GatewayBugs {
            keep_expired_calls: true,
            ..GatewayBugs::default()
        },
        faults: FaultConfig::all(),
        txns: 200,
        ..SimConfig::new("bank", seed)
    })
    .expect("keeping expired calls went unnoticed");
    println!("keep-expired-calls caught at seed {seed}");
    assert!(
        failures.iter().any(|f| f.contains("past their deadline")),
        "seed {seed}: {failures:?}"
    );
}

#[test]
fn letters_that_are_never_delivered_are_caught() {
    // An executor that asks for each delivery once: a request lost with a crashed gateway
    // or leader leaves its letters in the outbox. Only the letters checker sees it: the
    // log and every state agree with the reference, and no client waits for a letter.
    let bugs = ExecutorBugs {
        no_delivery_retry: true,
        ..ExecutorBugs::default()
    };
    let (seed, failures) = first_failure(|seed| SimConfig {
        executor_bugs: bugs,
        faults: FaultConfig::all(),
        txns: 150,
        ..SimConfig::custom("payments", support::payments_with(false, false), seed)
    })
    .expect("letters left undelivered went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("never consumed")),
        "seed {seed}: {failures:?}"
    );
    assert!(
        failures.iter().all(|f| f.contains("letter")),
        "seed {seed}: another checker saw it too: {failures:?}"
    );
}

#[test]
fn a_stream_read_past_a_lagging_partition_is_caught() {
    // A gateway that merges a read's shares up to the partition that applied the most:
    // events of a partition that has not applied those epochs yet are skipped for good.
    // Only the streams checker sees it: no state, result or letter changes.
    let bugs = GatewayBugs {
        merge_past_frontier: true,
        ..GatewayBugs::default()
    };
    let (seed, failures) = first_failure(|seed| SimConfig {
        gateway_bugs: bugs,
        txns: 150,
        ..SimConfig::custom("payments", support::payments_with(false, false), seed)
    })
    .expect("a reader skipping events went unnoticed");
    assert!(
        failures.iter().all(|f| f.contains("stream")),
        "seed {seed}: another checker saw it too: {failures:?}"
    );
}

/// A replica other than the first that skips a write diverges from the first. Both the
/// end-state comparison of the replicas and the gateways' comparison of the results the
/// replicas report must see it. A seed's failures are capped, and the gateway's are listed
/// first, so 100 calls keep them few enough for the end-state failure to show too.
#[test]
fn a_replica_that_skips_a_write_is_caught_by_every_replica_comparison() {
    let bugs = ExecutorBugs {
        skip_one_write: true,
        ..ExecutorBugs::default()
    };
    let config = with_partition_replica_bug(bugs, 100);
    let (mut end_state, mut online, mut digest, mut audit) = (None, None, None, None);
    let mut seeds = 0;
    let caught = |found: &[Option<u64>]| found.iter().all(Option::is_some);
    while seeds < SEEDS_MAX && !caught(&[end_state, online, digest, audit]) {
        let report = run_seed(&config(seeds)).expect("valid config");
        let seen = |text: &str| report.failures.iter().find(|f| f.contains(text));
        if seen("ends with another state than the first").is_some() {
            end_state.get_or_insert(seeds);
        }
        if seen("determinism failure: replicas of partition").is_some() {
            online.get_or_insert(seeds);
        }
        // The digests and the audit name the epoch of the skipped write: the bug skips one
        // in each epoch whose number is 3 modulo 4.
        let epoch_of = |failure: &str| -> u64 {
            failure
                .split("after epoch ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no epoch in {failure:?}"))
        };
        if let Some(failure) = seen("state digests diverge") {
            assert_eq!(epoch_of(failure) % 4, 3, "reported late: {failure}");
            digest.get_or_insert(seeds);
        }
        if let Some(failure) = seen("audit: replica") {
            assert_eq!(epoch_of(failure) % 4, 3, "reported late: {failure}");
            assert!(
                failure.contains("replica partition"),
                "names no partition: {failure}"
            );
            audit.get_or_insert(seeds);
        }
        seeds += 1;
    }
    let end_state = end_state.expect("no replica ended with another state");
    let online = online.expect("no gateway saw the replicas disagree");
    let digest = digest.expect("no state digests diverged");
    let audit = audit.expect("the audit found no divergence from the log");
    println!(
        "end state: seed {end_state}; gateway: seed {online}; digests: seed {digest}; audit: \
         seed {audit}"
    );
    passes_without_the_bug(config, 0..seeds);
}

/// A replica other than the first that sends its reads ahead of time, before the
/// transactions between have run: a receiver keeps the first copy it gets, often the stale
/// one. In the bank a transfer writes only its own partition's account, so the stale
/// balance shows in the transfer's output: the serial-equivalence checker catches it
/// ("serial execution gives"), and the gateways when the replicas of the answering
/// partition kept different copies ("determinism failure").
#[test]
fn a_replica_that_sends_stale_reads_is_caught() {
    let bugs = ExecutorBugs {
        stale_remote_reads: true,
        ..ExecutorBugs::default()
    };
    let config = with_partition_replica_bug(bugs, 200);
    let (seed, failures) =
        first_failure(&config).expect("reads sent from a stale position went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("serial execution")
            || f.contains("determinism failure")
            || f.contains("ends with another state")),
        "seed {seed}: {failures:?}"
    );
    println!("seed {seed}: {failures:?}");
    passes_without_the_bug(config, 0..seed + 1);
}

/// A gateway that answers only once every replica of the call's partition reported it
/// serves every call once the faults heal, so the liveness check after healing can miss
/// it; with one node down for the whole fault window, the calls wait for the dead replica,
/// and only the one-node-down check (each call answered within a bound while it is down)
/// sees that the cluster stopped serving.
#[test]
fn a_gateway_that_waits_for_every_replica_is_caught_while_a_node_is_down() {
    let config = |seed| SimConfig {
        gateway_bugs: GatewayBugs {
            answer_after_every_replica: true,
            ..GatewayBugs::default()
        },
        faults: FaultConfig {
            one_down: true,
            ..FaultConfig::none()
        },
        partition_replicas: 2,
        txns: 200,
        ..SimConfig::new("bank", seed)
    };
    let only_this_checker = (0..SEEDS_MAX).find(|&seed| {
        let failures = run_seed(&config(seed)).expect("valid config").failures;
        !failures.is_empty()
            && failures
                .iter()
                .all(|f| f.contains("liveness under one node down"))
    });
    let seed = only_this_checker.expect("waiting for every replica went unnoticed");
    let without = SimConfig {
        gateway_bugs: GatewayBugs::default(),
        ..config(seed)
    };
    let report = run_seed(&without).expect("valid config");
    assert!(report.passed(), "seed {seed}: {:?}", report.failures);
}

/// Partition 1 answers snapshot scans with its state one epoch later than asked: a
/// whole-table scan then mixes two cuts. Only the snapshots checker sees it: no state,
/// result or event changes.
#[test]
fn a_snapshot_scan_that_reads_one_partition_an_epoch_late_is_caught() {
    let bugs = ExecutorBugs {
        snapshot_epoch_late: true,
        ..ExecutorBugs::default()
    };
    let config = with_executor_bug(bugs, FaultConfig::none());
    let (seed, failures) = first_failure(&config).expect("a mixed cut went unnoticed");
    assert!(
        failures.iter().all(|f| f.contains("snapshot scan")),
        "seed {seed}: another checker saw it too: {failures:?}"
    );
    passes_without_the_bug(config, 0..seed + 1);
}

/// Executors reclaim the before-images of one epoch more than the retention window allows
/// but still answer reads at it: a read at the window's oldest epoch sees a later value.
/// Only the snapshots checker sees it.
#[test]
fn a_version_reclaimed_inside_the_window_is_caught() {
    let bugs = ExecutorBugs {
        reclaim_inside_window: true,
        ..ExecutorBugs::default()
    };
    let config = with_executor_bug(bugs, FaultConfig::all());
    let (seed, failures) = first_failure(&config).expect("a reclaimed version went unnoticed");
    assert!(
        failures.iter().all(|f| f.contains("snapshot")),
        "seed {seed}: another checker saw it too: {failures:?}"
    );
    passes_without_the_bug(config, 0..seed + 1);
}

/// Executors hold a snapshot read of an epoch they have not applied past its deadline
/// instead of answering `NotYet`: the gateway's own deadline then answers `Unavailable`,
/// and a reader that asked for an epoch far ahead, with no fault to excuse it, sees the
/// wrong answer. Only the snapshot readers' own check sees it.
#[test]
fn a_snapshot_read_held_past_its_wait_is_caught() {
    let bugs = ExecutorBugs {
        snapshot_wait_forever: true,
        ..ExecutorBugs::default()
    };
    let config = with_executor_bug(bugs, FaultConfig::none());
    let (seed, failures) = first_failure(&config).expect("a read held forever went unnoticed");
    assert!(
        failures.iter().all(|f| f.contains("instead of NotYet")),
        "seed {seed}: another checker saw it too: {failures:?}"
    );
    passes_without_the_bug(config, 0..seed + 1);
}

/// A running state digest that misses deletes: every replica keeps the same wrong digest,
/// so they agree with each other, and the rows are right. Only the digests' own checks see
/// it: the end-of-run comparison of each replica's kept digest with its rows', and the
/// audit against the log's re-execution (kv deletes keys).
#[test]
fn a_state_digest_that_misses_deletes_is_caught() {
    let bugs = ExecutorBugs {
        digest_ignores_deletes: true,
        ..ExecutorBugs::default()
    };
    let config = move |seed| SimConfig {
        executor_bugs: bugs,
        partition_replicas: 2,
        txns: 200,
        ..SimConfig::new("kv", seed)
    };
    let (seed, failures) = first_failure(config).expect("a digest missing deletes went unnoticed");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("but its rows' digest is")),
        "seed {seed}: the end-of-run digest check missed it: {failures:?}"
    );
    assert!(
        failures
            .iter()
            .all(|f| f.contains("but its rows' digest is") || f.starts_with("audit: ")),
        "seed {seed}: another checker saw it too: {failures:?}"
    );
    passes_without_the_bug(config, 0..seed + 1);
}

#[test]
fn a_replica_that_resumes_late_after_copying_a_peers_state_is_caught() {
    // Only a replica that lost its disk copies a peer's state, so only the disk-loss fault
    // reaches the bug; the replicas' digests then diverge at the epoch it skipped.
    let bugs = ExecutorBugs {
        transfer_resumes_late: true,
        ..ExecutorBugs::default()
    };
    let crashes = FaultConfig {
        crashes: true,
        ..FaultConfig::none()
    };
    let disk_loss = FaultConfig {
        disk_loss: true,
        ..crashes
    };
    let (seed, failures) =
        first_failure(with_executor_bug(bugs, disk_loss)).expect("transfer-resumes-late caught");
    println!("transfer-resumes-late caught at seed {seed}: {failures:?}");
    assert!(
        failures.iter().any(|f| f.contains("state digests diverge")),
        "{failures:?}"
    );
    assert!(
        first_failure_within(seed + 1, with_executor_bug(bugs, crashes)).is_none(),
        "without disk losses no replica copies a peer's state"
    );
}

#[test]
fn a_compaction_that_leaves_an_epoch_out_of_the_archive_is_caught() {
    // The log still works (executors never need archived epochs): only the archive check
    // sees that `detflow replay` can no longer reach that epoch.
    let config = move |seed| SimConfig {
        replica_bugs: ReplicaBugs::named("archive-short").expect("a replica bug"),
        txns: 200,
        ..SimConfig::new("bank", seed)
    };
    let (seed, failures) = first_failure(config).expect("archive-short caught");
    println!("archive-short caught at seed {seed}: {failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| f.starts_with("archive:") && f.contains("no segment of its archive")),
        "{failures:?}"
    );
    for seed in 0..=seed {
        let report = run_seed(&SimConfig {
            replica_bugs: ReplicaBugs::default(),
            ..config(seed)
        })
        .unwrap();
        assert!(report.passed(), "seed {seed}: {:?}", report.failures);
    }
}

#[test]
fn a_compaction_that_does_not_wait_for_its_archive_is_caught_only_with_crashes() {
    // The archive write runs in the background; a replica that drops the entries before
    // it completes loses them for good if it crashes in between.
    let crashes = FaultConfig {
        crashes: true,
        ..FaultConfig::none()
    };
    let config = move |faults, seed| SimConfig {
        faults,
        replica_bugs: ReplicaBugs::named("compact-before-archived").expect("a replica bug"),
        txns: 200,
        ..SimConfig::new("bank", seed)
    };
    let (seed, failures) =
        first_failure(|seed| config(crashes, seed)).expect("compact-before-archived caught");
    println!("compact-before-archived caught at seed {seed}: {failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| f.starts_with("archive:") && f.contains("no segment of its archive")),
        "{failures:?}"
    );
    assert!(
        first_failure_within(seed + 1, |seed| config(FaultConfig::none(), seed)).is_none(),
        "without crashes every archive write completes"
    );
}

/// A planted archive-reader bug, set by `plant`, is caught (its failures pass `expected`)
/// with torn writes and crashes, and never without torn writes or without the bug.
fn torn_reader_bug_is_caught_only_with_torn_writes(
    name: &str,
    plant: fn(&mut SimConfig),
    expected: impl Fn(&[String]) -> bool,
) {
    let crashes = FaultConfig {
        crashes: true,
        ..FaultConfig::none()
    };
    let torn = FaultConfig {
        torn_writes: true,
        ..crashes
    };
    let config = move |faults, bug, seed| {
        let mut config = SimConfig {
            faults,
            txns: 200,
            ..SimConfig::new("bank", seed)
        };
        if bug {
            plant(&mut config);
        }
        config
    };
    let (seed, failures) =
        first_failure(|seed| config(torn, true, seed)).unwrap_or_else(|| panic!("{name} caught"));
    println!("{name} caught at seed {seed}: {failures:?}");
    assert!(expected(&failures), "{failures:?}");
    for seed in 0..=seed {
        for (faults, bug) in [(torn, false), (crashes, true)] {
            let report = run_seed(&config(faults, bug, seed)).expect("the seed runs");
            assert!(report.passed(), "seed {seed}: {:?}", report.failures);
        }
    }
}

#[test]
fn a_reader_that_stops_at_a_torn_segment_is_caught_only_with_torn_segments() {
    // A replica that crashes while it writes a segment may leave it torn under its final
    // name; the compaction never happened, so the next one archives the epochs again.
    // A reader that does not pass over the torn one finds a gap that is not there.
    torn_reader_bug_is_caught_only_with_torn_writes(
        "archive-stops-at-torn",
        |config| config.archive_stops_at_torn = true,
        |failures| failures.iter().any(|f| f.contains("torn or altered")),
    );
}

#[test]
fn a_reader_that_takes_a_torn_checkpoint_as_empty_is_caught_only_with_torn_checkpoints() {
    // An executor that crashes while it writes a checkpoint may leave it torn under its
    // final name; it never learns of it, so the log keeps the epochs after its last one. A
    // reader that does not pass over the torn file to an earlier complete set re-executes
    // from a state with a partition missing.
    torn_reader_bug_is_caught_only_with_torn_writes(
        "checkpoint-torn-as-empty",
        |config| config.checkpoint_torn_as_empty = true,
        |failures| {
            failures
                .iter()
                .all(|f| f.starts_with("archive: replaying") && f.contains("another state"))
        },
    );
}

#[test]
fn retention_that_cuts_at_an_incomplete_checkpoint_is_caught() {
    // Partitions checkpoint on their own, so the newest checkpoint within retention's limit
    // may be one only some partitions have written. Cutting there deletes the last set
    // replay could start from, and the log before it.
    let config = |bug: bool| {
        move |seed| SimConfig {
            retention_cuts_at_any_checkpoint: bug,
            faults: FaultConfig::all(),
            txns: 200,
            ..SimConfig::new("bank", seed)
        }
    };
    let (seed, failures) =
        first_failure(config(true)).expect("retention-cuts-at-any-checkpoint caught");
    println!("retention-cuts-at-any-checkpoint caught at seed {seed}: {failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| f.starts_with("archive: retention cut the archive after epoch")),
        "{failures:?}"
    );
    assert!(
        first_failure_within(seed + 1, config(false)).is_none(),
        "the seeds pass with the node's rule"
    );
}
