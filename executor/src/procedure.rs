//! The procedure trait.

use crate::txn::Txn;
use detflow_protocol::{AbortReason, Footprint};
use serde::{Serialize, de::DeserializeOwned};

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
