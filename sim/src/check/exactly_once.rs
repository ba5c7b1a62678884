//! Every call answered exactly once; every ordered call in the log exactly once, at the
//! position its reply names; refused calls never in the log.

use crate::world::Outcome;
use detflow_protocol::message::Reply;
use detflow_protocol::{ClientId, Position, RequestSeq};
use std::collections::BTreeMap;

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    let mut in_log: BTreeMap<(ClientId, RequestSeq), Vec<Position>> = BTreeMap::new();
    for batch in &run.log {
        for (i, txn) in batch.txns.iter().enumerate() {
            in_log
                .entry((txn.client, txn.seq))
                .or_default()
                .push(Position::new(batch.epoch, i as u32));
        }
    }
    for ((client, seq), record) in &run.calls {
        let call = format!(
            "call (client {client}, seq {seq}) to {:?}",
            record.procedure
        );
        let positions = in_log.remove(&(*client, *seq)).unwrap_or_default();
        match &record.replies[..] {
            [] => failures.push(format!("{call} was never answered")),
            [Reply::Done { position, .. }] => {
                if positions != [*position] {
                    failures.push(format!(
                        "{call} was answered for position {position} but the log holds it at {positions:?}"
                    ));
                }
            }
            [Reply::Rejected(reason)] => {
                if !positions.is_empty() {
                    failures.push(format!(
                        "{call} was refused ({reason}) yet ordered at {positions:?}"
                    ));
                }
            }
            replies => failures.push(format!("{call} was answered {} times", replies.len())),
        }
        if record.replies.is_empty() && positions.len() > 1 {
            failures.push(format!("{call} is in the log {} times", positions.len()));
        }
    }
    for ((client, seq), positions) in in_log {
        failures.push(format!(
            "the log holds (client {client}, seq {seq}) at {positions:?}, which no client called"
        ));
    }
    failures
}
