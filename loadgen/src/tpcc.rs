//! TPC-C on a live cluster, for `detflow bench tpcc` and `detflow demo --workload tpcc`:
//! the consistency conditions checked through `tpcc.check` (one read-only transaction per
//! warehouse), and the run's report: tpmC, transactions per type, the audit percentages
//! against their bands.
//!
//! The generator has no keying or think time, so tpmC here measures the system's
//! throughput, not a result comparable with audited TPC-C ones (at most 12.86 tpmC per
//! warehouse with the standard's wait times).

use crate::drive::{self, Report, TxnReport};
use detflow_client::Client;
use detflow_executor::Procedure;
use detflow_workloads::Options;
use detflow_workloads::tpcc::procs::NewOrder;
use detflow_workloads::tpcc::{self, AuditLine, Tpcc, TpccConfig};
use serde::Serialize;
use std::collections::BTreeMap;

/// TPC-C as `detflow_workloads::by_name_with("tpcc", partitions, options)` builds it, typed.
pub fn workload(partitions: u32, options: &Options) -> Tpcc {
    Tpcc::new(TpccConfig::from_options(partitions, options))
}

/// Rows the nodes generate to load every warehouse, about: the warehouses' own, and the
/// replicated items once per partition.
pub fn rows_expected(tpcc: &Tpcc) -> u64 {
    let config = tpcc.config();
    u64::from(config.warehouses) * config.shape.rows_per_warehouse()
        + u64::from(config.partitions) * u64::from(config.shape.items)
}

/// Checks every warehouse's consistency conditions (`initial`: condition 11 too, which
/// holds only right after loading) and combines them, through the workload's own check
/// ([`Tpcc::consistency_check`]). Run it while no other load runs: each warehouse is
/// checked at its own position in the order.
pub async fn consistency(client: &Client, tpcc: &Tpcc, initial: bool) -> Result<String, String> {
    drive::run_check(client, Box::new(tpcc.consistency_check(initial))).await
}

/// The outcome of a TPC-C run.
#[derive(Debug, Serialize)]
pub struct TpccReport {
    /// Warehouses.
    pub warehouses: u32,
    /// Partitions.
    pub partitions: u32,
    /// The population's scale-down factor (1: full size).
    pub scale_down: u32,
    /// `standard` or `new-order-payment`.
    pub mix: &'static str,
    /// Sessions.
    pub clients: u32,
    /// Seconds the cluster took to load, if this run started it.
    pub load_seconds: Option<f64>,
    /// Seconds driven.
    pub seconds: f64,
    /// Logical transactions answered per second (committed, or rolled back as New-Orders
    /// with an unused item are).
    pub throughput: f64,
    /// New-Orders committed per minute (no keying or think time: not comparable with
    /// audited results).
    pub tpmc: f64,
    /// Calls per second, reconnaissance included.
    pub calls_per_second: f64,
    /// Latency percentiles over all transactions, microseconds: p50, p90, p99, max.
    pub latency_us: [u64; 4],
    /// Per transaction type (`new_order`, `payment`, …).
    pub transactions: BTreeMap<String, TxnReport>,
    /// The audited quantities against their TPC-C bands.
    pub audit: Vec<AuditLine>,
    /// Every audited quantity inside its band.
    pub audit_ok: bool,
    /// The consistency conditions right after loading (condition 11 included).
    pub initial_consistency: Result<String, String>,
    /// The consistency conditions after the run.
    pub consistency: Result<String, String>,
    /// Transactions answered per tenth of a second ([`crate::drive::Report::timeline`]).
    #[serde(skip)]
    pub timeline: Vec<u32>,
}

impl TpccReport {
    /// The TPC-C view of a drive of `tpcc`.
    pub fn new(
        tpcc: &Tpcc,
        scale_down: u32,
        run: Report,
        load_seconds: Option<f64>,
        initial_consistency: Result<String, String>,
    ) -> TpccReport {
        let config = tpcc.config();
        let new_orders = run
            .transactions
            .get(NewOrder::NAME)
            .map_or(0, |t| t.committed);
        let audit = tpcc::audit_lines(&run.audit, config.warehouses, config.mix);
        let prefix = format!("{}.", run.workload);
        TpccReport {
            warehouses: config.warehouses,
            partitions: config.partitions,
            scale_down,
            mix: config.mix.name(),
            clients: run.clients,
            load_seconds,
            seconds: run.seconds,
            throughput: run.throughput,
            tpmc: new_orders as f64 * 60.0 / run.seconds,
            calls_per_second: run.calls_per_second,
            latency_us: run.latency_us,
            transactions: run
                .transactions
                .into_iter()
                .map(|(name, t)| (name.strip_prefix(&prefix).unwrap_or(&name).to_owned(), t))
                .collect(),
            audit_ok: audit.iter().all(|l| l.ok),
            audit,
            initial_consistency,
            consistency: run.invariants,
            timeline: run.timeline,
        }
    }

    /// Whether both consistency checks passed (the audit bands are a measurement, not a
    /// verdict on correctness: short runs may fall outside them).
    pub fn consistent(&self) -> bool {
        self.initial_consistency.is_ok() && self.consistency.is_ok()
    }

    /// Prints the report for people.
    pub fn print(&self) {
        println!(
            "tpcc: {} warehouses (scale-down {}) on {} partitions, {} mix, {} clients, {:.1} s",
            self.warehouses, self.scale_down, self.partitions, self.mix, self.clients, self.seconds
        );
        println!(
            "tpmC {:.0} (no keying or think time: not comparable with audited TPC-C results), \
             {:.0} txn/s ({:.0} calls/s with reconnaissance)",
            self.tpmc, self.throughput, self.calls_per_second
        );
        drive::print_latency(self.latency_us);
        for (name, t) in &self.transactions {
            drive::print_type(name, t);
        }
        println!("audit:");
        for line in &self.audit {
            let measured = match line.measured {
                Some(m) if line.name == tpcc::audit::LINES_PER_ORDER => format!("{m:.2}"),
                Some(m) => format!("{m:.2}%"),
                None => "n/a".to_owned(),
            };
            let band = if line.name == tpcc::audit::LINES_PER_ORDER {
                format!("{}–{}", line.band.0, line.band.1)
            } else {
                format!("{}–{}%", line.band.0, line.band.1)
            };
            println!(
                "  {:<40} {:>8}  band {:<12} {}",
                line.name,
                measured,
                band,
                if line.ok { "OK" } else { "OUT" }
            );
        }
        match &self.consistency {
            Ok(s) => println!("consistency after the run: {s}"),
            Err(s) => println!("CONSISTENCY BROKEN after the run: {s}"),
        }
    }
}
