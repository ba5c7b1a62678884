//! Retained versions: what a partition's state was after each of its recent epochs.
//!
//! The store holds only the latest state. Before a write overwrites a user key for the
//! first time in an epoch, the executor keeps the key's previous value (its before-image),
//! stamped with that epoch. The value of a key after epoch `E` is then the before-image of
//! the first epoch after `E` that overwrote it, or the store's value if none did. A read
//! at `E` costs a lookup in the chains besides the store's own, and the application of
//! later epochs never waits for it: the chains only grow while it runs.
//!
//! Writes do not touch the chains, an ordered map as large as the window: each epoch
//! appends its before-images to a list of its own (sorted, one per key, once the epoch is
//! applied), and a read folds the lists into the chains first, or, for a point read at a
//! recent epoch, searches the few lists after it. Without snapshot reads, keeping versions
//! costs a push per write and a sort per epoch; lookups in the large map cost about a
//! fifth of the in-process pipeline on ycsb when every write paid them.
//!
//! The chains hold the epochs of a retention window (a time, default
//! [`RETENTION_US_DEFAULT`], and a byte budget, default [`RETENTION_BYTES_DEFAULT`]):
//! when an epoch leaves it, the before-images that only reads at or before it needed go.
//! The latest applied epoch is always readable, and so is the state after it while the
//! next epoch runs, since the in-progress epoch's before-images are kept whatever the
//! budget.

use crate::store::Store;
use detflow_protocol::snapshot::ScanRange;
use detflow_protocol::{Epoch, Key, Time, Value};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

/// How long an applied epoch stays readable by default: 10 s.
pub const RETENTION_US_DEFAULT: u64 = 10_000_000;

/// How many bytes of before-images a partition keeps by default, at most: 64 MiB. Past
/// it, the oldest epochs leave the window early.
pub const RETENTION_BYTES_DEFAULT: usize = 64 << 20;

/// What one retained version costs beyond its key and value bytes (the chain entry and
/// its share of the map), for the byte budget.
const VERSION_OVERHEAD_BYTES: usize = 64;

/// How much history a partition keeps for snapshot reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// How long an applied epoch stays readable, in microseconds.
    pub us: u64,
    /// The most bytes of before-images kept.
    pub bytes_max: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            us: RETENTION_US_DEFAULT,
            bytes_max: RETENTION_BYTES_DEFAULT,
        }
    }
}

/// The retained versions' size, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionStats {
    /// Before-images held.
    pub versions: u64,
    /// Their bytes, as the budget counts them.
    pub bytes: u64,
    /// The oldest epoch a read may ask for.
    pub oldest: Epoch,
    /// Epochs that left the window because the byte budget was reached before their time.
    pub evicted_early: u64,
}

/// How many epochs with unfolded before-images after the read epoch a point read searches
/// one by one; with more, it folds them into the chains first.
const UNFOLDED_SEARCH_EPOCHS_MAX: usize = 32;

/// One applied epoch: when, and which keys it overwrote first.
#[derive(Debug)]
struct Applied {
    epoch: Epoch,
    at: Time,
    /// The keys whose chain got a before-image stamped with this epoch.
    keys: Vec<Key>,
    /// Before-images not folded into the chains yet: in write order while the epoch runs
    /// (a key may repeat, and its first entry counts), sorted by key with one entry per
    /// key once the epoch is applied.
    unfolded: Vec<(Key, Option<Value>)>,
}

impl Applied {
    fn new(epoch: Epoch, at: Time) -> Applied {
        Applied {
            epoch,
            at,
            keys: Vec::new(),
            unfolded: Vec::new(),
        }
    }

