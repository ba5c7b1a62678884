//! The partition map: which partition owns a key or a prefix.

use detflow_protocol::{Key, KeySpec, Owner, PartitionId, PartitionScheme, TableRule};
use std::collections::BTreeMap;

/// A partition scheme that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    /// A hash rule needs at least one routing field.
    #[error("table {table:?}: a hash rule needs at least one routing field")]
    NoRoutingFields {
        /// The table.
        table: String,
    },
    /// Zero partitions.
    #[error("a cluster needs at least one partition")]
    NoPartitions,
    /// A range rule whose splits do not match the partition count or are not ascending.
    #[error("table {table:?}: a range rule needs {expected} strictly ascending splits, got {got}")]
    BadSplits {
        /// The table.
        table: String,
        /// `partitions - 1`.
        expected: usize,
        /// How many were given.
        got: usize,
    },
}

/// A key or prefix that cannot be routed to one owner.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The key has fewer fields than its table's hash rule routes on.
    #[error("key {key} lacks the {fields} routing field(s) of its table")]
    MissingRoutingFields {
        /// The key.
        key: Key,
        /// Fields the rule needs after the table name.
        fields: u32,
    },
    /// The prefix covers keys of more than one partition.
    #[error("prefix {prefix} spans more than one partition")]
    PrefixSpans {
        /// The prefix.
        prefix: Key,
    },
}

/// Routes keys to partitions according to a [`PartitionScheme`].
#[derive(Clone, Debug)]
pub struct PartitionMap {
    partitions: u32,
    tables: BTreeMap<String, TableRule>,
    default: TableRule,
}

impl PartitionMap {
    /// A map for `scheme`, validated.
    pub fn new(scheme: PartitionScheme) -> Result<PartitionMap, SchemeError> {
        if scheme.partitions == 0 {
            return Err(SchemeError::NoPartitions);
        }
        let rules = scheme
            .tables
            .iter()
            .map(|(t, r)| (t.as_str(), r))
            .chain([("<default>", &scheme.default)]);
        for (table, rule) in rules {
            validate(table, rule, scheme.partitions)?;
        }
        Ok(PartitionMap {
            partitions: scheme.partitions,
            tables: scheme.tables.into_iter().collect(),
            default: scheme.default,
        })
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The rule of `key`'s table.
    fn rule(&self, key: &Key) -> &TableRule {
        key.table_name()
            .and_then(|t| self.tables.get(t))
            .unwrap_or(&self.default)
    }

    /// The owner of an exact key.
    pub fn owner(&self, key: &Key) -> Result<Owner, RouteError> {
        match self.rule(key) {
            TableRule::Replicated => Ok(Owner::Replicated),
            TableRule::Hash { fields } => {
                let bytes = key.as_bytes();
                let table_end = key.prefix_len(1).unwrap_or(0);
                let end = key.prefix_len(1 + *fields as usize).ok_or_else(|| {
                    RouteError::MissingRoutingFields {
                        key: key.clone(),
                        fields: *fields,
                    }
                })?;
                // Only the routing fields are hashed, so tables keyed by the same fields
                // (TPC-C's warehouse id) live together.
                let hash = fnv1a(&bytes[table_end..end]);
                Ok(Owner::Partition(PartitionId(
                    (hash % u64::from(self.partitions)) as u32,
                )))
            }
            TableRule::Range { splits } => Ok(Owner::Partition(PartitionId(
                splits.partition_point(|s| s <= key) as u32,
            ))),
        }
    }

    /// The owner of every key under `prefix`, if it is one partition.
    pub fn owner_of_prefix(&self, prefix: &Key) -> Result<Owner, RouteError> {
        let owner = self.owner(prefix)?;
        if let TableRule::Range { splits } = self.rule(prefix)
            && splits.iter().any(|s| s > prefix && s.starts_with(prefix))
        {
            return Err(RouteError::PrefixSpans {
                prefix: prefix.clone(),
            });
        }
        Ok(owner)
    }

    /// The owner of a footprint entry.
    pub fn owner_of_spec(&self, spec: &KeySpec) -> Result<Owner, RouteError> {
        match spec {
            KeySpec::Exact(k) => self.owner(k),
            KeySpec::Prefix(p) => self.owner_of_prefix(p),
        }
    }
}

fn validate(table: &str, rule: &TableRule, partitions: u32) -> Result<(), SchemeError> {
    match rule {
        TableRule::Hash { fields: 0 } => Err(SchemeError::NoRoutingFields {
            table: table.to_owned(),
        }),
        TableRule::Range { splits }
            if splits.len() + 1 != partitions as usize
                || splits.windows(2).any(|w| w[0] >= w[1]) =>
        {
            Err(SchemeError::BadSplits {
                table: table.to_owned(),
                expected: partitions as usize - 1,
                got: splits.len(),
            })
        }
        _ => Ok(()),
    }
}

/// FNV-1a: stable across platforms and releases, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_keyed_by_the_same_fields_live_together() {
        let m = PartitionMap::new(PartitionScheme::hashed(7)).unwrap();
        for w in 0..50 {
            let a = m.owner(&Key::table("warehouse").u64(w)).unwrap();
            let b = m.owner(&Key::table("district").u64(w).u64(3)).unwrap();
            assert_eq!(a, b);
        }
        // Pinned so that a change of hash (which would move data) is noticed.
        assert_eq!(
            m.owner(&Key::table("acct").u64(1)),
            Ok(Owner::Partition(PartitionId(
                (fnv1a(&Key::table("x").u64(1).as_bytes()[3..]) % 7) as u32
            )))
        );
    }

    #[test]
    fn hash_spreads_keys() {
        let m = PartitionMap::new(PartitionScheme::hashed(4)).unwrap();
        let mut counts = [0; 4];
        for k in 0..1000 {
            if let Ok(Owner::Partition(p)) = m.owner(&Key::table("acct").u64(k)) {
                counts[p.0 as usize] += 1;
            }
        }
        assert!(counts.iter().all(|c| *c > 150), "{counts:?}");
    }

    #[test]
    fn ranges_and_prefixes() {
        let scheme = PartitionScheme::hashed(3).table(
            "r",
            TableRule::Range {
                splits: vec![Key::table("r").u64(10), Key::table("r").u64(20)],
            },
        );
        let m = PartitionMap::new(scheme).unwrap();
        let p = |k: u64| m.owner(&Key::table("r").u64(k)).unwrap();
        assert_eq!(p(9), Owner::Partition(PartitionId(0)));
        assert_eq!(p(10), Owner::Partition(PartitionId(1)));
        assert_eq!(p(25), Owner::Partition(PartitionId(2)));
        assert!(m.owner_of_prefix(&Key::table("r").u64(15)).is_ok());
        assert!(m.owner_of_prefix(&Key::table("r")).is_err());
    }

    #[test]
    fn bad_schemes_are_refused() {
        assert_eq!(
            PartitionMap::new(PartitionScheme::hashed(0)).unwrap_err(),
            SchemeError::NoPartitions
        );
        let bad = PartitionScheme::hashed(3).table("r", TableRule::Range { splits: vec![] });
        assert!(PartitionMap::new(bad).is_err());
    }
}
