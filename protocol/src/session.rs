//! A client session, sans IO: how calls are numbered, which gateway each attempt goes to,
//! and when a call is tried again. The client library and the simulator's clients both
//! run it, so the retry logic the simulator proves is the one users get.
//!
//! ```text
//!  Session::call ──▶ Pending ──Start──▶ Send { gateway, attempt, call }
//!                            ◀─Reply(Done | Rejected)──▶ Done(reply)
//!                            ◀─Reply(Unavailable) | Failed──▶ (back off, jittered)
//!                            ◀─Tick──▶ Send (next gateway)  or  GaveUp
//! ```
//!
//! A call keeps its sequence number through every retry: the cluster executes a call at
//! most once and answers a retry with the original result, so a call that ends `Done`
//! executed exactly once. Each attempt goes to the next gateway (round robin from a
//! starting point that differs per call); an attempt fails when its gateway answers
//! `Unavailable`, when the transport fails, or when no answer comes within the attempt
//! timeout. After a failure the call waits a back-off drawn from [b/2, 3b/2) with `b`
//! doubling up to its maximum, so that clients that failed together do not retry in step.

use crate::ids::{ClientId, RequestSeq, Time};
use crate::machine::Machine;
use crate::message::{Call, Reply};
use crate::rng::DetRng;

/// How a session retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long one attempt may take, in microseconds.
    pub attempt_timeout_us: u64,
    /// The first back-off, in microseconds; it doubles up to `backoff_max_us`.
    pub backoff_us: u64,
    /// The longest back-off, in microseconds.
    pub backoff_max_us: u64,
    /// Attempts before giving up.
    pub attempts_max: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            // Short enough that a call stuck at a gateway whose node died or froze moves
            // on within a second; a retry costs a look-up in the log's de-duplication.
            attempt_timeout_us: 1_000_000,
            backoff_us: 20_000,
            backoff_max_us: 1_000_000,
            attempts_max: 60,
        }
    }
}

/// Planted bugs, for proving that the simulator's checkers bite. Never set in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionBugs {
    /// Number the call after one that needed a retry with that call's number again.
    pub reuse_seq_after_retry: bool,
}

/// The shortest attempt timeout the session adapts down to, in microseconds.
pub const ATTEMPT_TIMEOUT_FLOOR_US: u64 = 250_000;

/// How many times the typical latency a session waits for an attempt before it tries the
/// next gateway (capped by [`RetryPolicy::attempt_timeout_us`], floored by
/// [`ATTEMPT_TIMEOUT_FLOOR_US`]).
pub const ATTEMPT_TIMEOUT_LATENCIES: u64 = 8;

/// How long a gateway an attempt timed out at or failed with is passed over by new calls,
/// in microseconds: long enough to ride out a node's restart, short enough to come back to
/// it soon after.
pub const GATEWAY_SUSPECT_US: u64 = 5_000_000;

/// One client session: numbers calls and spreads them over the gateways.
///
/// A session learns from its calls: it passes over a gateway whose attempt timed out or
/// failed for [`GATEWAY_SUSPECT_US`], and it waits for an attempt a few times its typical
/// latency (never less than [`ATTEMPT_TIMEOUT_FLOOR_US`], never more than the policy's
/// timeout), so that a call stuck at a dead or frozen gateway moves on in a fraction of a
/// second. A retry is always safe: the call keeps its number.
#[derive(Debug)]
pub struct Session {
    client: ClientId,
    gateways: u32,
    next_gateway: u32,
    next_seq: u64,
    policy: RetryPolicy,
    rng: DetRng,
    /// Per gateway, until when new calls pass over it.
    suspect_until: Vec<Time>,
    /// The latest time the session heard of (the end of its last call).
    clock: Time,
    /// A moving average of the latency of calls answered at their first attempt.
    latency_us: Option<u64>,
    /// The number and attempts of the last call started, for the planted bug.
    last: Option<(RequestSeq, u32)>,
    bugs: SessionBugs,
}

