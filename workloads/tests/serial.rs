//! Every workload's checker accepts what the serial reference does with its calls, for any
//! seed and partition count; kv's checker also accepts arbitrary ad-hoc transactions.

#![allow(clippy::unwrap_used)]

use detflow_executor::Registry;
use detflow_executor::serial::SerialExecutor;
use detflow_protocol::{
    ClientId, DetRng, Key, NodeId, Outcome, RequestSeq, Transaction, Value, codec,
};
use detflow_workloads::kv::{self, KvOp, KvTxn};
use detflow_workloads::{Answer, Executed, NAMES, Request, Workload, by_name};
use proptest::prelude::*;
use std::collections::BTreeMap;

type Log = Vec<(String, Vec<u8>, Outcome)>;

/// Runs `requests` one by one on the workload's loaded state: the final state and the log.
fn execute(
    workload: &dyn Workload,
    requests: impl IntoIterator<Item = Request>,
) -> (BTreeMap<Key, Value>, Log) {
    let mut registry = Registry::new();
    workload
        .register(&mut registry)
        .expect("the service registers");
    let mut serial = SerialExecutor::new(&registry, workload.load().into_iter().collect());
    let mut log = Vec::new();
    for (seq, request) in (1..).zip(requests) {
        log.push(run(&registry, &mut serial, seq, request));
    }
    (serial.into_state(), log)
}

fn run(
    registry: &Registry,
    serial: &mut SerialExecutor<'_>,
    seq: u64,
    request: Request,
) -> (String, Vec<u8>, Outcome) {
    let footprint = registry
        .footprint(request.procedure, &request.args)
        .unwrap();
    let txn = Transaction {
        client: ClientId(1),
        seq: RequestSeq(seq),
        gateway: NodeId(0),
        procedure: request.procedure.to_owned(),
        args: request.args,
        footprint,
    };
    let outcome = serial.execute(&txn, None);
    (txn.procedure, txn.args, outcome)
}

/// Runs `sessions` logical transactions drawn from the workload's generator, each through
/// its follow-ups (reconnaissance, retries), on the loaded state.
fn execute_sessions(
    workload: &mut dyn Workload,
    rng: &mut DetRng,
    sessions: usize,
) -> (BTreeMap<Key, Value>, Log) {
    let mut registry = Registry::new();
    workload
        .register(&mut registry)
        .expect("the service registers");
    let mut serial = SerialExecutor::new(&registry, workload.load().into_iter().collect());
    let mut log = Vec::new();
    let mut seq = 0;
    for _ in 0..sessions {
        let mut request = workload.next_call(rng);
        loop {
            seq += 1;
            let (procedure, args, outcome) = run(&registry, &mut serial, seq, request.clone());
            let answer = match &outcome {
                Outcome::Committed(out) => Answer::Committed(out),
                Outcome::Aborted(reason) => Answer::Aborted(reason),
            };
            let next = workload.follow_up(&request, answer);
            log.push((procedure, args, outcome));
            match next {
                Some(next) => request = next,
                None => break,
            }
        }
    }
    (serial.into_state(), log)
}

fn executed(log: &Log) -> Vec<Executed<'_>> {
    log.iter()
        .map(|(procedure, args, outcome)| Executed {
            procedure,
            args,
            outcome,
        })
        .collect()
}

fn kv_op() -> impl Strategy<Value = KvOp> {
    let key = (0u64..4).prop_map(kv::key);
    // Values are either short raw strings or encoded lists, so puts can hand appends a
    // list to extend as well as a value that is not one.
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..3),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2), 0..3)
            .prop_map(|l| kv::encode_list(&l)),
    ];
    let maybe = proptest::option::of(value.clone());
    prop_oneof![
        (key.clone(), value.clone()).prop_map(|(key, value)| KvOp::Append { key, value }),
        (key.clone(), maybe.clone(), maybe).prop_map(|(key, expected, new)| KvOp::Cas {
            key,
            expected,
            new
        }),
        key.clone().prop_map(|key| KvOp::Delete { key }),
        key.clone().prop_map(|key| KvOp::Get { key }),
        (key, value).prop_map(|(key, value)| KvOp::Put { key, value }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn generated_runs_pass_their_checkers(seed in any::<u64>(), partitions in 1u32..5) {
        for name in NAMES {
            let mut workload = by_name(name, partitions).unwrap();
            prop_assert_eq!(workload.scheme().partitions, partitions);
            let load = workload.load();
            prop_assert!(load.windows(2).all(|w| w[0].0 < w[1].0), "{} load not ascending", name);
            let state: BTreeMap<Key, Value> = load.into_iter().collect();
            prop_assert_eq!(workload.check_initial(&state), Ok(()));
            let mut rng = DetRng::new(seed);
            let (state, log) = execute_sessions(workload.as_mut(), &mut rng, 150);
            prop_assert_eq!(workload.check(&state, &executed(&log)), Ok(()));
        }
    }
}

proptest! {
    // Cheap, and rare interleavings (a cas that turns a key into a list) need many cases.
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn kv_checker_accepts_arbitrary_transactions(
        txns in proptest::collection::vec(proptest::collection::vec(kv_op(), 0..5), 1..40),
    ) {
        let workload = by_name("kv", 1).unwrap();
        let requests = txns.into_iter().map(|ops| Request::new("kv.txn", codec::encode(&KvTxn { ops })));
        let (state, log) = execute(workload.as_ref(), requests);
        prop_assert_eq!(workload.check(&state, &executed(&log)), Ok(()));
    }
}

#[test]
fn unknown_names_and_bad_partition_counts_are_errors() {
    assert_eq!(
        by_name("tpcd", 1).err().map(|e| e.to_string()),
        Some("unknown workload \"tpcd\" (known: bank, ycsb, kv, tpcc)".to_owned())
    );
    assert!(by_name("bank", 0).is_err());
    assert!(by_name("ycsb", 5_000).is_err());
}
