//! The procedure trait.

use crate::txn::Txn;
use detflow_protocol::{AbortReason, Footprint};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt;

/// A named, deterministic transaction over keyed state.
///
/// `execute` must depend only on its arguments and the values it reads through `tx`: no
/// clock, no randomness, no I/O, no hash-order iteration (DESIGN.md §4).
pub trait Procedure {
    /// The registered name, e.g. `bank.transfer`.
    const NAME: &'static str;
    /// The call's arguments.
    type Args: Serialize + DeserializeOwned;
    /// The call's output.
    type Output: Serialize + DeserializeOwned;

    /// The keys and prefixes the call may touch, computed before it is ordered.
    fn footprint(args: &Self::Args) -> Footprint;

    /// Runs the call. An `Err` rolls back every write, everywhere.
    fn execute(tx: &mut Txn<'_>, args: Self::Args) -> Result<Self::Output, AbortReason>;
}

/// Checked arithmetic for procedures: an operation that overflows (`None` from
/// `checked_add` and its kin, `Err` from `try_from`) becomes the deterministic abort
/// [`AbortReason::Overflow`] naming `what` overflowed, so call sites stay one line:
///
/// ```
/// use detflow_executor::{Abort, OrOverflow};
/// fn credit(balance: i64, amount: i64) -> Result<i64, Abort> {
///     balance.checked_add(amount).or_overflow("balance")
/// }
/// assert_eq!(credit(1, 2), Ok(3));
/// assert_eq!(credit(i64::MAX, 1), Err(Abort::Overflow("balance".into())));
/// let id = 7u32;
/// let narrowed = u16::try_from(70_000u32).or_overflow(format_args!("quantity of {id}"));
/// assert_eq!(narrowed, Err(Abort::Overflow("quantity of 7".into())));
/// ```
pub trait OrOverflow<T> {
    /// The value, or [`AbortReason::Overflow`] with `what` as its message. `what` is
    /// formatted only on overflow (pass `format_args!` for a message with fields).
    fn or_overflow(self, what: impl fmt::Display) -> Result<T, AbortReason>;
}

impl<T> OrOverflow<T> for Option<T> {
    fn or_overflow(self, what: impl fmt::Display) -> Result<T, AbortReason> {
        self.ok_or_else(|| AbortReason::Overflow(what.to_string()))
    }
}

impl<T, E> OrOverflow<T> for Result<T, E> {
    fn or_overflow(self, what: impl fmt::Display) -> Result<T, AbortReason> {
        self.map_err(|_| AbortReason::Overflow(what.to_string()))
    }
}
