//! Footprints: the keys and key prefixes a transaction may read and write.
//!
//! A footprint is declared before a transaction is ordered (Calvin), so the scheduler can
//! route the transaction and each executor can reject any access outside it.

use crate::key::Key;
use serde::{Deserialize, Serialize};

/// An exact key or every key under a prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeySpec {
    /// Exactly this key.
    Exact(Key),
    /// Every key that starts with this prefix. A prefix must fall in one partition.
    Prefix(Key),
}

impl KeySpec {
    /// Whether `key` falls under this spec.
    pub fn covers(&self, key: &Key) -> bool {
        match self {
            KeySpec::Exact(k) => k == key,
            KeySpec::Prefix(p) => key.starts_with(p),
        }
    }

    /// Whether every key under `prefix` falls under this spec.
    pub fn covers_prefix(&self, prefix: &Key) -> bool {
        match self {
            KeySpec::Exact(_) => false,
            KeySpec::Prefix(p) => prefix.starts_with(p),
        }
    }

    /// The key or prefix itself.
    pub fn key(&self) -> &Key {
        match self {
            KeySpec::Exact(k) | KeySpec::Prefix(k) => k,
        }
    }
}

/// What a transaction may do with a footprint entry. `Write` includes reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Read only.
    Read,
    /// Read and write.
    Write,
}

/// The declared read and write set of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    /// Each entry once; a key both read and written appears as `Write`.
    pub entries: Vec<(KeySpec, Access)>,
}

impl Footprint {
    /// An empty footprint.
    pub fn new() -> Footprint {
        Footprint::default()
    }

    /// Declares that `key` may be read.
    pub fn read(mut self, key: Key) -> Footprint {
        self.add(KeySpec::Exact(key), Access::Read);
        self
    }

    /// Declares that `key` may be read and written.
    pub fn write(mut self, key: Key) -> Footprint {
        self.add(KeySpec::Exact(key), Access::Write);
        self
    }

    /// Declares that keys under `prefix` may be read.
    pub fn read_prefix(mut self, prefix: Key) -> Footprint {
        self.add(KeySpec::Prefix(prefix), Access::Read);
        self
    }

    /// Declares that keys under `prefix` may be read and written.
    pub fn write_prefix(mut self, prefix: Key) -> Footprint {
        self.add(KeySpec::Prefix(prefix), Access::Write);
        self
    }

    /// Adds an entry, upgrading an existing one from read to write.
    pub fn add(&mut self, spec: KeySpec, access: Access) {
        match self.entries.iter_mut().find(|(s, _)| *s == spec) {
            Some((_, a)) => *a = (*a).max(access),
            None => self.entries.push((spec, access)),
        }
    }

    /// Whether the footprint allows reading `key`.
    pub fn allows_read(&self, key: &Key) -> bool {
        self.entries.iter().any(|(s, _)| s.covers(key))
    }

    /// Whether the footprint allows writing `key`.
    pub fn allows_write(&self, key: &Key) -> bool {
        self.entries
            .iter()
            .any(|(s, a)| *a == Access::Write && s.covers(key))
    }

    /// Whether the footprint allows scanning every key under `prefix`.
    pub fn allows_scan(&self, prefix: &Key) -> bool {
        self.entries.iter().any(|(s, _)| s.covers_prefix(prefix))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the footprint declares nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_includes_read_and_upgrades() {
        let a = Key::table("t").u64(1);
        let fp = Footprint::new().read(a.clone()).write(a.clone());
        assert_eq!(fp.len(), 1);
        assert!(fp.allows_read(&a) && fp.allows_write(&a));
    }

    #[test]
    fn prefixes_cover_longer_keys_and_scans() {
        let p = Key::table("o").u64(3);
        let fp = Footprint::new().read_prefix(p.clone());
        assert!(fp.allows_read(&p.clone().u64(9)));
        assert!(!fp.allows_write(&p.clone().u64(9)));
        assert!(fp.allows_scan(&p.clone().u64(9)));
        assert!(!fp.allows_scan(&Key::table("o")));
        assert!(!fp.allows_read(&Key::table("o").u64(4)));
    }
}