    /// This epoch's unfolded before-image of `key`, if it has one; `applied` says whether
    /// the epoch is, and so whether its list is sorted.
    fn unfolded_image(&self, key: &Key, applied: bool) -> Option<&Option<Value>> {
        match applied {
            true => (self.unfolded)
                .binary_search_by(|(k, _)| k.cmp(key))
                .ok()
                .map(|i| &self.unfolded[i].1),
            false => self.unfolded.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }
}

/// The before-images of a partition's recent epochs.
#[derive(Debug)]
pub(crate) struct Versions {
    retention: Retention,
    /// Per key, `(epoch, value before that epoch)`, epochs ascending: every folded
    /// before-image. They are all of epochs no later than the first with unfolded ones.
    chains: BTreeMap<Key, VecDeque<(Epoch, Option<Value>)>>,
    /// Applied epochs still in the window, oldest first, and the epoch in progress last
    /// (its `at` is meaningless until it is applied).
    epochs: VecDeque<Applied>,
    /// The oldest epoch readable.
    oldest: Epoch,
    /// The last epoch applied.
    applied: Epoch,
    bytes: usize,
    versions: u64,
    evicted_early: u64,
    /// Planted bug `reclaim_inside_window`: reclaim one epoch more than the window allows.
    pub(crate) bug_reclaim_inside_window: bool,
}

fn version_bytes(key: &Key, value: &Option<Value>) -> usize {
    key.as_bytes().len() + value.as_ref().map_or(0, Vec::len) + VERSION_OVERHEAD_BYTES
}

impl Versions {
    /// Versions of a partition that has applied every epoch up to `applied`: nothing
    /// before it is readable.
    pub(crate) fn new(applied: Epoch, retention: Retention) -> Versions {
        Versions {
            retention,
            chains: BTreeMap::new(),
            epochs: VecDeque::new(),
            oldest: applied,
            applied,
            bytes: 0,
            versions: 0,
            evicted_early: 0,
            bug_reclaim_inside_window: false,
        }
    }

    pub(crate) fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    /// Forgets every version: the partition's state was replaced by a peer's after
    /// `applied` (a state transfer), so nothing before it is readable.
    pub(crate) fn restart_at(&mut self, applied: Epoch) {
        let bug = self.bug_reclaim_inside_window;
        *self = Versions::new(applied, self.retention);
        self.bug_reclaim_inside_window = bug;
    }

    /// The oldest epoch readable.
    pub(crate) fn oldest(&self) -> Epoch {
        self.oldest
    }

    pub(crate) fn stats(&self) -> VersionStats {
        VersionStats {
            versions: self.versions,
            bytes: self.bytes as u64,
            oldest: self.oldest,
            evicted_early: self.evicted_early,
        }
    }

    /// Keeps `key`'s value before its first write in `epoch` (the epoch in progress):
    /// `before` is the value before this write, and only the epoch's first counts.
    pub(crate) fn before_write(&mut self, epoch: Epoch, key: Key, before: Option<Value>) {
        if self.epochs.back().is_none_or(|a| a.epoch != epoch) {
            self.epochs.push_back(Applied::new(epoch, Time::ZERO));
        }
        self.bytes += version_bytes(&key, &before);
        self.versions += 1;
        let last = self.epochs.back_mut().expect("just pushed");
        last.unfolded.push((key, before));
    }

