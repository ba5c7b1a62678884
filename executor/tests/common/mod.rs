//! A few executors wired together in memory, and test procedures.

// Each test file uses part of the harness; a test helper fails the test on any error.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use detflow_executor::{Abort, Executor, Input, MemStore, Output, Procedure, Registry, Txn};
use detflow_protocol::{
    Batch, ClientId, Epoch, Footprint, Key, LOG_FORMAT_VERSION, Machine, NodeId, Owner,
    PartitionId, PartitionScheme, Plan, RequestSeq, Time, Transaction, TxnResult, codec,
};
use detflow_scheduler::{PartitionMap, schedule};
use std::sync::Arc;

/// Moves one unit from counter `.0` to counter `.1`; aborts if the source is empty.
pub struct Move;

impl Procedure for Move {
    const NAME: &'static str = "test.move";
    type Args = (Key, Key);
    type Output = u64;

    fn footprint((from, to): &(Key, Key)) -> Footprint {
        Footprint::new().write(from.clone()).write(to.clone())
    }

    fn execute(tx: &mut Txn<'_>, (from, to): (Key, Key)) -> Result<u64, Abort> {
        let a: u64 = tx.get_as(&from)?.unwrap_or(0);
        let b: u64 = tx.get_as(&to)?.unwrap_or(0);
        if a == 0 {
            return Err(Abort::User("source is empty".into()));
        }
        tx.put_as(from, &(a - 1))?;
        tx.put_as(to, &(b + 1))?;
        Ok(b + 1)
    }
}

/// Writes both counters, then panics with a message built from what it read.
pub struct Boom;

impl Procedure for Boom {
    const NAME: &'static str = "test.boom";
    type Args = (Key, Key);
    type Output = ();

    fn footprint((a, b): &(Key, Key)) -> Footprint {
        Footprint::new().write(a.clone()).write(b.clone())
    }

    fn execute(tx: &mut Txn<'_>, (a, b): (Key, Key)) -> Result<(), Abort> {
        let value: u64 = tx.get_as(&a)?.unwrap_or(0);
        tx.put_as(a, &1_000u64)?;
        tx.put_as(b, &1_000u64)?;
        let list: Vec<u64> = Vec::new();
        // An index out of bounds, as careless code on bad input would hit.
        let _ = list[value as usize];
        Ok(())
    }
}

/// The arguments of [`Tally`].
pub type TallyArgs = (Vec<Key>, Option<Key>, Key);

/// Reads exact keys and every row under a prefix, and writes how many rows and bytes it
/// saw to a sink key. Checks that the scan comes back in key order.
pub struct Tally;

impl Procedure for Tally {
    const NAME: &'static str = "test.tally";
    type Args = TallyArgs;
    type Output = (u64, u64);

    fn footprint((keys, prefix, sink): &TallyArgs) -> Footprint {
        let mut fp = keys
            .iter()
            .fold(Footprint::new(), |fp, k| fp.read(k.clone()));
        if let Some(p) = prefix {
            fp = fp.read_prefix(p.clone());
        }
        fp.write(sink.clone())
    }

    fn execute(tx: &mut Txn<'_>, (keys, prefix, sink): TallyArgs) -> Result<(u64, u64), Abort> {
        let (mut rows, mut bytes) = (0u64, 0u64);
        for key in &keys {
            if let Some(v) = tx.get(key)? {
                rows += 1;
                bytes += v.len() as u64;
            }
        }
        if let Some(p) = prefix {
            let scanned = tx.scan_prefix(&p)?;
            if !scanned.windows(2).all(|w| w[0].0 < w[1].0) {
                return Err(Abort::User("scan out of order".into()));
            }
            if tx.first_in(&p)? != scanned.first().cloned() {
                return Err(Abort::User("first_in disagrees with the scan".into()));
            }
            for (key, value) in &scanned {
                if tx.get(key)?.as_ref() != Some(value) {
                    return Err(Abort::User(format!("get({key}) disagrees with the scan")));
                }
            }
            rows += scanned.len() as u64;
            bytes += scanned.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
        }
        tx.put_as(sink, &(rows, bytes))?;
        Ok((rows, bytes))
    }
}

