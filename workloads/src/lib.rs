//! Workloads: procedures, loaders, seeded generators and invariant checkers.
//!
//! - [`bank`]: accounts spread over partitions; transfers, deposits and balance reads.
//! - [`ycsb`]: YCSB-T read-modify-write transactions, uniform or Zipfian.
//! - [`kv`]: `kv.txn`, ad-hoc multi-key transactions of micro-operations.
//!
//! A driver (the simulator, the benchmarks) builds a workload with [`by_name`], registers
//! its procedures, loads its initial rows onto the partitions the scheme assigns, draws
//! calls from [`Workload::next_call`] and, at the end, hands the final state and the
//! executed log to [`Workload::check`].

#![forbid(unsafe_code)]

pub mod bank;
pub mod kv;
pub mod ycsb;

use detflow_executor::Registry;
use detflow_protocol::{DetRng, Key, Outcome, PartitionScheme, Value};
use std::collections::BTreeMap;

/// A call a generator produced: a procedure name and MessagePack arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The procedure name.
    pub procedure: &'static str,
    /// The encoded arguments.
    pub args: Vec<u8>,
}

/// One executed transaction of the log, for checkers.
#[derive(Clone, Copy, Debug)]
pub struct Executed<'a> {
    /// The procedure name.
    pub procedure: &'a str,
    /// The encoded arguments.
    pub args: &'a [u8],
    /// How it ended.
    pub outcome: &'a Outcome,
}

/// A broken workload invariant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{workload} invariant broken: {detail}")]
pub struct Violation {
    /// The workload.
    pub workload: &'static str,
    /// What is wrong, with the keys and values involved.
    pub detail: String,
}

/// A workload: its schema, data, call mix and invariants.
pub trait Workload {
    /// The workload's name (`bank`, `ycsb`, `kv`).
    fn name(&self) -> &'static str;

    /// Registers the workload's procedures.
    fn register(&self, registry: &mut Registry);

    /// How its tables are partitioned.
    fn scheme(&self) -> PartitionScheme;

    /// The initial rows, ascending by key.
    fn load(&self) -> Vec<(Key, Value)>;

    /// The next call, drawn from `rng`.
    fn next_call(&mut self, rng: &mut DetRng) -> Request;

    /// Checks the invariants on the final state, given every executed transaction in log
    /// order (committed and aborted).
    fn check(
        &self,
        state: &BTreeMap<Key, Value>,
        log: &[Executed<'_>],
    ) -> Result<(), Violation>;
}

/// The workload names [`by_name`] accepts.
pub const NAMES: &[&str] = &["bank", "ycsb", "kv"];

/// The named workload at its default size for `partitions` partitions.
pub fn by_name(name: &str, partitions: u32) -> Option<Box<dyn Workload>> {
    match name {
        "bank" => Some(Box::new(bank::Bank::new(bank::BankConfig::default()))),
        "ycsb" => Some(Box::new(ycsb::Ycsb::new(ycsb::YcsbConfig {
            partitions,
            ..ycsb::YcsbConfig::default()
        }))),
        "kv" => Some(Box::new(kv::Kv::new(kv::KvConfig::default()))),
        _ => None,
    }
}
