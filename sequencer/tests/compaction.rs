//! Log compaction and snapshot installation, driven through a small in-memory group that
//! delivers every message and makes every write durable at once (optionally cutting one
//! replica off).

#![allow(clippy::unwrap_used)] // a failed step fails the test

use detflow_protocol::{
    ClientId, DetRng, Epoch, Footprint, Machine, NodeId, RequestSeq, Time, Transaction,
};
use detflow_sequencer::replica::{Input, Output, ReplicaBugs};
use detflow_sequencer::{Durable, Replica, ReplicaConfig};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

fn txn(client: u64, seq: u64) -> Arc<Transaction> {
    Arc::new(Transaction {
        client: ClientId(client),
        seq: RequestSeq(seq),
        gateway: NodeId(9),
        procedure: "p".into(),
        args: Vec::new(),
        footprint: Footprint::new(),
    })
}

fn config(id: NodeId, n: u32) -> ReplicaConfig {
    let mut config = ReplicaConfig::new(id, (1..=n).map(NodeId).collect());
    config.compact_every_epochs = 4;
    config.snapshot_windows_per_message_max = 2;
    config
}

struct Group {
    n: u32,
    now: u64,
    replicas: Vec<Replica>,
    disks: Vec<Durable>,
    /// Replicas whose messages are lost both ways.
    cut: BTreeSet<NodeId>,
    /// What each replica emitted: `Committed` epochs and `Compacted` points, in order.
    emitted: Vec<Vec<(&'static str, Epoch)>>,
    /// The epochs each replica handed to its archive, in order (kept across restarts).
    archived: Vec<Vec<Epoch>>,
    duplicates: u64,
    bugs: ReplicaBugs,
}

impl Group {
    fn new(n: u32, bugs: ReplicaBugs) -> Group {
        let mut group = Group {
            n,
            now: 0,
            replicas: Vec::new(),
            disks: vec![Durable::default(); n as usize],
            cut: BTreeSet::new(),
            emitted: vec![Vec::new(); n as usize],
            archived: vec![Vec::new(); n as usize],
            duplicates: 0,
            bugs,
        };
        for id in 1..=n {
            let r = group.boot(NodeId(id));
            group.replicas.push(r);
        }
        group
    }

    fn boot(&self, id: NodeId) -> Replica {
        let durable = self.disks[idx(id)].clone();
        let mut r = Replica::new(config(id, self.n), durable, DetRng::new(u64::from(id.0)));
        r.set_bugs(self.bugs);
        r
    }

    /// Restarts `id` from exactly its disk.
    fn restart(&mut self, id: NodeId) {
        self.replicas[idx(id)] = self.boot(id);
        self.emitted[idx(id)].clear();
    }

    /// Feeds `input` to `id` and everything that follows from it, to quiescence.
    fn input(&mut self, id: NodeId, input: Input) {
        let mut work = VecDeque::from([(id, input)]);
        while let Some((id, input)) = work.pop_front() {
            let mut out = Vec::new();
            self.replicas[idx(id)].handle(Time(self.now), input, &mut out);
            for output in out {
                match output {
                    Output::Archive(entries) => {
                        let archived = &mut self.archived[idx(id)];
                        archived.extend(entries.iter().map(|e| e.epoch()));
                    }
                    // Archived at once; the compaction follows the answer.
                    Output::ArchiveAhead(entries) => {
                        let archived = &mut self.archived[idx(id)];
                        archived.extend(entries.iter().map(|e| e.epoch()));
                        work.push_back((id, Input::Archived));
                    }
                    Output::Persist(write) => {
                        if let (Some(snapshot), None) = (&write.snapshot, write.truncate_from) {
                            // A compaction: what it drops was handed to the archive first.
                            let last = self.archived[idx(id)].last();
                            assert_eq!(last, Some(&snapshot.epoch), "archived before dropped");
                        }
                        self.disks[idx(id)].apply(&write);
                        self.disks[idx(id)].validate().unwrap();
                        work.push_back((id, Input::Persisted { write: write.id }));
                    }
                    Output::Send { to, msg } => {
                        if !self.cut.contains(&to) && !self.cut.contains(&id) {
                            work.push_back((to, Input::Peer { from: id, msg }));
                        }
                    }
                    Output::Committed(batch) => {
                        self.emitted[idx(id)].push(("committed", batch.epoch));
                    }
                    Output::Compacted { through } => {
                        self.emitted[idx(id)].push(("compacted", through));
                    }
                    Output::Duplicate { .. } => self.duplicates += 1,
                    Output::NotLeader { .. } | Output::LeaderKnown(_) => {}
                }
            }
        }
    }

    /// Advances time by `us` in steps of 5 ms, ticking every replica.
    fn run_for(&mut self, us: u64) {
        let end = self.now + us;
        while self.now < end {
            self.now += 5_000;
            for id in 1..=self.n {
                self.input(NodeId(id), Input::Tick);
            }
        }
    }

    fn leader(&self) -> NodeId {
        let r = self
            .replicas
            .iter()
            .find(|r| r.is_leader())
            .expect("a leader");
        r.id()
    }

    fn replica(&self, id: NodeId) -> &Replica {
        &self.replicas[idx(id)]
    }

