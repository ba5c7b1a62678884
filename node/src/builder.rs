//! Your own node: a binary with your services compiled in is a detflow node.
//!
//! ```no_run
//! use detflow_executor::{Service, Table};
//! # fn shop() -> Service { Service::new("shop").table(Table::new("orders")) }
//! fn main() -> std::process::ExitCode {
//!     detflow_node::NodeBuilder::new().service(shop()).main()
//! }
//! ```
//!
//! `main` is the whole `detflow` command line (`node`, `demo`, `bench`, `call`, `status`,
//! `certs`) with these services registered in every node it runs, including the local
//! clusters `demo` and `bench` start (they run the same executable). The `detflow` binary
//! itself is `NodeBuilder::new().main()`: the built-in services alone (a node registers
//! the one its configuration's `workload` names, and `kv`).

use crate::cli;
use crate::config::Config;
use crate::runtime::Node;
use anyhow::{Context, Result};
use clap::Parser;
use detflow_executor::{Registry, Service};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Builds a node, or the whole command line, from services.
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    services: Vec<Service>,
}

impl Default for NodeBuilder {
    fn default() -> NodeBuilder {
        NodeBuilder::new()
    }
}

impl NodeBuilder {
    /// A builder with the built-in services only.
    pub fn new() -> NodeBuilder {
        NodeBuilder {
            services: Vec::new(),
        }
    }

    /// Adds an application service: every node built registers it.
    pub fn service(mut self, service: Service) -> NodeBuilder {
        self.services.push(service);
        self
    }

    /// The registry of a node of `config`: the configured workload's built-in service (with
    /// its configured options; it supplies the initial data), `kv` (for the operator's
    /// ad-hoc `kv.txn`, off unless `[access]` grants tables), and this builder's services.
    /// The other built-in services are left out, so their table names stay free for yours.
    pub fn registry(&self, config: &Config) -> Result<Registry> {
        let options = config.workload_options();
        let mut registry = Registry::new();
        let mut builtins = vec![config.workload.as_str()];
        if config.workload != "kv" {
            builtins.push("kv");
        }
        for name in builtins {
            let workload = if name == config.workload {
                detflow_workloads::by_name_with(name, config.partitions(), &options)?
            } else {
                detflow_workloads::by_name(name, config.partitions())?
            };
            workload
                .register(&mut registry)
                .with_context(|| format!("registering the built-in service {name}"))?;
        }
        for service in &self.services {
            let name = service.name().to_owned();
            registry
                .add_service(service.clone())
                .with_context(|| format!("registering service {name}"))?;
        }
        Ok(registry)
    }

    /// Starts a node of `config` with these services.
    pub async fn start(&self, config: Config) -> Result<Node> {
        let registry = self.registry(&config)?;
        Node::start_with(config, registry).await
    }

    /// Runs the `detflow` command line with these services; the process's exit code.
    pub fn main(self) -> ExitCode {
        let cli = cli::Cli::parse();
        tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
        // `demo` and `bench` are the load driver, one process among the cluster's on the
        // same machine: one thread keeps its CPU share low (no work stealing, no
        // cross-thread wake-ups for every answer). A node uses every core.
        let mut builder = match cli.command {
            cli::Cmd::Demo(_) | cli::Cmd::Bench(_) => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        let runtime = match builder.enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("detflow: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        match runtime.block_on(self.run(cli.command)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("detflow: {e:#}");
                ExitCode::from(2)
            }
        }
    }

    /// Runs one command; `Ok(false)` when it ran but failed its purpose (a broken
    /// invariant, an unreachable node), which exits with status 1.
    async fn run(self, cmd: cli::Cmd) -> Result<bool> {
        use crate::commands;
        use cli::Cmd;
        match cmd {
            Cmd::Certs(args) => commands::certs::run(&args),
            Cmd::Node(args) => commands::node::run(args, &self).await,
            Cmd::Demo(args) => commands::demo::run(args).await,
            Cmd::Bench(args) => commands::bench::run(args).await,
            Cmd::Call(args) => commands::call::run(&args).await,
            Cmd::Sql(args) => commands::sql::run(&args, &self).await,
            Cmd::Status { connect } => commands::status::run(&connect).await,
            Cmd::Checkpoint(args) => commands::checkpoint::run(&args).await,
            Cmd::Audit(args) if !args.connect.is_empty() => {
                commands::audit::run_live(&args, &self).await
            }
            Cmd::Audit(args) => commands::audit::run(&args, &self),
            Cmd::Replay(args) => commands::history::replay(&args, &self),
            Cmd::Explain(args) => commands::history::explain(&args, &self),
            Cmd::Archive(cli::ArchiveCmd::Ls(args)) => commands::history::archive_ls(&args),
        }
    }
}
