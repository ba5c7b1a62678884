//! The shape every sans-IO component shares (STYLE.md, "Our component contract").

use crate::ids::Time;

/// A deterministic state machine driven by a simulator or a runtime.
///
/// The driver calls [`Machine::handle`] with each input and the current time, performs the
/// effects appended to `out`, and calls `handle` with a timeout input once
/// [`Machine::next_deadline`] has passed. A machine never blocks, reads a clock, draws OS
/// randomness or does I/O.
pub trait Machine {
    /// Messages from peers, ticks and effect completions.
    type Input;
    /// Effects for the driver to perform.
    type Output;

    /// Applies one input at `now`, appending effects to `out`.
    fn handle(&mut self, now: Time, input: Self::Input, out: &mut Vec<Self::Output>);

    /// The earliest time at which the driver must deliver a timeout, if any.
    fn next_deadline(&self) -> Option<Time>;
}
