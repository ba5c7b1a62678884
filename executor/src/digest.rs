//! A partition's state digest: one number that every replica of a partition agrees on after
//! each epoch, maintained as writes are applied, so a divergence (a disk that changed a
//! value, a build that differs, a non-deterministic procedure) shows at the epoch it
//! happened instead of in some later result.
//!
//! The digest of a set of rows is the sum, modulo 2^128, of each row's 128-bit hash
//! (XXH3 of the key's length, the key and the value). A sum does not depend on the order
//! the rows were written or read in, and a write changes it by the new row's hash less the
//! old one's, so keeping it costs two hashes per write and no scan. It covers user data
//! only: the bookkeeping's reads outbox differs between replicas by design (see
//! `system.rs`), and everything else in it follows from the user data and the log.

use crate::store::Store;
use detflow_protocol::{Key, Value};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Bound;
use xxhash_rust::xxh3::Xxh3;

/// Rows read per batch when a digest is computed from a whole store.
const SCAN_BATCH: usize = 4_096;

/// The digest of a partition's user rows (see the module documentation).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateDigest(pub u128);

impl StateDigest {
    /// The digest of every user row of `store`, read in bounded batches.
    pub fn of_store<S: Store>(store: &S) -> StateDigest {
        let everything = Key::default();
        let mut digest = StateDigest::default();
        let mut after: Option<Key> = None;
        loop {
            let from = match &after {
                Some(key) => Bound::Excluded(key),
                None => Bound::Unbounded,
            };
            let rows = store.scan_range(&everything, from, None, SCAN_BATCH);
            for (key, value) in &rows {
                if !key.is_system() {
                    digest.0 = digest.0.wrapping_add(row_hash(key, value));
                }
            }
            if rows.len() < SCAN_BATCH {
                return digest;
            }
            after = rows.last().map(|(key, _)| key.clone());
        }
    }

    /// Accounts for `key` going from `old` to `new` (`None`: absent).
    pub fn replace(&mut self, key: &Key, old: Option<&Value>, new: Option<&Value>) {
        if let Some(old) = old {
            self.0 = self.0.wrapping_sub(row_hash(key, old));
        }
        if let Some(new) = new {
            self.0 = self.0.wrapping_add(row_hash(key, new));
        }
    }
}

impl fmt::Display for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateDigest({self})")
    }
}

/// One row's hash. The key's length goes first, so that no two (key, value) pairs hash the
/// same bytes.
fn row_hash(key: &Key, value: &[u8]) -> u128 {
    let key = key.as_bytes();
    let mut h = Xxh3::new();
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(value);
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn k(i: u64) -> Key {
        Key::table("t").u64(i)
    }

    /// The running digest equals the digest of the resulting store, whatever the order
    /// of the writes, and a single changed value changes it.
    #[test]
    fn the_running_digest_is_the_digest_of_the_rows() {
        let mut store = MemStore::new();
        let mut running = StateDigest::default();
        let mut write = |store: &mut MemStore, key: Key, new: Option<Value>| {
            let old = store.get(&key);
            running.replace(&key, old.as_ref(), new.as_ref());
            match new {
                Some(v) => store.put(key, v),
                None => store.delete(&key),
            }
            running
        };
        for i in 0..10_000 {
            write(&mut store, k(i % 97), Some(i.to_le_bytes().to_vec()));
        }
        write(&mut store, k(3), None);
        let last = write(&mut store, k(5), None);
        store.put(Key::table("_sys").str("x"), vec![1]);
        assert_eq!(
            last,
            StateDigest::of_store(&store),
            "bookkeeping does not count"
        );

        let mut other = MemStore::new();
        for (key, value) in store.scan_prefix(&Key::default()).into_iter().rev() {
            other.put(key, value);
        }
        assert_eq!(StateDigest::of_store(&other), last);
        other.put(k(7), b"changed".to_vec());
        assert_ne!(StateDigest::of_store(&other), last);
        // A value moved to another key is a different state.
        let mut moved = MemStore::new();
        moved.put(k(1), b"v".to_vec());
        let mut swapped = MemStore::new();
        swapped.put(k(2), b"v".to_vec());
        assert_ne!(
            StateDigest::of_store(&moved),
            StateDigest::of_store(&swapped)
        );
    }
}
