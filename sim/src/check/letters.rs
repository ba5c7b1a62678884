//! Letters: every letter a committed transaction sent is consumed exactly once, after it
//! was sent, and in the order its outbox numbered it (so in order per sender partition,
//! and per sender partition and receiver service).
//!
//! The judgement rests on the reference's replay of the log: which transaction sent which
//! letter to which outbox under which number, and which delivery consumed which. Serial
//! equivalence holds the system to that replay, so what the replay shows is what happened;
//! a delivery that consumes a letter twice or out of order is repeated by the replay (it
//! runs the same delivery code) and caught here, and a letter nobody asked to deliver is
//! caught as never consumed.

use crate::check::serial::Reference;
use crate::world::Outcome;
use detflow_protocol::PartitionId;
use std::collections::BTreeMap;

pub(crate) fn check(run: &Outcome, reference: &Reference) -> Vec<String> {
    let mut failures = Vec::new();
    // The last number consumed from each outbox.
    let mut consumed: BTreeMap<PartitionId, u64> = BTreeMap::new();
    for &(position, from, seq) in &reference.letters_consumed {
        let last = consumed.entry(from).or_insert(0);
        let Some((sent_at, letter)) = reference.letters_sent.get(&(from, seq)) else {
            failures.push(format!(
                "the delivery at {position} consumed letter {seq} of partition {from}, which no transaction sent"
            ));
            continue;
        };
        if seq <= *last {
            failures.push(format!(
                "letter {seq} of partition {from} ({}) consumed again at {position}",
                letter.procedure
            ));
            continue;
        }
        if seq != *last + 1 {
            failures.push(format!(
                "letter {seq} of partition {from} ({}) consumed at {position} before letter {}",
                letter.procedure,
                *last + 1
            ));
        }
        if position.epoch <= sent_at.epoch {
            failures.push(format!(
                "letter {seq} of partition {from} sent at {sent_at} was consumed at {position}, not in a later epoch"
            ));
        }
        *last = seq;
    }
    let lost: Vec<_> = reference
        .letters_sent
        .iter()
        .filter(|((from, seq), _)| consumed.get(from).is_none_or(|last| seq > last))
        .collect();
    if let Some(((from, seq), (sent_at, letter))) = lost.first() {
        failures.push(format!(
            "{} letter(s) never consumed, the first letter {seq} of partition {from} ({}) sent at {sent_at}",
            lost.len(),
            letter.procedure
        ));
    }
    for (replica, pending) in &run.letters_pending {
        if *pending > 0 {
            failures.push(format!(
                "{replica} still counts {pending} letter(s) to deliver at the end"
            ));
        }
    }
    failures
}
