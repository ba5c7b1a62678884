//! The API a procedure uses to read and write state.

use crate::store::MemStore;
use crate::unwind;
use detflow_protocol::mailbox::Letter;
use detflow_protocol::{AbortReason, Footprint, Key, PartitionId, Value, codec};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Buffered writes of one transaction: `None` deletes.
pub type WriteSet = BTreeMap<Key, Option<Value>>;

/// The largest value a transaction may write by default, in bytes: 4 MiB. With keys of at
/// most [`KEY_BYTES_MAX`](detflow_protocol::key::KEY_BYTES_MAX) bytes, a single row always
/// fits in a remote-read message under the 16 MiB frame limit.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 4 << 20;

/// Committed state as a transaction sees it before its own writes.
pub trait ReadView {
    /// The value of `key`.
    fn get(&self, key: &Key) -> Option<Value>;
    /// Every key under `prefix` with its value, ascending.
    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)>;
    /// The first key under `prefix` with its value.
    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        self.scan_prefix(prefix).into_iter().next()
    }
}

impl ReadView for BTreeMap<Key, Value> {
    fn get(&self, key: &Key) -> Option<Value> {
        BTreeMap::get(self, key).cloned()
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        crate::store::scan_prefix(self, prefix)
    }

    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        crate::store::first_in(self, prefix)
    }
}

impl ReadView for MemStore {
    fn get(&self, key: &Key) -> Option<Value> {
        self.map().get(key).cloned()
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        crate::store::scan_prefix(self.map(), prefix)
    }

    fn first_in(&self, prefix: &Key) -> Option<(Key, Value)> {
        crate::store::first_in(self.map(), prefix)
    }
}

/// One running transaction: reads through a view, buffers writes, and enforces the
/// footprint, the key format and the value size. Every method returns a deterministic
/// [`AbortReason`] instead of panicking.
pub struct Txn<'a> {
    footprint: &'a Footprint,
    view: &'a dyn ReadView,
    writes: WriteSet,
    value_bytes_max: usize,
    /// Letters sent, in send order; they leave only if the transaction commits.
    letters: Vec<Letter>,
    /// Letters this transaction consumed (a delivery), by outbox and number.
    consumed: Vec<(PartitionId, u64)>,
    /// Events published, in order: (stream, data).
    events: Vec<(String, Value)>,
}

/// What a committed transaction leaves besides its output: its writes, the letters it
/// sent and the letters it consumed.
#[derive(Debug, Default)]
pub struct Effects {
    /// The buffered writes, in key order.
    pub writes: WriteSet,
    /// Letters sent, in send order.
    pub letters: Vec<Letter>,
    /// Letters consumed, by outbox and number, in delivery order.
    pub consumed: Vec<(PartitionId, u64)>,
    /// Events published, in order: (stream, data).
    pub events: Vec<(String, Value)>,
}

impl<'a> Txn<'a> {
    /// A transaction over `view`, allowed to touch `footprint`, writing values of at most
    /// [`VALUE_BYTES_MAX_DEFAULT`] bytes.
    pub fn new(footprint: &'a Footprint, view: &'a dyn ReadView) -> Txn<'a> {
        Txn {
            footprint,
            view,
            writes: WriteSet::new(),
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            letters: Vec::new(),
            consumed: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Sets the largest value [`Txn::put`] accepts, in bytes. Every replica of a
    /// partition must use the same limit: it decides outcomes.
    pub fn with_value_bytes_max(mut self, value_bytes_max: usize) -> Txn<'a> {
        self.value_bytes_max = value_bytes_max;
        self
    }

    /// Runs procedure `P` inside this transaction, as its own footprint declared with
    /// [`CallFootprint::call`](crate::CallFootprint::call): its reads see this
    /// transaction's writes, its writes commit or roll back with it, and an abort it
    /// returns (propagated with `?`) aborts the whole transaction.
    pub fn call<P: crate::Procedure>(&mut self, args: P::Args) -> Result<P::Output, AbortReason> {
        P::execute(self, args)
    }

    /// Sends procedure `P` a letter: a one-way call with `args`, ordered as a transaction
    /// of its own in a later epoch if this one commits (and never if it aborts), consumed
    /// exactly once, after every letter this partition sent before it. `P` usually belongs
    /// to another service; its footprint comes from `args` alone, as for a client's call.
    ///
    /// A letter whose procedure the cluster does not run, or whose arguments give no
    /// footprint, aborts this transaction with [`AbortReason::BadLetter`].
    pub fn send<P: crate::Procedure>(&mut self, args: &P::Args) -> Result<(), AbortReason> {
        self.letters.push(Letter {
            procedure: P::NAME.to_owned(),
            args: codec::encode(args),
        });
        Ok(())
    }

