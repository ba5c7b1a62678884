//! `kv.txn`: ad-hoc transactions of micro-operations over arbitrary keys.
//!
//! A [`KvTxn`] is a list of [`KvOp`]s run in order, each seeing the effects of the ones
//! before it; the transaction commits all of them or none. Its footprint is every key it
//! names, once: written if any operation writes it, else read. Build one with the builder
//! methods:
//!
//! ```
//! use detflow_workloads::kv::{self, KvTxn};
//! let txn = KvTxn::new()
//!     .get(kv::key(1))
//!     .append(kv::key(2), b"x".to_vec())
//!     .cas(kv::key(3), None, Some(b"first".to_vec()));
//! assert_eq!(txn.ops.len(), 3);
//! ```
//!
//! An append treats the stored value as a list of byte strings (MessagePack array of
//! `bin`, see [`encode_list`]), creating it when the key is absent.
//!
//! Keys come from the client as raw bytes. Each becomes a footprint entry, so a gateway
//! refuses a call naming a malformed key ([`Rejection::BadKey`]); should one reach
//! execution anyway (a log written before that check), a write to it aborts with
//! [`Abort::BadKey`] and a value over the executor's limit with [`Abort::ValueTooLarge`]
//! (an append included). Nothing malformed is ever stored.
//!
//! [`Rejection::BadKey`]: detflow_protocol::message::Rejection::BadKey
//!
//! The generated workload uses keys `("kv", i)` for `i` in `0..keys`: the first
//! `keys - register_keys` are *lists*, which only ever see appends and gets, and the last
//! `register_keys` are *registers*, which see puts, compare-and-sets, deletes and gets.
//! Like Elle's list-append generator, a generator retires a list after it appended to it
//! [`KvConfig::appends_per_key`] times and uses a fresh key in its place, `("kv", slot +
//! generation × keys)`: a list is rewritten whole on every append, so lists that grew for
//! the whole run would make throughput fall with the run's length, not with its faults.
//! Every generated appended value is unique, which makes lost, duplicated or reordered
//! appends visible ([`Kv::check`], after Jepsen's Elle list-append workload).

use crate::{Executed, Findings, Request, Violation, Workload, show_bytes, show_opt, table_rows};
use detflow_executor::{Abort, FieldType, Procedure, Service, Txn};
use detflow_protocol::codec::DecodeError;
use detflow_protocol::{
    Access, DetRng, Footprint, Key, KeySpec, Outcome, PartitionScheme, TableRule, Value, codec,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The table of the generated workload's keys.
pub const TABLE: &str = "kv";

/// The generated workload's key `i`: `("kv", i)`.
pub fn key(i: u64) -> Key {
    Key::table(TABLE).u64(i)
}

/// The stored form of a list: a MessagePack array of `bin`.
pub fn encode_list(items: &[Vec<u8>]) -> Value {
    #[derive(Serialize)]
    struct Ref<'a>(#[serde(with = "detflow_protocol::bin::list")] &'a [Vec<u8>]);
    codec::encode(&Ref(items))
}

/// A stored list, decoded. Also accepts arrays of arrays of integers (serde's default for
/// `Vec<Vec<u8>>`).
pub fn decode_list(bytes: &[u8]) -> Result<Vec<Vec<u8>>, DecodeError> {
    #[derive(Deserialize)]
    struct Owned(#[serde(with = "detflow_protocol::bin::list")] Vec<Vec<u8>>);
    codec::decode::<Owned>(bytes).map(|o| o.0)
}

/// One micro-operation of a [`KvTxn`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Appends `value` to the list at `key`, creating the list when `key` is absent. A
    /// stored value that is not a list aborts the transaction with [`Abort::BadValue`].
    Append {
        /// The list's key.
        key: Key,
        /// The element to append.
        #[serde(with = "detflow_protocol::bin::bytes")]
        value: Vec<u8>,
    },
    /// Compare-and-set: if the value of `key` is `expected` (`None`: absent), sets it to
    /// `new` (`None`: deletes it); otherwise the whole transaction aborts with
    /// [`Abort::User`] (`cas failed on <key>: ...`).
    Cas {
        /// The key.
        key: Key,
        /// The value required, `None` for absent.
        #[serde(with = "detflow_protocol::bin::option")]
        expected: Option<Vec<u8>>,
        /// The value to set, `None` to delete.
        #[serde(with = "detflow_protocol::bin::option")]
        new: Option<Vec<u8>>,
    },
    /// Removes `key` (absent keys included).
    Delete {
        /// The key.
        key: Key,
    },
    /// Reads `key`.
    Get {
        /// The key.
        key: Key,
    },
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Key,
        /// The value.
        #[serde(with = "detflow_protocol::bin::bytes")]
        value: Vec<u8>,
    },
}

