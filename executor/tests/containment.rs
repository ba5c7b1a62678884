//! A procedure's failures stay inside its transaction: a panic is a deterministic abort on
//! every participant and in every replay, and remote reads too large for one message
//! travel in bounded chunks that survive duplicates and restarts.

mod common;

use common::{Boom, Cluster, Move, Tally, call};
use detflow_executor::{
    Abort, Executor, Input, MemStore, Output, READS_BYTES_MAX_DEFAULT, VALUE_BYTES_MAX_DEFAULT,
    in_procedure,
};
use detflow_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES};
use detflow_protocol::message::{Message, RemoteReads};
use detflow_protocol::{Epoch, Key, NodeId, Outcome, PartitionId, TxnResult, codec};
use std::sync::Arc;

fn outcomes(results: &[TxnResult]) -> Vec<&Outcome> {
    results.iter().map(|r| &r.outcome).collect()
}

/// Counter `a` (5) on partition 0 and `b` (0) on partition 1.
fn counters() -> (Cluster, Key, Key) {
    let mut c = Cluster::new(2);
    let (a, b) = (c.key_on("c", 0, 0), c.key_on("c", 1, 0));
    detflow_executor::Store::put(c.executors[0].store_mut(), a.clone(), codec::encode(&5u64));
    (c, a, b)
}

#[test]
fn a_panicking_procedure_aborts_everywhere_and_later_transactions_proceed() {
    let (mut c, a, b) = counters();
    let calls = [
        call::<Boom>(&(a.clone(), b.clone())),
        call::<Move>(&(a.clone(), b.clone())),
        call::<Boom>(&(a.clone(), a.clone())),
        call::<Move>(&(a.clone(), b.clone())),
    ];
    let plans = c.plans(1, &calls);
    let results = c.run(plans.clone(), &[0, 1]);
    let panicked = Outcome::Aborted(Abort::Panicked(
        "index out of bounds: the len is 0 but the index is 5".into(),
    ));
    let panicked_later = Outcome::Aborted(Abort::Panicked(
        "index out of bounds: the len is 0 but the index is 4".into(),
    ));
    assert_eq!(
        outcomes(&results),
        [
            &panicked,
            &Outcome::Committed(codec::encode_named(&1u64)),
            &panicked_later,
            &Outcome::Committed(codec::encode_named(&2u64)),
        ]
    );
    assert!(!in_procedure(), "the flag is cleared after the unwind");
    // Boom's writes (1000 on both sides) were discarded on both participants.
    assert_eq!(c.counter(0, &a), Some(3));
    assert_eq!(c.counter(1, &b), Some(2));
    // Both participants ran the multi-partition ones (and reached the same outcome, as
    // their stores agree); partition 0 ran the single-partition one too.
    assert_eq!(c.executors[0].stats().executed, 4);
    assert_eq!(c.executors[1].stats().executed, 3);
    assert!(c.executors.iter().all(|e| e.next_epoch() == Epoch(2)));

    // Replaying the log from the initial state, with the plans arriving the other way
    // round, reaches the same outcomes and the same state.
    let (mut replay, _, _) = counters();
    assert_eq!(replay.run(plans.clone(), &[1, 0]), results);
    assert_eq!(replay.counter(0, &a), Some(3));
    assert_eq!(replay.counter(1, &b), Some(2));

    // Partition 1 crashes before anything was durable and replays: partition 0 resends
    // its reads on hello, and the panic is the same abort again.
    let registry = c.registry.clone();
    c.executors[1] = Executor::new(PartitionId(1), 2, registry, MemStore::new());
    let mut out = c.feed(1, Input::Plan(plans[1].clone()));
    out.extend(c.feed(
        0,
        Input::Hello {
            from: PartitionId(1),
            node: NodeId(0),
            durable: Epoch(0),
        },
    ));
    let rest = c.settle(out.into_iter().map(|o| (0, o)).collect());
    assert!(
        rest.iter()
            .all(|(_, o)| matches!(o, Output::EpochApplied(Epoch(1)))),
        "partition 1 reports nothing (not designated): {rest:?}"
    );
    assert_eq!(c.counter(1, &b), Some(2));
}

