//! The plan server: turns the batches a sequencer replica commits into each subscribed
//! partition's plans, in epoch order.
//!
//! ```text
//!  Committed(batch) ──▶ PlanServer ──▶ Plan { to, node, plan }   (epoch order)
//!  Subscribe(p, n, e) ▶            ──▶ every committed plan of p from e on, then new ones
//! ```
//!
//! One runs beside every replica. Each replica of a partition (the partition on one node)
//! subscribes on its own, and its subscription replaces its previous one: an executor
//! re-subscribes (from the epoch it needs next) after a reconnect or when it fails
//! over from a silent replica, and gets everything from there again; duplicates are its
//! to drop. The replica reports every committed batch after its log's start again after a
//! restart, so the server starts empty with each incarnation.
//!
//! It also decides how far the log may be compacted. Every executor replica reports the
//! epoch through which it has durably applied the log ([`Input::Applied`], to every
//! sequencer node); the least of them over every replica of every partition is an epoch
//! no executor will ask for again, and [`Output::Compact`] tells the replica beside it.
//! An executor never heard from holds compaction back: compaction waits for the slowest.
//!
//! ```text
//!  Applied(p, n, e) ──▶ PlanServer ──▶ Compact { through: least applied }
//!  Compacted(e)     ──▶            (drops the batches through e)
//! ```

use crate::{PartitionMap, schedule};
use detflow_protocol::{Batch, Epoch, ExecutorId, Machine, NodeId, PartitionId, Plan, Time};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// How many epochs of plans the server keeps scheduled; older ones are scheduled again
/// from their batches when a far-behind subscriber asks.
const PLANS_CACHED_MAX: usize = 1_024;

/// An input to the plan server.
#[derive(Clone, Debug)]
pub enum Input {
    /// The replica committed the next batch (epochs come in order, from 1 or from just
    /// after its log's start).
    Committed(Arc<Batch>),
    /// The replica's log now starts after `through` (it compacted, or installed a
    /// snapshot that reaches past every batch it committed here).
    Compacted {
        /// The last epoch compacted away.
        through: Epoch,
    },
    /// A replica of a partition has durably applied every epoch through `durable`.
    Applied {
        /// The partition.
        partition: PartitionId,
        /// The node of the replica.
        node: NodeId,
        /// Its durable epoch.
        durable: Epoch,
    },
    /// A replica of a partition wants its plans from epoch `from` on.
    Subscribe {
        /// The partition.
        partition: PartitionId,
        /// The node of the subscribing replica.
        node: NodeId,
        /// The first epoch it lacks.
        from: Epoch,
    },
}

/// An effect of the plan server.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send a plan to a replica of its partition.
    Plan {
        /// The partition.
        to: PartitionId,
        /// The node of the replica.
        node: NodeId,
        /// Its plan of one epoch.
        plan: Arc<Plan>,
    },
    /// A replica of a partition subscribed from an epoch it cannot replay: this log
    /// compacted it away, or the replica had reported it durably applied (it lost its
    /// disk, and the reads other partitions sent it for that epoch may be gone). It must
    /// copy a peer's state (see `detflow_protocol::transfer`).
    Compacted {
        /// The partition.
        to: PartitionId,
        /// The node of the replica.
        node: NodeId,
        /// The last epoch it cannot replay.
        log_start: Epoch,
    },
    /// Every executor replica has durably applied the epochs through `through`: the
    /// replica may compact its log up to there.
    Compact {
        /// The least durable epoch over every executor replica.
        through: Epoch,
    },
}

/// Counters of a plan server's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanServerStats {
    /// Plans sent.
    pub plans_sent: u64,
    /// Subscriptions refused: for a partition the map does not have.
    pub subscriptions_refused: u64,
    /// Subscriptions from an epoch this log compacted away (an executor that lost its
    /// state): they get nothing from here.
    pub subscriptions_compacted: u64,
    /// Progress reports dropped: from a replica the placement does not have.
    pub reports_refused: u64,
}

/// Planted bugs, for proving that the simulator's checkers catch them. Never set in
/// production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanServerBugs {
    /// Compaction follows the most advanced executor replica instead of the slowest, so
    /// the log may drop epochs a replica has not made durable yet.
    pub compact_past_slowest: bool,
}

