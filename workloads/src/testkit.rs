//! Test helpers: run a workload's generated calls through the serial reference.

use crate::{Executed, Violation, Workload};
use detflow_executor::Registry;
use detflow_executor::serial::SerialExecutor;
use detflow_protocol::{ClientId, DetRng, Key, NodeId, Outcome, RequestSeq, Transaction, Value};
use std::collections::BTreeMap;

/// A finished serial run: the final state and the log with outcomes.
pub(crate) struct Run {
    pub(crate) state: BTreeMap<Key, Value>,
    pub(crate) log: Vec<(String, Vec<u8>, Outcome)>,
}

impl Run {
    /// The log as a checker takes it.
    pub(crate) fn executed(&self) -> Vec<Executed<'_>> {
        self.log
            .iter()
            .map(|(procedure, args, outcome)| Executed {
                procedure,
                args,
                outcome,
            })
            .collect()
    }

    /// Runs `workload`'s checker on this run.
    pub(crate) fn check(&self, workload: &dyn Workload) -> Result<(), Violation> {
        workload.check(&self.state, &self.executed())
    }

    /// How many transactions of `procedure` committed and aborted.
    pub(crate) fn outcomes(&self, procedure: &str) -> (usize, usize) {
        let mut counts = (0, 0);
        for (p, _, outcome) in &self.log {
            if p == procedure {
                match outcome {
                    Outcome::Committed(_) => counts.0 += 1,
                    Outcome::Aborted(_) => counts.1 += 1,
                }
            }
        }
        counts
    }
}

/// The registry of `workload`'s procedures.
pub(crate) fn registry(workload: &dyn Workload) -> Registry {
    let mut registry = Registry::new();
    workload
        .register(&mut registry)
        .expect("the service registers");
    registry
}

/// A transaction calling `procedure` with `args`, its footprint computed by the registry.
pub(crate) fn transaction(
    registry: &Registry,
    seq: u64,
    procedure: &str,
    args: Vec<u8>,
) -> Transaction {
    let footprint = registry.footprint(procedure, &args).unwrap();
    Transaction {
        client: ClientId(1),
        seq: RequestSeq(seq),
        gateway: NodeId(0),
        procedure: procedure.to_owned(),
        args,
        footprint,
    }
}

/// Executes `calls` generated calls one by one on the loaded state.
pub(crate) fn run(workload: &mut dyn Workload, seed: u64, calls: usize) -> Run {
    let registry = registry(workload);
    let mut serial = SerialExecutor::new(&registry, workload.load().into_iter().collect());
    let mut rng = DetRng::new(seed);
    let mut log = Vec::with_capacity(calls);
    for seq in 1..=calls as u64 {
        let request = workload.next_call(&mut rng);
        let txn = transaction(&registry, seq, request.procedure, request.args);
        let outcome = serial.execute(&txn, None);
        log.push((txn.procedure, txn.args, outcome));
    }
    Run {
        state: serial.into_state(),
        log,
    }
}
