//! The ordered state of one partition.

use crate::system::is_system_key;
use detflow_protocol::{Epoch, Key, Value};
use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// The ordered key-value state of a partition, read inline by the executor.
///
/// Writes of an epoch become durable together with the applied epoch at
/// [`Store::commit_epoch`] (DESIGN.md §8); an in-memory store has nothing to make durable.
pub trait Store {
    /// The value of `key`.
    fn get(&self, key: &Key) -> Option<Value>;
    /// Every key under `prefix` with its value, ascending.
    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)>;
    /// The first key under `prefix` with its value.
    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        self.scan_prefix(prefix).into_iter().next()
    }
    /// At most `limit` keys under `prefix`, from `from` on, with their values, ascending.
    fn scan_from(&self, prefix: &Key, from: &Key, limit: usize) -> Vec<(Key, Value)> {
        self.scan_prefix(prefix)
            .into_iter()
            .filter(|(k, _)| k >= from)
            .take(limit)
            .collect()
    }
    /// At most `limit` user keys under `prefix` from `from` on, stopping before `to`,
    /// with their values, ascending.
    fn scan_range(
        &self,
        prefix: &Key,
        from: Bound<&Key>,
        to: Option<&Key>,
        limit: usize,
    ) -> Vec<(Key, Value)> {
        self.scan_prefix(prefix)
            .into_iter()
            .filter(|(k, _)| (from, Bound::Unbounded).contains(k))
            .take_while(|(k, _)| to.is_none_or(|to| k < to))
            .take(limit)
            .collect()
    }
    /// Sets `key` to `value`.
    fn put(&mut self, key: Key, value: Value);
    /// Removes `key`.
    fn delete(&mut self, key: &Key);
    /// Sets `key` to `value`, or removes it if `None`, and returns what it held: one
    /// lookup where a `get` and a `put` take two, and the old value moved, not copied.
    fn replace(&mut self, key: Key, value: Option<Value>) -> Option<Value> {
        let old = self.get(&key);
        match value {
            Some(v) => self.put(key, v),
            None => self.delete(&key),
        }
        old
    }
    /// Marks every write so far as the effect of the log up to and including `epoch`.
    fn commit_epoch(&mut self, epoch: Epoch);
    /// The last epoch passed to `commit_epoch` (0 before any).
    fn applied_epoch(&self) -> Epoch;
    /// Captures the state after `epoch`, just committed, for a checkpoint the driver
    /// writes off the executor's path (cheaply: a store snapshot, not a copy). A store
    /// that keeps no checkpoints ignores it.
    fn checkpoint(&mut self, epoch: Epoch) {
        let _ = epoch;
    }
    /// Captures the state after the last committed epoch as an image a peer replica of
    /// the partition copies (a state transfer, see `detflow_protocol::transfer`), and
    /// returns its epoch; it replaces an image of the same epoch. Called between epochs
    /// only.
    fn capture_image(&mut self) -> Epoch;
    /// About `bytes_max` bytes of the rows of the held image of `epoch` that follow key
    /// `after` (from its first with `None`), and whether they are its last; `None` if no
    /// image of `epoch` is held. An image holds every row, the user rows ascending, then
    /// the bookkeeping rows ascending, the reads outbox included: the reads the replica
    /// sent that some replica of another partition has not acknowledged are the copy's to
    /// send again (unlike a checkpoint, which leaves them out to be the same on every
    /// replica).
    fn image_rows(
        &self,
        epoch: Epoch,
        after: Option<&Key>,
        bytes_max: usize,
    ) -> Option<(Vec<(Key, Value)>, bool)>;
    /// Releases the image of `epoch`.
    fn release_image(&mut self, epoch: Epoch);
    /// Forgets the whole state, ahead of the rows of a state transfer.
    fn restore_begin(&mut self);
    /// Writes rows of a state transfer.
    fn restore_rows(&mut self, rows: Vec<(Key, Value)>);
    /// Ends a state transfer: the store durably holds the state after `epoch`.
    fn restore_finish(&mut self, epoch: Epoch);
}

/// Rows of a state image, and whether they are its last.
pub type ImageChunk = (Vec<(Key, Value)>, bool);

/// A state image's rows after `after`, about `bytes_max` bytes of them, and whether they
/// are its last (see [`Store::image_rows`]): `user` rows, then `system` rows.
pub fn image_chunk<'a>(
    user: impl FnOnce(Bound<&Key>) -> Box<dyn Iterator<Item = (Key, Value)> + 'a>,
    system: impl FnOnce(Bound<&Key>) -> Box<dyn Iterator<Item = (Key, Value)> + 'a>,
    after: Option<&Key>,
    bytes_max: usize,
) -> (Vec<(Key, Value)>, bool) {
    let rows: Box<dyn Iterator<Item = (Key, Value)>> = match after {
        None => Box::new(user(Bound::Unbounded).chain(system(Bound::Unbounded))),
        Some(key) if is_system_key(key) => system(Bound::Excluded(key)),
        Some(key) => Box::new(user(Bound::Excluded(key)).chain(system(Bound::Unbounded))),
    };
    let mut rows = rows.peekable();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    while bytes < bytes_max {
        let Some((key, value)) = rows.next() else {
            break;
        };
        bytes += key.as_bytes().len() + value.len();
        chunk.push((key, value));
    }
    let done = rows.peek().is_none();
    (chunk, done)
}