impl Session {
    /// A session over `gateways` gateways (numbered from 0), drawing its starting gateway
    /// and its jitter from `rng`. Calls are numbered from 1.
    ///
    /// # Panics
    ///
    /// If there are no gateways.
    pub fn new(client: ClientId, gateways: u32, policy: RetryPolicy, mut rng: DetRng) -> Session {
        assert!(gateways > 0, "a session needs a gateway");
        let next_gateway = rng.below(u64::from(gateways)) as u32;
        Session {
            client,
            gateways,
            next_gateway,
            next_seq: 1,
            policy,
            rng,
            suspect_until: vec![Time::ZERO; gateways as usize],
            clock: Time::ZERO,
            latency_us: None,
            last: None,
            bugs: SessionBugs::default(),
        }
    }

    /// The session id its calls carry.
    pub fn client(&self) -> ClientId {
        self.client
    }

    /// Sets the session id (a gateway assigns it when the session opens).
    pub fn set_client(&mut self, client: ClientId) {
        self.client = client;
    }

    /// Plants bugs (tests of the simulator's checkers only).
    pub fn set_bugs(&mut self, bugs: SessionBugs) {
        self.bugs = bugs;
    }

    /// A new call of `procedure` with `args`; drive it with [`Input::Start`] and on.
    pub fn call(&mut self, procedure: String, args: Vec<u8>) -> Pending {
        let seq = match self.last {
            Some((seq, attempts)) if self.bugs.reuse_seq_after_retry && attempts > 1 => seq,
            _ => {
                let seq = RequestSeq(self.next_seq);
                self.next_seq += 1;
                seq
            }
        };
        // The next gateway not under suspicion (any, if all are).
        let first_gateway = (0..self.gateways)
            .map(|i| (self.next_gateway + i) % self.gateways)
            .find(|g| self.suspect_until[*g as usize] <= self.clock)
            .unwrap_or(self.next_gateway);
        self.next_gateway = (first_gateway + 1) % self.gateways;
        let cap = self.policy.attempt_timeout_us;
        let attempt_timeout_us = match self.latency_us {
            Some(latency) => latency
                .saturating_mul(ATTEMPT_TIMEOUT_LATENCIES)
                .max(ATTEMPT_TIMEOUT_FLOOR_US)
                .min(cap),
            None => cap,
        };
        Pending {
            call: Call {
                client: self.client,
                seq,
                procedure,
                args,
            },
            gateways: self.gateways,
            first_gateway,
            attempt: 0,
            state: State::Idle,
            backoff_us: self.policy.backoff_us,
            policy: self.policy,
            rng: self.rng.fork(seq.0),
            last_error: String::from("no attempt made"),
            attempt_timeout_us,
            started: None,
            ended: None,
            stalls: Vec::new(),
            current: None,
        }
    }

    /// A call ended (however it did): the session remembers how many attempts it took,
    /// which gateways did not answer, and how long a call takes.
    pub fn finished(&mut self, pending: &Pending) {
        self.last = Some((pending.call.seq, pending.attempt));
        for (gateway, at) in &pending.stalls {
            let until = at.plus_us(GATEWAY_SUSPECT_US);
            let suspect = &mut self.suspect_until[*gateway as usize];
            *suspect = (*suspect).max(until);
            self.clock = self.clock.max(*at);
        }
        if let (Some(started), Some(ended)) = (pending.started, pending.ended) {
            self.clock = self.clock.max(ended);
            if pending.attempt == 1 {
                let sample = ended.since_us(started);
                self.latency_us = Some(match self.latency_us {
                    Some(average) => (average * 7 + sample) / 8,
                    None => sample,
                });
            }
        }
    }
}

/// An input to a call in progress.
#[derive(Clone, Debug)]
pub enum Input {
    /// Make the first attempt.
    Start,
    /// A gateway answered the call (any of its attempts).
    Reply(Reply),
    /// The attempt in flight failed in transport (no connection, a reset stream, ...).
    Failed(String),
    /// [`Machine::next_deadline`] passed.
    Tick,
}

/// An effect of a call in progress.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send the call to gateway number `gateway`; earlier attempts may be abandoned.
    Send {
        /// The gateway, counting from 0.
        gateway: u32,
        /// The attempt, counting from 1.
        attempt: u32,
        /// The call, always with the same sequence number.
        call: Call,
    },
    /// The call ended with `reply`: `Done` or `Rejected`.
    Done(Reply),
    /// No gateway could take the call within the attempt budget; it may or may not
    /// execute later (retrying it with the same session and number is safe).
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not started.
    Idle,
    /// An attempt is in flight until the deadline.
    Waiting(Time),
    /// Backing off until the deadline.
    BackingOff(Time),
    /// Ended.
    Over,
}

