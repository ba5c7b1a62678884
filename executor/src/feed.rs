//! Where an executor's plans come from, and what it does when its inputs stop coming.
//!
//! An executor subscribes to one sequencer replica's plan stream at a time. Four things can
//! stall it, and none is announced by the network:
//!
//! - its plan source dies or is cut off: no plan arrives for [`STALL_US`], so it subscribes
//!   to the next replica (round robin), from the epoch it needs next;
//! - its plan source lags (a replica that restarted and is catching up its log still sends
//!   plans, slowly): peers' reads keep arriving for epochs it holds no plan for, for
//!   [`STALL_US`], so it moves to the next replica the same way;
//! - its plan stream has a gap (plans queued on a connection that died were dropped, and
//!   the source carries on with later epochs on the new one): later plans wait while the
//!   next epoch's never comes, for [`STALL_US`], and it moves on the same way;
//! - remote reads it waits for were sent on a connection that died without either side
//!   noticing yet (a peer keeps using a connection to this node's previous incarnation
//!   until the idle timeout): work waits with no epoch applied for [`STALL_US`], so it says
//!   Hello to every peer again, and peers re-send what it has not acknowledged (re-sent
//!   reads are de-duplicated).
//!
//! All are protocol decisions, so they live here, in the machine, where the simulator
//! exercises them; the drivers only deliver [`Input::Tick`](crate::Input::Tick) when
//! [`next_deadline`](detflow_protocol::Machine::next_deadline) passes.

use detflow_protocol::{NodeId, Time};

/// How long an executor waits for a plan, or for progress on waiting work, before it acts.
pub const STALL_US: u64 = 250_000;

/// What a stall check decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StallActions {
    /// Subscribe to this replica (the next one after the silent source).
    pub resubscribe: Option<NodeId>,
    /// Say Hello to every peer again.
    pub hello: bool,
}

/// The plan subscription and the stall timers of one executor.
#[derive(Debug)]
pub(crate) struct Feed {
    /// The replicas that serve plans; empty when a driver feeds plans directly.
    sources: Vec<NodeId>,
    /// The index in `sources` of the replica subscribed to.
    source: usize,
    /// When the last plan arrived (or the subscription was last renewed).
    last_plan: Time,
    /// When the last epoch was applied (or the peers were last greeted).
    last_progress: Time,
    /// When the next stall check is due.
    next_check: Option<Time>,
    /// Since when peers' reads have been arriving for epochs past every plan held.
    behind_since: Option<Time>,
}

impl Feed {
    /// A feed from `sources`, starting at the one `spread` picks (its remainder by their
    /// number) so that the executors of a cluster spread over the replicas.
    pub(crate) fn new(spread: usize, sources: Vec<NodeId>) -> Feed {
        let source = match sources.len() {
            0 => 0,
            n => spread % n,
        };
        Feed {
            sources,
            source,
            last_plan: Time::ZERO,
            last_progress: Time::ZERO,
            next_check: None,
            behind_since: None,
        }
    }

    /// Every replica that serves plans.
    pub(crate) fn sources(&self) -> &[NodeId] {
        &self.sources
    }

    /// The replica subscribed to, if plans come from replicas at all.
    pub(crate) fn source(&self) -> Option<NodeId> {
        self.sources.get(self.source).copied()
    }

    /// The executor (re)started at `now`: the timers run from here.
    pub(crate) fn start(&mut self, now: Time) {
        self.last_plan = now;
        self.last_progress = now;
        if !self.sources.is_empty() {
            self.next_check = Some(now.plus_us(STALL_US));
        }
    }

    /// A plan arrived.
    pub(crate) fn plan_arrived(&mut self, now: Time) {
        self.last_plan = now;
    }

    /// Whether the plans held cannot be applied for want of plans the source is not
    /// sending: peers' reads wait for epochs past every plan held (the source lags the
    /// replicas the peers follow), or later plans wait for a lost one; as of `now`.
    pub(crate) fn note_behind(&mut self, now: Time, behind: bool) {
        match (behind, self.behind_since) {
            (false, _) => self.behind_since = None,
            (true, None) => self.behind_since = Some(now),
            (true, Some(_)) => {}
        }
    }