/// `n` values of `bytes` bytes each (all 0xAB, which serde writes as two bytes each) under
/// keys of partition 0, and `rows` rows of `row_bytes` under a prefix of partition 0.
fn big_reads(c: &mut Cluster, n: usize, bytes: usize, rows: u64, row_bytes: usize) -> Vec<u8> {
    let keys: Vec<Key> = (0..n).map(|i| c.key_on("big", 0, i)).collect();
    let prefix = c.key_on("scan", 0, 0);
    let sink = c.key_on("sink", 1, 0);
    let store = c.executors[0].store_mut();
    for key in &keys {
        detflow_executor::Store::put(store, key.clone(), vec![0xAB; bytes]);
    }
    for i in 0..rows {
        detflow_executor::Store::put(store, prefix.clone().u64(i), vec![b'x'; row_bytes]);
    }
    codec::encode(&(keys, Some(prefix), sink))
}

/// Every message of `out` is a remote read that fits a frame, and holds more than one
/// entry only within `reads_bytes_max`.
fn check_bounded(out: &[Output], reads_bytes_max: usize) -> Vec<Arc<RemoteReads>> {
    let mut chunks = Vec::new();
    for o in out {
        let Output::SendReads { to, reads } = o else {
            continue;
        };
        let msg = Message::RemoteReads {
            to: to.partition,
            reads: reads.clone(),
        };
        let bytes = frame::encode(&msg, DEFAULT_MAX_FRAME_BYTES)
            .unwrap_or_else(|e| panic!("chunk {} does not fit a frame: {e}", reads.chunk))
            .len();
        let entries =
            reads.exact.len() + reads.prefixes.iter().map(|(_, r)| r.len()).sum::<usize>();
        assert!(
            entries <= 1 || bytes <= reads_bytes_max,
            "chunk {} of {entries} entries takes {bytes} bytes",
            reads.chunk
        );
        chunks.push(reads.clone());
    }
    chunks
}

#[test]
fn reads_over_the_frame_limit_travel_in_bounded_chunks() {
    let mut c = Cluster::new(2);
    // 5 values of 4 MiB (about 40 MiB on the wire) and 24 rows of 1 MiB under a prefix,
    // read on partition 0 and tallied on partition 1.
    let args = big_reads(&mut c, 5, VALUE_BYTES_MAX_DEFAULT, 24, 1 << 20);
    let (keys, prefix, sink): common::TallyArgs = codec::decode(&args).unwrap();
    let plans = c.plans(1, &[call::<Tally>(&(keys, prefix, sink.clone()))]);

    let out = c.feed(0, Input::Plan(plans[0].clone()));
    let chunks = check_bounded(&out, READS_BYTES_MAX_DEFAULT);
    assert!(chunks.len() >= 7, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|r| r.chunks as usize == chunks.len()));
    assert_eq!(c.executors[0].stats().reads_split, 1);
    assert!(matches!(out.last(), Some(Output::EpochApplied(Epoch(1)))));

    let mut results = Vec::new();
    let mut pending = c.feed(1, Input::Plan(plans[1].clone()));
    for (i, reads) in chunks.iter().enumerate() {
        assert!(
            pending.is_empty(),
            "partition 1 waits for every chunk, ran after {i}: {pending:?}"
        );
        pending = c.feed(1, Input::RemoteReads(reads.clone()));
    }
    results.extend(pending.into_iter().filter_map(|o| match o {
        Output::Result { result, .. } => Some(result.outcome),
        _ => None,
    }));
    let expected: (u64, u64) = (5 + 24, 5 * VALUE_BYTES_MAX_DEFAULT as u64 + 24 * (1 << 20));
    assert_eq!(
        results,
        [Outcome::Committed(codec::encode_named(&expected))]
    );
    assert_eq!(
        detflow_executor::Store::get(c.executors[1].store(), &sink),
        Some(codec::encode(&expected))
    );
}