/// A call: procedure name, encoded arguments, footprint.
pub type Call = (&'static str, Vec<u8>, Footprint);

/// A call of `P`.
pub fn call<P: Procedure>(args: &P::Args) -> Call {
    (P::NAME, codec::encode(args), P::footprint(args))
}

/// Executors of every partition of a hashed scheme, and what routes between them.
pub struct Cluster {
    pub map: PartitionMap,
    pub registry: Arc<Registry>,
    pub executors: Vec<Executor<MemStore>>,
}

impl Cluster {
    /// `partitions` executors over empty stores, with the test procedures.
    pub fn new(partitions: u32) -> Cluster {
        let map = PartitionMap::new(PartitionScheme::hashed(partitions)).unwrap();
        let mut registry = Registry::new();
        registry
            .register::<Move>()
            .register::<Boom>()
            .register::<Tally>();
        let registry = Arc::new(registry);
        let executors = (0..partitions)
            .map(|p| {
                Executor::new(
                    PartitionId(p),
                    partitions,
                    registry.clone(),
                    MemStore::new(),
                )
            })
            .collect();
        Cluster {
            map,
            registry,
            executors,
        }
    }

    /// The `n`-th key `(table, i)` that partition `p` owns.
    pub fn key_on(&self, table: &str, p: u32, n: usize) -> Key {
        (0..)
            .map(|i| Key::table(table).u64(i))
            .filter(|k| self.map.owner(k) == Ok(Owner::Partition(PartitionId(p))))
            .nth(n)
            .unwrap()
    }

    /// The plans of epoch `epoch` holding `calls`, one per partition.
    pub fn plans(&self, epoch: u64, calls: &[Call]) -> Vec<Plan> {
        let txns = calls
            .iter()
            .zip(1..)
            .map(|((procedure, args, footprint), seq)| {
                Arc::new(Transaction {
                    client: ClientId(epoch),
                    seq: RequestSeq(seq),
                    gateway: NodeId(9),
                    procedure: (*procedure).into(),
                    args: args.clone(),
                    footprint: footprint.clone(),
                })
            })
            .collect();
        let batch = Batch {
            version: LOG_FORMAT_VERSION,
            epoch: Epoch(epoch),
            txns,
        };
        schedule(&batch, &self.map).unwrap()
    }

    /// Feeds one input to partition `p`.
    pub fn feed(&mut self, p: u32, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        self.executors[p as usize].handle(Time::ZERO, input, &mut out);
        out
    }

    /// Delivers remote reads, starting with `pending` (outputs of the partition named
    /// first), until none are left; every other output, with the partition that emitted it.
    pub fn settle(&mut self, pending: Vec<(u32, Output)>) -> Vec<(u32, Output)> {
        let mut queue = std::collections::VecDeque::from(pending);
        let mut rest = Vec::new();
        while let Some((from, output)) = queue.pop_front() {
            match output {
                Output::SendReads { to, reads } => {
                    let p = to.partition.0;
                    let out = self.feed(p, Input::RemoteReads(reads));
                    queue.extend(out.into_iter().map(|o| (p, o)));
                }
                other => rest.push((from, other)),
            }
        }
        rest
    }

    /// Feeds every plan (in the order of `order`), delivering reads as they come; the
    /// results reported, in position order.
    pub fn run(&mut self, plans: Vec<Plan>, order: &[u32]) -> Vec<TxnResult> {
        let mut plans: Vec<Option<Plan>> = plans.into_iter().map(Some).collect();
        let mut results = Vec::new();
        for &p in order {
            let plan = plans[p as usize].take().unwrap();
            let out = self.feed(p, Input::Plan(plan));
            let rest = self.settle(out.into_iter().map(|o| (p, o)).collect());
            results.extend(rest.into_iter().filter_map(|(_, o)| match o {
                Output::Result { result, .. } => Some(result),
                _ => None,
            }));
        }
        results.sort_by_key(|r| r.position);
        results
    }

    /// Counter `key`, as `p` stores it.
    pub fn counter(&self, p: u32, key: &Key) -> Option<u64> {
        detflow_executor::Store::get(self.executors[p as usize].store(), key)
            .map(|v| codec::decode(&v).unwrap())
    }
}
