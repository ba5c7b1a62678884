//! The simulated clients: each runs the client library's session machine for one call at a time.

use super::*;
use detflow_protocol::CallId;

impl World {
    /// Sends the client's next call: the rest of its logical transaction, or (while the
    /// run wants more) the first call of a new one. `txns` counts logical transactions.
    pub(super) fn on_client_wake(&mut self, c: u32) {
        if self.clients[c as usize].pending.is_some() {
            return;
        }
        let request = match self.clients[c as usize].follow.take() {
            Some(next) => next,
            None if self.issued >= self.config.txns => return,
            None => {
                self.issued += 1;
                self.workload.next_call(&mut self.workload_rng)
            }
        };
        let (procedure, args) = if self.rng.chance(self.timing.malformed_chance) {
            // Bad input a real client may send: it must be refused, never ordered.
            if self.rng.chance(0.5) {
                ("no.such.procedure".to_owned(), request.args.clone())
            } else {
                (request.procedure.to_owned(), vec![0xc1])
            }
        } else {
            (request.procedure.to_owned(), request.args.clone())
        };
        let node = &mut self.clients[c as usize];
        let pending = node.session.call(procedure.clone(), args.clone());
        self.calls.insert(
            CallId::new(node.session.client(), pending.seq()),
            CallRecord {
                procedure,
                args,
                replies: Vec::new(),
                attempts: 0,
                issued: self.now,
            },
        );
        node.request = Some(request);
        node.pending = Some(pending);
        self.client_input(c, session::Input::Start);
    }

    /// Runs one input through the client's call in flight and performs its outputs.
    pub(super) fn client_input(&mut self, c: u32, input: session::Input) {
        let now = self.now;
        let node = &mut self.clients[c as usize];
        let Some(pending) = node.pending.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        pending.handle(now, input, &mut out);
        let deadline = pending.next_deadline();
        for effect in out {
            match effect {
                session::Output::Send {
                    gateway,
                    attempt,
                    call,
                } => {
                    if let Some(record) = self.calls.get_mut(&CallId::new(call.client, call.seq)) {
                        record.attempts = attempt;
                    }
                    self.send(Addr::Client(c), Addr::Gateway(gateway), Msg::Call(call));
                }
                session::Output::Done(reply) => self.on_call_done(c, reply),
                session::Output::GaveUp { attempts, last } => {
                    unreachable!("a simulated client gave up after {attempts} attempts: {last}")
                }
            }
        }
        let node = &mut self.clients[c as usize];
        if node.pending.is_some()
            && let Some(at) = node.timer.arm(deadline, now)
        {
            self.schedule(at, Event::ClientTimer(c));
        }
    }

    pub(super) fn on_client_timer(&mut self, c: u32) {
        let node = &mut self.clients[c as usize];
        if node.timer.fire(self.now) {
            self.client_input(c, session::Input::Tick);
        }
    }

    pub(super) fn on_reply(
        &mut self,
        c: u32,
        from: Addr,
        client: ClientId,
        seq: RequestSeq,
        reply: Reply,
    ) {
        let node = &self.clients[c as usize];
        assert_eq!(
            client,
            node.session.client(),
            "reply delivered to the wrong client"
        );
        if reply != Reply::Unavailable {
            // Every final reply is recorded, late duplicates too: they must agree.
            self.calls
                .entry(CallId::new(client, seq))
                .or_insert_with(|| CallRecord {
                    procedure: String::new(),
                    args: Vec::new(),
                    replies: Vec::new(),
                    attempts: 0,
                    issued: self.now,
                })
                .replies
                .push(reply.clone());
        }
        // The client library reads each attempt's answer on that attempt's own stream, so
        // an `Unavailable` for an attempt it abandoned never reaches the session; a final
        // answer on any of them would be the call's (the simulator delivers those).
        let current = node.pending.as_ref().filter(|p| p.seq() == seq);
        let stale = reply == Reply::Unavailable
            && current.and_then(Pending::gateway).map(Addr::Gateway) != Some(from);
        if current.is_some() && !stale {
            self.client_input(c, session::Input::Reply(reply));
        }
    }

    /// The client's call ended: the workload decides whether the logical transaction goes
    /// on.
    pub(super) fn on_call_done(&mut self, c: u32, reply: Reply) {
        let node = &mut self.clients[c as usize];
        let pending = node.pending.take().expect("a call ends while in flight");
        node.session.finished(&pending);
        let call = CallId::new(node.session.client(), pending.seq());
        if let Some(issued) = self.calls.get(&call).map(|r| r.issued) {
            self.check_one_down_call(call, issued);
        }
        if let Reply::Done { position, .. } = &reply {
            self.last_done_epoch = self.last_done_epoch.max(position.epoch);
        }
        let node = &mut self.clients[c as usize];
        node.timer = Timer::default();
        let answer = match &reply {
            Reply::Done {
                outcome: detflow_protocol::Outcome::Committed(out),
                ..
            } => Answer::Committed(out),
            Reply::Done {
                outcome: detflow_protocol::Outcome::Aborted(reason),
                ..
            } => Answer::Aborted(reason),
            _ => Answer::Failed,
        };
        let request = node
            .request
            .take()
            .expect("a call in flight has its request");
        let follow = self.workload.follow_up(&request, answer);
        self.last_answer = self.now;
        if let Some(next) = follow {
            self.clients[c as usize].follow = Some(next);
            self.schedule(self.now, Event::ClientWake(c));
            return;
        }
        self.answered += 1;
        let think = if self.timing.think_max_us == 0 {
            0
        } else {
            self.rng.below(self.timing.think_max_us)
        };
        self.schedule(self.now.plus_us(think), Event::ClientWake(c));
    }
}
