//! `detflow`: run nodes, a local demo cluster, single calls, status and benchmarks.
//!
//! This file parses the command line ([`cli`]), sets up logging and the runtime, and hands
//! the command to its module under [`commands`]; the local cluster the `demo` and `bench`
//! commands start is the library's `detflow_node::local_cluster`, the load they drive is
//! `detflow_loadgen`'s.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

mod cli;
mod commands;

/// mimalloc rather than glibc's malloc: messages, batches and rows are allocated and freed
/// across threads at a high rate (malloc and free were ~7% of a TPC-C profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("detflow: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("detflow: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs one command; `Ok(false)` when it ran but failed its purpose (a broken invariant,
/// an unreachable node), which exits with status 1.
async fn run(cmd: cli::Cmd) -> anyhow::Result<bool> {
    use cli::Cmd;
    match cmd {
        Cmd::Certs(args) => commands::certs::run(&args),
        Cmd::Node(args) => commands::node::run(args).await,
        Cmd::Demo(args) => commands::demo::run(args).await,
        Cmd::Bench(args) => commands::bench::run(args).await,
        Cmd::Call(args) => commands::call::run(&args).await,
        Cmd::Status { connect } => commands::status::run(&connect).await,
    }
}