impl KvOp {
    /// The key the operation touches.
    pub fn key(&self) -> &Key {
        match self {
            KvOp::Append { key, .. }
            | KvOp::Cas { key, .. }
            | KvOp::Delete { key }
            | KvOp::Get { key }
            | KvOp::Put { key, .. } => key,
        }
    }

    /// Whether the operation may write its key.
    pub fn writes(&self) -> bool {
        !matches!(self, KvOp::Get { .. })
    }
}

/// The arguments of `kv.txn`: operations run in order, all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTxn {
    /// The operations, in execution order.
    pub ops: Vec<KvOp>,
}

impl KvTxn {
    /// A transaction with no operations yet.
    pub fn new() -> KvTxn {
        KvTxn::default()
    }

    /// Adds a [`KvOp::Get`].
    pub fn get(mut self, key: Key) -> KvTxn {
        self.ops.push(KvOp::Get { key });
        self
    }

    /// Adds a [`KvOp::Put`].
    pub fn put(mut self, key: Key, value: Vec<u8>) -> KvTxn {
        self.ops.push(KvOp::Put { key, value });
        self
    }

    /// Adds a [`KvOp::Delete`].
    pub fn delete(mut self, key: Key) -> KvTxn {
        self.ops.push(KvOp::Delete { key });
        self
    }

    /// Adds a [`KvOp::Append`].
    pub fn append(mut self, key: Key, value: Vec<u8>) -> KvTxn {
        self.ops.push(KvOp::Append { key, value });
        self
    }

    /// Adds a [`KvOp::Cas`].
    pub fn cas(mut self, key: Key, expected: Option<Vec<u8>>, new: Option<Vec<u8>>) -> KvTxn {
        self.ops.push(KvOp::Cas { key, expected, new });
        self
    }
}

/// What one [`KvOp`] of a committed transaction observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRead {
    /// For [`KvOp::Put`] and [`KvOp::Delete`]: blind writes observe nothing.
    Done,
    /// For [`KvOp::Append`]: the whole list after appending.
    List(#[serde(with = "detflow_protocol::bin::list")] Vec<Vec<u8>>),
    /// For [`KvOp::Get`]: the value (`None`: absent). For [`KvOp::Cas`]: the value before
    /// the swap, which equals `expected`.
    Value(#[serde(with = "detflow_protocol::bin::option")] Option<Vec<u8>>),
}

/// The output of `kv.txn`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvOutput {
    /// One entry per operation, in order.
    pub reads: Vec<KvRead>,
}

/// `kv.txn`: runs a [`KvTxn`].
#[derive(Clone, Copy, Debug)]
pub struct AdHoc;

impl Procedure for AdHoc {
    const NAME: &'static str = "kv.txn";
    type Args = KvTxn;
    type Output = KvOutput;

    fn footprint(args: &KvTxn) -> Footprint {
        let mut fp = Footprint::new();
        for op in &args.ops {
            let access = if op.writes() {
                Access::Write
            } else {
                Access::Read
            };
            fp.add(KeySpec::Exact(op.key().clone()), access);
        }
        fp
    }

