//! YCSB-T: transactions of read-modify-writes over a range-partitioned table.
//!
//! Record `i` (`0..keys`) is the key `("ycsb", i)` holding a MessagePack [`YcsbRecord`]:
//! a counter and `value_bytes` of padding. The table is range-partitioned so that
//! partition `p` of `P` owns records `p * keys / P .. (p + 1) * keys / P`; the generator
//! therefore decides how many partitions a transaction touches.
//!
//! A transaction ([`Rmw`], `ycsb.rmw`) reads `ops` distinct records and increments each
//! counter. With probability `multi_partition_fraction` (and more than one partition) its
//! records come from two distinct partitions, half from each; otherwise all come from one.
//! Within a partition records are drawn uniformly or, with `theta`, Zipfian: the first
//! records of each partition's range are the hot ones. [`Read`] (`ycsb.read`) reads records
//! without writing, for a read-only share of the mix.
//!
//! Invariants ([`Ycsb::check`]): every record exists with its padding intact, and its
//! counter equals the number of committed read-modify-writes that incremented it, so the
//! counters sum to the total of committed operations.

use crate::zipf::Zipf;
use crate::{
    Answer, Executed, Findings, LiveCheck, Request, Violation, Workload, committed_output,
    table_rows,
};
use detflow_executor::{Abort, FieldType, OrOverflow, Procedure, Service, Txn};
use detflow_protocol::{
    DetRng, Elem, Footprint, Key, Outcome, PartitionScheme, TableRule, Value, codec,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// The table of records.
pub const TABLE: &str = "ycsb";

/// The key of record `i`: `("ycsb", i)`.
pub fn record_key(i: u64) -> Key {
    Key::table(TABLE).u64(i)
}

/// The padding record `i` is loaded with: `value_bytes` copies of a letter that depends on
/// `i`, so a record moved to another key is noticed.
pub fn padding(i: u64, value_bytes: usize) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; value_bytes]
}

/// YCSB-T's size, skew and mix.
#[derive(Clone, Debug, PartialEq)]
pub struct YcsbConfig {
    /// Number of records, `0..keys`. Default 10 000.
    pub keys: u64,
    /// Padding bytes per record. Default 100.
    pub value_bytes: usize,
    /// Distinct records per transaction; at least 1 and at most the smallest partition's
    /// record count. Default 10.
    pub ops: usize,
    /// Zipfian skew in `[0, 1)` within a partition's range, or `None` for uniform.
    /// Default `Some(0.99)`, YCSB's.
    pub theta: Option<f64>,
    /// Probability that a transaction spans two partitions (when there are two). Default 0.1.
    pub multi_partition_fraction: f64,
    /// Probability that a transaction is a read-only [`Read`]. Default 0.
    pub read_only_fraction: f64,
    /// Number of partitions the records are split over; at least 1. Default 1.
    pub partitions: u32,
}

impl Default for YcsbConfig {
    fn default() -> YcsbConfig {
        YcsbConfig {
            keys: 10_000,
            value_bytes: 100,
            ops: 10,
            theta: Some(0.99),
            multi_partition_fraction: 0.1,
            read_only_fraction: 0.0,
            partitions: 1,
        }
    }
}

/// The stored value of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct YcsbRecord {
    /// How many committed read-modify-writes incremented the record.
    pub counter: u64,
    /// Padding, to give the record its configured size (MessagePack `bin`).
    #[serde(with = "detflow_protocol::bin::bytes")]
    pub pad: Vec<u8>,
}

/// The YCSB-T workload.
#[derive(Clone, Debug)]
pub struct Ycsb {
    config: YcsbConfig,
    /// `bounds[p]..bounds[p + 1]` are partition `p`'s records.
    bounds: Vec<u64>,
    /// A sampler per distinct partition size, when Zipfian.
    zipfs: BTreeMap<u64, Zipf>,
}

