//! `detflow node`: one node, until SIGTERM, Ctrl-C, the end of stdin (if asked) or a
//! fatal error.

// A thread does the blocking read of stdin (see `stdin_eof`).
#![allow(clippy::disallowed_methods)]

use crate::cli::NodeArgs;
use crate::config::Config;
use crate::failstop;
use anyhow::Result;

/// Loads the configuration, applies the overrides and runs the node.
pub(crate) async fn run(args: NodeArgs, builder: &crate::NodeBuilder) -> Result<bool> {
    let mut config = Config::load(&args.config)?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if args.metrics_listen.is_some() {
        config.metrics_listen = args.metrics_listen;
    }
    failstop::install_panic_hook();
    let mut node = builder.start(config).await?;
    let stdin_closed = async {
        if args.exit_on_stdin_eof {
            stdin_eof().await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        _ = wait_for_shutdown() => {}
        _ = stdin_closed => {}
        reason = node.failed() => failstop::fatal(reason),
    }
    node.shutdown().await;
    Ok(true)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn wait_for_shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Resolves once standard input reaches end of file (or fails).
///
/// A plain thread does the blocking read: tokio's `stdin` reads on its blocking pool, and a
/// read that never returns would hold up the runtime's shutdown after SIGTERM.
async fn stdin_eof() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}
