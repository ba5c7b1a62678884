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
//!
//! A driver of a live cluster cannot see the final state; it checks a workload end to end
//! through the workload's [`LiveCheck`] instead (see [`Workload::live_check`]), which only
//! turns answers into further calls and a verdict, and does no I/O itself.

#![forbid(unsafe_code)]

pub mod bank;
pub mod kv;
#[cfg(test)]
mod testkit;
pub mod tpcc;
pub mod ycsb;
pub mod zipf;

use detflow_executor::{Registry, Service, ServiceError, Table};
use detflow_protocol::{AbortReason, DetRng, Key, Outcome, PartitionScheme, Value};
use std::collections::BTreeMap;

/// A call a generator produced: a procedure name and MessagePack arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The procedure name.
    pub procedure: &'static str,
    /// The encoded arguments.
    pub args: Vec<u8>,
    /// Workload-private state handed back to [`Workload::follow_up`] and never sent, e.g.
    /// the call a reconnaissance read prepares. Empty for single-call transactions.
    pub context: Vec<u8>,
}

impl Request {
    /// A call of `procedure` with `args` and no follow-up context.
    pub fn new(procedure: &'static str, args: Vec<u8>) -> Request {
        Request {
            procedure,
            args,
            context: Vec::new(),
        }
    }
}