    /// Epoch `epoch` is wholly applied, at `now`: it becomes readable, and epochs that left
    /// the window are reclaimed.
    pub(crate) fn applied(&mut self, epoch: Epoch, now: Time) {
        self.applied = epoch;
        match self.epochs.back_mut() {
            Some(last) if last.epoch == epoch => last.at = now,
            _ => self.epochs.push_back(Applied::new(epoch, now)),
        }
        let last = self.epochs.back_mut().expect("just pushed");
        // A stable sort keeps each key's first write of the epoch first, and `dedup_by`
        // keeps the first of equal neighbours.
        last.unfolded.sort_by(|a, b| a.0.cmp(&b.0));
        last.unfolded.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                self.bytes -= version_bytes(&later.0, &later.1);
                self.versions -= 1;
            }
            same
        });
        self.reclaim(now);
    }

    /// Moves the window's start past epochs older than the retention time, and past the
    /// oldest ones while the budget is exceeded; the latest applied epoch always stays.
    pub(crate) fn reclaim(&mut self, now: Time) {
        loop {
            // The oldest readable epoch is the first whose successor's before-images are
            // kept; dropping those of epoch `next` makes `next` the oldest readable.
            let Some(front) = self.epochs.front() else {
                return;
            };
            let next = front.epoch;
            if next > self.applied {
                return;
            }
            let expired = now.since_us(front.at) > self.retention.us;
            let over = self.bytes > self.retention.bytes_max;
            if !expired && !over {
                break;
            }
            if over && !expired {
                self.evicted_early += 1;
            }
            self.drop_front();
        }
        if self.bug_reclaim_inside_window
            && self.epochs.len() > 1
            && self.epochs.front().is_some_and(|f| f.epoch < self.applied)
        {
            // Reclaims one epoch too many, but still claims it is readable.
            let oldest = self.oldest;
            self.drop_front();
            self.oldest = oldest;
        }
    }

    /// Drops the before-images of the oldest retained epoch, which becomes the oldest
    /// readable one.
    fn drop_front(&mut self) {
        let Some(front) = self.epochs.pop_front() else {
            return;
        };
        for (key, value) in &front.unfolded {
            self.bytes -= version_bytes(key, value);
            self.versions -= 1;
        }
        for key in front.keys {
            let Entry::Occupied(mut chain) = self.chains.entry(key) else {
                continue;
            };
            while chain.get().front().is_some_and(|(e, _)| *e <= front.epoch) {
                let (_, value) = chain.get_mut().pop_front().expect("just checked");
                self.bytes -= version_bytes(chain.key(), &value);
                self.versions -= 1;
            }
            if chain.get().is_empty() {
                chain.remove();
            }
        }
        self.oldest = self.oldest.max(front.epoch);
    }

    /// Moves every unfolded before-image into the chains, in epoch order.
    fn fold(&mut self) {
        for applied in self.epochs.iter_mut() {
            for (key, value) in std::mem::take(&mut applied.unfolded) {
                let chain = self.chains.entry(key.clone()).or_default();
                if chain.back().is_some_and(|(e, _)| *e == applied.epoch) {
                    // A later write of a key this epoch already folded: not its before-image.
                    self.bytes -= version_bytes(&key, &value);
                    self.versions -= 1;
                    continue;
                }
                chain.push_back((applied.epoch, value));
                applied.keys.push(key);
            }
        }
    }

    /// The value `key` had after epoch `at` (which the caller checked is readable).
    pub(crate) fn get<S: Store>(&mut self, store: &S, key: &Key, at: Epoch) -> Option<Value> {
        let after = (self.epochs.iter().rev())
            .take_while(|a| a.epoch > at)
            .filter(|a| !a.unfolded.is_empty())
            .count();
        if after > UNFOLDED_SEARCH_EPOCHS_MAX {
            self.fold();
        }
        match self.before_image(key, at) {
            Some(before) => before.clone(),
            None => store.get(key),
        }
    }

    /// The before-image of the first epoch after `at` that overwrote `key`: folded ones
    /// first, since they are of earlier epochs (or the same one, whose first write they
    /// hold), then the unfolded lists in epoch order.
    fn before_image(&self, key: &Key, at: Epoch) -> Option<&Option<Value>> {
        if let Some(chain) = self.chains.get(key) {
            let i = chain.partition_point(|(e, _)| *e <= at);
            if let Some((_, v)) = chain.get(i) {
                return Some(v);
            }
        }
        (self.epochs.iter())
            .filter(|a| a.epoch > at && !a.unfolded.is_empty())
            .find_map(|a| a.unfolded_image(key, a.epoch <= self.applied))
    }

    /// The rows of `range` after key `after` as they were after epoch `at`, ascending, at
    /// most `limit` of them and stopping after the row that reaches `bytes_max` value
    /// bytes; and whether more rows may follow.
    pub(crate) fn scan<S: Store>(
        &mut self,
        store: &S,
        range: &ScanRange,
        after: Option<&Key>,
        at: Epoch,
        limit: usize,
        bytes_max: usize,
    ) -> (Vec<(Key, Value)>, bool) {
        self.fold();
        let limit = limit.max(1);
        let mut rows = Vec::new();
        let mut bytes = 0;
        let mut cursor: Bound<Key> = match after {
            Some(after) if after >= range.start() => Bound::Excluded(after.clone()),
            _ => Bound::Included(range.start().clone()),
        };
        loop {
            let current =
                store.scan_range(&range.prefix, cursor.as_ref(), range.to.as_ref(), limit + 1);
            let exhausted = current.len() <= limit;
            // Keys up to `upto` are all in `current`; keys past it wait for the next batch.
            let upto = match exhausted {
                true => None,
                false => current.last().map(|(k, _)| k.clone()),
            };
            let mut changed = self
                .chains
                .range::<Key, _>((cursor.as_ref(), Bound::Unbounded))
                .take_while(|(k, _)| range.contains(k))
                .take_while(|(k, _)| upto.as_ref().is_none_or(|u| *k <= u))
                .peekable();
            let mut current = current.into_iter().peekable();
            loop {
                // The next key of the merge, from the store, the chains or both.
                let from_store = current.peek().map(|(k, _)| k);
                let from_chain = changed.peek().map(|(k, _)| *k);
                let (key, value) = match (from_store, from_chain) {
                    (None, None) => break,
                    (Some(s), Some(c)) if c < s => {
                        let (key, chain) = changed.next().expect("peeked");
                        (key.clone(), visible(chain, at, None))
                    }
                    (Some(s), Some(c)) if c == s => {
                        let (key, chain) = changed.next().expect("peeked");
                        let (_, value) = current.next().expect("peeked");
                        (key.clone(), visible(chain, at, Some(value)))
                    }
                    (Some(_), _) => {
                        let (key, value) = current.next().expect("peeked");
                        (key, Some(value))
                    }
                    (None, Some(_)) => {
                        let (key, chain) = changed.next().expect("peeked");
                        (key.clone(), visible(chain, at, None))
                    }
                };
                let Some(value) = value else {
                    continue;
                };
                bytes += value.len();
                rows.push((key, value));
                if rows.len() >= limit || bytes >= bytes_max {
                    return (rows, true);
                }
            }
            match upto {
                None => return (rows, false),
                Some(upto) => cursor = Bound::Excluded(upto),
            }
        }
    }
}

