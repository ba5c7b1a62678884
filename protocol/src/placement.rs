//! Where each partition's replicas run: its replica set.
//!
//! Every replica of a partition subscribes to the partition's plans and executes them from
//! its own store; none is a primary. Remote reads go from every replica of the sending
//! partition to every replica of each receiving one, which keeps the first copy of each
//! (position, sending partition) and drops the rest, so a receiver proceeds as soon as any
//! replica of each peer has answered.

use crate::{NodeId, PartitionId};
use serde::{Deserialize, Serialize};

/// One replica of one partition: the partition and the node that executes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExecutorId {
    /// The partition.
    pub partition: PartitionId,
    /// The node that executes this replica of it.
    pub node: NodeId,
}

impl std::fmt::Display for ExecutorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partition {} on {}", self.partition, self.node)
    }
}

/// Why a placement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No partition at all.
    #[error("a placement needs at least one partition")]
    Empty,
    /// A partition without a replica.
    #[error("partition {0} has no replica")]
    NoReplica(PartitionId),
    /// A node named twice in one partition's replica set.
    #[error("partition {partition} lists {node} twice")]
    Repeated {
        /// The partition.
        partition: PartitionId,
        /// The node.
        node: NodeId,
    },
}

/// The replica set of every partition, partitions numbered from 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    sets: Vec<Vec<NodeId>>,
}

impl Placement {
    /// A placement from each partition's replica set, in partition order. The order of a
    /// set is its preference order (the first replica is the one tried first).
    pub fn new(sets: Vec<Vec<NodeId>>) -> Result<Placement, PlacementError> {
        if sets.is_empty() {
            return Err(PlacementError::Empty);
        }
        for (p, set) in sets.iter().enumerate() {
            let partition = PartitionId(p as u32);
            if set.is_empty() {
                return Err(PlacementError::NoReplica(partition));
            }
            for (i, node) in set.iter().enumerate() {
                if set[..i].contains(node) {
                    let node = *node;
                    return Err(PlacementError::Repeated { partition, node });
                }
            }
        }
        Ok(Placement { sets })
    }

    /// `partitions` partitions, each with the single replica on `node` (an executor that
    /// is driven directly, as in tests and the engine bench).
    pub fn single(partitions: u32, node: NodeId) -> Placement {
        Placement {
            sets: (0..partitions.max(1)).map(|_| vec![node]).collect(),
        }
    }

    /// `partitions` partitions spread over `nodes` with `r` replicas each: partition `p`
    /// on `nodes[(p + k) % n]` for `k` in `0..r` (each node gets an equal share of
    /// first replicas).
    ///
    /// # Panics
    ///
    /// If `nodes` is empty, or `r` is 0 or above the number of nodes.
    pub fn spread(partitions: u32, nodes: &[NodeId], r: usize) -> Placement {
        assert!(
            (1..=nodes.len()).contains(&r),
            "{r} replicas over {} nodes",
            nodes.len()
        );
        let n = nodes.len();
        let sets = (0..partitions.max(1) as usize)
            .map(|p| (0..r).map(|k| nodes[(p + k) % n]).collect())
            .collect();
        Placement { sets }
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.sets.len() as u32
    }

    /// The replicas of `partition` (empty for a partition that does not exist).
    pub fn replicas(&self, partition: PartitionId) -> &[NodeId] {
        self.sets
            .get(partition.0 as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether `node` executes a replica of `partition`.
    pub fn hosts(&self, partition: PartitionId, node: NodeId) -> bool {
        self.replicas(partition).contains(&node)
    }

    /// The partitions `node` executes a replica of, ascending.
    pub fn hosted_on(&self, node: NodeId) -> impl Iterator<Item = PartitionId> + '_ {
        self.sets
            .iter()
            .enumerate()
            .filter(move |(_, set)| set.contains(&node))
            .map(|(p, _)| PartitionId(p as u32))
    }

    /// Every replica of every partition, by partition then preference.
    pub fn executors(&self) -> impl Iterator<Item = ExecutorId> + '_ {
        self.sets.iter().enumerate().flat_map(|(p, set)| {
            set.iter().map(move |node| ExecutorId {
                partition: PartitionId(p as u32),
                node: *node,
            })
        })
    }

    /// The largest replica set.
    pub fn replication(&self) -> usize {
        self.sets.iter().map(Vec::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_places_each_partition_on_r_distinct_nodes_in_turn() {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let placement = Placement::spread(4, &nodes, 2);
        assert_eq!(placement.replicas(PartitionId(0)), [NodeId(1), NodeId(2)]);
        assert_eq!(placement.replicas(PartitionId(2)), [NodeId(3), NodeId(1)]);
        assert_eq!(placement.replicas(PartitionId(3)), [NodeId(1), NodeId(2)]);
        let on_3: Vec<_> = placement.hosted_on(NodeId(3)).collect();
        assert_eq!(on_3, [PartitionId(1), PartitionId(2)]);
        assert!(placement.replicas(PartitionId(9)).is_empty());
        assert_eq!(placement.executors().count(), 8);
    }

    #[test]
    fn bad_placements_are_refused() {
        assert_eq!(Placement::new(vec![]), Err(PlacementError::Empty));
        assert_eq!(
            Placement::new(vec![vec![NodeId(1)], vec![]]),
            Err(PlacementError::NoReplica(PartitionId(1)))
        );
        let repeated = Placement::new(vec![vec![NodeId(1), NodeId(1)]]);
        assert!(matches!(repeated, Err(PlacementError::Repeated { .. })));
    }
}