/// One call of a session, from its first attempt to its answer.
#[derive(Debug)]
pub struct Pending {
    call: Call,
    gateways: u32,
    first_gateway: u32,
    attempt: u32,
    state: State,
    backoff_us: u64,
    policy: RetryPolicy,
    rng: DetRng,
    last_error: String,
    /// How long each attempt may take (see [`Session`]).
    attempt_timeout_us: u64,
    /// When the first attempt was made.
    started: Option<Time>,
    /// When the call ended.
    ended: Option<Time>,
    /// The gateways whose attempt timed out or failed in transport, and when.
    stalls: Vec<(u32, Time)>,
    /// The gateway of the latest attempt.
    current: Option<u32>,
}

impl Pending {
    /// The call's number.
    pub fn seq(&self) -> RequestSeq {
        self.call.seq
    }

    /// The call as it is sent.
    pub fn call(&self) -> &Call {
        &self.call
    }

    /// Sets the session id the call carries (once a gateway opened the session).
    pub fn set_client(&mut self, client: ClientId) {
        self.call.client = client;
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The gateway of the latest attempt, once one was made.
    pub fn gateway(&self) -> Option<u32> {
        self.current
    }

    /// The gateway attempt number `attempt` (from 0) goes to: round robin from the first.
    fn gateway_of(&self, attempt: u32) -> u32 {
        (self.first_gateway + attempt % self.gateways) % self.gateways
    }

    /// Whether the call ended.
    pub fn is_over(&self) -> bool {
        self.state == State::Over
    }

    fn send(&mut self, now: Time, out: &mut Vec<Output>) {
        if self.attempt >= self.policy.attempts_max {
            self.state = State::Over;
            out.push(Output::GaveUp {
                attempts: self.attempt,
                last: self.last_error.clone(),
            });
            return;
        }
        // Round robin from the first gateway, passing over those that did not answer an
        // earlier attempt of this call (unless every one failed so): retrying a gateway
        // whose node died costs a whole attempt timeout each time.
        let stalled = |g: u32| self.stalls.iter().any(|(s, _)| *s == g);
        let gateway = (0..self.gateways)
            .map(|i| self.gateway_of(self.attempt + i))
            .find(|g| !stalled(*g))
            .unwrap_or_else(|| self.gateway_of(self.attempt));
        self.attempt += 1;
        self.current = Some(gateway);
        self.state = State::Waiting(now.plus_us(self.attempt_timeout_us));
        out.push(Output::Send {
            gateway,
            attempt: self.attempt,
            call: self.call.clone(),
        });
    }

    /// The gateway of the attempt in flight did not answer at all: the session will pass
    /// over it for a while.
    fn stall(&mut self, now: Time) {
        if let Some(gateway) = self.gateway() {
            self.stalls.push((gateway, now));
        }
    }

    /// The gateway of the attempt in flight failed (no answer, or no connection): the next
    /// attempt goes to another gateway after the first back-off only. Backing off longer
    /// helps a cluster that answered "not now", not one whose gateway is gone.
    fn moved_on(&mut self, now: Time, why: String) {
        self.last_error = why;
        let b = self.policy.backoff_us.max(1);
        let wait = b / 2 + self.rng.below(b);
        self.state = State::BackingOff(now.plus_us(wait));
    }

    /// The attempt in flight failed: wait a jittered back-off before the next one.
    fn failed(&mut self, now: Time, why: String) {
        self.last_error = why;
        let b = self.backoff_us.max(1);
        let wait = b / 2 + self.rng.below(b);
        self.backoff_us = (b * 2).min(self.policy.backoff_max_us.max(1));
        self.state = State::BackingOff(now.plus_us(wait));
    }
}

impl Machine for Pending {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Output>) {
        match (input, self.state) {
            (_, State::Over) => {}
            (Input::Start, State::Idle) => {
                self.started = Some(now);
                self.send(now, out);
            }
            (Input::Start, _) => {}
            // A result from any attempt is the call's result: the cluster ran it once.
            (Input::Reply(reply @ (Reply::Done { .. } | Reply::Rejected(_))), _) => {
                self.state = State::Over;
                self.ended = Some(now);
                out.push(Output::Done(reply));
            }
            (Input::Reply(Reply::Unavailable), State::Waiting(_)) => {
                self.failed(now, format!("attempt {} unavailable", self.attempt));
            }
            (Input::Failed(why), State::Waiting(_)) => {
                self.stall(now);
                self.moved_on(now, why);
            }
            // An answer to an attempt already given up on.
            (Input::Reply(Reply::Unavailable) | Input::Failed(_), _) => {}
            (Input::Tick, State::Waiting(until)) if now >= until => {
                self.stall(now);
                self.moved_on(now, format!("attempt {} timed out", self.attempt));
            }
            (Input::Tick, State::BackingOff(until)) if now >= until => self.send(now, out),
            (Input::Tick, _) => {}
        }
    }

