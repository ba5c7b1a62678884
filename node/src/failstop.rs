//! Fail-stop (DESIGN.md §5): a node that reaches an unexpected state or cannot use its disk
//! stops, with the reason in its log, and is restarted; it never keeps serving with a dead
//! component.
//!
//! Two exits, both immediate:
//!
//! - [`fatal`] for environment failures the runtime sees as errors (fsync, full disk, a
//!   store that will not commit): logs the error and exits with [`EXIT_FATAL`]. Nothing
//!   unsynced is relied on, so exiting in the middle of a round is the same as a crash,
//!   which recovery already handles.
//! - [`install_panic_hook`] for bugs: a panic anywhere in the node, on any task or thread,
//!   logs its message and location and aborts the process. The one exception is a panic
//!   inside a procedure, which the executor catches and turns into a deterministic abort
//!   ([`detflow_executor::in_procedure`]), so that every replica and every replay reaches
//!   the same outcome.

use std::fmt::Display;

/// The exit status of a node stopped by an environment failure.
pub const EXIT_FATAL: i32 = 3;

/// Logs `error` as the reason the node stops, and exits the process with [`EXIT_FATAL`].
#[cold]
pub fn fatal(error: impl Display) -> ! {
    tracing::error!("stopping the node: {error}");
    // The log may go to a file the operator reads later; stderr also reaches a terminal or
    // a supervisor's journal even if the subscriber is misconfigured.
    eprintln!("detflow: stopping the node: {error}");
    std::process::exit(EXIT_FATAL)
}

/// Makes every panic outside a procedure abort the process after logging it.
///
/// Without this a panic ends only the tokio task it happened in: the other tasks go on,
/// the node keeps answering status and holding its links, and nobody restarts it (a
/// zombie). Idempotent enough for tests: a second call replaces the hook with the same one.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if detflow_executor::in_procedure() {
            // The executor's catch_unwind turns it into AbortReason::Panicked; the default
            // hook would print a backtrace per transaction, so say it once, briefly.
            tracing::debug!("a procedure panicked: {info}");
            return;
        }
        tracing::error!("panic, stopping the node: {info}");
        default(info);
        std::process::abort();
    }));
}
