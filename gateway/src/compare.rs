//! Comparing the results a call's replicas report.
//!
//! Every replica of a call's designated partition executes it and reports its result; the
//! gateway answers the client with the first and keeps it for [`COMPARE_WINDOW_US`], so
//! that the later reports can be compared with it. Replicas of one partition run the same
//! plans from the same state, so any difference (outcome or position) means one of them
//! is not deterministic (a procedure that reads the clock, a build that differs, a disk
//! that changed a value): a determinism failure, which the gateway reports loudly.

use detflow_protocol::{CallId, Outcome, PartitionId, Position, Time, TxnResult};
use std::collections::{BTreeMap, VecDeque};

/// How long a gateway keeps an answered result to compare later reports with: replicas
/// that keep up report within milliseconds of each other; one that lags further is
/// compared by the simulator's end-state checker instead.
pub const COMPARE_WINDOW_US: u64 = 5_000_000;

/// The most answered results kept for comparison; beyond it the oldest go first.
pub const COMPARE_RESULTS_MAX: usize = 65_536;

/// Two replicas of a partition reported different results for one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The reporting partition.
    pub partition: PartitionId,
    /// The call.
    pub call: CallId,
    /// The result the client was given.
    pub first: (Position, Outcome),
    /// The result that differs.
    pub other: (Position, Outcome),
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "determinism failure: replicas of partition {} disagree on call {}/{}: \
             {} {:?} against {} {:?}",
            self.partition,
            self.call.client.0,
            self.call.seq.0,
            self.first.0,
            self.first.1,
            self.other.0,
            self.other.1
        )
    }
}

/// The results answered recently, by call.
#[derive(Debug, Default)]
pub(crate) struct Answered {
    results: BTreeMap<CallId, (Time, Position, Outcome)>,
    /// Calls by the time they were answered, oldest first.
    order: VecDeque<(Time, CallId)>,
}

impl Answered {
    /// Keeps the result a client was given, at `now`.
    pub(crate) fn keep(&mut self, now: Time, result: &TxnResult) {
        self.forget_before(now);
        let call = result.call_id();
        let kept = (now, result.position, result.outcome.clone());
        if self.results.insert(call, kept).is_none() {
            self.order.push_back((now, call));
        }
        while self.results.len() > COMPARE_RESULTS_MAX {
            self.pop_oldest();
        }
    }

    /// Compares a later report from `partition` with the answer given, if it is still kept.
    pub(crate) fn compare(
        &mut self,
        now: Time,
        partition: PartitionId,
        result: &TxnResult,
    ) -> Option<Divergence> {
        self.forget_before(now);
        let (_, position, outcome) = self.results.get(&result.call_id())?;
        if *position == result.position && *outcome == result.outcome {
            return None;
        }
        Some(Divergence {
            partition,
            call: result.call_id(),
            first: (*position, outcome.clone()),
            other: (result.position, result.outcome.clone()),
        })
    }

    fn forget_before(&mut self, now: Time) {
        while let Some((at, _)) = self.order.front()
            && now.since_us(*at) > COMPARE_WINDOW_US
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, call)) = self.order.pop_front()
            && self.results.get(&call).is_some_and(|(t, _, _)| *t == at)
        {
            self.results.remove(&call);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{ClientId, Epoch, RequestSeq};

    fn result(outcome: Outcome) -> TxnResult {
        TxnResult {
            client: ClientId(1),
            seq: RequestSeq(2),
            position: Position::new(Epoch(3), 0),
            outcome,
        }
    }

    #[test]
    fn a_different_later_report_is_a_divergence_within_the_window_only() {
        let mut answered = Answered::default();
        let first = result(Outcome::Committed(vec![1]));
        answered.keep(Time(0), &first);
        assert_eq!(answered.compare(Time(10), PartitionId(0), &first), None);
        let other = result(Outcome::Committed(vec![2]));
        let divergence = answered.compare(Time(10), PartitionId(0), &other);
        assert!(divergence.is_some_and(|d| d.to_string().contains("partition 0")));
        let late = Time(COMPARE_WINDOW_US + 1);
        assert_eq!(answered.compare(late, PartitionId(0), &other), None);
        assert!(answered.results.is_empty());
    }
}
