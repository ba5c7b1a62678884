//! How tables are spread over partitions: the declarative part of the partition map.
//!
//! Workloads declare a [`TableRule`] per table; the scheduler's partition map turns the
//! rules into routing decisions.

use crate::key::Key;
use serde::{Deserialize, Serialize};

/// How one table's keys are assigned to partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableRule {
    /// By a stable hash (FNV-1a) of the encoding of the first `fields` elements after the
    /// table name. Keys that agree on those fields live together.
    Hash {
        /// How many routing fields follow the table name (at least 1).
        fields: u32,
    },
    /// By key order: partition `i` holds the keys from `splits[i - 1]` (inclusive) up to
    /// `splits[i]` (exclusive). There are `partitions - 1` ascending splits.
    Range {
        /// The split keys, full keys including the table name.
        splits: Vec<Key>,
    },
    /// Read-only and held by every partition (e.g. TPC-C `item`).
    Replicated,
}

/// The partition count and the rule of every table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionScheme {
    /// Number of partitions, at least 1.
    pub partitions: u32,
    /// Rules by table name; tables not listed use `default`.
    pub tables: Vec<(String, TableRule)>,
    /// The rule of unlisted tables.
    pub default: TableRule,
}

impl PartitionScheme {
    /// `partitions` partitions, every table hashed on its first field.
    pub fn hashed(partitions: u32) -> PartitionScheme {
        PartitionScheme {
            partitions,
            tables: Vec::new(),
            default: TableRule::Hash { fields: 1 },
        }
    }

    /// Sets the rule of `table`.
    pub fn table(mut self, table: &str, rule: TableRule) -> PartitionScheme {
        self.tables.retain(|(t, _)| t != table);
        self.tables.push((table.to_owned(), rule));
        self
    }
}
