//! Peer input that contradicts the protocol is a counted drop: never a panic, never a
//! change of state (DESIGN.md §10c).

mod common;

use common::{Cluster, Move, Tally, call};
use detflow_executor::{Input, Output, Store};
use detflow_protocol::message::RemoteReads;
use detflow_protocol::{
    ClientId, Epoch, Key, NodeId, Outcome, Owner, PartitionId, Plan, Position, RequestSeq,
    RoutedTxn, codec,
};
use std::sync::Arc;

/// Counter `a` (5) on partition 0 and `b` (0) on partition 1, of `partitions`.
fn counters(partitions: u32) -> (Cluster, Key, Key) {
    let mut c = Cluster::new(partitions);
    let (a, b) = (c.key_on("c", 0, 0), c.key_on("c", 1, 0));
    c.executors[0]
        .store_mut()
        .put(a.clone(), codec::encode(&5u64));
    (c, a, b)
}

/// `plan` with its first transaction changed by `f`.
fn tampered(plan: &Plan, f: impl FnOnce(&mut RoutedTxn)) -> Plan {
    let mut plan = plan.clone();
    f(Arc::make_mut(&mut plan.txns[0]));
    plan
}

fn reads(position: Position, from: u32, chunk: u32, chunks: u32) -> Input {
    Input::RemoteReads(Arc::new(RemoteReads {
        position,
        from: PartitionId(from),
        exact: Vec::new(),
        prefixes: Vec::new(),
        chunk,
        chunks,
    }))
}

#[test]
fn plans_no_scheduler_would_write_are_counted_drops() {
    let (mut c, a, b) = counters(2);
    let plans = c.plans(
        1,
        &[
            call::<Move>(&(a.clone(), b.clone())),
            call::<Move>(&(a.clone(), a.clone())),
        ],
    );
    let p0 = plans[0].clone();
    let forged: Vec<(&str, Plan)> = vec![
        ("another partition's plan", plans[1].clone()),
        (
            "another format version",
            Plan {
                version: 99,
                ..p0.clone()
            },
        ),
        (
            "no participants (executors() would index an empty list)",
            tampered(&p0, |t| t.participants.clear()),
        ),
        (
            "participants that leave this partition out",
            tampered(&p0, |t| {
                t.participants = vec![PartitionId(1)];
                t.active = vec![PartitionId(1)];
            }),
        ),
        (
            "a participant that does not exist",
            tampered(&p0, |t| t.participants.push(PartitionId(7))),
        ),
        (
            "participants out of order",
            tampered(&p0, |t| t.participants.reverse()),
        ),
        (
            "an active participant that does not take part",
            tampered(&p0, |t| t.active = vec![PartitionId(0), PartitionId(3)]),
        ),
        (
            "an owner per entry missing",
            tampered(&p0, |t| {
                t.owners.pop();
            }),
        ),
        (
            "an owner that is not a participant",
            tampered(&p0, |t| t.owners[1] = Owner::Partition(PartitionId(5))),
        ),
        (
            "a position of another epoch",
            tampered(&p0, |t| t.position = Position::new(Epoch(2), 0)),
        ),
        ("positions out of order", {
            let mut plan = p0.clone();
            plan.txns.reverse();
            plan
        }),
    ];
    for (i, (what, plan)) in forged.into_iter().enumerate() {
        assert_eq!(c.feed(0, Input::Plan(plan)), [], "{what}");
        assert_eq!(
            c.executors[0].stats().plans_dropped,
            i as u64 + 1,
            "{what} is counted"
        );
        assert_eq!(c.executors[0].next_epoch(), Epoch(1), "{what}");
        assert!(c.executors[0].is_idle(), "{what} is not kept");
    }
    // The real plans still run, and a plan sent again is a repeat.
    let results = c.run(plans.clone(), &[0, 1]);
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Committed(_)))
    );
    assert_eq!(c.feed(0, Input::Plan(plans[0].clone())), []);
    assert_eq!(c.executors[0].stats().plans_repeated, 1);
    // 5 - 1 to `b`, then a move onto itself, whose second write wins: 4 + 1.
    assert_eq!(c.counter(0, &a), Some(5));
    assert_eq!(c.counter(1, &b), Some(1));
}