    /// Submits calls 1..=`seqs` of each of `clients` sessions to the leader, one epoch
    /// apart, and waits for them to commit.
    fn call(&mut self, clients: u64, seqs: u64) {
        for seq in 1..=seqs {
            for client in 1..=clients {
                let leader = self.leader();
                self.input(leader, Input::Submit(txn(client, seq)));
            }
            self.run_for(10_000);
        }
        self.run_for(50_000);
    }

    fn compact_all(&mut self) {
        for id in (1..=self.n).map(NodeId) {
            let through = self.replicas[idx(id)].commit_epoch();
            self.input(id, Input::Compact { through });
        }
    }
}

fn idx(id: NodeId) -> usize {
    id.0 as usize - 1
}

#[test]
fn a_follower_behind_the_compaction_point_catches_up_from_a_snapshot_in_chunks() {
    let n3 = NodeId(3);
    let mut g = Group::new(3, ReplicaBugs::default());
    g.cut.insert(n3);
    g.run_for(1_000_000);
    g.call(9, 4);
    g.compact_all();
    let leader = g.leader();
    let start = g.replica(leader).log_start();
    assert!(start > Epoch(4), "compacted through {start}");
    assert_eq!(g.replica(n3).commit_epoch(), Epoch(0));

    g.cut.clear();
    g.run_for(500_000);
    let (r3, rl) = (g.replica(n3), g.replica(leader));
    assert_eq!(r3.stats().snapshots_installed, 1);
    // It held nothing committed to archive; the leader archived everything it dropped.
    assert!(g.archived[idx(n3)].is_empty());
    let dropped: Vec<Epoch> = (1..=start.0).map(Epoch).collect();
    assert_eq!(g.archived[idx(leader)], dropped);
    assert_eq!(r3.log_start(), start);
    assert_eq!(r3.commit_epoch(), rl.commit_epoch());
    // Nine sessions, two windows a chunk: five chunks at least.
    assert!(rl.stats().snapshot_chunks_sent >= 5);
    assert_eq!(g.disks[idx(n3)].snapshot, g.disks[idx(leader)].snapshot);
    // The follower never emitted the compacted epochs; it says where its log starts.
    assert_eq!(g.emitted[idx(n3)].first(), Some(&("compacted", start)));
    assert!(
        g.emitted[idx(n3)][1..]
            .iter()
            .all(|(what, e)| *what == "committed" && *e > start)
    );

    // It serves as a full replica: the group still commits with the old leader cut off.
    g.cut.insert(leader);
    g.run_for(1_000_000);
    let new_leader = g.leader();
    assert_ne!(new_leader, leader);
    let before = g.replica(new_leader).commit_epoch();
    let submitted = g.replica(new_leader).stats().sequenced;
    g.input(new_leader, Input::Submit(txn(100, 1)));
    g.run_for(100_000);
    assert_eq!(g.replica(new_leader).stats().sequenced, submitted + 1);
    assert!(g.replica(new_leader).commit_epoch() > before);
}

#[test]
fn a_restart_resumes_after_the_compacted_prefix() {
    let n1 = NodeId(1);
    let mut g = Group::new(1, ReplicaBugs::default());
    g.run_for(10_000);
    g.call(3, 3);
    g.compact_all();
    let start = g.replica(n1).log_start();
    assert!(start > Epoch(0));
    assert_eq!(g.replica(n1).stats().compactions, 1);
    assert_eq!(g.disks[0].log_start(), start);
    assert_eq!(g.archived[0], (1..=start.0).map(Epoch).collect::<Vec<_>>());
    // Compaction never passes the commit epoch, and waits for enough epochs to drop.
    g.input(
        n1,
        Input::Compact {
            through: Epoch(10_000),
        },
    );
    assert_eq!(g.replica(n1).stats().compactions, 1);

    g.restart(n1);
    g.run_for(10_000);
    assert_eq!(g.emitted[0].first(), Some(&("compacted", start)));
    assert!(g.replica(n1).commit_epoch() > start);
}

/// A retried call whose first submission was compacted away is still a duplicate: after a
/// restart from the snapshot, and on a follower that installed it and then leads.
fn retries_after_compaction(bugs: ReplicaBugs) -> u64 {
    let n3 = NodeId(3);
    let mut g = Group::new(3, bugs);
    g.cut.insert(n3);
    g.run_for(1_000_000);
    g.call(4, 3);
    g.compact_all();
    g.cut.clear();
    g.run_for(500_000);
    assert_eq!(g.replica(n3).stats().snapshots_installed, 1);
    // The others restart from disk and the old leader is cut off: the new leader holds
    // the first calls only through a snapshot (installed, or its own from disk).
    let old = g.leader();
    for id in [NodeId(1), NodeId(2)] {
        g.restart(id);
    }
    g.cut.insert(old);
    g.run_for(1_000_000);
    let leader = g.leader();
    g.cut.clear();
    let before = g.duplicates;
    for client in 1..=4 {
        g.input(leader, Input::Submit(txn(client, 2)));
    }
    g.run_for(100_000);
    g.duplicates - before
}

#[test]
fn retried_calls_stay_duplicates_across_snapshots() {
    assert_eq!(retries_after_compaction(ReplicaBugs::default()), 4);
}

#[test]
fn a_snapshot_without_the_dedup_table_orders_retries_again() {
    let bugs = ReplicaBugs::named("snapshot-without-dedup").unwrap();
    assert_eq!(retries_after_compaction(bugs), 0);
}