    /// An epoch was applied.
    pub(crate) fn progressed(&mut self, now: Time) {
        self.last_progress = now;
    }

    /// When the next stall check is due.
    pub(crate) fn deadline(&self) -> Option<Time> {
        self.next_check
    }

    /// Checks for stalls at `now`, if a check is due; `waiting` says whether the executor
    /// holds work it cannot finish yet.
    pub(crate) fn check(&mut self, now: Time, waiting: bool) -> StallActions {
        let mut actions = StallActions::default();
        let Some(due) = self.next_check else {
            return actions;
        };
        if now < due {
            return actions;
        }
        let lagging = self
            .behind_since
            .is_some_and(|since| now.since_us(since) >= STALL_US);
        if now.since_us(self.last_plan) >= STALL_US || lagging {
            self.source = (self.source + 1) % self.sources.len();
            actions.resubscribe = self.source();
            self.last_plan = now;
            self.behind_since = None;
        }
        if waiting && now.since_us(self.last_progress) >= STALL_US {
            actions.hello = true;
            self.last_progress = now;
        }
        self.next_check = Some(now.plus_us(STALL_US));
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_source_is_replaced_round_robin() {
        let mut feed = Feed::new(1, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(feed.source(), Some(NodeId(2)));
        feed.start(Time(0));
        assert_eq!(feed.deadline(), Some(Time(STALL_US)));
        // Plans keep coming: nothing to do.
        feed.plan_arrived(Time(STALL_US - 1));
        assert_eq!(feed.check(Time(STALL_US), false), StallActions::default());
        // Then silence.
        let at = Time(3 * STALL_US);
        let actions = feed.check(at, false);
        assert_eq!(actions.resubscribe, Some(NodeId(3)));
        assert!(!actions.hello);
        let later = Time(5 * STALL_US);
        assert_eq!(feed.check(later, false).resubscribe, Some(NodeId(1)));
    }

    #[test]
    fn a_source_that_lags_the_peers_is_replaced() {
        let mut feed = Feed::new(0, vec![NodeId(1), NodeId(2)]);
        feed.start(Time(0));
        // Plans keep coming, but peers' reads are ahead of them the whole time.
        feed.note_behind(Time(10), true);
        feed.plan_arrived(Time(STALL_US));
        assert_eq!(feed.check(Time(STALL_US), true).resubscribe, None);
        feed.note_behind(Time(STALL_US + 5), true);
        feed.plan_arrived(Time(2 * STALL_US));
        let actions = feed.check(Time(2 * STALL_US), true);
        assert_eq!(actions.resubscribe, Some(NodeId(2)));
        // Caught up again: nothing to do while plans come.
        feed.note_behind(Time(2 * STALL_US + 1), false);
        feed.plan_arrived(Time(3 * STALL_US));
        assert_eq!(feed.check(Time(3 * STALL_US), true).resubscribe, None);
    }

    #[test]
    fn waiting_work_without_progress_greets_the_peers_again() {
        let mut feed = Feed::new(0, vec![NodeId(1)]);
        feed.start(Time(0));
        feed.plan_arrived(Time(STALL_US));
        feed.progressed(Time(STALL_US));
        assert!(!feed.check(Time(STALL_US + 1), true).hello);
        let at = Time(2 * STALL_US + 10);
        let actions = feed.check(at, true);
        assert!(actions.hello);
        // Idle executors have nothing to wait for.
        assert!(!feed.check(Time(4 * STALL_US), false).hello);
    }

    #[test]
    fn a_directly_fed_executor_has_no_timers() {
        let mut feed = Feed::new(0, Vec::new());
        feed.start(Time(0));
        assert_eq!(feed.deadline(), None);
        assert_eq!(
            feed.check(Time(10 * STALL_US), true),
            StallActions::default()
        );
    }
}
