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
//! to drop. The replica reports every committed batch again after a restart, so the server
//! starts empty with each incarnation.

use crate::{PartitionMap, schedule};
use detflow_protocol::{Batch, Epoch, ExecutorId, Machine, NodeId, PartitionId, Plan, Time};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How many epochs of plans the server keeps scheduled; older ones are scheduled again
/// from their batches when a far-behind subscriber asks.
const PLANS_CACHED_MAX: usize = 1_024;

/// An input to the plan server.
#[derive(Clone, Debug)]
pub enum Input {
    /// The replica committed the next batch (epochs come in order from 1).
    Committed(Arc<Batch>),
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
}

/// Counters of a plan server's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanServerStats {
    /// Plans sent.
    pub plans_sent: u64,
    /// Subscriptions refused: for a partition the map does not have.
    pub subscriptions_refused: u64,
}

/// A sans-IO plan server.
pub struct PlanServer {
    map: PartitionMap,
    committed: Vec<Arc<Batch>>,
    plans: BTreeMap<Epoch, Vec<Arc<Plan>>>,
    /// Per subscribed replica, the next epoch to send.
    subscribers: BTreeMap<ExecutorId, Epoch>,
    stats: PlanServerStats,
}

impl PlanServer {
    /// A server that schedules with `map`.
    pub fn new(map: PartitionMap) -> PlanServer {
        PlanServer {
            map,
            committed: Vec::new(),
            plans: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            stats: PlanServerStats::default(),
        }
    }

    /// Work counters.
    pub fn stats(&self) -> PlanServerStats {
        self.stats
    }

    /// The last epoch committed.
    pub fn committed_epoch(&self) -> Epoch {
        Epoch(self.committed.len() as u64)
    }

    fn on_committed(&mut self, batch: Arc<Batch>) {
        assert_eq!(
            batch.epoch,
            self.committed_epoch().next(),
            "the replica reported epochs out of order"
        );
        self.committed.push(batch);
    }

    /// Sends every subscriber what it lacks of what is committed.
    fn serve(&mut self, out: &mut Vec<Output>) {
        let committed = self.committed_epoch();
        for (subscriber, next) in self.subscribers.iter_mut() {
            let p = subscriber.partition;
            while *next <= committed {
                let epoch = *next;
                let plans = self.plans.entry(epoch).or_insert_with(|| {
                    let batch = &self.committed[epoch.0 as usize - 1];
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
        PlanServer::new(map)
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
            .map(|Output::Plan { to, plan, .. }| (to.0, plan.epoch.0))
            .collect()
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
            .map(|Output::Plan { node, plan, .. }| (node.0, plan.epoch.0))
            .collect();
        assert_eq!(to, [(1, 2), (2, 2)]);
    }
}