/// A sans-IO plan server.
pub struct PlanServer {
    bugs: PlanServerBugs,
    map: PartitionMap,
    /// The last epoch compacted away: `committed` holds the batches after it.
    start: Epoch,
    committed: VecDeque<Arc<Batch>>,
    /// The durable epoch last reported by each executor replica of the placement.
    applied: BTreeMap<ExecutorId, Epoch>,
    /// The last compaction point announced.
    compact_sent: Epoch,
    plans: BTreeMap<Epoch, Vec<Arc<Plan>>>,
    /// Per subscribed replica, the next epoch to send.
    subscribers: BTreeMap<ExecutorId, Epoch>,
    stats: PlanServerStats,
}

impl PlanServer {
    /// A server that schedules with `map` for the executor replicas `executors` (all of
    /// them, of every partition: compaction waits for each; none, and it never compacts).
    pub fn new(map: PartitionMap, executors: impl IntoIterator<Item = ExecutorId>) -> PlanServer {
        PlanServer {
            bugs: PlanServerBugs::default(),
            map,
            start: Epoch(0),
            committed: VecDeque::new(),
            applied: executors.into_iter().map(|e| (e, Epoch(0))).collect(),
            compact_sent: Epoch(0),
            plans: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            stats: PlanServerStats::default(),
        }
    }

    /// Work counters.
    pub fn stats(&self) -> PlanServerStats {
        self.stats
    }

    /// The last epoch committed (or compacted).
    pub fn committed_epoch(&self) -> Epoch {
        Epoch(self.start.0 + self.committed.len() as u64)
    }

    /// The last epoch compacted away.
    pub fn log_start(&self) -> Epoch {
        self.start
    }

    /// Plants bugs (test-only).
    pub fn set_bugs(&mut self, bugs: PlanServerBugs) {
        self.bugs = bugs;
    }

    /// The least durable epoch over every executor replica, as reported so far.
    pub fn applied_floor(&self) -> Epoch {
        let applied = self.applied.values().copied();
        match self.bugs.compact_past_slowest {
            true => applied.max(),
            false => applied.min(),
        }
        .unwrap_or(Epoch(0))
    }

    fn on_committed(&mut self, batch: Arc<Batch>) {
        assert_eq!(
            batch.epoch,
            self.committed_epoch().next(),
            "the replica reported epochs out of order"
        );
        self.committed.push_back(batch);
    }

    fn on_compacted(&mut self, through: Epoch) {
        if through <= self.start {
            return;
        }
        let dropped = (through.0 - self.start.0).min(self.committed.len() as u64);
        self.committed.drain(..dropped as usize);
        self.start = through;
        self.plans = self.plans.split_off(&through.next());
    }

    fn on_applied(&mut self, executor: ExecutorId, durable: Epoch, out: &mut Vec<Output>) {
        // A report beyond what this log committed is not believed past it.
        let durable = durable.min(self.committed_epoch());
        let Some(applied) = self.applied.get_mut(&executor) else {
            self.stats.reports_refused += 1;
            return;
        };
        *applied = (*applied).max(durable);
        let floor = self.applied_floor();
        if floor > self.compact_sent {
            self.compact_sent = floor;
            out.push(Output::Compact { through: floor });
        }
    }

    /// Sends every subscriber what it lacks of what is committed.
    fn serve(&mut self, out: &mut Vec<Output>) {
        let committed = self.committed_epoch();
        for (subscriber, next) in self.subscribers.iter_mut() {
            let p = subscriber.partition;
            if *next <= self.start {
                // Compacted away: an executor behind every other one's durable state.
                continue;
            }
            while *next <= committed {
                let epoch = *next;
                let plans = self.plans.entry(epoch).or_insert_with(|| {
                    let batch = &self.committed[(epoch.0 - self.start.0) as usize - 1];
                    // The batch is in this replica's own committed log, and every replica
                    // runs the same scheduler: a refusal is a bug, and the node stops.
                    schedule(batch, &self.map)
                        .unwrap_or_else(|e| {
                            panic!("the log holds a batch this build refuses at epoch {epoch}: {e}")
                        })
                        .into_iter()
                        .map(Arc::new)
                        .collect()
                });
                self.stats.plans_sent += 1;
                out.push(Output::Plan {
                    to: p,
                    node: subscriber.node,
                    plan: plans[p.0 as usize].clone(),
                });
                *next = epoch.next();
            }
        }
        while self.plans.len() > PLANS_CACHED_MAX {
            self.plans.pop_first();
        }
    }
}

