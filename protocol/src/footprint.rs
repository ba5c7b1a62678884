//! Footprints: the keys and key prefixes a transaction may read and write.
//!
//! A footprint is declared before a transaction is ordered (Calvin), so the scheduler can
//! route the transaction and each executor can reject any access outside it. Footprints are
//! computed from client arguments, so a gateway checks them ([`Footprint::validate`])
//! before it orders a call.

use crate::key::{Key, KeyError};
use serde::{Deserialize, Serialize};

/// A footprint entry whose key or prefix is not a valid key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("footprint entry {index} ({kind}): {error}")]
pub struct BadEntry {
    /// The entry's index in the footprint.
    pub index: usize,
    /// `"key"` or `"prefix"`.
    pub kind: &'static str,
    /// What is wrong with it.
    pub error: KeyError,
}

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

    /// Checks the key or prefix with [`Key::validate`]: a prefix, too, is a key made of
    /// whole elements, table name first.
    pub fn validate(&self) -> Result<(), KeyError> {
        self.key().validate()
    }
}

/// What a transaction may do with a footprint entry. `Write` includes reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Read only.
    Read,
    /// Read and write.
    Write,
    /// Write (put, delete) without reading: inserts whose keys the transaction computes,
    /// such as TPC-C's new orders under `(orders, w, d)`. Other participants never need
    /// the entry's current rows, so none are shipped to them.
    Insert,
}

impl Access {
    /// Whether keys under the entry may be read.
    pub fn reads(self) -> bool {
        self != Access::Insert
    }

    /// Whether keys under the entry may be written.
    pub fn writes(self) -> bool {
        self != Access::Read
    }

    /// What declaring both `self` and `other` allows.
    pub fn join(self, other: Access) -> Access {
        if self == other { self } else { Access::Write }
    }
}

/// The declared read and write set of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    /// Each entry once; a key both read and written appears as `Write`.
    pub entries: Vec<(KeySpec, Access)>,
    /// The footprints of procedures this one calls inside the same transaction, by
    /// procedure name, as declared; the gateway checks each against its own service's
    /// tables and merges them into `entries` before ordering, so they never travel.
    #[serde(skip)]
    pub calls: Vec<(String, Footprint)>,
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

    /// Declares that keys under `prefix` may be written but not read (see
    /// [`Access::Insert`]).
    pub fn insert_prefix(mut self, prefix: Key) -> Footprint {
        self.add(KeySpec::Prefix(prefix), Access::Insert);
        self
    }

    /// Declares that the transaction calls `procedure`, whose footprint for the call's
    /// arguments is `footprint` (see `detflow_executor::CallFootprint`, which fills both
    /// from the procedure's type).
    pub fn calls(mut self, procedure: &str, footprint: Footprint) -> Footprint {
        self.calls.push((procedure.to_owned(), footprint));
        self
    }

    /// Merges every called procedure's entries into this footprint's own, recursively.
    pub fn flatten(mut self) -> Footprint {
        for (_, called) in std::mem::take(&mut self.calls) {
            for (spec, access) in called.flatten().entries {
                self.add(spec, access);
            }
        }
        self
    }

    /// Adds an entry, joining the access of an existing one (read + insert = write).
    pub fn add(&mut self, spec: KeySpec, access: Access) {
        match self.entries.iter_mut().find(|(s, _)| *s == spec) {
            Some((_, a)) => *a = (*a).join(access),
            None => self.entries.push((spec, access)),
        }
    }

    /// Whether the footprint allows reading `key`.
    pub fn allows_read(&self, key: &Key) -> bool {
        self.entries.iter().any(|(s, a)| a.reads() && s.covers(key))
    }

    /// Whether the footprint allows writing `key`.
    pub fn allows_write(&self, key: &Key) -> bool {
        self.entries
            .iter()
            .any(|(s, a)| a.writes() && s.covers(key))
    }

    /// Whether the footprint allows scanning every key under `prefix`.
    pub fn allows_scan(&self, prefix: &Key) -> bool {
        self.entries
            .iter()
            .any(|(s, a)| a.reads() && s.covers_prefix(prefix))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the footprint declares nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks every key and prefix (see [`KeySpec::validate`]); the first bad entry.
    pub fn validate(&self) -> Result<(), BadEntry> {
        for (index, (spec, _)) in self.entries.iter().enumerate() {
            spec.validate().map_err(|error| BadEntry {
                index,
                kind: match spec {
                    KeySpec::Exact(_) => "key",
                    KeySpec::Prefix(_) => "prefix",
                },
                error,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_writes_without_reading_and_joins_with_read_to_write() {
        let p = Key::table("o").u64(1);
        let k = p.clone().u64(7);
        let fp = Footprint::new().insert_prefix(p.clone());
        assert!(fp.allows_write(&k));
        assert!(!fp.allows_read(&k));
        assert!(!fp.allows_scan(&p));
        let fp = fp.read_prefix(p.clone());
        assert_eq!(
            fp.entries,
            vec![(KeySpec::Prefix(p.clone()), Access::Write)]
        );
        assert!(fp.allows_read(&k) && fp.allows_write(&k) && fp.allows_scan(&p));
        assert_eq!(Access::Insert.join(Access::Insert), Access::Insert);
        assert_eq!(Access::Write.join(Access::Insert), Access::Write);
    }

    #[test]
    fn called_footprints_merge_into_the_callers() {
        let a = Key::table("a").u64(1);
        let b = Key::table("b").u64(2);
        let inner = Footprint::new().write(b.clone()).read(a.clone());
        let fp = Footprint::new()
            .read(a.clone())
            .calls("b.add", Footprint::new().calls("b.inner", inner));
        assert_eq!(fp.len(), 1);
        let flat = fp.flatten();
        assert!(flat.calls.is_empty());
        assert_eq!(
            flat.entries,
            vec![
                (KeySpec::Exact(a), Access::Read),
                (KeySpec::Exact(b), Access::Write)
            ]
        );
    }

    #[test]
    fn write_includes_read_and_upgrades() {
        let a = Key::table("t").u64(1);
        let fp = Footprint::new().read(a.clone()).write(a.clone());
        assert_eq!(fp.len(), 1);
        assert!(fp.allows_read(&a) && fp.allows_write(&a));
    }

    #[test]
    fn validation_names_the_first_bad_entry() {
        let good = Key::table("t").u64(1);
        assert_eq!(
            Footprint::new()
                .write(good.clone())
                .read_prefix(Key::table("t"))
                .validate(),
            Ok(())
        );
        let mut trailing = good.as_bytes().to_vec();
        trailing.push(0x77);
        let bad = Footprint {
            entries: vec![
                (KeySpec::Exact(good.clone()), Access::Read),
                (KeySpec::Prefix(Key::default()), Access::Read),
            ],
            calls: Vec::new(),
        };
        let err = bad.validate().unwrap_err();
        assert_eq!((err.index, err.kind), (1, "prefix"));
        assert_eq!(err.error, KeyError::NoTable);
        assert!(Key::from_bytes_checked(trailing).is_err());
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
