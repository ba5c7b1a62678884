//! An application's own services under the simulator, as a user would write them (see
//! `support`): swept over seeds with every fault in one line, and a planted bug in the
//! application's own procedure that the sweep catches.

mod support;

use detflow_sim::{FaultConfig, SimConfig, assert_seeds_pass, run_seed};
use support::payments;

#[test]
fn an_applications_services_pass_every_checker_under_faults() {
    let ran = assert_seeds_pass(0..30, |seed| SimConfig {
        faults: FaultConfig::all(),
        txns: 150,
        ..SimConfig::custom("payments", payments(false), seed)
    });
    assert_eq!(ran, 30);
}

#[test]
fn a_bug_in_an_applications_procedure_is_caught() {
    let failure = (0..20).find_map(|seed| {
        let report = run_seed(&SimConfig {
            txns: 150,
            ..SimConfig::custom("payments", payments(true), seed)
        })
        .expect("valid config");
        (!report.passed()).then_some(report.failures)
    });
    let failures = failure.expect("the planted bug went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("payments invariant")),
        "{failures:?}"
    );
}