    fn next_deadline(&self) -> Option<Time> {
        match self.state {
            State::Waiting(t) | State::BackingOff(t) => Some(t),
            State::Idle | State::Over => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Position;
    use crate::txn::Outcome;

    fn session(gateways: u32) -> Session {
        Session::new(
            ClientId(7),
            gateways,
            RetryPolicy::default(),
            DetRng::new(1),
        )
    }

    fn sends(out: &[Output]) -> Vec<(u32, u32, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send {
                    gateway,
                    attempt,
                    call,
                } => Some((*gateway, *attempt, call.seq.0)),
                _ => None,
            })
            .collect()
    }

    fn done() -> Reply {
        Reply::Done {
            position: Position::default(),
            outcome: Outcome::Committed(Vec::new()),
        }
    }

    #[test]
    fn retries_keep_the_number_and_move_to_the_next_gateway() {
        let mut s = session(3);
        let mut call = s.call("p".into(), vec![1]);
        let mut out = Vec::new();
        call.handle(Time(0), Input::Start, &mut out);
        let [(g1, 1, 1)] = sends(&out)[..] else {
            panic!("{out:?}")
        };
        out.clear();
        call.handle(Time(10), Input::Reply(Reply::Unavailable), &mut out);
        assert!(out.is_empty(), "backs off first");
        let wake = call.next_deadline().expect("a back-off");
        assert!((Time(10).plus_us(10_000)..Time(10).plus_us(30_000)).contains(&wake));
        call.handle(wake, Input::Tick, &mut out);
        assert_eq!(sends(&out), [((g1 + 1) % 3, 2, 1)]);
        out.clear();
        // No answer within the attempt timeout: the next gateway, after a back-off.
        let timeout = call.next_deadline().expect("an attempt deadline");
        call.handle(timeout, Input::Tick, &mut out);
        let wake = call.next_deadline().expect("a back-off");
        call.handle(wake, Input::Tick, &mut out);
        assert_eq!(sends(&out), [((g1 + 2) % 3, 3, 1)]);
        out.clear();
        call.handle(wake, Input::Reply(done()), &mut out);
        assert_eq!(out, [Output::Done(done())]);
        assert!(call.is_over() && call.next_deadline().is_none());
        s.finished(&call);
        // The next call has the next number and starts at the next gateway, passing over
        // the one that timed out.
        let mut next = s.call("p".into(), vec![]);
        next.handle(wake, Input::Start, &mut out);
        assert_eq!(sends(&out[1..]), [((g1 + 2) % 3, 1, 2)]);
    }

    #[test]
    fn a_session_waits_a_few_latencies_and_avoids_a_silent_gateway_for_a_while() {
        let mut s = session(2);
        let policy = RetryPolicy::default();
        // A first call answered in 10 ms at its first attempt.
        let mut call = s.call("p".into(), vec![]);
        let mut out = Vec::new();
        call.handle(Time(0), Input::Start, &mut out);
        let [(first, 1, _)] = sends(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            call.next_deadline(),
            Some(Time(policy.attempt_timeout_us)),
            "no latency known yet: the policy's timeout"
        );
        call.handle(Time(10_000), Input::Reply(done()), &mut out);
        s.finished(&call);
        // The next waits the floor (8 × 10 ms is less), at the other gateway, which is
        // silent: the call moves on.
        let mut call = s.call("p".into(), vec![]);
        out.clear();
        call.handle(Time(20_000), Input::Start, &mut out);
        let [(silent, 1, _)] = sends(&out)[..] else {
            panic!("{out:?}")
        };
        assert_ne!(silent, first);
        let timeout = Time(20_000).plus_us(ATTEMPT_TIMEOUT_FLOOR_US);
        assert_eq!(call.next_deadline(), Some(timeout));
        call.handle(timeout, Input::Tick, &mut out);
        let wake = call.next_deadline().expect("a back-off");
        call.handle(wake, Input::Tick, &mut out);
        call.handle(wake, Input::Reply(done()), &mut out);
        s.finished(&call);
        // New calls pass over the silent gateway until its suspicion ends.
        for _ in 0..3 {
            let mut call = s.call("p".into(), vec![]);
            out.clear();
            call.handle(wake, Input::Start, &mut out);
            assert_eq!(sends(&out)[0].0, first);
            call.handle(wake, Input::Reply(done()), &mut out);
            s.finished(&call);
        }
        let later = timeout.plus_us(GATEWAY_SUSPECT_US + 1);
        let mut call = s.call("p".into(), vec![]);
        call.handle(later, Input::Start, &mut out);
        call.handle(later, Input::Reply(done()), &mut out);
        s.finished(&call);
        let mut call = s.call("p".into(), vec![]);
        out.clear();
        call.handle(later, Input::Start, &mut out);
        assert_eq!(sends(&out)[0].0, silent, "trusted again");
    }