    /// Publishes `event` (as MessagePack) to the egress stream `stream`, if this
    /// transaction commits. Consumers read it from its offset (the transaction's position
    /// and the event's index among its events) with `client.subscribe(stream, from)`.
    ///
    /// Aborts with [`AbortReason::BadKey`] for a stream name of 0 or more than 256 bytes,
    /// and with [`AbortReason::ValueTooLarge`] for an event over the value limit.
    pub fn publish<T: Serialize>(&mut self, stream: &str, event: &T) -> Result<(), AbortReason> {
        detflow_protocol::stream::check_stream_name(stream).map_err(AbortReason::BadKey)?;
        let data = codec::encode(event);
        if data.len() > self.value_bytes_max {
            return Err(AbortReason::ValueTooLarge {
                key: detflow_protocol::stream::stream_prefix(stream),
                bytes: data.len(),
                max: self.value_bytes_max,
            });
        }
        self.events.push((stream.to_owned(), data));
        Ok(())
    }

    /// Runs `body` as a sub-transaction confined to `footprint`: it sees this
    /// transaction's writes; its writes and letters join this transaction only if it
    /// returns `Ok`, so an abort inside rolls back the sub-transaction alone.
    pub(crate) fn nested<T>(
        &mut self,
        footprint: &Footprint,
        body: impl FnOnce(&mut Txn<'_>) -> Result<T, AbortReason>,
    ) -> Result<T, AbortReason> {
        let (result, effects) = {
            let overlay = Overlay {
                base: self.view,
                writes: &self.writes,
            };
            let mut sub = Txn::new(footprint, &overlay).with_value_bytes_max(self.value_bytes_max);
            let result = body(&mut sub);
            (result, sub.into_effects())
        };
        if result.is_ok() {
            self.writes.extend(effects.writes);
            self.letters.extend(effects.letters);
            self.consumed.extend(effects.consumed);
            self.events.extend(effects.events);
        }
        result
    }

    /// The letters sent so far.
    pub(crate) fn letters(&self) -> &[Letter] {
        &self.letters
    }

    /// Notes that this transaction consumes letter `seq` of `from`'s outbox.
    pub(crate) fn consume(&mut self, from: PartitionId, seq: u64) {
        self.consumed.push((from, seq));
    }

    /// The value of `key`, seeing this transaction's own writes.
    pub fn get(&self, key: &Key) -> Result<Option<Value>, AbortReason> {
        if !self.footprint.allows_read(key) {
            return Err(outside(key, false));
        }
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(unwind::engine(|| self.view.get(key))),
        }
    }

    /// The value of `key` decoded from MessagePack.
    pub fn get_as<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>, AbortReason> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|e| AbortReason::BadValue {
                    key: key.clone(),
                    error: e.0,
                }),
        }
    }

    /// Sets `key` to `value`.
    ///
    /// Aborts with [`AbortReason::BadKey`] if `key` is not a valid key (the node could not
    /// load it again after a restart) and with [`AbortReason::ValueTooLarge`] if `value`
    /// is over the limit.
    pub fn put(&mut self, key: Key, value: Value) -> Result<(), AbortReason> {
        if !self.footprint.allows_write(&key) {
            return Err(outside(&key, true));
        }
        check_key(&key)?;
        if value.len() > self.value_bytes_max {
            return Err(AbortReason::ValueTooLarge {
                key,
                bytes: value.len(),
                max: self.value_bytes_max,
            });
        }
        self.writes.insert(key, Some(value));
        Ok(())
    }

    /// Sets `key` to `value` encoded as MessagePack.
    pub fn put_as<T: Serialize>(&mut self, key: Key, value: &T) -> Result<(), AbortReason> {
        self.put(key, codec::encode(value))
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &Key) -> Result<(), AbortReason> {
        if !self.footprint.allows_write(key) {
            return Err(outside(key, true));
        }
        // A malformed key is never stored, so deleting one would change nothing; refusing
        // it keeps every key in a write set valid.
        check_key(key)?;
        self.writes.insert(key.clone(), None);
        Ok(())
    }

    /// Every key under `prefix` with its value, ascending, seeing this transaction's own
    /// writes. The footprint must declare a prefix covering `prefix`.
    pub fn scan_prefix(&self, prefix: &Key) -> Result<Vec<(Key, Value)>, AbortReason> {
        if !self.footprint.allows_scan(prefix) {
            return Err(outside(prefix, false));
        }
        let overlay = Overlay {
            base: self.view,
            writes: &self.writes,
        };
        Ok(unwind::engine(|| overlay.scan_prefix(prefix)))
    }

    /// The first key under `prefix` with its value, seeing this transaction's own writes
    /// (TPC-C Delivery's oldest new order). The footprint must declare a prefix covering
    /// `prefix`.
    pub fn first_in(&self, prefix: &Key) -> Result<Option<(Key, Value)>, AbortReason> {
        if !self.footprint.allows_scan(prefix) {
            return Err(outside(prefix, false));
        }
        let mut own = self
            .writes
            .range((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));
        if own.next().is_some() {
            // Rare (a transaction scanning what it wrote): merge in full.
            return Ok(self.scan_prefix(prefix)?.into_iter().next());
        }
        Ok(unwind::engine(|| self.view.first_in(prefix)))
    }

    /// The buffered writes, in key order.
    pub fn into_writes(self) -> WriteSet {
        self.writes
    }

    /// The writes, the letters sent and the letters consumed.
    pub fn into_effects(self) -> Effects {
        Effects {
            writes: self.writes,
            letters: self.letters,
            consumed: self.consumed,
            events: self.events,
        }
    }
}

