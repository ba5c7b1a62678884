//! Every call answered exactly once; every ordered call in the log exactly once, at the
//! position its reply names; refused calls never in the log.
//!
//! Deliveries of letters are the executors' own calls, under their outboxes' sessions: one
//! may be ordered more than once (a retry whose first attempt got through a leader change),
//! and consumes its letters only the first time. The letters checker judges them.

use crate::world::Outcome;
use detflow_protocol::CallId;
use detflow_protocol::Position;
use detflow_protocol::mailbox::is_mailbox_client;
use detflow_protocol::message::Reply;
use std::collections::BTreeMap;

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    let mut in_log: BTreeMap<CallId, Vec<Position>> = BTreeMap::new();
    for batch in &run.log {
        for (i, txn) in batch.txns.iter().enumerate() {
            if is_mailbox_client(txn.client) {
                continue;
            }
            in_log
                .entry(txn.call_id())
                .or_default()
                .push(Position::new(batch.epoch, i as u32));
        }
    }
    for (id, record) in &run.calls {
        let call = format!(
            "call (client {}, seq {}) to {:?}",
            id.client, id.seq, record.procedure
        );
        let positions = in_log.remove(id).unwrap_or_default();
        if positions.len() > 1 {
            failures.push(format!(
                "{call} is in the log {} times, at {positions:?}: it executed more than once",
                positions.len()
            ));
        }
        // A retried call may be answered more than once; every answer must be the same.
        if let Some(first) = record.replies.first()
            && let Some(other) = record.replies.iter().find(|r| *r != first)
        {
            failures.push(format!(
                "{call} got differing answers: {first:?} and {other:?}"
            ));
        }
        match record.replies.first() {
            // Unanswered calls are the liveness checker's; one never answered may be in the
            // log at most once (checked above).
            Some(Reply::Done { position, .. }) if positions != [*position] => {
                failures.push(format!(
                    "{call} was answered for position {position} but the log holds it at {positions:?}"
                ));
            }
            Some(Reply::Rejected(reason)) if !positions.is_empty() => {
                failures.push(format!(
                    "{call} was refused ({reason}) yet ordered at {positions:?}"
                ));
            }
            Some(Reply::Unavailable) => failures.push(format!("{call} ended Unavailable")),
            None | Some(Reply::Done { .. }) | Some(Reply::Rejected(_)) => {}
        }
    }
    for (CallId { client, seq }, positions) in in_log {
        failures.push(format!(
            "the log holds (client {client}, seq {seq}) at {positions:?}, which no client called"
        ));
    }
    failures
}
