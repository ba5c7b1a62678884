//! Raft's safety properties, checked after every step of a replica while a run goes (the
//! final logs alone cannot show a second leader that came and went):
//!
//! - election safety: at most one leader per term;
//! - log matching: two logs holding an entry of the same epoch and term hold the same
//!   batch there and the same entries before it. Checked as its inductive form, entry by
//!   entry as logs change: each (epoch, term) has one batch and one term before it, so
//!   a step costs what it changed, not the length of the log;
//! - leader completeness: a replica that becomes leader of term T holds every batch any
//!   replica reported committed in a term before T. (A leader of an older term may still
//!   win its election after a newer leader committed more: a vote granted in term T can
//!   arrive late, and the candidate, never having heard of term T + 1, rightly leads T. It
//!   can commit nothing: every majority holds a replica of a later term.) A batch's commit
//!   term is the lowest term of a replica reporting it, which is the committing leader's;
//! - each replica incarnation reports committed batches in epoch order, each once;
//! - state machine safety: no replica reports a batch committed that another reported
//!   differently.

use detflow_protocol::{Batch, Epoch, LogEntry, NodeId, Term};
use detflow_sequencer::Replica;
use detflow_sequencer::replica::Output;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

/// What the checker has seen so far.
#[derive(Default)]
pub(crate) struct RaftSafety {
    /// The leader of each term seen.
    leaders: BTreeMap<Term, NodeId>,
    /// Every batch reported committed, by epoch, with the term it was committed in: the
    /// lowest term of a replica reporting it.
    committed: BTreeMap<Epoch, (Arc<Batch>, Term)>,
    /// Per replica, the next epoch its current incarnation must report committed.
    next_commit: BTreeMap<NodeId, Epoch>,
    /// Every (epoch, term) held by some log, with its batch and the term of the entry
    /// before it (0 at epoch 1): Log Matching allows one of each.
    entries: BTreeMap<(Epoch, Term), (Arc<Batch>, Term)>,
    /// Per replica, its log as last checked (the epoch before its first entry, and the
    /// entries), so that a step checks only what it changed.
    checked_logs: BTreeMap<NodeId, (Epoch, Vec<LogEntry>)>,
}

impl RaftSafety {
    /// Replica `id`'s log now starts after `through` (it compacted, or installed a
    /// snapshot): it reports committed batches after that.
    pub(crate) fn compacted(&mut self, id: NodeId, through: Epoch) {
        let next = self.next_commit.entry(id).or_insert(Epoch(1));
        *next = (*next).max(through.next());
    }

    /// Replica `id` restarted: it reports committed batches again from epoch 1 (or after
    /// its log's start, which it announces first).
    pub(crate) fn restarted(&mut self, id: NodeId) {
        self.next_commit.insert(id, Epoch(1));
        // Its log is what its disk recovered: check all of it at its first step.
        self.checked_logs.remove(&id);
    }

    /// Checks `replica` after it handled an input that produced `out`: its log matches
    /// every other log, and if it leads, it is the only leader of its term, and when it
    /// has just become leader its log holds every committed batch.
    pub(crate) fn after_step(&mut self, replica: &Replica, out: &[Output]) -> Result<(), String> {
        self.check_log_matching(replica, out)?;
        self.check_leader(replica)
    }

    /// Checks the entries of `replica`'s log that changed in this step against every
    /// (epoch, term) seen in any log. The step's writes say where its log changed (a
    /// truncation, appended entries); a change no write announced (a bug) still differs
    /// from the last checked log at its end, and the walk back finds it.
    fn check_log_matching(&mut self, replica: &Replica, out: &[Output]) -> Result<(), String> {
        let (id, log, snapshot) = (replica.id(), replica.log(), replica.snapshot());
        let start = snapshot.epoch;
        let (checked_start, checked) = self.checked_logs.entry(id).or_insert((start, Vec::new()));
        if *checked_start != start {
            // Compacted (or replaced by a snapshot): what was checked after the new start
            // stays checked.
            let dropped = start.0.saturating_sub(checked_start.0) as usize;
            if start < *checked_start || dropped >= checked.len() {
                checked.clear();
            } else {
                checked.drain(..dropped);
            }
            *checked_start = start;
        }
        // Log indices from here on: entry `i` holds epoch `start + i + 1`.
        let index = |epoch: Epoch| epoch.0.saturating_sub(start.0 + 1) as usize;
        let mut from = checked.len().min(log.len());
        for output in out {
            if let Output::Persist(write) = output {
                if let Some(truncated) = write.truncate_from {
                    from = from.min(index(truncated));
                }
                if let Some(first) = write.append.first() {
                    from = from.min(index(first.epoch()));
                }
            }
        }
        while from > 0 && !same_entry(&checked[from - 1], &log[from - 1]) {
            from -= 1;
        }
        checked.truncate(from);
        for (i, entry) in log.iter().enumerate().skip(from) {
            let before = if i == 0 {
                snapshot.term
            } else {
                log[i - 1].term
            };
            match self.entries.entry((entry.epoch(), entry.term)) {
                Entry::Vacant(seen) => {
                    seen.insert((entry.batch.clone(), before));
                }
                Entry::Occupied(seen) => {
                    let (batch, seen_before) = seen.get();
                    if !same_batch(batch, &entry.batch) {
                        return Err(format!(
                            "log matching: {id} holds a different batch at epoch {} of term {} \
                             than another log does",
                            entry.epoch(),
                            entry.term
                        ));
                    }
                    if *seen_before != before {
                        return Err(format!(
                            "log matching: {id}'s entry at epoch {} of term {} follows one of \
                             term {before}, another log's follows one of term {seen_before}",
                            entry.epoch(),
                            entry.term
                        ));
                    }
                }
            }
            checked.push(entry.clone());
        }
        Ok(())
    }