/// How a call ended, as the calling session saw it.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    /// Committed with this MessagePack output.
    Committed(&'a [u8]),
    /// Aborted deterministically.
    Aborted(&'a AbortReason),
    /// Refused, or its fate unknown after the client gave up.
    Failed,
}

/// Ratios a workload measures over a run, by name: (hits, total). Sessions keep their own
/// and a driver adds them up with [`Audit::merge`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit(pub BTreeMap<&'static str, (u64, u64)>);

impl Audit {
    /// Counts `total` more observations of `name`, `hits` of which had the property.
    pub fn count(&mut self, name: &'static str, hits: u64, total: u64) {
        let entry = self.0.entry(name).or_default();
        entry.0 += hits;
        entry.1 += total;
    }

    /// Adds another session's counts.
    pub fn merge(&mut self, other: &Audit) {
        for (name, (hits, total)) in &other.0 {
            self.count(name, *hits, *total);
        }
    }

    /// `hits / total` of `name`, if anything was counted.
    pub fn ratio(&self, name: &str) -> Option<f64> {
        self.0
            .get(name)
            .filter(|(_, total)| *total > 0)
            .map(|(hits, total)| *hits as f64 / *total as f64)
    }
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
pub trait Workload: Send {
    /// The workload's name (`bank`, `ycsb`, `kv`).
    fn name(&self) -> &'static str;

    /// The workload's services: their tables (partitioned as [`Workload::scheme`] says)
    /// and their procedures. The built-in workloads are one service each.
    fn services(&self) -> Vec<Service>;

    /// Adds the workload's services to `registry`.
    fn register(&self, registry: &mut Registry) -> Result<(), ServiceError> {
        for service in self.services() {
            registry.add_service(service)?;
        }
        Ok(())
    }

    /// How its tables are partitioned.
    fn scheme(&self) -> PartitionScheme;

    /// The initial rows, ascending by key.
    fn load(&self) -> Vec<(Key, Value)>;

    /// The initial rows `wanted` accepts, ascending: what one node or partition loads.
    /// Workloads that can generate a part without the whole (TPC-C, by warehouse) do so.
    fn load_where(&self, wanted: &dyn Fn(&Key) -> bool) -> Vec<(Key, Value)> {
        let mut rows = self.load();
        rows.retain(|(k, _)| wanted(k));
        rows
    }

    /// The first call of the next logical transaction, drawn from `rng`.
    fn next_call(&mut self, rng: &mut DetRng) -> Request;

    /// The next call of the same logical transaction, given how `request` ended, or `None`
    /// when the transaction is complete. This is where a reconnaissance read turns into the
    /// call it prepared, and where a call aborted with
    /// [`AbortReason::FootprintChanged`] is reconnoitred again (a bounded number of times).
    /// Sessions call it after every answer, so workloads also count what they audit here.
    fn follow_up(&mut self, request: &Request, answer: Answer<'_>) -> Option<Request> {
        let _ = (request, answer);
        None
    }

    /// The procedures among its calls that only read and need no place in the order: a
    /// driver may run them on a snapshot at the latest epoch instead of through the log
    /// (TPC-C's reconnaissance, Order-Status and Stock-Level).
    fn read_only_procedures(&self) -> &'static [&'static str] {
        &[]
    }

    /// What this session measured (see [`Audit`]).
    fn audit(&self) -> Audit {
        Audit::default()
    }

    /// The end-to-end check a driver of a live cluster runs through the client library, or
    /// `None` when the workload has none. A driver makes one per run (see [`LiveCheck`]).
    fn live_check(&self) -> Option<Box<dyn LiveCheck>> {
        None
    }

    /// The egress streams its procedures publish to, which the simulator reads from the
    /// start while the workload runs.
    fn streams(&self) -> Vec<String> {
        Vec::new()
    }

    /// Checks what must hold right after loading, on the loaded state.
    fn check_initial(&self, state: &BTreeMap<Key, Value>) -> Result<(), Violation> {
        let _ = state;
        Ok(())
    }

    /// Checks the invariants on the final state, given every executed transaction in log
    /// order (committed and aborted).
    fn check(&self, state: &BTreeMap<Key, Value>, log: &[Executed<'_>]) -> Result<(), Violation>;
}

/// A workload's end-to-end check of a live cluster, as a small state machine: it decides
/// what to read and what the answers mean, the driver only makes the calls.
///
/// The driver's order: [`LiveCheck::note_commit`] for every call acknowledged as committed
/// during the run (from any session, in any order); once the run has stopped, repeatedly
/// [`LiveCheck::next_read`] and then [`LiveCheck::on_answer`] with that call's answer, one
/// read at a time, until `next_read` returns `None`; finally [`LiveCheck::verdict`]. A
/// driver whose call fails for want of a cluster (unavailable, refused) stops and reports
/// that instead of a verdict.
pub trait LiveCheck: Send {
    /// Notes a call the cluster acknowledged as committed, with its MessagePack output.
    fn note_commit(&mut self, procedure: &str, args: &[u8], output: &[u8]) {
        let _ = (procedure, args, output);
    }

    /// The next read to make, or `None` when the check has all it needs (or already
    /// failed).
    fn next_read(&mut self) -> Option<Request>;

    /// How the read `request` (the last one [`LiveCheck::next_read`] gave) ended.
    fn on_answer(&mut self, request: &Request, answer: Answer<'_>);

    /// What the check found: `Ok` with a summary for people, or `Err` with what is wrong.
    fn verdict(self: Box<Self>) -> Result<String, String>;
}

/// The output of a committed read, or what went wrong with it, for a [`LiveCheck`]:
/// `what` names the read ("reading account 3").
fn committed_output<'a>(what: &str, answer: Answer<'a>) -> Result<&'a [u8], String> {
    match answer {
        Answer::Committed(output) => Ok(output),
        Answer::Aborted(reason) => Err(format!("{what}: aborted: {reason}")),
        Answer::Failed => Err(format!("{what}: failed")),
    }
}

/// The workload names [`by_name`] accepts.
pub const NAMES: &[&str] = &["bank", "ycsb", "kv", "tpcc"];

/// Sizes and mixes a driver may choose instead of a workload's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    /// TPC-C warehouses (default: one per partition).
    pub warehouses: Option<u32>,
    /// TPC-C population divided by this factor (default 1 = full size through
    /// [`by_name_with`], 100 through [`by_name`], which the simulator uses).
    pub scale_down: Option<u32>,
    /// TPC-C mix (default standard).
    pub mix: Option<tpcc::Mix>,
}

/// Why a workload cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// No workload of that name.
    #[error("unknown workload {0:?} (known: bank, ycsb, kv, tpcc)")]
    Unknown(String),
    /// The partition count does not suit the workload.
    #[error("{workload} cannot run on {partitions} partitions: {why}")]
    Partitions {
        /// The workload.
        workload: &'static str,
        /// The partition count asked for.
        partitions: u32,
        /// Why not.
        why: String,
    },
}

/// The named workload at its default size for `partitions` partitions (TPC-C: one
/// warehouse per partition, scaled down 100 times).
pub fn by_name(name: &str, partitions: u32) -> Result<Box<dyn Workload>, WorkloadError> {
    let options = Options {
        scale_down: Some(100),
        ..Options::default()
    };
    by_name_with(name, partitions, &options)
}