/// A transaction's state as a sub-transaction reads it: the committed view under the
/// outer transaction's writes.
struct Overlay<'v> {
    base: &'v dyn ReadView,
    writes: &'v WriteSet,
}

impl ReadView for Overlay<'_> {
    fn get(&self, key: &Key) -> Option<Value> {
        match self.writes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key),
        }
    }

    fn scan_prefix(&self, prefix: &Key) -> Vec<(Key, Value)> {
        let mut merged: BTreeMap<Key, Value> = self.base.scan_prefix(prefix).into_iter().collect();
        let own = self
            .writes
            .range((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));
        for (k, v) in own {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        merged.into_iter().collect()
    }
}

/// [`Key::validate`] as an abort. The message names the key in its readable form when it
/// decodes, and otherwise by its first bytes only: a malformed key may be long.
fn check_key(key: &Key) -> Result<(), AbortReason> {
    key.validate().map_err(|e| {
        let shown = key.as_bytes().len().min(32);
        AbortReason::BadKey(format!(
            "{e} (key starts {:02x?})",
            &key.as_bytes()[..shown]
        ))
    })
}

fn outside(key: &Key, write: bool) -> AbortReason {
    AbortReason::OutsideFootprint {
        key: key.clone(),
        write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_the_footprint_and_sees_own_writes() {
        let a = Key::table("t").u64(1);
        let b = Key::table("t").u64(2);
        let fp = Footprint::new()
            .write(a.clone())
            .read(b.clone())
            .write_prefix(Key::table("p"));
        let mut state = BTreeMap::new();
        state.insert(b.clone(), vec![7]);
        state.insert(Key::table("p").u64(1), vec![1]);
        let mut tx = Txn::new(&fp, &state);
        assert_eq!(tx.get(&b), Ok(Some(vec![7])));
        assert_eq!(tx.put(b.clone(), vec![1]), Err(outside(&b, true)));
        let c = Key::table("t").u64(3);
        assert_eq!(tx.get(&c), Err(outside(&c, false)));
        tx.put(a.clone(), vec![9]).unwrap();
        assert_eq!(tx.get(&a), Ok(Some(vec![9])));
        tx.put(Key::table("p").u64(0), vec![0]).unwrap();
        tx.delete(&Key::table("p").u64(1)).unwrap();
        assert_eq!(
            tx.scan_prefix(&Key::table("p")),
            Ok(vec![(Key::table("p").u64(0), vec![0])])
        );
        assert!(tx.scan_prefix(&Key::table("t")).is_err());
        assert_eq!(tx.into_writes().len(), 3);
    }

    #[test]
    fn malformed_keys_and_large_values_abort_the_write() {
        let table = Key::table("t");
        let fp = Footprint::new().write_prefix(table.clone());
        let state = BTreeMap::new();
        let mut tx = Txn::new(&fp, &state).with_value_bytes_max(4);
        // Covered by the prefix, but a stray byte follows the last element.
        let mut bytes = table.clone().u64(5).as_bytes().to_vec();
        bytes.push(0x77);
        let stray = Key::from_bytes(bytes).unwrap_err();
        assert!(matches!(
            stray,
            detflow_protocol::key::KeyError::UnknownTag { .. }
        ));
        // Build it the only way a client can: by deserializing raw bytes.
        let mut raw = table.clone().u64(5).as_bytes().to_vec();
        raw.push(0x77);
        let forged: Key =
            codec::decode(&codec::encode(&detflow_protocol::bin::Blob(&raw))).unwrap();
        assert!(matches!(
            tx.put(forged.clone(), vec![1]),
            Err(AbortReason::BadKey(_))
        ));
        assert!(matches!(tx.delete(&forged), Err(AbortReason::BadKey(_))));
        let key = table.u64(1);
        assert_eq!(
            tx.put(key.clone(), vec![0; 5]),
            Err(AbortReason::ValueTooLarge {
                key: key.clone(),
                bytes: 5,
                max: 4
            })
        );
        tx.put(key.clone(), vec![0; 4]).unwrap();
        assert_eq!(tx.into_writes().len(), 1);
    }

    #[test]
    fn undecodable_values_abort() {
        let a = Key::table("t").u64(1);
        let fp = Footprint::new().read(a.clone());
        let mut state = BTreeMap::new();
        state.insert(a.clone(), vec![0xc1]);
        let tx = Txn::new(&fp, &state);
        assert!(matches!(
            tx.get_as::<u64>(&a),
            Err(AbortReason::BadValue { .. })
        ));
    }
}
