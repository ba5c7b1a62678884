//! Virtual time for both worlds: the queue of scheduled events and a component's wake-up.

use detflow_protocol::Time;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Events in virtual-time order; events scheduled for the same time run in the order they
/// were scheduled, so a run depends on nothing but its seed.
pub(crate) struct EventQueue<E> {
    heap: BinaryHeap<Reverse<Scheduled<E>>>,
    next_seq: u64,
}

struct Scheduled<E> {
    at: Time,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<E> EventQueue<E> {
    /// An empty queue.
    pub(crate) fn new() -> EventQueue<E> {
        EventQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    /// Schedules `event` at `at`.
    pub(crate) fn schedule(&mut self, at: Time, event: E) {
        self.next_seq += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            seq: self.next_seq,
            event,
        }));
    }

    /// The earliest event and its time.
    pub(crate) fn pop(&mut self) -> Option<(Time, E)> {
        self.heap.pop().map(|Reverse(s)| (s.at, s.event))
    }
}

/// A component's one pending wake-up: the deadline its machine last asked for.
#[derive(Debug, Default)]
pub(crate) struct Timer(Option<Time>);

impl Timer {
    /// Takes the machine's `deadline`; if it is new, returns when to schedule the wake-up
    /// (never before `now`).
    pub(crate) fn arm(&mut self, deadline: Option<Time>, now: Time) -> Option<Time> {
        let at = deadline.filter(|_| deadline != self.0)?;
        self.0 = deadline;
        Some(at.max(now))
    }

    /// Whether the wake-up is due at `now` (a stale or early one is not); clears it if so.
    pub(crate) fn fire(&mut self, now: Time) -> bool {
        let due = self.0.is_some_and(|t| t <= now);
        if due {
            self.0 = None;
        }
        due
    }
}