/// The named workload for `partitions` partitions, sized by `options`.
pub fn by_name_with(
    name: &str,
    partitions: u32,
    options: &Options,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let workload = NAMES
        .iter()
        .copied()
        .find(|n| *n == name)
        .ok_or_else(|| WorkloadError::Unknown(name.to_owned()))?;
    let refuse = |why: String| WorkloadError::Partitions {
        workload,
        partitions,
        why,
    };
    if partitions == 0 {
        return Err(refuse("at least one partition is needed".into()));
    }
    Ok(match workload {
        "bank" => Box::new(bank::Bank::new(bank::BankConfig {
            partitions,
            ..bank::BankConfig::default()
        })),
        "ycsb" => {
            let config = ycsb::YcsbConfig {
                partitions,
                ..ycsb::YcsbConfig::default()
            };
            if config.keys / u64::from(partitions) < config.ops as u64 {
                return Err(refuse(format!(
                    "each partition needs at least {} of the {} keys",
                    config.ops, config.keys
                )));
            }
            Box::new(ycsb::Ycsb::new(config))
        }
        "tpcc" => {
            let config = tpcc::TpccConfig::from_options(partitions, options);
            if config.warehouses < partitions {
                return Err(refuse(format!(
                    "TPC-C needs at least one warehouse per partition, got {} warehouses",
                    config.warehouses
                )));
            }
            Box::new(tpcc::Tpcc::new(config))
        }
        _ => Box::new(kv::Kv::new(kv::KvConfig {
            partitions,
            ..kv::KvConfig::default()
        })),
    })
}

/// The problems a checker found, keeping the first few for the violation's detail.
struct Findings {
    workload: &'static str,
    shown: Vec<String>,
    total: usize,
}

impl Findings {
    /// How many problems a violation spells out; the rest are counted.
    const SHOWN_MAX: usize = 8;

    fn new(workload: &'static str) -> Findings {
        Findings {
            workload,
            shown: Vec::new(),
            total: 0,
        }
    }

    /// Records a problem; `describe` runs only for the first few.
    fn push(&mut self, describe: impl FnOnce() -> String) {
        if self.shown.len() < Self::SHOWN_MAX {
            self.shown.push(describe());
        }
        self.total += 1;
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// `Ok` when nothing was found, else one violation listing the problems.
    fn finish(self) -> Result<(), Violation> {
        if self.total == 0 {
            return Ok(());
        }
        let mut detail = self.shown.join("; ");
        if self.total > self.shown.len() {
            detail.push_str(&format!("; and {} more", self.total - self.shown.len()));
        }
        Err(Violation {
            workload: self.workload,
            detail,
        })
    }
}

/// Every key of `table` in `state`, ascending.
fn table_rows<'s>(
    state: &'s BTreeMap<Key, Value>,
    table: &str,
) -> impl Iterator<Item = (&'s Key, &'s Value)> + 's {
    let prefix = Key::table(table);
    state
        .range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
}

/// A short, readable rendering of a stored value for violation details: printable ASCII
/// as a quoted string, anything else as hex; long values are cut.
fn show_bytes(value: &[u8]) -> String {
    const SHOWN_MAX: usize = 24;
    let cut = &value[..value.len().min(SHOWN_MAX)];
    let more = if value.len() > SHOWN_MAX {
        format!("..({} bytes)", value.len())
    } else {
        String::new()
    };
    if cut.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}{more}", String::from_utf8_lossy(cut))
    } else {
        let hex: String = cut.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}{more}")
    }
}

/// [`show_bytes`] for a value that may be absent.
fn show_opt(value: Option<&[u8]>) -> String {
    value.map_or_else(|| "absent".to_owned(), show_bytes)
}

/// Table `name` with the partitioning rule `scheme` gives it (its default when unlisted).
pub(crate) fn table_in(scheme: &PartitionScheme, name: &str) -> Table {
    let rule = scheme
        .tables
        .iter()
        .find(|(t, _)| t == name)
        .map_or_else(|| scheme.default.clone(), |(_, rule)| rule.clone());
    Table::new(name).rule(rule)
}
