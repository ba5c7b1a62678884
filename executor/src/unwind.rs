//! The boundary between procedure code and the engine.
//!
//! A procedure that panics must not wedge its partition: every replica (and every replay)
//! would panic on the same transaction again. So procedure code runs under
//! [`std::panic::catch_unwind`] and a panic becomes the deterministic abort
//! [`AbortReason::Panicked`](detflow_protocol::AbortReason::Panicked), carrying only the
//! panic's message (never a backtrace or an address, which differ between replicas).
//!
//! Only the procedure's own code is caught. When the procedure reads state, the store runs
//! *outside* the procedure again: a store that panics on an I/O error (an environment
//! failure, DESIGN.md's second tier) must stop the node, not turn into an abort that one
//! replica reaches and the others do not. Such a panic is re-raised.
//!
//! [`in_procedure`] tells a process-wide panic hook which kind of panic it sees: the node
//! aborts the process on any panic outside procedure code, and leaves those inside to be
//! caught here.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// Whether procedure code (not the store it reads through) is running on this thread.
    static IN_PROCEDURE: Cell<bool> = const { Cell::new(false) };
    /// Whether a panic unwound out of engine code called from a procedure (a store read).
    static ENGINE_PANICKED: Cell<bool> = const { Cell::new(false) };
}

/// The longest panic message an abort carries, in bytes; longer ones are cut at a char
/// boundary so a procedure cannot make its result arbitrarily large.
pub const PANIC_MESSAGE_BYTES_MAX: usize = 1024;

/// Whether the current thread is running procedure code: a procedure's `execute` or
/// `footprint`, excluding the store reads it makes.
///
/// A panic hook uses this to tell a procedure's panic, which the executor turns into an
/// abort, from any other panic, which must stop the process. The flag is set only while
/// procedure code runs and is cleared even when that code unwinds.
pub fn in_procedure() -> bool {
    IN_PROCEDURE.with(Cell::get)
}

/// Sets [`IN_PROCEDURE`] for its lifetime and restores the previous value on drop, also
/// while unwinding.
struct Scope {
    previous: bool,
}

impl Scope {
    fn enter(inside: bool) -> Scope {
        Scope {
            previous: IN_PROCEDURE.with(|f| f.replace(inside)),
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        IN_PROCEDURE.with(|f| f.set(self.previous));
    }
}

/// Leaves procedure code for the engine's own work (a store read) and marks a panic that
/// unwinds out of it, so [`run_procedure`] re-raises it instead of turning it into an abort.
struct EngineScope {
    _scope: Scope,
}

impl Drop for EngineScope {
    fn drop(&mut self) {
        if std::thread::panicking() {
            ENGINE_PANICKED.with(|f| f.set(true));
        }
    }
}

/// Runs `f`, engine code called from a procedure (a read of the store), outside the
/// procedure's panic boundary.
pub(crate) fn engine<T>(f: impl FnOnce() -> T) -> T {
    let _engine = EngineScope {
        _scope: Scope::enter(false),
    };
    f()
}

/// Runs procedure code `f`. A panic in it is `Err(message)`; a panic in engine code it
/// called (see [`engine`]) is re-raised.
pub(crate) fn run_procedure<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let caught = {
        let _scope = Scope::enter(true);
        ENGINE_PANICKED.with(|f| f.set(false));
        panic::catch_unwind(AssertUnwindSafe(f))
    };
    match caught {
        Ok(value) => Ok(value),
        Err(payload) => {
            if ENGINE_PANICKED.with(|f| f.replace(false)) {
                panic::resume_unwind(payload);
            }
            Err(message(payload.as_ref()))
        }
    }
}

/// The message of a panic payload: `panic!`'s formatted text, bounded.
fn message(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "panic payload is not a string"
    };
    let mut end = text.len().min(PANIC_MESSAGE_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_the_flag_is_cleared() {
        assert!(!in_procedure());
        let caught = run_procedure(|| {
            assert!(in_procedure());
            panic!("boom {}", 7)
        });
        assert_eq!(caught, Err::<(), _>("boom 7".into()));
        assert!(!in_procedure());
        assert_eq!(
            run_procedure(|| std::panic::panic_any(5u8)),
            Err::<(), _>("panic payload is not a string".into())
        );
        assert_eq!(run_procedure(|| 3), Ok(3));
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(PANIC_MESSAGE_BYTES_MAX);
        let Err(cut) = run_procedure::<()>(|| panic!("{long}")) else {
            panic!("expected a panic")
        };
        assert_eq!(cut.len(), PANIC_MESSAGE_BYTES_MAX);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn engine_panics_inside_a_procedure_are_re_raised() {
        let outer = panic::catch_unwind(|| {
            run_procedure(|| {
                engine(|| {
                    assert!(!in_procedure());
                    panic!("disk on fire")
                })
            })
        });
        let payload = outer.expect_err("the engine's panic propagates");
        assert_eq!(message(payload.as_ref()), "disk on fire");
        assert!(!in_procedure());
        // The mark does not leak into the next procedure.
        assert_eq!(
            run_procedure(|| -> () { panic!("mine") }),
            Err("mine".into())
        );
        // Engine code that returns normally hands back to the procedure.
        assert_eq!(
            run_procedure(|| {
                engine(|| ());
                in_procedure()
            }),
            Ok(true)
        );
    }
}
