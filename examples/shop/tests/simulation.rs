//! The shop under the simulator: its own services, generator and invariants, with the same
//! faults and checkers as detflow's own workloads.

use detflow_example_shop::ShopWorkload;
use detflow_sim::{FaultConfig, SimConfig, assert_seeds_pass, run_seed};

#[test]
fn the_shop_keeps_its_invariants_under_every_fault() {
    assert_seeds_pass(0..30, |seed| SimConfig {
        faults: FaultConfig::all(),
        txns: 200,
        ..SimConfig::custom("shop", |p| Box::new(ShopWorkload::new(p, false)), seed)
    });
}

/// `orders.place` with a one-cent discount nobody accounts for on big orders: only the
/// shop's money invariant sees it.
#[test]
fn a_discount_nobody_accounts_for_is_caught() {
    let failures = (0..20)
        .find_map(|seed| {
            let config = SimConfig {
                txns: 200,
                ..SimConfig::custom("shop", |p| Box::new(ShopWorkload::new(p, true)), seed)
            };
            let report = run_seed(&config).expect("a valid config");
            (!report.passed()).then_some(report.failures)
        })
        .expect("the planted discount went unnoticed");
    assert!(failures.iter().any(|f| f.contains("cents")), "{failures:?}");
}