impl Ycsb {
    /// YCSB-T described by `config`. Precomputes the Zipfian constants, in time linear in
    /// the records per partition.
    ///
    /// # Panics
    ///
    /// If the config breaks one of the bounds its fields document, e.g. a partition would
    /// own fewer than `ops` records.
    pub fn new(config: YcsbConfig) -> Ycsb {
        assert!(config.partitions >= 1, "at least one partition");
        assert!(
            config.ops >= 1,
            "a transaction needs at least one operation"
        );
        assert!(
            (0.0..=1.0).contains(&config.multi_partition_fraction)
                && (0.0..=1.0).contains(&config.read_only_fraction),
            "fractions must be in [0, 1]"
        );
        let partitions = u64::from(config.partitions);
        let bounds: Vec<u64> = (0..=partitions)
            .map(|p| (u128::from(p) * u128::from(config.keys) / u128::from(partitions)) as u64)
            .collect();
        let smallest = config.keys / partitions;
        assert!(
            smallest >= config.ops as u64,
            "{} records over {} partitions leave {smallest} per partition, fewer than ops = {}",
            config.keys,
            config.partitions,
            config.ops
        );
        let mut zipfs = BTreeMap::new();
        if let Some(theta) = config.theta {
            for w in bounds.windows(2) {
                let size = w[1] - w[0];
                zipfs.entry(size).or_insert_with(|| Zipf::new(size, theta));
            }
        }
        Ycsb {
            config,
            bounds,
            zipfs,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &YcsbConfig {
        &self.config
    }

    /// The records partition `p` owns.
    pub fn partition_range(&self, p: u32) -> Range<u64> {
        let p = p as usize;
        self.bounds[p]..self.bounds[p + 1]
    }

    /// The partition that owns record `i` (`i < keys`).
    pub fn partition_of(&self, i: u64) -> u32 {
        // The number of partition starts at or below `i`, minus partition 0's.
        (self.bounds[1..self.bounds.len() - 1].partition_point(|b| *b <= i)) as u32
    }

    /// The split keys of the range rule: the first key of partitions `1..P`.
    pub fn splits(&self) -> Vec<Key> {
        self.bounds[1..self.bounds.len() - 1]
            .iter()
            .map(|b| record_key(*b))
            .collect()
    }

    /// Draws `count` records of partition `p` not yet in `chosen`, adding them.
    fn draw_distinct(&self, rng: &mut DetRng, p: u32, count: usize, chosen: &mut BTreeSet<u64>) {
        /// Redraws before falling back to the next free record, which keeps the loop
        /// bounded when the range is nearly exhausted.
        const REDRAWS_MAX: u32 = 32;
        let range = self.partition_range(p);
        let size = range.end - range.start;
        let zipf = self.zipfs.get(&size);
        let draw = |rng: &mut DetRng| match zipf {
            Some(z) => range.start + z.sample(rng),
            None => range.start + rng.below(size),
        };
        for _ in 0..count {
            let mut record = draw(rng);
            let mut redraws = 0;
            while chosen.contains(&record) && redraws < REDRAWS_MAX {
                record = draw(rng);
                redraws += 1;
            }
            // `count` records fit in the range (checked in `new`), so a free one exists.
            while chosen.contains(&record) {
                record = if record + 1 == range.end {
                    range.start
                } else {
                    record + 1
                };
            }
            chosen.insert(record);
        }
    }
}

impl Workload for Ycsb {
    fn name(&self) -> &'static str {
        "ycsb"
    }

    fn services(&self) -> Vec<Service> {
        let records = crate::table_in(&self.scheme(), TABLE)
            .key("id", FieldType::U64)
            .column("counter", FieldType::U64)
            .column("pad", FieldType::Bytes);
        vec![
            Service::new("ycsb")
                .table(records)
                .procedure::<Rmw>()
                .procedure::<Read>(),
        ]
    }

    fn scheme(&self) -> PartitionScheme {
        PartitionScheme::hashed(self.config.partitions).table(
            TABLE,
            TableRule::Range {
                splits: self.splits(),
            },
        )
    }

    fn load(&self) -> Vec<(Key, Value)> {
        // Ascending ids give ascending keys: the u64 element is big-endian.
        (0..self.config.keys)
            .map(|i| {
                let record = YcsbRecord {
                    counter: 0,
                    pad: padding(i, self.config.value_bytes),
                };
                (record_key(i), codec::encode(&record))
            })
            .collect()
    }

    fn next_call(&mut self, rng: &mut DetRng) -> Request {
        let read_only =
            self.config.read_only_fraction > 0.0 && rng.chance(self.config.read_only_fraction);
        let partitions = self.config.partitions;
        let ops = self.config.ops;
        let mut chosen = BTreeSet::new();
        if partitions > 1 && rng.chance(self.config.multi_partition_fraction) {
            let first = rng.below(u64::from(partitions)) as u32;
            let mut second = rng.below(u64::from(partitions) - 1) as u32;
            if second >= first {
                second += 1;
            }
            self.draw_distinct(rng, first, ops.div_ceil(2), &mut chosen);
            self.draw_distinct(rng, second, ops / 2, &mut chosen);
        } else {
            let p = rng.below(u64::from(partitions)) as u32;
            self.draw_distinct(rng, p, ops, &mut chosen);
        }
        let keys: Vec<u64> = chosen.into_iter().collect();
        if read_only {
            Request::new(Read::NAME, codec::encode(&ReadArgs { keys }))
        } else {
            Request::new(Rmw::NAME, codec::encode(&RmwArgs { keys }))
        }
    }

    fn live_check(&self) -> Option<Box<dyn LiveCheck>> {
        Some(Box::new(LiveYcsb {
            keys: self.config.keys,
            // Indexed by record: the driver notes every commit, and the records are few.
            increments: vec![0; usize::try_from(self.config.keys).unwrap_or(0)],
            next_key: 0,
            mismatches: 0,
            failure: None,
        }))
    }

    fn check(&self, state: &BTreeMap<Key, Value>, log: &[Executed<'_>]) -> Result<(), Violation> {
        let mut findings = Findings::new("ycsb");
        let mut increments: BTreeMap<u64, u64> = BTreeMap::new();
        for (index, entry) in log.iter().enumerate() {
            if entry.procedure != Rmw::NAME || !matches!(entry.outcome, Outcome::Committed(_)) {
                continue;
            }
            match codec::decode::<RmwArgs>(entry.args) {
                Ok(args) => {
                    for i in args.keys {
                        *increments.entry(i).or_default() += 1;
                    }
                }
                Err(e) => findings.push(|| {
                    format!(
                        "committed rmw at log index {index} has bad arguments: {}",
                        e.0
                    )
                }),
            }
        }

        let (mut total, mut expected_total) = (0u128, 0u128);
        for i in 0..self.config.keys {
            let key = record_key(i);
            let expected = increments.get(&i).copied().unwrap_or(0);
            expected_total += u128::from(expected);
            let Some(bytes) = state.get(&key) else {
                findings.push(|| format!("record {key} is missing"));
                continue;
            };
            let record = match codec::decode::<YcsbRecord>(bytes) {
                Ok(record) => record,
                Err(e) => {
                    findings.push(|| format!("record {key} does not decode: {}", e.0));
                    continue;
                }
            };
            total += u128::from(record.counter);
            if record.counter != expected {
                findings.push(|| {
                    format!(
                        "record {key} has counter {}, but {expected} committed rmws incremented it",
                        record.counter
                    )
                });
            }
            if record.pad != padding(i, self.config.value_bytes) {
                findings.push(|| {
                    format!(
                        "record {key} has {} bytes of wrong padding, expected {} bytes of {:?}",
                        record.pad.len(),
                        self.config.value_bytes,
                        char::from(padding(i, 1)[0])
                    )
                });
            }
        }
        if total != expected_total {
            findings.push(|| {
                format!("counters sum to {total}, committed rmw operations to {expected_total}")
            });
        }
        for (key, _) in table_rows(state, TABLE) {
            let known = matches!(
                key.elems().as_deref(),
                Ok([_, Elem::U64(i)]) if *i < self.config.keys
            );
            if !known {
                findings.push(|| format!("unexpected key {key} in table {TABLE}"));
            }
        }
        for i in increments.keys().filter(|i| **i >= self.config.keys) {
            findings.push(|| format!("a committed rmw incremented record {i}, beyond the table"));
        }
        findings.finish()
    }
}

/// The record `i`, aborting if it does not exist.
fn record_of(tx: &Txn<'_>, i: u64) -> Result<YcsbRecord, Abort> {
    tx.get_as::<YcsbRecord>(&record_key(i))?
        .ok_or_else(|| Abort::User(format!("record {i} does not exist")))
}

/// YCSB's end-to-end check of a live cluster: every record's counter must equal the
/// read-modify-writes of it the cluster acknowledged.
struct LiveYcsb {
    /// Records `0..keys`.
    keys: u64,
    /// Acknowledged increments per record, indexed by record.
    increments: Vec<u64>,
    /// The first record the next read asks for.
    next_key: u64,
    /// Records whose counter differs from its acknowledged increments.
    mismatches: u64,
    /// Why the check failed for want of an answer, once it has.
    failure: Option<String>,
}

impl LiveYcsb {
    /// Records per read: a modest footprint per call.
    const READ_KEYS_MAX: u64 = 50;
}

impl LiveCheck for LiveYcsb {
    fn note_commit(&mut self, procedure: &str, args: &[u8], _output: &[u8]) {
        if procedure == Rmw::NAME
            && let Ok(a) = codec::decode::<RmwArgs>(args)
        {
            for k in a.keys {
                match usize::try_from(k)
                    .ok()
                    .and_then(|i| self.increments.get_mut(i))
                {
                    Some(n) => *n += 1,
                    None => {
                        self.failure.get_or_insert_with(|| {
                            format!(
                                "a committed call incremented record {k}, not among the {} records",
                                self.keys
                            )
                        });
                    }
                }
            }
        }
    }

    fn next_read(&mut self) -> Option<Request> {
        if self.failure.is_some() || self.next_key >= self.keys {
            return None;
        }
        let end = self.keys.min(self.next_key + Self::READ_KEYS_MAX);
        let keys: Vec<u64> = (self.next_key..end).collect();
        self.next_key = end;
        Some(Request::new(Read::NAME, codec::encode(&ReadArgs { keys })))
    }

    fn on_answer(&mut self, request: &Request, answer: Answer<'_>) {
        let read = committed_output("reading records", answer).and_then(|output| {
            let args = codec::decode::<ReadArgs>(&request.args)
                .map_err(|e| format!("the read's arguments do not decode: {}", e.0))?;
            let out = codec::decode::<ReadOutput>(output)
                .map_err(|e| format!("reading records: the output does not decode: {}", e.0))?;
            Ok((args.keys, out.counters))
        });
        match read {
            Ok((keys, counters)) => {
                if keys.len() != counters.len() {
                    self.failure = Some(format!(
                        "reading {} records returned {} counters",
                        keys.len(),
                        counters.len()
                    ));
                    return;
                }
                for (k, counter) in keys.iter().zip(counters) {
                    let acknowledged = usize::try_from(*k)
                        .ok()
                        .and_then(|i| self.increments.get(i))
                        .copied()
                        .unwrap_or(0);
                    if counter != acknowledged {
                        self.mismatches += 1;
                    }
                }
            }
            Err(e) => self.failure = Some(e),
        }
    }

    fn verdict(self: Box<Self>) -> Result<String, String> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        if self.mismatches > 0 {
            return Err(format!(
                "{} records differ from the acknowledged read-modify-writes",
                self.mismatches
            ));
        }
        Ok(format!(
            "every one of {} counters equals its acknowledged read-modify-writes",
            self.keys
        ))
    }
}

/// `ycsb.rmw`: increments the counter of each listed record.
///
/// A record listed twice is incremented twice.
#[derive(Clone, Copy, Debug)]
pub struct Rmw;

/// The arguments of [`Rmw`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmwArgs {
    /// The records (`i` of `("ycsb", i)`), ascending when generated.
    pub keys: Vec<u64>,
}