/// The value after epoch `at` of a key with this chain and this current value.
fn visible(
    chain: &VecDeque<(Epoch, Option<Value>)>,
    at: Epoch,
    current: Option<Value>,
) -> Option<Value> {
    let i = chain.partition_point(|(e, _)| *e <= at);
    match chain.get(i) {
        Some((_, before)) => before.clone(),
        None => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn k(i: u64) -> Key {
        Key::table("t").u64(i)
    }

    /// Applies epoch `epoch`'s writes to `store`, keeping before-images, at time `at_us`.
    fn epoch(
        v: &mut Versions,
        store: &mut MemStore,
        epoch: u64,
        at_us: u64,
        writes: &[(u64, Option<u8>)],
    ) {
        for (key, value) in writes {
            let key = k(*key);
            v.before_write(Epoch(epoch), key.clone(), store.get(&key));
            match value {
                Some(b) => store.put(key, vec![*b]),
                None => store.delete(&key),
            }
        }
        store.commit_epoch(Epoch(epoch));
        v.applied(Epoch(epoch), Time(at_us));
    }

    fn all(v: &mut Versions, store: &MemStore, at: u64, limit: usize) -> Vec<(u64, u8)> {
        let range = ScanRange::prefix(Key::table("t"));
        let mut rows = Vec::new();
        let mut after = None;
        loop {
            let (chunk, more) = v.scan(store, &range, after.as_ref(), Epoch(at), limit, usize::MAX);
            for (key, value) in &chunk {
                let detflow_protocol::Elem::U64(i) = key.elems().expect("key")[1] else {
                    panic!("not a number")
                };
                rows.push((i, value[0]));
            }
            if !more {
                return rows;
            }
            after = chunk.last().map(|(k, _)| k.clone());
        }
    }

    #[test]
    fn every_epoch_of_the_window_reads_as_it_was() {
        let mut store = MemStore::new();
        let mut v = Versions::new(Epoch(0), Retention::default());
        epoch(&mut v, &mut store, 1, 10, &[(1, Some(1)), (2, Some(1))]);
        epoch(&mut v, &mut store, 2, 20, &[(1, Some(2)), (3, Some(2))]);
        epoch(
            &mut v,
            &mut store,
            3,
            30,
            &[(2, None), (1, Some(3)), (1, Some(4))],
        );
        // Epoch 4 in progress: its first write is kept, so epoch 3 still reads as it was.
        v.before_write(Epoch(4), k(3), store.get(&k(3)));
        store.delete(&k(3));
        for limit in [1, 2, 10] {
            assert_eq!(all(&mut v, &store, 0, limit), vec![]);
            assert_eq!(all(&mut v, &store, 1, limit), vec![(1, 1), (2, 1)]);
            assert_eq!(all(&mut v, &store, 2, limit), vec![(1, 2), (2, 1), (3, 2)]);
            assert_eq!(all(&mut v, &store, 3, limit), vec![(1, 4), (3, 2)]);
        }
        assert_eq!(v.get(&store, &k(2), Epoch(2)), Some(vec![1]));
        assert_eq!(v.get(&store, &k(2), Epoch(3)), None);
        assert_eq!(v.get(&store, &k(1), Epoch(1)), Some(vec![1]));
        assert_eq!(v.get(&store, &k(3), Epoch(3)), Some(vec![2]));
        assert_eq!(v.get(&store, &k(3), Epoch(1)), None);
        assert_eq!(v.oldest(), Epoch(0));
    }

    #[test]
    fn epochs_leave_the_window_by_age_and_by_budget_and_their_versions_go() {
        let mut store = MemStore::new();
        let retention = Retention {
            us: 100,
            bytes_max: usize::MAX,
        };
        let mut v = Versions::new(Epoch(0), retention);
        epoch(&mut v, &mut store, 1, 0, &[(1, Some(1))]);
        epoch(&mut v, &mut store, 2, 50, &[(1, Some(2))]);
        epoch(&mut v, &mut store, 3, 120, &[(1, Some(3))]);
        // Epochs 0 and 1 are older than 100 µs at 120: epoch 1 is the oldest readable.
        assert_eq!(v.oldest(), Epoch(1));
        assert_eq!(v.get(&store, &k(1), Epoch(1)), Some(vec![1]));
        assert_eq!(v.stats().versions, 2);
        v.reclaim(Time(1_000));
        // Only the latest stays, and no before-image is needed for it.
        assert_eq!(v.oldest(), Epoch(3));
        assert_eq!(v.stats().versions, 0);
        assert_eq!(v.stats().bytes, 0);
        assert_eq!(v.get(&store, &k(1), Epoch(3)), Some(vec![3]));

        let mut store = MemStore::new();
        let budget = Retention {
            us: u64::MAX,
            bytes_max: 2 * version_bytes(&k(1), &Some(vec![0])),
        };
        let mut v = Versions::new(Epoch(0), budget);
        for e in 1..=5 {
            epoch(&mut v, &mut store, e, e, &[(1, Some(e as u8))]);
        }
        assert!(v.stats().bytes as usize <= budget.bytes_max);
        assert_eq!(v.oldest(), Epoch(3));
        assert_eq!(v.get(&store, &k(1), Epoch(3)), Some(vec![3]));
        assert!(v.stats().evicted_early > 0);
    }

    /// Reads at every epoch of the window, interleaved with writes at any point of an
    /// epoch (so that some before-images are folded and some not), against the state
    /// recorded after each epoch.
    #[test]
    fn reads_agree_with_the_recorded_states_however_writes_and_folds_interleave() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (rng >> 33) % n
        };
        let mut store = MemStore::new();
        let mut v = Versions::new(Epoch(0), Retention::default());
        let mut states = vec![BTreeMap::<u64, u8>::new()];
        let mut first_writes = 0;
        for e in 1..=120u64 {
            let mut written = std::collections::BTreeSet::new();
            for _ in 0..next(12) {
                let key = next(8);
                written.insert(key);
                let value = match next(5) {
                    0 => None,
                    _ => Some(next(250) as u8),
                };
                v.before_write(Epoch(e), k(key), store.get(&k(key)));
                match value {
                    Some(b) => store.put(k(key), vec![b]),
                    None => store.delete(&k(key)),
                }
                // Reads while the epoch runs see the epochs before it as they were.
                if next(4) == 0 {
                    let at = match next(2) {
                        0 => e - 1,
                        _ => next(e),
                    };
                    let want = &states[at as usize];
                    let key = next(8);
                    let got = v.get(&store, &k(key), Epoch(at)).map(|b| b[0]);
                    assert_eq!(got, want.get(&key).copied(), "get {key} at {at} in {e}");
                    if next(3) == 0 {
                        let rows = all(&mut v, &store, at, 1 + next(7) as usize);
                        let want: Vec<(u64, u8)> = want.iter().map(|(k, b)| (*k, *b)).collect();
                        assert_eq!(rows, want, "scan at {at} in {e}");
                    }
                }
            }
            store.commit_epoch(Epoch(e));
            v.applied(Epoch(e), Time(e));
            first_writes += written.len() as u64;
            let state = (0..8)
                .filter_map(|key| store.get(&k(key)).map(|b| (key, b[0])))
                .collect();
            states.push(state);
        }
        for at in 0..=120u64 {
            let want: Vec<(u64, u8)> = states[at as usize].iter().map(|(k, b)| (*k, *b)).collect();
            assert_eq!(
                all(&mut v, &store, at, 3),
                want,
                "scan at {at} after the run"
            );
        }
        // One before-image per key and epoch, however the writes and folds interleaved.
        assert_eq!(v.stats().versions, first_writes);
    }
}
