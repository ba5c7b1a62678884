//! Property: for generated logs of bank and ycsb transactions over 1–8 partitions, under
//! any seeded interleaving, the executors' final state and every result equal serial
//! execution of the committed log on one map.

use detflow_sim::{SimConfig, run_seed};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn distributed_execution_equals_serial_execution(
        workload in prop_oneof![Just("bank"), Just("ycsb")],
        seed in any::<u64>(),
        partitions in 1u32..=8,
        txns in 1u64..150,
        clients in 1u32..24,
        batch_txns_max in 1usize..64,
        epoch_us in prop_oneof![Just(100u64), Just(1_000), Just(5_000)],
    ) {
        let config = SimConfig {
            partitions,
            txns,
            clients,
            batch_txns_max,
            epoch_us,
            ..SimConfig::new(workload, seed)
        };
        let report = run_seed(&config).unwrap();
        prop_assert!(report.passed(), "{config:?}: {:?}", report.failures);
    }
}