/// The output of [`Rmw`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmwOutput {
    /// The counters after incrementing, in the order of [`RmwArgs::keys`].
    pub counters: Vec<u64>,
}

impl Procedure for Rmw {
    const NAME: &'static str = "ycsb.rmw";
    type Args = RmwArgs;
    type Output = RmwOutput;

    fn footprint(args: &RmwArgs) -> Footprint {
        args.keys
            .iter()
            .fold(Footprint::new(), |fp, i| fp.write(record_key(*i)))
    }

    fn execute(tx: &mut Txn<'_>, args: RmwArgs) -> Result<RmwOutput, Abort> {
        let mut counters = Vec::with_capacity(args.keys.len());
        for i in args.keys {
            let mut record = record_of(tx, i)?;
            record.counter = record
                .counter
                .checked_add(1)
                .or_overflow(format_args!("counter of record {i}"))?;
            counters.push(record.counter);
            tx.put_as(record_key(i), &record)?;
        }
        Ok(RmwOutput { counters })
    }
}

/// `ycsb.read`: reads the counters of the listed records.
#[derive(Clone, Copy, Debug)]
pub struct Read;

/// The arguments of [`Read`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadArgs {
    /// The records (`i` of `("ycsb", i)`), ascending when generated.
    pub keys: Vec<u64>,
}