    #[test]
    fn a_late_result_of_an_earlier_attempt_ends_the_call() {
        let mut call = session(2).call("p".into(), vec![]);
        let mut out = Vec::new();
        call.handle(Time(0), Input::Start, &mut out);
        call.handle(Time(1), Input::Failed("reset".into()), &mut out);
        out.clear();
        call.handle(Time(2), Input::Reply(done()), &mut out);
        assert_eq!(out, [Output::Done(done())]);
        // Anything after the end is ignored.
        call.handle(Time(3), Input::Reply(Reply::Unavailable), &mut out);
        call.handle(Time(u64::MAX), Input::Tick, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_call_gives_up_after_its_attempts() {
        let policy = RetryPolicy {
            attempts_max: 2,
            ..RetryPolicy::default()
        };
        let mut call =
            Session::new(ClientId(1), 1, policy, DetRng::new(3)).call("p".into(), vec![]);
        let mut out = Vec::new();
        call.handle(Time(0), Input::Start, &mut out);
        let mut now = Time(0);
        while let Some(t) = call.next_deadline() {
            now = t;
            call.handle(now, Input::Tick, &mut out);
        }
        assert_eq!(sends(&out).len(), 2);
        assert!(matches!(
            out.last(),
            Some(Output::GaveUp { attempts: 2, last }) if last.contains("timed out")
        ));
        assert!(now.0 >= 2 * policy.attempt_timeout_us);
    }

    #[test]
    fn back_offs_double_up_to_the_maximum() {
        let mut call = session(1).call("p".into(), vec![]);
        let mut out = Vec::new();
        call.handle(Time(0), Input::Start, &mut out);
        let mut now = Time(0);
        let mut waits = Vec::new();
        for _ in 0..10 {
            call.handle(now, Input::Reply(Reply::Unavailable), &mut out);
            let wake = call.next_deadline().expect("a back-off");
            waits.push(wake.since_us(now));
            now = wake;
            call.handle(now, Input::Tick, &mut out);
        }
        let policy = RetryPolicy::default();
        assert!(waits[0] < policy.backoff_us * 3 / 2);
        assert!(waits.iter().all(|w| *w < policy.backoff_max_us * 3 / 2));
        assert!(waits[9] >= policy.backoff_max_us / 2);
    }

    #[test]
    fn the_planted_bug_reuses_a_number_after_a_retry() {
        let mut s = session(2);
        s.set_bugs(SessionBugs {
            reuse_seq_after_retry: true,
        });
        let mut first = s.call("p".into(), vec![]);
        let mut out = Vec::new();
        first.handle(Time(0), Input::Start, &mut out);
        first.handle(Time(1), Input::Reply(done()), &mut out);
        s.finished(&first);
        let mut second = s.call("p".into(), vec![]);
        assert_eq!(second.seq(), RequestSeq(2), "no retry, no reuse");
        second.handle(Time(2), Input::Start, &mut out);
        second.handle(Time(3), Input::Failed("reset".into()), &mut out);
        let wake = second.next_deadline().unwrap();
        second.handle(wake, Input::Tick, &mut out);
        second.handle(wake, Input::Reply(done()), &mut out);
        s.finished(&second);
        assert_eq!(s.call("p".into(), vec![]).seq(), RequestSeq(2));
    }
}