#[test]
fn chunks_survive_reordering_duplicates_and_restarts() {
    let reads_bytes_max = 600;
    let mut c = Cluster::new(2);
    for e in &mut c.executors {
        e.set_reads_bytes_max(reads_bytes_max);
    }
    let args = big_reads(&mut c, 3, 150, 12, 40);
    let (keys, prefix, sink): common::TallyArgs = codec::decode(&args).unwrap();
    let plans = c.plans(1, &[call::<Tally>(&(keys, prefix, sink))]);
    let initial_1 = c.executors[1].store().clone();

    let out = c.feed(0, Input::Plan(plans[0].clone()));
    let chunks = check_bounded(&out, reads_bytes_max);
    let n = chunks.len();
    assert!(n >= 4, "{n} chunks");

    // Backwards, each twice, the first one last: nothing runs before it arrives.
    assert!(c.feed(1, Input::Plan(plans[1].clone())).is_empty());
    for reads in chunks[1..].iter().rev() {
        assert!(c.feed(1, Input::RemoteReads(reads.clone())).is_empty());
        assert!(c.feed(1, Input::RemoteReads(reads.clone())).is_empty());
    }
    assert_eq!(c.executors[1].stats().reads_dropped, n as u64 - 1);
    assert_eq!(c.executors[1].stats().executed, 0);
    let done = c.feed(1, Input::RemoteReads(chunks[0].clone()));
    let Some(Output::Result { result, .. }) = done.first() else {
        panic!("expected the result, got {done:?}")
    };
    let first = result.outcome.clone();
    assert!(matches!(first, Outcome::Committed(_)), "{first:?}");
    // Late copies are dropped.
    assert!(c.feed(1, Input::RemoteReads(chunks[2].clone())).is_empty());
    assert_eq!(c.executors[1].stats().executed, 1);

    // Partition 0 restarts from its store: its outbox still holds every chunk, and a hello
    // from partition 1 (which crashed too, durable at 0) brings them back, equal.
    let registry = c.registry.clone();
    let store_0 = c.executors[0].store().clone();
    let mut restarted = Executor::new(PartitionId(0), 2, registry.clone(), store_0);
    restarted.set_reads_bytes_max(reads_bytes_max);
    c.executors[0] = restarted;
    c.executors[1] = Executor::new(PartitionId(1), 2, registry, initial_1);
    assert!(c.feed(1, Input::Plan(plans[1].clone())).is_empty());
    let resent = c.feed(
        0,
        Input::Hello {
            from: PartitionId(1),
            node: NodeId(0),
            durable: Epoch(0),
        },
    );
    let again = check_bounded(&resent, reads_bytes_max);
    assert_eq!(again, chunks);
    let rest = c.settle(resent.into_iter().map(|o| (0, o)).collect());
    let replayed: Vec<_> = rest
        .into_iter()
        .filter_map(|(_, o)| match o {
            Output::Result { result, .. } => Some(result.outcome),
            _ => None,
        })
        .collect();
    assert_eq!(replayed, [first]);
}

/// A store whose reads of user data fail as a disk would (the executor's own bookkeeping,
/// read when it starts, still loads: the failure strikes inside a procedure's read).
struct FailingStore(MemStore);

impl detflow_executor::Store for FailingStore {
    fn get(&self, key: &Key) -> Option<detflow_protocol::Value> {
        if key.is_system() {
            return self.0.get(key);
        }
        panic!("read error: the disk is gone")
    }
    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, detflow_protocol::Value)> {
        self.0.scan_prefix(prefix)
    }
    fn put(&mut self, key: Key, value: detflow_protocol::Value) {
        self.0.put(key, value);
    }
    fn delete(&mut self, key: &Key) {
        self.0.delete(key);
    }
    fn commit_epoch(&mut self, epoch: Epoch) {
        self.0.commit_epoch(epoch);
    }
    fn applied_epoch(&self) -> Epoch {
        self.0.applied_epoch()
    }
    fn capture_image(&mut self) -> Epoch {
        self.0.capture_image()
    }
    fn image_rows(
        &self,
        epoch: Epoch,
        after: Option<&Key>,
        bytes_max: usize,
    ) -> Option<(Vec<(Key, detflow_protocol::Value)>, bool)> {
        self.0.image_rows(epoch, after, bytes_max)
    }
    fn release_image(&mut self, epoch: Epoch) {
        self.0.release_image(epoch);
    }
    fn restore_begin(&mut self) {
        self.0.restore_begin();
    }
    fn restore_rows(&mut self, rows: Vec<(Key, detflow_protocol::Value)>) {
        self.0.restore_rows(rows);
    }
    fn restore_finish(&mut self, epoch: Epoch) {
        self.0.restore_finish(epoch);
    }
}

#[test]
fn a_failing_store_is_not_mistaken_for_a_panicking_procedure() {
    let c = Cluster::new(1);
    let a = c.key_on("c", 0, 0);
    let plans = c.plans(1, &[call::<Move>(&(a.clone(), a))]);
    let mut e = Executor::new(
        PartitionId(0),
        1,
        c.registry.clone(),
        FailingStore(MemStore::new()),
    );
    // The store's panic (an environment failure) stops the executor: an abort would let
    // this replica's outcome differ from its healthy peers'.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut out = Vec::new();
        detflow_protocol::Machine::handle(
            &mut e,
            detflow_protocol::Time::ZERO,
            Input::Plan(plans[0].clone()),
            &mut out,
        );
        out
    }));
    let payload = run.expect_err("the store's panic propagates");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"read error: the disk is gone")
    );
    assert!(!in_procedure());
}