#[test]
fn reads_from_outside_the_transaction_are_refused() {
    let (mut c, a, b) = counters(3);
    let sink = c.key_on("sink", 1, 0);
    let plans = c.plans(
        1,
        &[
            call::<Move>(&(a.clone(), b.clone())),
            // Partition 0 only reads for this one: it never waits for reads.
            call::<Tally>(&(vec![a.clone()], None, sink)),
        ],
    );
    let (moving, tally) = (Position::new(Epoch(1), 0), Position::new(Epoch(1), 1));
    // Early reads, before the plan: for a position the plan does not hold, and from a
    // partition that does not take part. Both wait, then go when the plan shows them wrong.
    assert_eq!(c.feed(0, reads(Position::new(Epoch(1), 7), 1, 0, 1)), []);
    assert_eq!(c.feed(0, reads(moving, 2, 0, 1)), []);
    assert!(!c.executors[0].is_idle());

    let out = c.feed(0, Input::Plan(plans[0].clone()));
    assert!(
        matches!(&out[..], [Output::SendReads { to, .. }] if to.partition == PartitionId(1)),
        "{out:?}"
    );
    assert_eq!(c.executors[0].stats().reads_refused, 2);
    let forged = [
        ("from this partition", reads(moving, 0, 0, 1)),
        (
            "from a partition that does not exist",
            reads(moving, 9, 0, 1),
        ),
        ("from a partition not taking part", reads(moving, 2, 0, 1)),
        (
            "for a position the plan lacks",
            reads(Position::new(Epoch(1), 3), 1, 0, 1),
        ),
        (
            "for a transaction this partition does not run",
            reads(tally, 1, 0, 1),
        ),
        ("a chunk past the count", reads(moving, 1, 2, 2)),
    ];
    for (i, (what, input)) in forged.into_iter().enumerate() {
        assert_eq!(c.feed(0, input), [], "{what}");
        assert_eq!(
            c.executors[0].stats().reads_refused,
            i as u64 + 3,
            "{what} is counted"
        );
    }
    // A chunk count that changes between a sender's chunks is refused too.
    assert_eq!(c.feed(0, reads(moving, 1, 0, 2)), []);
    assert_eq!(c.feed(0, reads(moving, 1, 1, 3)), []);
    assert_eq!(c.executors[0].stats().reads_refused, 9);
    assert_eq!(c.executors[0].stats().executed, 0);
    // The second announced chunk completes partition 1's reads: the transaction runs on
    // what they say (`b` absent, as it is) and commits.
    let out = c.feed(0, reads(moving, 1, 1, 2));
    assert!(
        out.iter().any(|o| matches!(o, Output::Result { result, .. }
            if matches!(result.outcome, Outcome::Committed(_)))),
        "{out:?}"
    );
    assert_eq!(c.executors[0].next_epoch(), Epoch(2));
    // Late reads, and reads for an epoch no plan ever claims, are dropped once it is applied.
    assert_eq!(c.feed(0, reads(moving, 1, 0, 1)), []);
    assert_eq!(c.feed(0, reads(Position::new(Epoch(2), 0), 1, 0, 1)), []);
    let empty = Plan {
        txns: Vec::new(),
        epoch: Epoch(2),
        ..plans[0].clone()
    };
    assert_eq!(
        c.feed(0, Input::Plan(empty)),
        [Output::EpochApplied(Epoch(2))]
    );
    assert!(c.executors[0].is_idle());
    let stats = c.executors[0].stats();
    assert_eq!((stats.reads_refused, stats.reads_dropped), (10, 1));
}

#[test]
fn acks_and_hellos_from_no_peer_are_dropped() {
    let (mut c, a, b) = counters(2);
    let plans = c.plans(1, &[call::<Move>(&(a.clone(), b.clone()))]);
    c.run(plans, &[0, 1]);
    assert_eq!(c.executors[0].outbox_len(), 1);
    // Itself, partitions that do not exist, and the peer's partition on a node that runs
    // no replica of it (executors are placed on node 0 by default).
    let strangers = [
        (PartitionId(0), NodeId(0)),
        (PartitionId(2), NodeId(0)),
        (PartitionId(u32::MAX), NodeId(0)),
        (PartitionId(1), NodeId(5)),
    ];
    for (from, node) in strangers {
        let ack = Input::Ack {
            from,
            node,
            durable: Epoch(u64::MAX),
        };
        assert_eq!(c.feed(0, ack), []);
        let hello = Input::Hello {
            from,
            node,
            durable: Epoch(0),
        };
        assert_eq!(c.feed(0, hello), []);
    }
    assert_eq!(c.executors[0].stats().peer_inputs_dropped, 8);
    assert_eq!(c.executors[0].outbox_len(), 1, "nothing forgotten");
    // A peer claiming to be durable far ahead only releases what it was sent.
    let hello = Input::Hello {
        from: PartitionId(1),
        node: NodeId(0),
        durable: Epoch(u64::MAX),
    };
    assert_eq!(c.feed(0, hello), []);
    assert_eq!(c.executors[0].outbox_len(), 0);
    let query = Input::ResultQuery {
        gateway: NodeId(4),
        client: ClientId(u64::MAX),
        seq: RequestSeq(u64::MAX),
    };
    assert_eq!(
        c.feed(0, query),
        [Output::ResultUnknown {
            gateway: NodeId(4),
            client: ClientId(u64::MAX),
            seq: RequestSeq(u64::MAX),
        }]
    );
}