/// A state image of a [`MemStore`]: its user rows and its bookkeeping rows.
type Image = (BTreeMap<Key, Value>, BTreeMap<Key, Value>);

/// An in-memory ordered store.
///
/// The executor's bookkeeping (`_sys` keys: result table, outbox) lives in a map of its own,
/// as it would in a separate keyspace on disk, so it never slows lookups of user data.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    map: BTreeMap<Key, Value>,
    system: BTreeMap<Key, Value>,
    applied: Epoch,
    /// The state images peers copy, by epoch.
    images: BTreeMap<Epoch, Arc<Image>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Every user key and value, ascending (bookkeeping keys excluded).
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.map.iter()
    }

    /// The number of user keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no user key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The user data.
    pub fn map(&self) -> &BTreeMap<Key, Value> {
        &self.map
    }

    /// The executor's bookkeeping keys.
    pub fn system(&self) -> &BTreeMap<Key, Value> {
        &self.system
    }

    fn space(&self, key: &Key) -> &BTreeMap<Key, Value> {
        if is_system_key(key) {
            &self.system
        } else {
            &self.map
        }
    }

    fn space_mut(&mut self, key: &Key) -> &mut BTreeMap<Key, Value> {
        if is_system_key(key) {
            &mut self.system
        } else {
            &mut self.map
        }
    }
}

impl Store for MemStore {
    fn get(&self, key: &Key) -> Option<Value> {
        self.space(key).get(key).cloned()
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        scan_prefix(self.space(prefix), prefix)
    }

    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        first_in(self.space(prefix), prefix)
    }

    fn scan_from(&self, prefix: &Key, from: &Key, limit: usize) -> Vec<(Key, Value)> {
        range_rows(
            self.space(prefix),
            prefix,
            Bound::Included(from),
            None,
            limit,
        )
    }

    fn scan_range(
        &self,
        prefix: &Key,
        from: Bound<&Key>,
        to: Option<&Key>,
        limit: usize,
    ) -> Vec<(Key, Value)> {
        range_rows(self.space(prefix), prefix, from, to, limit)
    }

    fn put(&mut self, key: Key, value: Value) {
        self.space_mut(&key).insert(key, value);
    }

    fn delete(&mut self, key: &Key) {
        self.space_mut(key).remove(key);
    }

    fn replace(&mut self, key: Key, value: Option<Value>) -> Option<Value> {
        let space = self.space_mut(&key);
        match value {
            Some(v) => space.insert(key, v),
            None => space.remove(&key),
        }
    }

    fn commit_epoch(&mut self, epoch: Epoch) {
        assert!(epoch > self.applied, "epochs commit in increasing order");
        self.applied = epoch;
    }

    fn applied_epoch(&self) -> Epoch {
        self.applied
    }

    fn capture_image(&mut self) -> Epoch {
        let image = Arc::new((self.map.clone(), self.system.clone()));
        self.images.insert(self.applied, image);
        self.applied
    }

    fn image_rows(
        &self,
        epoch: Epoch,
        after: Option<&Key>,
        bytes_max: usize,
    ) -> Option<(Vec<(Key, Value)>, bool)> {
        let (user, system) = &**self.images.get(&epoch)?;
        Some(image_chunk(
            |from| map_rows(user, from),
            |from| map_rows(system, from),
            after,
            bytes_max,
        ))
    }

    fn release_image(&mut self, epoch: Epoch) {
        self.images.remove(&epoch);
    }

    fn restore_begin(&mut self) {
        self.map.clear();
        self.system.clear();
        self.applied = Epoch(0);
    }

    fn restore_rows(&mut self, rows: Vec<(Key, Value)>) {
        for (key, value) in rows {
            self.put(key, value);
        }
    }

    fn restore_finish(&mut self, epoch: Epoch) {
        self.applied = epoch;
    }
}

/// The rows of `map` from `from` on, ascending.
fn map_rows<'a>(
    map: &'a BTreeMap<Key, Value>,
    from: Bound<&Key>,
) -> Box<dyn Iterator<Item = (Key, Value)> + 'a> {
    Box::new(
        map.range::<Key, _>((from.cloned(), Bound::Unbounded))
            .map(|(k, v)| (k.clone(), v.clone())),
    )
}

/// The first entry of `map` under `prefix`.
pub(crate) fn first_in(map: &BTreeMap<Key, Value>, prefix: &Key) -> Option<(Key, Value)> {
    map.range((Bound::Included(prefix), Bound::Unbounded))
        .next()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
}

/// Every entry of `map` under `prefix`, ascending.
pub(crate) fn scan_prefix(map: &BTreeMap<Key, Value>, prefix: &Key) -> Vec<(Key, Value)> {
    map.range((Bound::Included(prefix), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// At most `limit` entries of `map` under `prefix` from `from` on, stopping before `to`.
pub fn range_rows(
    map: &BTreeMap<Key, Value>,
    prefix: &Key,
    from: Bound<&Key>,
    to: Option<&Key>,
    limit: usize,
) -> Vec<(Key, Value)> {
    let from = match from {
        Bound::Included(k) if k < prefix => Bound::Included(prefix),
        Bound::Excluded(k) if k < prefix => Bound::Included(prefix),
        Bound::Unbounded => Bound::Included(prefix),
        bound => bound,
    };
    map.range::<Key, _>((from, Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix) && to.is_none_or(|to| *k < to))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
