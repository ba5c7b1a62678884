//! The ordered state of one partition.

use detflow_protocol::{Epoch, Key, Value};
use std::collections::BTreeMap;
use std::ops::Bound;

/// The ordered key-value state of a partition, read inline by the executor.
///
/// Writes of an epoch become durable together with the applied epoch at
/// [`Store::commit_epoch`] (DESIGN.md §8); an in-memory store has nothing to make durable.
pub trait Store {
    /// The value of `key`.
    fn get(&self, key: &Key) -> Option<Value>;
    /// Every key under `prefix` with its value, ascending.
    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)>;
    /// Sets `key` to `value`.
    fn put(&mut self, key: Key, value: Value);
    /// Removes `key`.
    fn delete(&mut self, key: &Key);
    /// Marks every write so far as the effect of the log up to and including `epoch`.
    fn commit_epoch(&mut self, epoch: Epoch);
    /// The last epoch passed to `commit_epoch` (0 before any).
    fn applied_epoch(&self) -> Epoch;
}

/// An in-memory ordered store.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    map: BTreeMap<Key, Value>,
    applied: Epoch,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Every key and value, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.map.iter()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The underlying map.
    pub fn map(&self) -> &BTreeMap<Key, Value> {
        &self.map
    }
}

impl Store for MemStore {
    fn get(&self, key: &Key) -> Option<Value> {
        self.map.get(key).cloned()
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        scan_prefix(&self.map, prefix)
    }

    fn put(&mut self, key: Key, value: Value) {
        self.map.insert(key, value);
    }

    fn delete(&mut self, key: &Key) {
        self.map.remove(key);
    }

    fn commit_epoch(&mut self, epoch: Epoch) {
        assert!(epoch > self.applied, "epochs commit in increasing order");
        self.applied = epoch;
    }

    fn applied_epoch(&self) -> Epoch {
        self.applied
    }
}

/// Every entry of `map` under `prefix`, ascending.
pub(crate) fn scan_prefix(map: &BTreeMap<Key, Value>, prefix: &Key) -> Vec<(Key, Value)> {
    map.range((Bound::Included(prefix), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