/// The output of [`Read`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOutput {
    /// The counters, in the order of [`ReadArgs::keys`].
    pub counters: Vec<u64>,
}

impl Procedure for Read {
    const NAME: &'static str = "ycsb.read";
    type Args = ReadArgs;
    type Output = ReadOutput;

    fn footprint(args: &ReadArgs) -> Footprint {
        args.keys
            .iter()
            .fold(Footprint::new(), |fp, i| fp.read(record_key(*i)))
    }

    fn execute(tx: &mut Txn<'_>, args: ReadArgs) -> Result<ReadOutput, Abort> {
        let counters = args
            .keys
            .into_iter()
            .map(|i| record_of(tx, i).map(|r| r.counter))
            .collect::<Result<_, _>>()?;
        Ok(ReadOutput { counters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use detflow_executor::serial::SerialExecutor;

    fn ycsb(partitions: u32, theta: Option<f64>) -> Ycsb {
        Ycsb::new(YcsbConfig {
            keys: 1_000,
            partitions,
            theta,
            multi_partition_fraction: 0.3,
            read_only_fraction: 0.2,
            ..YcsbConfig::default()
        })
    }

    /// The partition a range rule routes `key` to: the number of splits at or below it.
    fn routed(splits: &[Key], key: &Key) -> u32 {
        splits.partition_point(|s| s <= key) as u32
    }

    #[test]
    fn splits_give_each_partition_its_range() {
        let y = Ycsb::new(YcsbConfig {
            keys: 10,
            ops: 2,
            partitions: 3,
            ..YcsbConfig::default()
        });
        assert_eq!(y.splits(), vec![record_key(3), record_key(6)]);
        assert_eq!(
            (0..3).map(|p| y.partition_range(p)).collect::<Vec<_>>(),
            vec![0..3, 3..6, 6..10]
        );
        let TableRule::Range { splits } = &y.scheme().tables[0].1 else {
            panic!("ycsb is range-partitioned");
        };
        assert_eq!(y.scheme().partitions, 3);
        for i in 0..10 {
            let p = y.partition_of(i);
            assert!(y.partition_range(p).contains(&i));
            assert_eq!(routed(splits, &record_key(i)), p);
        }
        assert_eq!(Ycsb::new(YcsbConfig::default()).splits(), vec![]);
    }

    #[test]
    fn transactions_touch_one_or_two_partitions() {
        let mut y = ycsb(4, Some(0.99));
        let mut rng = DetRng::new(3);
        let (mut single, mut multi) = (0, 0);
        for _ in 0..2_000 {
            let call = y.next_call(&mut rng);
            let keys = match call.procedure {
                Rmw::NAME => codec::decode::<RmwArgs>(&call.args).unwrap().keys,
                _ => codec::decode::<ReadArgs>(&call.args).unwrap().keys,
            };
            assert_eq!(keys.len(), 10);
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "distinct and ascending"
            );
            let parts: BTreeSet<u32> = keys.iter().map(|i| y.partition_of(*i)).collect();
            match parts.len() {
                1 => single += 1,
                2 => {
                    multi += 1;
                    let per: Vec<usize> = parts
                        .iter()
                        .map(|p| keys.iter().filter(|i| y.partition_of(**i) == *p).count())
                        .collect();
                    assert_eq!(per, vec![5, 5]);
                }
                n => panic!("{n} partitions"),
            }
        }
        assert!(
            (500..700).contains(&multi),
            "{multi} multi-partition of {single}"
        );
    }

    #[test]
    fn tiny_partitions_still_get_distinct_keys() {
        let mut y = Ycsb::new(YcsbConfig {
            keys: 20,
            ops: 10,
            partitions: 2,
            multi_partition_fraction: 0.5,
            ..YcsbConfig::default()
        });
        let mut rng = DetRng::new(1);
        for _ in 0..200 {
            let keys = codec::decode::<RmwArgs>(&y.next_call(&mut rng).args)
                .unwrap()
                .keys;
            assert_eq!(keys.len(), 10);
        }
    }

    #[test]
    fn rmw_increments_and_missing_records_abort() {
        let y = ycsb(1, None);
        let registry = testkit::registry(&y);
        let mut serial = SerialExecutor::new(&registry, y.load().into_iter().collect());
        let args = codec::encode(&RmwArgs {
            keys: vec![3, 5, 3],
        });
        let txn = testkit::transaction(&registry, 1, Rmw::NAME, args);
        let counters = RmwOutput {
            counters: vec![1, 1, 2],
        };
        assert_eq!(
            serial.execute(&txn, None),
            Outcome::Committed(codec::encode_named(&counters))
        );
        let record: YcsbRecord = codec::decode(&serial.state()[&record_key(3)]).unwrap();
        assert_eq!(record.counter, 2);
        assert_eq!(record.pad, padding(3, 100));

        let before = serial.state().clone();
        let args = codec::encode(&RmwArgs {
            keys: vec![4, 1_000],
        });
        let txn = testkit::transaction(&registry, 2, Rmw::NAME, args);
        assert!(matches!(
            serial.execute(&txn, None),
            Outcome::Aborted(Abort::User(_))
        ));
        assert_eq!(serial.state(), &before);
    }

    #[test]
    fn generated_runs_pass_and_tampering_fails() {
        for (partitions, theta) in [(1, None), (3, Some(0.99)), (4, Some(0.5))] {
            let mut y = ycsb(partitions, theta);
            let run = testkit::run(&mut y, 21, 400);
            assert_eq!(run.check(&y), Ok(()));
            assert!(run.outcomes(Rmw::NAME).0 > 250);
            assert!(run.outcomes(Read::NAME).0 > 40);

            let mut state = run.state.clone();
            let key = record_key(7);
            let mut record: YcsbRecord = codec::decode(&state[&key]).unwrap();
            record.counter += 1;
            state.insert(key.clone(), codec::encode(&record));
            let err = y.check(&state, &run.executed()).unwrap_err();
            assert!(err.detail.contains("(\"ycsb\", 7) has counter"), "{err}");

            record.counter -= 1;
            record.pad.pop();
            state.insert(key.clone(), codec::encode(&record));
            let err = y.check(&state, &run.executed()).unwrap_err();
            assert!(err.detail.contains("wrong padding"), "{err}");

            let mut log = run.executed();
            let at = log
                .iter()
                .position(|e| {
                    e.procedure == Rmw::NAME && matches!(e.outcome, Outcome::Committed(_))
                })
                .unwrap();
            log.remove(at);
            assert!(y.check(&run.state, &log).is_err());
        }
    }

    #[test]
    fn generator_is_deterministic_and_skewed() {
        let draw = |seed| {
            let mut y = ycsb(2, Some(0.99));
            let mut rng = DetRng::new(seed);
            (0..500).map(|_| y.next_call(&mut rng)).collect::<Vec<_>>()
        };
        let calls = draw(5);
        assert_eq!(calls, draw(5));
        assert_ne!(calls, draw(6));
        let mut hits = BTreeMap::<u64, u32>::new();
        for call in &calls {
            let keys = match call.procedure {
                Rmw::NAME => codec::decode::<RmwArgs>(&call.args).unwrap().keys,
                _ => codec::decode::<ReadArgs>(&call.args).unwrap().keys,
            };
            for i in keys {
                *hits.entry(i).or_default() += 1;
            }
        }
        // The first record of each partition's range is the hottest.
        assert!(hits[&0] > 100 && hits[&500] > 100, "{hits:?}");
        assert!(hits.get(&499).copied().unwrap_or(0) < 20);
    }

    #[test]
    #[should_panic(expected = "fewer than ops")]
    fn rejects_partitions_smaller_than_a_transaction() {
        Ycsb::new(YcsbConfig {
            keys: 100,
            partitions: 11,
            ..YcsbConfig::default()
        });
    }
}
