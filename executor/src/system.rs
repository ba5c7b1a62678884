//! The executor's own durable bookkeeping, kept in the partition's store beside user data
//! so it becomes durable atomically with the epoch that produced it:
//!
//! - the result table: one record per epoch, `("_sys", "results", epoch)` → the results
//!   this partition reported in that epoch, so a retried call returns its original
//!   result. Records older than the retention window are deleted (epoch-aged).
//! - the outbox: one record per peer partition and epoch, `("_sys", "outbox", to, epoch)`
//!   → the reads sent to that partition's replicas in that epoch, kept until every one of
//!   them acknowledged the epoch as durable. Which replica acknowledged what is kept in
//!   memory only: after a restart the replicas' next acks (or hellos) say it again. So the
//!   outbox's records differ between the replicas of a partition, as acks reach them at
//!   different times; every other record is the same on every replica.
//!
//! Both are also indexed in memory; the index is rebuilt from the store on restart.
//! Footprints may not name the `_sys` table (the scheduler rejects them).

use crate::store::Store;
use detflow_protocol::message::RemoteReads;
use detflow_protocol::{
    CallId, ClientId, Elem, Epoch, ExecutorId, Key, PartitionId, Placement, RequestSeq,
    SYSTEM_TABLE, TxnResult, codec,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// How many epochs past a peer replica's last acknowledged one its reads are sent ahead.
/// A replica that returns after an outage gets its missed reads in windows of this many
/// epochs, each as it acknowledges the last, instead of the whole outage at once (which
/// starved the live replicas of CPU for seconds, and made it buffer every read). Far more
/// than a live replica's acknowledgements trail its progress (one sync, 20 ms), so live
/// sends to a healthy replica are never held back.
pub const READS_AHEAD_EPOCHS: u64 = 2_000;

/// How many epochs of results the result table keeps by default: about 100 s at the
/// default 5 ms epoch, far longer than any client retries a call.
pub const RESULT_EPOCHS_RETAINED: u64 = 20_000;

/// Whether `key` belongs to the executor's bookkeeping rather than to user data.
pub fn is_system_key(key: &Key) -> bool {
    key.is_system()
}

fn results_key(epoch: Epoch) -> Key {
    Key::table(SYSTEM_TABLE).str("results").u64(epoch.0)
}

/// Whether `key` is a record that differs between the replicas of a partition (the reads
/// outbox, see the module documentation): a checkpoint leaves it out, so that every
/// replica's checkpoint of an epoch is the same.
pub fn differs_between_replicas(key: &Key) -> bool {
    stored_differs_between_replicas(key.as_bytes())
}

/// The encodings of `("_sys", "outbox")` and `("_sys", "released")`.
const DIFFERING_PREFIXES: [&[u8]; 2] = [
    b"\x02_sys\x00\x02outbox\x00",
    b"\x02_sys\x00\x02released\x00",
];

/// [`differs_between_replicas`] of a stored key's bytes, without decoding them (a
/// checkpoint writer asks it of every row of a partition).
pub fn stored_differs_between_replicas(key: &[u8]) -> bool {
    // As `Key::starts_with`: a string element goes on with an escaped NUL, not a prefix.
    DIFFERING_PREFIXES
        .iter()
        .any(|prefix| key.starts_with(prefix) && key.get(prefix.len()) != Some(&0xFF))
}

/// The last epoch whose reads sent to partition `to` were dropped, every replica of it
/// having acknowledged them (see [`Bookkeeping::released`]).
fn released_key(to: PartitionId) -> Key {
    Key::table(SYSTEM_TABLE)
        .str("released")
        .u64(u64::from(to.0))
}

fn outbox_key(to: PartitionId, epoch: Epoch) -> Key {
    Key::table(SYSTEM_TABLE)
        .str("outbox")
        .u64(u64::from(to.0))
        .u64(epoch.0)
}

/// The result table and the outbox of one partition.
#[derive(Debug, Default)]
pub(crate) struct Bookkeeping {
    results: BTreeMap<CallId, Epoch>,
    result_epochs: VecDeque<(Epoch, Vec<CallId>)>,
    pending_results: Vec<TxnResult>,
    outbox: BTreeMap<(PartitionId, Epoch), Vec<Arc<RemoteReads>>>,
    /// The partitions sent reads in the epoch being applied: what `flush` writes, without
    /// a walk over an outbox that grows while a peer replica is down.
    sent_now: Vec<PartitionId>,
    /// Per peer replica, the last epoch it acknowledged as durable.
    acked: BTreeMap<ExecutorId, Epoch>,
    /// Per peer partition, the last epoch whose reads the outbox dropped (kept in the
    /// store): a replica of it that needs them again lost its disk.
    released: BTreeMap<PartitionId, Epoch>,
    /// Per peer replica that fell more than [`READS_AHEAD_EPOCHS`] behind: the first epoch
    /// of the reads it has not been sent; they wait in the outbox for its acknowledgements.
    held: BTreeMap<ExecutorId, Epoch>,
    retained_epochs: u64,
    /// [`READS_AHEAD_EPOCHS`] unless set otherwise.
    reads_ahead: u64,
}

impl Bookkeeping {
    /// Rebuilds the in-memory index from `store`. A record that does not decode means the
    /// store is corrupt, an environment failure: this panics naming the key.
    pub(crate) fn load<S: Store>(store: &S) -> Bookkeeping {
        let mut book = Bookkeeping {
            retained_epochs: RESULT_EPOCHS_RETAINED,
            reads_ahead: READS_AHEAD_EPOCHS,
            ..Bookkeeping::default()
        };
        for (key, bytes) in store.scan_prefix(&Key::table(SYSTEM_TABLE).str("results")) {
            let results: Vec<TxnResult> = decode_record(&key, &bytes);
            let epoch = Epoch(key_field(&key, 2));
            let calls: Vec<_> = results.iter().map(TxnResult::call_id).collect();
            book.results.extend(calls.iter().map(|c| (*c, epoch)));
            book.result_epochs.push_back((epoch, calls));
        }
        for (key, bytes) in store.scan_prefix(&Key::table(SYSTEM_TABLE).str("outbox")) {
            let reads: Vec<RemoteReads> = decode_record(&key, &bytes);
            let to = PartitionId(key_field(&key, 2) as u32);
            let epoch = Epoch(key_field(&key, 3));
            book.outbox
                .insert((to, epoch), reads.into_iter().map(Arc::new).collect());
        }
        for (key, bytes) in store.scan_prefix(&Key::table(SYSTEM_TABLE).str("released")) {
            let epoch: u64 = decode_record(&key, &bytes);
            let to = PartitionId(key_field(&key, 2) as u32);
            book.released.insert(to, Epoch(epoch));
        }
        book
    }

    /// The last epoch whose reads to partition `p` were dropped (0: none).
    pub(crate) fn released(&self, p: PartitionId) -> Epoch {
        self.released.get(&p).copied().unwrap_or(Epoch(0))
    }

    /// Replica `from` says it is durable only up to `durable`, below what it acknowledged
    /// before: it lost its disk. Its earlier acknowledgements no longer hold, so nothing
    /// more it lacks is dropped.
    pub(crate) fn forget_acks(&mut self, from: ExecutorId, durable: Epoch) {
        if let Some(acked) = self.acked.get_mut(&from) {
            *acked = (*acked).min(durable);
        }
    }

    pub(crate) fn set_retained_epochs(&mut self, epochs: u64) {
        self.retained_epochs = epochs;
    }

    pub(crate) fn set_reads_ahead(&mut self, epochs: u64) {
        self.reads_ahead = epochs.max(1);
    }

    /// Records a result reported in the current epoch.
    pub(crate) fn record_result(&mut self, result: TxnResult) {
        self.pending_results.push(result);
    }

    /// Records reads sent to `to` in `epoch`.
    pub(crate) fn record_sent(&mut self, to: PartitionId, epoch: Epoch, reads: Arc<RemoteReads>) {
        let sent = self.outbox.entry((to, epoch)).or_default();
        if sent.is_empty() {
            self.sent_now.push(to);
        }
        sent.push(reads);
    }

    /// Writes the epoch's records, just before the store commits `epoch`, and ages out
    /// results older than the retention window.
    pub(crate) fn flush<S: Store>(&mut self, store: &mut S, epoch: Epoch) {
        if !self.pending_results.is_empty() {
            let results = std::mem::take(&mut self.pending_results);
            store.put(results_key(epoch), codec::encode(&results));
            let calls: Vec<_> = results.iter().map(TxnResult::call_id).collect();
            self.results.extend(calls.iter().map(|c| (*c, epoch)));
            self.result_epochs.push_back((epoch, calls));
        }
        for to in std::mem::take(&mut self.sent_now) {
            let Some(reads) = self.outbox.get(&(to, epoch)) else {
                continue;
            };
            let plain: Vec<&RemoteReads> = reads.iter().map(|r| &**r).collect();
            store.put(outbox_key(to, epoch), codec::encode(&plain));
        }
        while let Some((old, _)) = self.result_epochs.front() {
            if old.0.saturating_add(self.retained_epochs) >= epoch.0 {
                break;
            }
            let (old, calls) = self.result_epochs.pop_front().expect("front exists");
            for call in calls {
                if self.results.get(&call) == Some(&old) {
                    self.results.remove(&call);
                }
            }
            store.delete(&results_key(old));
        }
    }

    /// The recorded result of a call, if the table still holds it.
    pub(crate) fn result<S: Store>(
        &self,
        store: &S,
        client: ClientId,
        seq: RequestSeq,
    ) -> Option<TxnResult> {
        let find = |results: &[TxnResult]| {
            results
                .iter()
                .find(|r| r.client == client && r.seq == seq)
                .cloned()
        };
        if let Some(r) = find(&self.pending_results) {
            return Some(r);
        }
        let epoch = self.results.get(&CallId::new(client, seq))?;
        let key = results_key(*epoch);
        let bytes = store.get(&key)?;
        find(&decode_record::<Vec<TxnResult>>(&key, &bytes))
    }

    /// Notes that replica `from` made every epoch up to `durable` durable, and forgets the
    /// reads every replica of its partition (as `placement` has them) made durable.
    pub(crate) fn ack<S: Store>(
        &mut self,
        store: &mut S,
        placement: &Placement,
        from: ExecutorId,
        durable: Epoch,
    ) {
        let acked = self.acked.entry(from).or_insert(Epoch(0));
        *acked = (*acked).max(durable);
        let partition = from.partition;
        let all = placement
            .replicas(partition)
            .iter()
            .map(|node| {
                self.acked_through(ExecutorId {
                    partition,
                    node: *node,
                })
            })
            .min()
            .unwrap_or(Epoch(0));
        let done: Vec<_> = self
            .outbox
            .range((partition, Epoch(0))..=(partition, all))
            .map(|(k, _)| *k)
            .collect();
        let Some(&(_, last)) = done.last() else {
            return;
        };
        for (to, epoch) in done {
            self.outbox.remove(&(to, epoch));
            store.delete(&outbox_key(to, epoch));
        }
        self.note_released(store, partition, last);
    }

    /// Notes that the reads of `epoch` for partition `to` are not kept (dropped once
    /// acknowledged, or never kept: every replica of it had acknowledged the epoch when
    /// this one, replaying behind, ran it).
    pub(crate) fn note_released<S: Store>(&mut self, store: &mut S, to: PartitionId, epoch: Epoch) {
        if self.released(to) >= epoch {
            return;
        }
        self.released.insert(to, epoch);
        store.put(released_key(to), codec::encode(&epoch.0));
    }

    /// The last epoch replica `peer` acknowledged as durable (0 if none since this start).
    pub(crate) fn acked_through(&self, peer: ExecutorId) -> Epoch {
        self.acked.get(&peer).copied().unwrap_or(Epoch(0))
    }

    /// Whether reads of `epoch` go to replica `to` now: not if it is more than the
    /// reads-ahead window ([`READS_AHEAD_EPOCHS`] by default) behind by its
    /// acknowledgements, or already has reads held back (which then go first). A replica
    /// not heard from since this start gets them.
    pub(crate) fn send_now(&mut self, to: ExecutorId, epoch: Epoch) -> bool {
        if self.held.contains_key(&to) {
            return false;
        }
        let Some(acked) = self.acked.get(&to) else {
            return true;
        };
        if epoch.0 <= acked.0.saturating_add(self.reads_ahead) {
            return true;
        }
        self.held.insert(to, epoch);
        false
    }

    /// After replica `to` greeted this one (it lost what was in flight): every read it has
    /// not acknowledged is to be sent again, window by window.
    pub(crate) fn resend_all(&mut self, to: ExecutorId) {
        // A peer may claim any epoch: no overflow past the last.
        let after = Epoch(self.acked_through(to).0.saturating_add(1));
        self.held.insert(to, after);
    }

    /// The held-back reads for replica `to` that its window now covers, in position
    /// order; the rest stay held.
    pub(crate) fn release(&mut self, to: ExecutorId) -> Vec<Arc<RemoteReads>> {
        let Some(held) = self.held.get(&to).copied() else {
            return Vec::new();
        };
        let acked = self.acked_through(to);
        // What it acknowledged since they were held it has no use for (the outbox keeps
        // those for a sibling replica still behind).
        let from = held.max(Epoch(acked.0.saturating_add(1)));
        let end = Epoch(acked.0.saturating_add(self.reads_ahead));
        if from > end {
            return Vec::new();
        }
        let due: Vec<Arc<RemoteReads>> = self
            .outbox
            .range((to.partition, from)..=(to.partition, end))
            .flat_map(|(_, reads)| reads.iter().cloned())
            .collect();
        let beyond = end.0.checked_add(1).map(Epoch).filter(|next| {
            self.outbox
                .range((to.partition, *next)..=(to.partition, Epoch(u64::MAX)))
                .next()
                .is_some()
        });
        match beyond {
            Some(next) => self.held.insert(to, next),
            None => self.held.remove(&to),
        };
        due
    }

    /// Unacknowledged read messages.
    pub(crate) fn outbox_len(&self) -> usize {
        self.outbox.values().map(Vec::len).sum()
    }
}

pub(crate) fn decode_record<T: serde::de::DeserializeOwned>(key: &Key, bytes: &[u8]) -> T {
    codec::decode(bytes).unwrap_or_else(|e| panic!("corrupt bookkeeping record {key}: {e}"))
}

/// The `i`-th element of a bookkeeping key, which this module wrote as a `u64`.
fn key_field(key: &Key, i: usize) -> u64 {
    match key.elems().ok().and_then(|e| e.get(i).cloned()) {
        Some(Elem::U64(v)) => v,
        _ => panic!("corrupt bookkeeping key {key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use detflow_protocol::{NodeId, Position};

    #[test]
    fn the_differing_prefixes_are_the_keys_encodings() {
        let outbox = Key::table(SYSTEM_TABLE).str("outbox");
        let released = Key::table(SYSTEM_TABLE).str("released");
        assert_eq!(DIFFERING_PREFIXES, [outbox.as_bytes(), released.as_bytes()]);
        assert!(differs_between_replicas(&outbox.clone().u64(3)));
        assert!(differs_between_replicas(&released.clone().u64(1)));
        // A longer string that starts alike is another record.
        assert!(!differs_between_replicas(
            &Key::table(SYSTEM_TABLE).str("outboxes")
        ));
        assert!(!differs_between_replicas(
            &Key::table(SYSTEM_TABLE).str("outbox\0x")
        ));
        assert!(!differs_between_replicas(&results_key(Epoch(4))));
    }

    fn reads(epoch: u64) -> Arc<RemoteReads> {
        Arc::new(RemoteReads {
            position: Position::new(Epoch(epoch), 0),
            from: PartitionId(0),
            exact: Vec::new(),
            prefixes: Vec::new(),
            chunk: 0,
            chunks: 1,
        })
    }

    fn epochs(sent: &[Arc<RemoteReads>]) -> Vec<u64> {
        sent.iter().map(|r| r.position.epoch.0).collect()
    }

    /// Reads a replica acknowledged while they were held are not sent to it, though the
    /// outbox keeps them for its sibling replica, still behind.
    #[test]
    fn held_reads_a_replica_acknowledged_are_not_sent_to_it() {
        let mut store = MemStore::new();
        let mut book = Bookkeeping::load(&store);
        let placement = Placement::new(vec![vec![NodeId(0)], vec![NodeId(1), NodeId(2)]]).unwrap();
        let (fast, slow) = (
            ExecutorId {
                partition: PartitionId(1),
                node: NodeId(1),
            },
            ExecutorId {
                partition: PartitionId(1),
                node: NodeId(2),
            },
        );
        let w = READS_AHEAD_EPOCHS;
        book.ack(&mut store, &placement, fast, Epoch(1));
        book.ack(&mut store, &placement, slow, Epoch(1));
        for e in [2 + w, 3 + w, 4 + w] {
            assert!(!book.send_now(fast, Epoch(e)));
            book.record_sent(PartitionId(1), Epoch(e), reads(e));
        }
        // The fast replica got them from elsewhere (a restart of this one, say) and
        // acknowledged through 3 + w; the slow one still lags, so the outbox keeps them.
        book.ack(&mut store, &placement, fast, Epoch(3 + w));
        assert_eq!(book.outbox_len(), 3);
        assert_eq!(epochs(&book.release(fast)), vec![4 + w]);
    }

    /// A replica far behind by its acknowledgements gets no reads past its window; each
    /// acknowledgement releases the next window; a greeting resends from its last one.
    #[test]
    fn reads_to_a_replica_far_behind_wait_for_its_window() {
        let mut store = MemStore::new();
        let mut book = Bookkeeping::load(&store);
        let placement = Placement::new(vec![vec![NodeId(0)], vec![NodeId(1)]]).unwrap();
        let peer = ExecutorId {
            partition: PartitionId(1),
            node: NodeId(1),
        };
        let w = READS_AHEAD_EPOCHS;
        // Not heard from since this start: sent, however far ahead.
        assert!(book.send_now(peer, Epoch(5 * w)));
        book.ack(&mut store, &placement, peer, Epoch(10));
        let mut sent = Vec::new();
        for e in [11, 10 + w, 11 + w, 12 + w, 30 + 2 * w] {
            if book.send_now(peer, Epoch(e)) {
                sent.push(e);
            }
            book.record_sent(PartitionId(1), Epoch(e), reads(e));
        }
        // Past the window, and everything after the first held epoch, waits.
        assert_eq!(sent, vec![11, 10 + w]);
        assert!(book.release(peer).is_empty(), "no acknowledgement yet");
        book.ack(&mut store, &placement, peer, Epoch(12));
        assert_eq!(epochs(&book.release(peer)), vec![11 + w, 12 + w]);
        assert!(
            !book.send_now(peer, Epoch(31 + 2 * w)),
            "still held behind 30 + 2w"
        );
        book.ack(&mut store, &placement, peer, Epoch(40 + w));
        assert_eq!(epochs(&book.release(peer)), vec![30 + 2 * w]);
        // Nothing held any more: live sends flow again.
        assert!(book.send_now(peer, Epoch(32 + 2 * w)));

        // The peer restarts and greets: all it has not acknowledged, window by window.
        book.resend_all(peer);
        assert_eq!(epochs(&book.release(peer)), vec![30 + 2 * w]);
        assert!(book.release(peer).is_empty());
    }
}
