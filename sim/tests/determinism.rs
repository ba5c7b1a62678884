//! The same seed decides the same log, replies and state; different seeds differ.

use detflow_sim::{SimConfig, run_seed};

#[test]
fn same_seed_same_digest_different_seed_different_digest() {
    for workload in ["bank", "ycsb", "kv"] {
        let a = run_seed(&SimConfig::new(workload, 42)).unwrap();
        let b = run_seed(&SimConfig::new(workload, 42)).unwrap();
        let c = run_seed(&SimConfig::new(workload, 43)).unwrap();
        assert_eq!(a.digest, b.digest, "{workload}: seed 42 twice");
        assert_ne!(a.digest, c.digest, "{workload}: seeds 42 and 43");
    }
}

#[test]
fn unknown_workload_is_a_clear_error() {
    let err = run_seed(&SimConfig::new("tpcd", 1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown workload \"tpcd\" (known: bank, ycsb, kv)"
    );
}