    fn execute(tx: &mut Txn<'_>, args: KvTxn) -> Result<KvOutput, Abort> {
        let mut reads = Vec::with_capacity(args.ops.len());
        for op in args.ops {
            let read = match op {
                KvOp::Append { key, value } => {
                    let mut list = match tx.get(&key)? {
                        None => Vec::new(),
                        Some(bytes) => decode_list(&bytes).map_err(|e| Abort::BadValue {
                            key: key.clone(),
                            error: format!("append to a value that is not a list: {}", e.0),
                        })?,
                    };
                    list.push(value);
                    tx.put(key, encode_list(&list))?;
                    KvRead::List(list)
                }
                KvOp::Cas { key, expected, new } => {
                    let current = tx.get(&key)?;
                    if current != expected {
                        return Err(Abort::User(format!(
                            "cas failed on {key}: expected {}, found {}",
                            show_opt(expected.as_deref()),
                            show_opt(current.as_deref())
                        )));
                    }
                    match new {
                        Some(value) => tx.put(key, value)?,
                        None => tx.delete(&key)?,
                    }
                    KvRead::Value(current)
                }
                KvOp::Delete { key } => {
                    tx.delete(&key)?;
                    KvRead::Done
                }
                KvOp::Get { key } => KvRead::Value(tx.get(&key)?),
                KvOp::Put { key, value } => {
                    tx.put(key, value)?;
                    KvRead::Done
                }
            };
            reads.push(read);
        }
        Ok(KvOutput { reads })
    }
}

/// The generated workload's size and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Number of keys, `("kv", 0..keys)`; small, so transactions conflict. Default 32.
    pub keys: u64,
    /// How many of the keys (the last ones) are registers rather than lists; less than
    /// `keys`. Default 8.
    pub register_keys: u64,
    /// Transactions have `1..=ops_max` operations; at least 1. Default 4.
    pub ops_max: usize,
    /// Number of partitions of the scheme; at least 1. Default 1.
    pub partitions: u32,
    /// Appends a generator makes to one list before it moves on to a fresh key; at least
    /// 1. Default 32.
    pub appends_per_key: u64,
}

impl Default for KvConfig {
    fn default() -> KvConfig {
        KvConfig {
            keys: 32,
            register_keys: 8,
            ops_max: 4,
            partitions: 1,
            appends_per_key: 32,
        }
    }
}

/// The value every register is loaded with.
pub const REGISTER_INITIAL: &[u8] = b"init";

/// The kv workload: list-append and register transactions over few keys.
#[derive(Clone, Debug)]
pub struct Kv {
    config: KvConfig,
    /// Numbers the generated values, which makes each one unique.
    values_generated: u64,
    /// The value the generator last asked each register to hold, as a plausible `expected`
    /// for a compare-and-set (the generator does not see outcomes).
    registers_last: BTreeMap<u64, Option<Vec<u8>>>,
    /// Per list slot: its key's generation and the appends made to it so far.
    lists: Vec<(u64, u64)>,
}