    /// If `replica` leads, it is the only leader of its term, and when it has just become
    /// leader its log holds every batch committed in an earlier term.
    fn check_leader(&mut self, replica: &Replica) -> Result<(), String> {
        if !replica.is_leader() {
            return Ok(());
        }
        let (id, term) = (replica.id(), replica.term());
        match self.leaders.get(&term) {
            Some(&other) if other != id => {
                return Err(format!("two leaders in term {term}: {other} and {id}"));
            }
            Some(_) => return Ok(()),
            None => {}
        }
        self.leaders.insert(term, id);
        // Compacted epochs are committed ones the replica held; the rest must be in its log.
        let start = replica.log_start();
        let earlier = self.committed.range(start.next()..);
        for (epoch, (batch, _)) in earlier.filter(|(_, (_, t))| *t < term) {
            let held = replica.entry(*epoch).map(|e| &e.batch);
            if held.is_none_or(|b| **b != **batch) {
                return Err(format!(
                    "new leader {id} of term {term} lacks committed epoch {epoch}"
                ));
            }
        }
        Ok(())
    }

    /// Replica `id`, in `term`, reported `batch` committed. Returns whether it is the first
    /// report of its epoch by any replica.
    pub(crate) fn committed(
        &mut self,
        id: NodeId,
        term: Term,
        batch: &Arc<Batch>,
    ) -> Result<bool, String> {
        let next = self.next_commit.entry(id).or_insert(Epoch(1));
        if batch.epoch != *next {
            return Err(format!(
                "{id} reported epoch {} committed out of order (expected {next})",
                batch.epoch
            ));
        }
        *next = batch.epoch.next();
        match self.committed.get_mut(&batch.epoch) {
            Some((first, _)) if !Arc::ptr_eq(first, batch) && **first != **batch => Err(format!(
                "replica {id} committed a different batch at epoch {} than another replica did",
                batch.epoch
            )),
            Some((_, commit_term)) => {
                *commit_term = (*commit_term).min(term);
                Ok(false)
            }
            None => {
                self.committed.insert(batch.epoch, (batch.clone(), term));
                Ok(true)
            }
        }
    }

    /// The next epoch replica `id`'s current incarnation must report committed.
    pub(crate) fn next_commit(&self, id: NodeId) -> Epoch {
        self.next_commit.get(&id).copied().unwrap_or(Epoch(1))
    }

    /// Terms in which some replica led.
    pub(crate) fn terms_led(&self) -> u64 {
        self.leaders.len() as u64
    }

    /// Every batch reported committed, in epoch order.
    pub(crate) fn log(&self) -> impl DoubleEndedIterator<Item = &Arc<Batch>> + ExactSizeIterator {
        self.committed.values().map(|(batch, _)| batch)
    }
}

/// Whether two log entries are the same one: one term, one batch.
fn same_entry(a: &LogEntry, b: &LogEntry) -> bool {
    a.term == b.term && same_batch(&a.batch, &b.batch)
}

/// Whether two batches are equal; batches travel as shared pointers, so usually the same.
fn same_batch(a: &Arc<Batch>, b: &Arc<Batch>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{
        ClientId, DetRng, Footprint, LOG_FORMAT_VERSION, RequestSeq, Transaction,
    };
    use detflow_sequencer::{Durable, ReplicaConfig};

    fn entry(term: u64, epoch: u64) -> LogEntry {
        LogEntry {
            term: Term(term),
            batch: Arc::new(Batch {
                version: LOG_FORMAT_VERSION,
                epoch: Epoch(epoch),
                txns: Vec::new(),
            }),
        }
    }

    fn replica(id: u32, log: Vec<LogEntry>) -> Replica {
        let config = ReplicaConfig::new(NodeId(id), (1..=3).map(NodeId).collect());
        let durable = Durable {
            snapshot: None,
            term: Term(3),
            voted_for: None,
            log,
        };
        Replica::new(config, durable, DetRng::new(1))
    }

    #[test]
    fn logs_sharing_an_entry_must_agree_before_it() {
        let mut safety = RaftSafety::default();
        let shared = entry(2, 2);
        let a = replica(1, vec![entry(1, 1), shared.clone()]);
        assert_eq!(safety.after_step(&a, &[]), Ok(()));
        // The same entry at epoch 2, after an entry of another term: Log Matching broken.
        let b = replica(2, vec![entry(2, 1), shared]);
        let failure = safety.after_step(&b, &[]).expect_err("caught");
        assert!(failure.contains("log matching"), "{failure}");
        // Equal batches (not the same pointer, as after a restart) agree …
        let c = replica(3, vec![entry(1, 1), entry(2, 2)]);
        assert_eq!(safety.after_step(&c, &[]), Ok(()));
        // … a different batch under one (epoch, term) does not.
        let mut other = (*entry(2, 2).batch).clone();
        other.txns.push(Arc::new(Transaction {
            client: ClientId(1),
            seq: RequestSeq(1),
            gateway: NodeId(9),
            procedure: "p".into(),
            args: Vec::new(),
            footprint: Footprint::new(),
        }));
        let other = LogEntry {
            term: Term(2),
            batch: Arc::new(other),
        };
        let d = replica(1, vec![entry(1, 1), other]);
        safety.restarted(NodeId(1));
        let failure = safety.after_step(&d, &[]).expect_err("caught");
        assert!(failure.contains("different batch"), "{failure}");
    }
}
