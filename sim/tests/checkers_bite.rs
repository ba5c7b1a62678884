//! The checkers must catch planted executor bugs; a checker that cannot fail proves nothing.

use detflow_sim::{Bugs, SimConfig, run_seed};

/// How many seeds a planted bug may survive before the test fails.
const SEEDS_MAX: u64 = 20;

fn first_failing_seed(workload: &str, bugs: Bugs) -> Option<(u64, Vec<String>)> {
    (0..SEEDS_MAX).find_map(|seed| {
        let config = SimConfig {
            bugs,
            txns: 200,
            ..SimConfig::new(workload, seed)
        };
        let report = run_seed(&config).expect("valid config");
        (!report.passed()).then_some((seed, report.failures))
    })
}

#[test]
fn applying_transactions_out_of_position_order_is_caught() {
    let bugs = Bugs {
        reorder: true,
        ..Bugs::default()
    };
    let (seed, failures) = first_failing_seed("bank", bugs).expect("reorder bug went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("serial execution")),
        "seed {seed}: {failures:?}"
    );
}

#[test]
fn writing_outside_the_partition_is_caught() {
    let bugs = Bugs {
        write_outside_partition: true,
        ..Bugs::default()
    };
    let (seed, failures) =
        first_failing_seed("bank", bugs).expect("write-outside-partition bug went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("which partition")),
        "seed {seed}: {failures:?}"
    );
}

#[test]
fn a_correct_engine_passes_every_workload() {
    for workload in ["bank", "ycsb", "kv"] {
        for seed in 0..3 {
            let report = run_seed(&SimConfig::new(workload, seed)).unwrap();
            assert!(
                report.passed(),
                "{workload} seed {seed}: {:?}",
                report.failures
            );
            assert!(
                report.committed > 0,
                "{workload} seed {seed} committed nothing"
            );
        }
    }
}