impl Kv {
    /// The kv workload described by `config`.
    ///
    /// # Panics
    ///
    /// If the config breaks one of the bounds its fields document.
    pub fn new(config: KvConfig) -> Kv {
        assert!(
            config.register_keys < config.keys,
            "kv needs at least one list key"
        );
        assert!(config.ops_max >= 1, "ops_max must be at least 1");
        assert!(config.partitions >= 1, "at least one partition");
        assert!(
            config.appends_per_key >= 1,
            "appends_per_key must be at least 1"
        );
        let lists = vec![(0, 0); (config.keys - config.register_keys) as usize];
        let registers_last = (config.keys - config.register_keys..config.keys)
            .map(|i| (i, Some(REGISTER_INITIAL.to_vec())))
            .collect();
        Kv {
            config,
            values_generated: 0,
            registers_last,
            lists,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// Whether `i` is a register (else a list).
    fn is_register(&self, i: u64) -> bool {
        i >= self.config.keys - self.config.register_keys
    }

    /// A fresh value, `<tag><number>`, readable in violation details.
    fn fresh(&mut self, tag: char) -> Vec<u8> {
        self.values_generated += 1;
        format!("{tag}{}", self.values_generated).into_bytes()
    }

    /// The key list `slot` uses now.
    fn list_key(&self, slot: u64) -> Key {
        let (generation, _) = self.lists[slot as usize];
        key(slot + generation * self.config.keys)
    }

    /// The key for an append to list `slot`, retiring the slot's key once it has had its
    /// appends.
    fn append_key(&mut self, slot: u64) -> Key {
        let key = self.list_key(slot);
        let (generation, appends) = &mut self.lists[slot as usize];
        *appends += 1;
        if *appends == self.config.appends_per_key {
            *generation += 1;
            *appends = 0;
        }
        key
    }

    fn register(&self, rng: &mut DetRng) -> u64 {
        self.config.keys - self.config.register_keys + rng.below(self.config.register_keys)
    }

    fn next_op(&mut self, rng: &mut DetRng) -> KvOp {
        let lists = self.config.keys - self.config.register_keys;
        let mut roll = rng.below(100);
        if self.config.register_keys == 0 && roll >= 80 {
            roll = 0;
        }
        match roll {
            // 45%: append a unique value to a list.
            0..45 => {
                let slot = rng.below(lists);
                KvOp::Append {
                    key: self.append_key(slot),
                    value: self.fresh('a'),
                }
            }
            // 35%: read any key.
            45..80 => {
                let i = rng.below(self.config.keys);
                KvOp::Get {
                    key: if self.is_register(i) {
                        key(i)
                    } else {
                        self.list_key(i)
                    },
                }
            }
            // 10%: overwrite a register.
            80..90 => {
                let i = self.register(rng);
                let value = self.fresh('p');
                self.registers_last.insert(i, Some(value.clone()));
                KvOp::Put { key: key(i), value }
            }
            // 6%: compare-and-set a register, usually expecting what was last asked of it.
            90..96 => {
                let i = self.register(rng);
                let expected = if rng.chance(0.75) {
                    self.registers_last.get(&i).cloned().flatten()
                } else {
                    None
                };
                let new = if rng.chance(0.8) {
                    Some(self.fresh('c'))
                } else {
                    None
                };
                self.registers_last.insert(i, new.clone());
                KvOp::Cas {
                    key: key(i),
                    expected,
                    new,
                }
            }
            // 4%: delete a register.
            _ => {
                let i = self.register(rng);
                self.registers_last.insert(i, None);
                KvOp::Delete { key: key(i) }
            }
        }
    }
}

impl Workload for Kv {
    fn name(&self) -> &'static str {
        "kv"
    }

    /// The `kv` table: registers and lists by id. `kv.txn` is the operator's ad-hoc
    /// procedure: nodes refuse it unless their `[access]` rules name the tables it may
    /// touch, which may be any service's (`_sys` never).
    fn services(&self) -> Vec<Service> {
        let entries = crate::table_in(&self.scheme(), TABLE)
            .key("id", FieldType::U64)
            // Whatever `kv.txn` puts: a list of appends, or any value.
            .column("value", FieldType::Any);
        vec![
            Service::new("kv")
                .table(entries)
                .ad_hoc_procedure::<AdHoc>(),
        ]
    }

    fn scheme(&self) -> PartitionScheme {
        PartitionScheme::hashed(self.config.partitions).table(TABLE, TableRule::Hash { fields: 1 })
    }

    /// The registers, each holding [`REGISTER_INITIAL`]; lists start absent.
    fn load(&self) -> Vec<(Key, Value)> {
        (0..self.config.keys)
            .filter(|i| self.is_register(*i))
            .map(|i| (key(i), REGISTER_INITIAL.to_vec()))
            .collect()
    }

    fn next_call(&mut self, rng: &mut DetRng) -> Request {
        let ops = rng.range(1, self.config.ops_max as u64);
        let txn = KvTxn {
            ops: (0..ops).map(|_| self.next_op(rng)).collect(),
        };
        Request::new(AdHoc::NAME, codec::encode(&txn))
    }

    /// Walks the committed `kv.txn` transactions in log order against a model of every
    /// key, checking what each operation observed (gets and compare-and-sets see the
    /// latest committed value, appends the list so far), then compares the final state
    /// with the model. A key that only ever saw appends must hold exactly the
    /// concatenation of its committed appends, each appended value at most once.
    fn check(&self, state: &BTreeMap<Key, Value>, log: &[Executed<'_>]) -> Result<(), Violation> {
        let mut findings = Findings::new("kv");
        let mut history = History::new(self.load());
        for (index, entry) in log.iter().enumerate() {
            if entry.procedure != AdHoc::NAME {
                continue;
            }
            let Outcome::Committed(output) = entry.outcome else {
                continue;
            };
            match (
                codec::decode::<KvTxn>(entry.args),
                codec::decode::<KvOutput>(output),
            ) {
                (Ok(txn), Ok(output)) => history.replay(index, txn, output, &mut findings),
                (Err(e), _) | (_, Err(e)) => findings
                    .push(|| format!("log index {index}: committed txn does not decode: {}", e.0)),
            }
        }
        history.compare(state, &mut findings);
        findings.finish()
    }
}

/// What the committed `kv.txn` transactions imply, built by replaying them in log order.
struct History {
    /// Every key's value after the transactions so far.
    model: BTreeMap<Key, Value>,
    /// The keys that held nothing initially and saw only appends, with those appends.
    appends: BTreeMap<Key, Vec<Vec<u8>>>,
    /// The keys that held a value initially or saw a put, delete or compare-and-set.
    overwritten: BTreeSet<Key>,
}

impl History {
    fn new(initial: Vec<(Key, Value)>) -> History {
        let model: BTreeMap<Key, Value> = initial.into_iter().collect();
        History {
            overwritten: model.keys().cloned().collect(),
            model,
            appends: BTreeMap::new(),
        }
    }

    /// Applies the committed transaction at log `index`, checking what it observed.
    fn replay(&mut self, index: usize, txn: KvTxn, output: KvOutput, findings: &mut Findings) {
        if txn.ops.len() != output.reads.len() {
            findings.push(|| {
                format!(
                    "log index {index}: {} operations but {} reads",
                    txn.ops.len(),
                    output.reads.len()
                )
            });
            return;
        }
        for (op_index, (op, read)) in txn.ops.into_iter().zip(output.reads).enumerate() {
            let at = || format!("log index {index} op {op_index} on {}", op.key());
            match model_apply(&mut self.model, &op) {
                Ok(expected) if expected == read => {}
                Ok(expected) => findings.push(|| {
                    format!(
                        "{}: observed {}, expected {}",
                        at(),
                        show_read(&read),
                        show_read(&expected)
                    )
                }),
                Err(why) => findings.push(|| format!("{}: committed, but {why}", at())),
            }
            match op {
                KvOp::Append { key, value } => {
                    if !self.overwritten.contains(&key) {
                        self.appends.entry(key).or_default().push(value);
                    }
                }
                KvOp::Get { .. } => {}
                KvOp::Cas { key, .. } | KvOp::Delete { key } | KvOp::Put { key, .. } => {
                    self.appends.remove(&key);
                    self.overwritten.insert(key);
                }
            }
        }
    }

    /// Compares the final state with the history: append-only keys with the concatenation
    /// of their appends, every other key with the model.
    fn compare(&self, state: &BTreeMap<Key, Value>, findings: &mut Findings) {
        for (key, appended) in &self.appends {
            let Some(bytes) = state.get(key) else {
                findings.push(|| {
                    format!(
                        "list {key} is missing; {} values were appended",
                        appended.len()
                    )
                });
                continue;
            };
            match decode_list(bytes) {
                Ok(list) if list == *appended => {}
                Ok(list) => findings.push(|| format!("list {key}: {}", list_diff(&list, appended))),
                Err(e) => findings.push(|| format!("list {key} does not decode: {}", e.0)),
            }
        }
        let keys: BTreeSet<&Key> = table_rows(state, TABLE)
            .map(|(k, _)| k)
            .chain(self.model.keys())
            .collect();
        for key in keys.into_iter().filter(|k| !self.appends.contains_key(*k)) {
            let (actual, expected) = (state.get(key), self.model.get(key));
            if actual != expected {
                findings.push(|| {
                    format!(
                        "{key} holds {}, but the committed transactions leave {}",
                        show_opt(actual.map(Vec::as_slice)),
                        show_opt(expected.map(Vec::as_slice))
                    )
                });
            }
        }
    }
}

/// Applies a committed operation to the model; returns what it should have observed, or
/// why it could not have committed.
fn model_apply(model: &mut BTreeMap<Key, Value>, op: &KvOp) -> Result<KvRead, String> {
    match op {
        KvOp::Append { key, value } => {
            let mut list = match model.get(key) {
                None => Vec::new(),
                Some(bytes) => decode_list(bytes)
                    .map_err(|_| format!("the model holds a non-list {}", show_bytes(bytes)))?,
            };
            list.push(value.clone());
            model.insert(key.clone(), encode_list(&list));
            Ok(KvRead::List(list))
        }
        KvOp::Cas { key, expected, new } => {
            let current = model.get(key).cloned();
            if current != *expected {
                return Err(format!(
                    "the cas expected {} and the model holds {}",
                    show_opt(expected.as_deref()),
                    show_opt(current.as_deref())
                ));
            }
            match new {
                Some(v) => model.insert(key.clone(), v.clone()),
                None => model.remove(key),
            };
            Ok(KvRead::Value(current))
        }
        KvOp::Delete { key } => {
            model.remove(key);
            Ok(KvRead::Done)
        }
        KvOp::Get { key } => Ok(KvRead::Value(model.get(key).cloned())),
        KvOp::Put { key, value } => {
            model.insert(key.clone(), value.clone());
            Ok(KvRead::Done)
        }
    }
}

fn show_read(read: &KvRead) -> String {
    match read {
        KvRead::Done => "nothing".to_owned(),
        KvRead::List(list) => format!("a list of {}", list.len()),
        KvRead::Value(v) => show_opt(v.as_deref()),
    }
}

/// How `actual` differs from `expected`: lost, duplicated, foreign and reordered values.
fn list_diff(actual: &[Vec<u8>], expected: &[Vec<u8>]) -> String {
    let count = |list: &[Vec<u8>]| {
        let mut counts = BTreeMap::<Vec<u8>, usize>::new();
        for v in list {
            *counts.entry(v.clone()).or_default() += 1;
        }
        counts
    };
    let (have, want) = (count(actual), count(expected));
    let show = |values: Vec<&Vec<u8>>| {
        let shown: Vec<String> = values.iter().take(5).map(|v| show_bytes(v)).collect();
        let more = values.len().saturating_sub(5);
        if more > 0 {
            format!("[{}, and {more} more]", shown.join(", "))
        } else {
            format!("[{}]", shown.join(", "))
        }
    };
    let mut parts = vec![format!(
        "{} elements, but {} values were appended",
        actual.len(),
        expected.len()
    )];
    let lost: Vec<&Vec<u8>> = want
        .iter()
        .filter(|(v, n)| have.get(*v).copied().unwrap_or(0) < **n)
        .map(|(v, _)| v)
        .collect();
    if !lost.is_empty() {
        parts.push(format!("lost {}", show(lost)));
    }
    let duplicated: Vec<&Vec<u8>> = have
        .iter()
        .filter(|(v, n)| **n > 1 && **n > want.get(*v).copied().unwrap_or(0))
        .map(|(v, _)| v)
        .collect();
    if !duplicated.is_empty() {
        parts.push(format!("duplicated {}", show(duplicated)));
    }
    let foreign: Vec<&Vec<u8>> = have.keys().filter(|v| !want.contains_key(*v)).collect();
    if !foreign.is_empty() {
        parts.push(format!("never appended {}", show(foreign)));
    }
    if let Some(at) = actual.iter().zip(expected).position(|(a, e)| a != e) {
        parts.push(format!(
            "first difference at index {at}: {} where {} was appended",
            show_bytes(&actual[at]),
            show_bytes(&expected[at])
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use detflow_executor::Registry;
    use detflow_executor::serial::SerialExecutor;

    fn run_one(serial: &mut SerialExecutor<'_>, registry: &Registry, txn: &KvTxn) -> Outcome {
        let txn = testkit::transaction(registry, 1, AdHoc::NAME, codec::encode(txn));
        serial.execute(&txn, None)
    }

    fn committed(outcome: &Outcome) -> KvOutput {
        match outcome {
            Outcome::Committed(bytes) => codec::decode(bytes).unwrap(),
            Outcome::Aborted(reason) => panic!("aborted: {reason}"),
        }
    }

    #[test]
    fn footprint_names_each_key_once_with_its_strongest_access() {
        let txn = KvTxn::new()
            .get(key(1))
            .get(key(2))
            .append(key(2), vec![1])
            .get(key(1))
            .delete(key(3));
        let fp = AdHoc::footprint(&txn);
        assert_eq!(
            fp.entries,
            vec![
                (KeySpec::Exact(key(1)), Access::Read),
                (KeySpec::Exact(key(2)), Access::Write),
                (KeySpec::Exact(key(3)), Access::Write),
            ]
        );
    }

    #[test]
    fn ops_see_earlier_ops_and_report_what_they_observed() {
        let kv = Kv::new(KvConfig::default());
        let registry = testkit::registry(&kv);
        let mut serial = SerialExecutor::new(&registry, BTreeMap::new());
        let (a, b) = (key(1), key(2));
        let txn = KvTxn::new()
            .get(a.clone())
            .append(a.clone(), b"x".to_vec())
            .append(a.clone(), b"y".to_vec())
            .put(b.clone(), b"v".to_vec())
            .cas(b.clone(), Some(b"v".to_vec()), Some(b"w".to_vec()))
            .get(b.clone())
            .delete(b.clone())
            .get(b.clone());
        let output = committed(&run_one(&mut serial, &registry, &txn));
        assert_eq!(
            output.reads,
            vec![
                KvRead::Value(None),
                KvRead::List(vec![b"x".to_vec()]),
                KvRead::List(vec![b"x".to_vec(), b"y".to_vec()]),
                KvRead::Done,
                KvRead::Value(Some(b"v".to_vec())),
                KvRead::Value(Some(b"w".to_vec())),
                KvRead::Done,
                KvRead::Value(None),
            ]
        );
        assert_eq!(
            decode_list(&serial.state()[&a]).unwrap(),
            vec![b"x".to_vec(), b"y".to_vec()]
        );
        assert!(!serial.state().contains_key(&b));
    }

    #[test]
    fn failed_cas_and_append_to_non_list_abort_everything() {
        let kv = Kv::new(KvConfig::default());
        let registry = testkit::registry(&kv);
        let mut state = BTreeMap::new();
        state.insert(key(1), b"plain".to_vec());
        let mut serial = SerialExecutor::new(&registry, state.clone());

        let txn =
            KvTxn::new()
                .put(key(2), b"v".to_vec())
                .cas(key(1), Some(b"other".to_vec()), None);
        match run_one(&mut serial, &registry, &txn) {
            Outcome::Aborted(Abort::User(msg)) => {
                assert!(msg.starts_with("cas failed on (\"kv\", 1)"), "{msg}");
                assert!(msg.contains("\"plain\""), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        let txn = KvTxn::new()
            .put(key(2), b"v".to_vec())
            .append(key(1), b"x".to_vec());
        let outcome = run_one(&mut serial, &registry, &txn);
        assert!(
            matches!(outcome, Outcome::Aborted(Abort::BadValue { .. })),
            "{outcome:?}"
        );
        assert_eq!(serial.state(), &state);

        let absent = KvTxn::new().cas(key(3), None, Some(b"new".to_vec()));
        let output = committed(&run_one(&mut serial, &registry, &absent));
        assert_eq!(output.reads, vec![KvRead::Value(None)]);
        assert_eq!(serial.state()[&key(3)], b"new".to_vec());
    }

    #[test]
    fn lists_encode_compactly_and_decode_plain_arrays() {
        let list = vec![vec![0xff; 10], vec![]];
        let bytes = encode_list(&list);
        assert_eq!(bytes.len(), 1 + 12 + 2);
        assert_eq!(decode_list(&bytes).unwrap(), list);
        assert_eq!(decode_list(&codec::encode(&list)).unwrap(), list);
        assert!(decode_list(b"plain").is_err());
    }

    #[test]
    fn a_generator_retires_a_list_after_its_appends() {
        let config = KvConfig {
            appends_per_key: 3,
            ..KvConfig::default()
        };
        let (keys, lists) = (config.keys, config.keys - config.register_keys);
        let mut kv = Kv::new(config);
        let mut rng = DetRng::new(11);
        let mut appends: BTreeMap<Key, u64> = BTreeMap::new();
        for _ in 0..2_000 {
            let txn: KvTxn = codec::decode(&kv.next_call(&mut rng).args).unwrap();
            for op in txn.ops {
                if let KvOp::Append { key, .. } = op {
                    *appends.entry(key).or_default() += 1;
                }
            }
        }
        assert!(appends.values().all(|n| *n <= 3), "{appends:?}");
        // Fresh keys never land on a register or on another slot's list.
        assert!(appends.len() as u64 > lists);
        let list_keys: BTreeSet<Key> = (0..keys * 1_000)
            .filter(|i| i % keys < lists)
            .map(key)
            .collect();
        assert!(appends.keys().all(|k| list_keys.contains(k)));
    }

    fn generated_run() -> (Kv, testkit::Run) {
        let mut kv = Kv::new(KvConfig::default());
        let run = testkit::run(&mut kv, 7, 500);
        (kv, run)
    }

    #[test]
    fn generated_runs_pass() {
        let (kv, run) = generated_run();
        assert_eq!(run.check(&kv), Ok(()));
        let (committed, aborted) = run.outcomes(AdHoc::NAME);
        assert!(
            committed > 400 && aborted > 5,
            "{committed} committed, {aborted} aborted"
        );
        let lists = (0..24).filter(|i| run.state.contains_key(&key(*i))).count();
        assert_eq!(lists, 24);
    }

    #[test]
    fn checker_rejects_lost_duplicated_and_reordered_appends() {
        let (kv, run) = generated_run();
        let log = run.executed();
        let list_key = key(5);
        let list = decode_list(&run.state[&list_key]).unwrap();
        assert!(list.len() > 3);

        let tamper = |f: &dyn Fn(&mut Vec<Vec<u8>>)| {
            let mut state = run.state.clone();
            let mut l = list.clone();
            f(&mut l);
            state.insert(list_key.clone(), encode_list(&l));
            kv.check(&state, &log).unwrap_err().detail
        };
        let lost = tamper(&|l| {
            l.remove(1);
        });
        assert!(
            lost.contains("list (\"kv\", 5)") && lost.contains("lost [\"a"),
            "{lost}"
        );
        let dup = tamper(&|l| l.push(l[0].clone()));
        assert!(dup.contains("duplicated"), "{dup}");
        let swapped = tamper(&|l| l.swap(0, 1));
        assert!(swapped.contains("first difference at index 0"), "{swapped}");

        let mut state = run.state.clone();
        let register = key(30);
        state.insert(register.clone(), b"bogus".to_vec());
        let detail = kv.check(&state, &log).unwrap_err().detail;
        assert!(detail.contains("(\"kv\", 30) holds \"bogus\""), "{detail}");
    }

    #[test]
    fn checker_rejects_stale_reads() {
        let (kv, run) = generated_run();
        // Rewrite the output of a committed get that saw an appended value to see nothing.
        let mut log = run.log.clone();
        let at = log
            .iter()
            .position(|(_, args, outcome)| {
                let txn: KvTxn = codec::decode(args).unwrap();
                let Outcome::Committed(out) = outcome else {
                    return false;
                };
                let out: KvOutput = codec::decode(out).unwrap();
                matches!(txn.ops[0], KvOp::Get { .. })
                    && matches!(out.reads[0], KvRead::Value(Some(_)))
            })
            .unwrap();
        let Outcome::Committed(out) = &log[at].2 else {
            unreachable!()
        };
        let mut out: KvOutput = codec::decode(out).unwrap();
        out.reads[0] = KvRead::Value(None);
        log[at].2 = Outcome::Committed(codec::encode_named(&out));
        let stale = testkit::Run {
            state: run.state.clone(),
            log,
        };
        let detail = stale.check(&kv).unwrap_err().detail;
        assert!(detail.contains(&format!("log index {at} op 0")), "{detail}");
    }

    #[test]
    fn generator_is_deterministic_and_values_are_unique() {
        let draw = |seed| {
            let mut kv = Kv::new(KvConfig::default());
            let mut rng = DetRng::new(seed);
            (0..300).map(|_| kv.next_call(&mut rng)).collect::<Vec<_>>()
        };
        let calls = draw(2);
        assert_eq!(calls, draw(2));
        assert_ne!(calls, draw(3));
        let mut appended = BTreeSet::new();
        let mut kinds = BTreeMap::<&str, usize>::new();
        for call in &calls {
            let txn: KvTxn = codec::decode(&call.args).unwrap();
            assert!((1..=4).contains(&txn.ops.len()));
            for op in &txn.ops {
                let kind = match op {
                    KvOp::Append { key: k, value } => {
                        assert!(appended.insert(value.clone()));
                        assert!(*k < key(24));
                        "append"
                    }
                    KvOp::Get { .. } => "get",
                    KvOp::Cas { key: k, .. }
                    | KvOp::Delete { key: k }
                    | KvOp::Put { key: k, .. } => {
                        assert!(*k >= key(24));
                        "register"
                    }
                };
                *kinds.entry(kind).or_default() += 1;
            }
        }
        assert!(kinds["append"] > kinds["get"] && kinds["get"] > kinds["register"]);
    }
}