impl Machine for PlanServer {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, _now: Time, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Committed(batch) => self.on_committed(batch),
            Input::Compacted { through } => self.on_compacted(through),
            Input::Applied {
                partition,
                node,
                durable,
            } => {
                let executor = ExecutorId { partition, node };
                self.on_applied(executor, durable, out);
                return;
            }
            Input::Subscribe {
                partition,
                node,
                from,
            } => {
                if partition.0 >= self.map.partitions() {
                    self.stats.subscriptions_refused += 1;
                    return;
                }
                // Epochs count from 1.
                let subscriber = ExecutorId { partition, node };
                // A replica asking again for epochs it reported durably applied lost its
                // disk: other partitions may have dropped the reads they sent it for
                // them, so it must copy a peer's state as if the log had dropped them.
                let reported = self.applied.get(&subscriber).copied().unwrap_or(Epoch(0));
                let gone = match from <= reported {
                    true => reported.max(self.start),
                    false => self.start,
                };
                if from <= gone {
                    self.stats.subscriptions_compacted += 1;
                    out.push(Output::Compacted {
                        to: partition,
                        node,
                        log_start: gone,
                    });
                    // Once told, it is believed from where it starts again.
                    if let Some(applied) = self.applied.get_mut(&subscriber) {
                        *applied = Epoch(0);
                    }
                }
                self.subscribers.insert(subscriber, from.max(Epoch(1)));
            }
        }
        self.serve(out);
    }

    fn next_deadline(&self) -> Option<Time> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::PartitionScheme;

    fn server() -> PlanServer {
        let map = PartitionMap::new(PartitionScheme::hashed(2)).expect("a map");
        PlanServer::new(map, executors())
    }

    /// Partitions 0 and 1 on nodes 1 and 2 each.
    fn executors() -> Vec<ExecutorId> {
        let each = |p, n| ExecutorId {
            partition: PartitionId(p),
            node: NodeId(n),
        };
        vec![each(0, 1), each(0, 2), each(1, 1), each(1, 2)]
    }

    fn batch(epoch: u64) -> Arc<Batch> {
        Arc::new(Batch {
            version: detflow_protocol::LOG_FORMAT_VERSION,
            epoch: Epoch(epoch),
            txns: Vec::new(),
        })
    }

    fn sent(out: &[Output]) -> Vec<(u32, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Plan { to, plan, .. } => Some((to.0, plan.epoch.0)),
                Output::Compact { .. } | Output::Compacted { .. } => None,
            })
            .collect()
    }

    #[test]
    fn compaction_waits_for_the_least_durable_replica_and_drops_the_batches() {
        let mut server = server();
        let mut out = Vec::new();
        for e in 1..=10 {
            server.handle(Time(0), Input::Committed(batch(e)), &mut out);
        }
        let report = |server: &mut PlanServer, (p, n, e): (u32, u32, u64)| {
            let mut out = Vec::new();
            let applied = Input::Applied {
                partition: PartitionId(p),
                node: NodeId(n),
                durable: Epoch(e),
            };
            server.handle(Time(0), applied, &mut out);
            out
        };
        for r in [(0, 1, 8), (0, 2, 9), (1, 1, 7)] {
            assert!(
                report(&mut server, r).is_empty(),
                "one replica never reported"
            );
        }
        // A stranger's report counts for nothing.
        assert!(report(&mut server, (5, 1, 9)).is_empty());
        assert_eq!(server.stats().reports_refused, 1);
        // Beyond the commit epoch, a report is believed up to it.
        assert_eq!(
            report(&mut server, (1, 2, 99)),
            [Output::Compact { through: Epoch(7) }]
        );
        assert!(report(&mut server, (1, 1, 7)).is_empty(), "announced once");

        server.handle(Time(0), Input::Compacted { through: Epoch(7) }, &mut out);
        assert_eq!(
            (server.log_start(), server.committed_epoch()),
            (Epoch(7), Epoch(10))
        );
        let subscribe = |from| Input::Subscribe {
            partition: PartitionId(0),
            node: NodeId(1),
            from: Epoch(from),
        };
        server.handle(Time(0), subscribe(9), &mut out);
        assert_eq!(sent(&out), [(0, 9), (0, 10)]);
        assert_eq!(out.len(), 2, "a replica past what it reported is served");
        out.clear();
        // A replica that reported epoch 10 durable (99, believed up to the commit) and asks
        // for epoch 1 again lost its disk.
        let lost = Input::Subscribe {
            partition: PartitionId(1),
            node: NodeId(2),
            from: Epoch(1),
        };
        server.handle(Time(0), lost, &mut out);
        assert_eq!(
            out,
            [Output::Compacted {
                to: PartitionId(1),
                node: NodeId(2),
                log_start: Epoch(10)
            }]
        );
        out.clear();
        // An executor that lost its state gets no plans from a compacted log, but learns
        // what it cannot replay (here what it reported, 8, past the log's start, 7), so it
        // copies a peer's state.
        server.handle(Time(0), subscribe(3), &mut out);
        assert_eq!(
            out,
            [Output::Compacted {
                to: PartitionId(0),
                node: NodeId(1),
                log_start: Epoch(8)
            }]
        );
        out.clear();
        assert_eq!(server.stats().subscriptions_compacted, 2);

        // A snapshot installed past every batch: the log continues after it.
        server.handle(Time(0), Input::Compacted { through: Epoch(20) }, &mut out);
        server.handle(Time(0), subscribe(21), &mut out);
        server.handle(Time(0), Input::Committed(batch(21)), &mut out);
        assert_eq!(sent(&out), [(0, 21)]);
    }

    #[test]
    fn subscribers_get_what_is_committed_in_order_then_new_epochs() {
        let mut server = server();
        let mut out = Vec::new();
        for e in 1..=3 {
            server.handle(Time(0), Input::Committed(batch(e)), &mut out);
        }
        assert!(out.is_empty(), "no subscriber yet");
        let subscribe = Input::Subscribe {
            partition: PartitionId(1),
            node: NodeId(0),
            from: Epoch(2),
        };
        server.handle(Time(0), subscribe, &mut out);
        assert_eq!(sent(&out), [(1, 2), (1, 3)]);
        out.clear();
        server.handle(Time(0), Input::Committed(batch(4)), &mut out);
        assert_eq!(sent(&out), [(1, 4)]);
    }

    #[test]
    fn a_new_subscription_starts_over_and_strangers_are_refused() {
        let mut server = server();
        let mut out = Vec::new();
        server.handle(Time(0), Input::Committed(batch(1)), &mut out);
        for from in [Epoch(0), Epoch(1)] {
            let subscribe = Input::Subscribe {
                partition: PartitionId(0),
                node: NodeId(0),
                from,
            };
            server.handle(Time(0), subscribe, &mut out);
        }
        assert_eq!(sent(&out), [(0, 1), (0, 1)]);
        out.clear();
        let stranger = Input::Subscribe {
            partition: PartitionId(7),
            node: NodeId(0),
            from: Epoch(1),
        };
        server.handle(Time(0), stranger, &mut out);
        assert!(out.is_empty());
        assert_eq!(server.stats().subscriptions_refused, 1);
    }

    #[test]
    fn each_replica_of_a_partition_has_its_own_subscription() {
        let mut server = server();
        let mut out = Vec::new();
        server.handle(Time(0), Input::Committed(batch(1)), &mut out);
        for (node, from) in [(1, 1), (2, 2)] {
            let subscribe = Input::Subscribe {
                partition: PartitionId(0),
                node: NodeId(node),
                from: Epoch(from),
            };
            server.handle(Time(0), subscribe, &mut out);
        }
        out.clear();
        server.handle(Time(0), Input::Committed(batch(2)), &mut out);
        let to: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Plan { node, plan, .. } => Some((node.0, plan.epoch.0)),
                Output::Compact { .. } | Output::Compacted { .. } => None,
            })
            .collect();
        assert_eq!(to, [(1, 2), (2, 2)]);
    }
}
