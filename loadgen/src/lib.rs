//! detflow's load driver, behind `detflow demo` and `detflow bench`: it measures a live
//! cluster through the client library and checks it end to end.
//!
//! - [`drive`]: concurrent client sessions drawing logical transactions from a workload's
//!   generator, latency histograms, live progress on stderr, and at the end the
//!   workload's own end-to-end check ([`detflow_workloads::LiveCheck`]), run generically.
//! - [`tpcc`]: TPC-C's view of a drive: the consistency check right after loading, tpmC,
//!   the audit bands.
//!
//! The order a caller follows: build a [`drive::DriveConfig`] matching the cluster (the
//! workload, its partitions and options), call [`drive::drive`] with the gateways and the
//! client's TLS material, print or serialize the [`drive::Report`]. For TPC-C,
//! [`tpcc::consistency`] first, then [`tpcc::TpccReport::new`] over the drive's report.
//!
//! This crate depends on the client and the workloads, never on the node runtime: a load
//! generator can run on a machine of its own.

pub mod drive;
pub mod plot;
pub mod tpcc;
