//! detflow's production runtime: the same state machines as the simulator, driven by
//! tokio, talking QUIC with mutual TLS, storing their logs and state in fjall.
//!
//! - [`config`]: the TOML node configuration.
//! - [`runtime`]: one task per machine, the router, links and listeners.
//! - [`transport`]: QUIC endpoints with mutual TLS and length-prefixed frames.
//! - [`storage`]: the replica log and the partition state in fjall.
//! - [`load`]: a partition's initial rows, a part at a time.
//! - [`local_cluster`]: a local cluster of node processes, for `demo`, `bench` and the
//!   process tests (the load driver itself is the `detflow-loadgen` crate).
//! - [`certs`]: a development CA and certificates.
//! - [`session`]: client sessions bound to the client that opened them; [`access`]: what a
//!   client may call.
//! - [`failstop`]: stopping the node on storage errors and panics.
//! - [`metrics`]: the Prometheus endpoint: a prometheus-client registry of the node's and
//!   the transport's counters.

pub mod access;
pub mod archive;
pub mod builder;
pub mod certs;
pub mod cli;
mod commands;
pub mod config;
pub mod failstop;
pub mod load;
pub mod local_cluster;
pub mod metrics;
pub mod runtime;
pub mod session;
pub mod storage;
pub use detflow_net as transport;

pub use builder::NodeBuilder;
