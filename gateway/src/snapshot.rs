//! Snapshot reads at the gateway: which partitions to ask, at which epoch, and how their
//! answers make one consistent cut.
//!
//! - A `get` asks one replica of each partition that owns one of its keys. At an exact
//!   epoch that is one round. At `Latest`, each partition first reads at its own latest
//!   epoch; when they differ, those behind are asked again at the latest of them (they
//!   wait, bounded, to apply it), so every value of the answer comes from one epoch.
//! - A scan chunk reads one partition; a replicated table is read on partition 0 only (the
//!   others answer an empty chunk), so a scan over every partition sees each row once.
//! - `Epoch` resolves `Latest` over every partition: the oldest of their latest epochs,
//!   which each has applied. A client scanning several partitions fixes its epoch this way.
//!
//! A replica on the gateway's own node is asked first when there is one; otherwise replicas
//! are taken in turn, read by read. A partition whose replica has not answered within
//! [`SNAPSHOT_HEDGE_US`] is asked again at its next replica (the first answer counts), so a
//! dead or stalled replica costs a read that much, not the client's attempt. A read not
//! answered within [`SNAPSHOT_READ_DEADLINE_US`] is answered `Unavailable`.

use crate::Output;
use detflow_protocol::snapshot::{
    At, PartAt, PartOp, PartRows, SCAN_ROWS_MAX, SNAPSHOT_KEYS_MAX, SnapshotError, SnapshotOp,
    SnapshotPart, SnapshotRead, SnapshotReply, check_snapshot_key,
};
use detflow_protocol::{Epoch, ExecutorId, Key, NodeId, Owner, PartitionId, Placement, Time};
use detflow_scheduler::PartitionMap;
use std::collections::{BTreeMap, BTreeSet};

/// How long a snapshot read waits for every partition's answer: 3 s (an executor waits
/// up to 1 s for an epoch it has not applied, and a `Latest` get may take two rounds).
pub const SNAPSHOT_READ_DEADLINE_US: u64 = 3_000_000;

/// How long a partition's replica has to answer before the next replica is asked too:
/// 200 ms, well above a loopback or LAN round trip, well below a client's attempt timeout.
pub const SNAPSHOT_HEDGE_US: u64 = 200_000;

/// What the answer to a read is made of.
#[derive(Debug)]
enum Shape {
    /// A get: for each partition asked, the indices of its keys in the client's list.
    Get {
        keys: Vec<Key>,
        by_partition: BTreeMap<PartitionId, Vec<usize>>,
    },
    /// A scan chunk of one partition (`empty`: of a replicated table on a partition that
    /// does not serve it, answered with no rows at the epoch read).
    Scan { empty: bool },
    /// The epoch of every partition.
    Epoch,
}

/// A snapshot read waiting for its partitions' answers.
#[derive(Debug)]
struct Gather {
    reader: u64,
    at: PartAt,
    shape: Shape,
    /// What each partition asked was asked.
    ops: BTreeMap<PartitionId, PartOp>,
    /// The answers so far, by partition.
    parts: BTreeMap<PartitionId, SnapshotPart>,
    /// The replica last asked per partition, by its index in turn order.
    tries: BTreeMap<PartitionId, u64>,
    /// The epoch each partition was last asked at (the second round asks again).
    asked_at: BTreeMap<PartitionId, PartAt>,
    /// When the partitions still silent are asked at their next replica.
    hedge: Time,
    /// The epoch the second round of a `Latest` get asked for, once it did: answers at
    /// another epoch (a first-round answer delivered twice) are ignored.
    second_round: Option<Epoch>,
    deadline: Time,
}

/// The snapshot reads a gateway has in flight.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    reads: BTreeMap<u64, Gather>,
    deadlines: BTreeSet<(Time, u64)>,
    /// The reads' hedge times.
    hedges: BTreeSet<(Time, u64)>,
    next: u64,
    /// Snapshot reads answered with rows, an epoch, or an error other than `Unavailable`.
    pub(crate) answered: u64,
}

/// What a gateway lends its snapshot reads.
pub(crate) struct Context<'a> {
    pub(crate) me: NodeId,
    pub(crate) map: &'a PartitionMap,
    pub(crate) placement: &'a Placement,
    pub(crate) reads_max: usize,
}

impl Context<'_> {
    /// The replica of `partition` to ask on try `try_` of read `read`: the one on this
    /// node first, if there is one, then the others in turn.
    fn replica(&self, partition: PartitionId, read: u64, try_: u64) -> ExecutorId {
        let replicas = self.placement.replicas(partition);
        let n = replicas.len() as u64;
        let first = match replicas.iter().position(|r| *r == self.me) {
            Some(i) => i as u64,
            None => read % n,
        };
        let node = replicas[((first + try_) % n) as usize];
        ExecutorId { partition, node }
    }

    /// The partition that serves `key`: its owner, or partition 0 for a replicated table.
    fn partition_of(&self, key: &Key) -> Result<PartitionId, String> {
        match self.map.owner(key) {
            Ok(Owner::Partition(p)) => Ok(p),
            Ok(Owner::Replicated) => Ok(PartitionId(0)),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn refuse(reader: u64, why: String, out: &mut Vec<Output>) {
    out.push(Output::SnapshotAnswer {
        reader,
        reply: SnapshotReply::Failed(SnapshotError::Refused(why)),
    });
}

impl Snapshots {
    pub(crate) fn set_first_id(&mut self, first: u64) {
        self.next = first.saturating_sub(1);
    }

    /// The earliest deadline or hedge time of a read in flight.
    pub(crate) fn deadline(&self) -> Option<Time> {
        let deadline = self.deadlines.first().map(|(at, _)| *at);
        let hedge = self.hedges.first().map(|(at, _)| *at);
        [deadline, hedge].into_iter().flatten().min()
    }

    /// A client's snapshot read: checks it and asks the partitions involved.
    pub(crate) fn start(
        &mut self,
        cx: &Context<'_>,
        now: Time,
        reader: u64,
        read: SnapshotRead,
        out: &mut Vec<Output>,
    ) {
        if self.reads.len() >= cx.reads_max {
            out.push(Output::SnapshotAnswer {
                reader,
                reply: SnapshotReply::Failed(SnapshotError::Unavailable),
            });
            return;
        }
        let partitions = cx.map.partitions();
        let (shape, ops) = match read.op {
            SnapshotOp::Get(keys) => {
                if keys.is_empty() || keys.len() > SNAPSHOT_KEYS_MAX {
                    let why = format!(
                        "a get reads 1 to {SNAPSHOT_KEYS_MAX} keys, not {}",
                        keys.len()
                    );
                    return refuse(reader, why, out);
                }
                let mut by_partition: BTreeMap<PartitionId, Vec<usize>> = BTreeMap::new();
                for (i, key) in keys.iter().enumerate() {
                    let routed = check_snapshot_key(key).and_then(|()| cx.partition_of(key));
                    match routed {
                        Ok(p) => by_partition.entry(p).or_default().push(i),
                        Err(why) => return refuse(reader, format!("key {key}: {why}"), out),
                    }
                }
                let ops = by_partition
                    .iter()
                    .map(|(p, indices)| {
                        let mine = indices.iter().map(|i| keys[*i].clone()).collect();
                        (*p, PartOp::Get(mine))
                    })
                    .collect();
                (Shape::Get { keys, by_partition }, ops)
            }
            SnapshotOp::Scan {
                partition,
                range,
                after,
                limit,
            } => {
                if partition.0 >= partitions {
                    let why = format!("partition {partition} of {partitions}");
                    return refuse(reader, why, out);
                }
                let bounds = [Some(&range.prefix), range.from.as_ref(), range.to.as_ref()];
                for key in bounds.into_iter().flatten().chain(after.as_ref()) {
                    if let Err(why) = key.validate() {
                        return refuse(reader, format!("malformed key {key}: {why}"), out);
                    }
                }
                if let Err(why) = check_snapshot_key(&range.prefix) {
                    return refuse(reader, format!("scan prefix {}: {why}", range.prefix), out);
                }
                let replicated = matches!(cx.map.owner(&range.prefix), Ok(Owner::Replicated));
                let empty = replicated && partition.0 != 0;
                let op = match empty {
                    true => PartOp::Epoch,
                    false => PartOp::Scan {
                        range,
                        after,
                        limit: limit.min(SCAN_ROWS_MAX),
                    },
                };
                (Shape::Scan { empty }, BTreeMap::from([(partition, op)]))
            }
            SnapshotOp::Epoch => {
                let ops = (0..partitions)
                    .map(|p| (PartitionId(p), PartOp::Epoch))
                    .collect();
                (Shape::Epoch, ops)
            }
        };
        let at = match read.at {
            At::Latest { not_before } => PartAt::Latest { not_before },
            At::Epoch(e) => PartAt::Epoch(e),
        };
        self.next += 1;
        let id = self.next;
        for (partition, op) in &ops {
            out.push(Output::SnapshotQuery {
                to: cx.replica(*partition, id, 0),
                read: id,
                at,
                op: op.clone(),
            });
        }
        let deadline = now.plus_us(SNAPSHOT_READ_DEADLINE_US);
        self.deadlines.insert((deadline, id));
        let hedge = now.plus_us(SNAPSHOT_HEDGE_US);
        self.hedges.insert((hedge, id));
        let tries = ops.keys().map(|p| (*p, 0)).collect();
        let asked_at = ops.keys().map(|p| (*p, at)).collect();
        self.reads.insert(
            id,
            Gather {
                reader,
                at,
                shape,
                ops,
                parts: BTreeMap::new(),
                tries,
                asked_at,
                hedge,
                second_round: None,
                deadline,
            },
        );
    }

    /// A partition's answer to read `read`.
    pub(crate) fn part(
        &mut self,
        cx: &Context<'_>,
        read: u64,
        part: SnapshotPart,
        out: &mut Vec<Output>,
    ) {
        let Some(gather) = self.reads.get_mut(&read) else {
            return;
        };
        if !gather.ops.contains_key(&part.partition) {
            return;
        }
        if let (Some(want), Ok(rows)) = (gather.second_round, &part.answer)
            && rows.epoch().is_some_and(|e| e != want)
        {
            return;
        }
        if let Err(error) = &part.answer {
            let error = error.clone();
            return self.finish(read, SnapshotReply::Failed(error), out);
        }
        // The first replica to answer counts (a hedge may have asked two).
        gather.parts.entry(part.partition).or_insert(part);
        if gather.parts.len() < gather.ops.len() {
            return;
        }
        // Every partition answered: at one epoch, or (a `Latest` get) at several.
        let epochs: BTreeSet<Epoch> = gather
            .parts
            .values()
            .filter_map(|p| p.answer.as_ref().ok().and_then(PartRows::epoch))
            .collect();
        if epochs.len() > 1 {
            if gather.second_round.is_some() {
                // Every partition was asked at one epoch: a replica answered another.
                let why = "partitions answered at different epochs".to_owned();
                return self.finish(
                    read,
                    SnapshotReply::Failed(SnapshotError::Refused(why)),
                    out,
                );
            }
            let latest = *epochs.last().expect("several");
            gather.second_round = Some(latest);
            let behind: Vec<PartitionId> = gather
                .parts
                .iter()
                .filter(|(_, p)| p.answer.as_ref().ok().and_then(PartRows::epoch) != Some(latest))
                .map(|(partition, _)| *partition)
                .collect();
            for partition in behind {
                gather.parts.remove(&partition);
                gather.asked_at.insert(partition, PartAt::Epoch(latest));
                let try_ = gather.tries.get(&partition).copied().unwrap_or(0);
                out.push(Output::SnapshotQuery {
                    to: cx.replica(partition, read, try_),
                    read,
                    at: PartAt::Epoch(latest),
                    op: gather.ops[&partition].clone(),
                });
            }
            return;
        }
        let reply = assemble(gather, cx.map.partitions());
        self.finish(read, reply, out);
    }

    fn finish(&mut self, read: u64, reply: SnapshotReply, out: &mut Vec<Output>) {
        let Some(gather) = self.reads.remove(&read) else {
            return;
        };
        self.deadlines.remove(&(gather.deadline, read));
        self.hedges.remove(&(gather.hedge, read));
        self.answered += 1;
        out.push(Output::SnapshotAnswer {
            reader: gather.reader,
            reply,
        });
    }

    /// Asks the next replica of each partition still silent past its read's hedge time,
    /// and answers `Unavailable` to the reads past their deadline.
    pub(crate) fn expire(&mut self, cx: &Context<'_>, now: Time, out: &mut Vec<Output>) {
        while let Some(&(at, read)) = self.hedges.first()
            && at <= now
        {
            self.hedges.pop_first();
            let Some(gather) = self.reads.get_mut(&read) else {
                continue;
            };
            let silent: Vec<PartitionId> = gather
                .ops
                .keys()
                .filter(|p| !gather.parts.contains_key(p))
                .copied()
                .collect();
            for partition in silent {
                let try_ = gather.tries.entry(partition).or_default();
                *try_ += 1;
                out.push(Output::SnapshotQuery {
                    to: cx.replica(partition, read, *try_),
                    read,
                    at: gather.asked_at[&partition],
                    op: gather.ops[&partition].clone(),
                });
            }
            gather.hedge = now.plus_us(SNAPSHOT_HEDGE_US);
            self.hedges.insert((gather.hedge, read));
        }
        while let Some(&(at, read)) = self.deadlines.first()
            && at <= now
        {
            self.deadlines.pop_first();
            if let Some(gather) = self.reads.remove(&read) {
                self.hedges.remove(&(gather.hedge, read));
                out.push(Output::SnapshotAnswer {
                    reader: gather.reader,
                    reply: SnapshotReply::Failed(SnapshotError::Unavailable),
                });
            }
        }
    }
}

/// The answer made of every partition's part, all read at one epoch.
fn assemble(gather: &mut Gather, partitions: u32) -> SnapshotReply {
    let mut parts = std::mem::take(&mut gather.parts);
    match &gather.shape {
        Shape::Epoch => {
            // The oldest of the partitions' latest epochs is applied everywhere.
            let epoch = match gather.at {
                PartAt::Epoch(e) => e,
                PartAt::Latest { .. } => {
                    parts.values().map(|p| p.applied).min().unwrap_or_default()
                }
            };
            SnapshotReply::Epoch { epoch, partitions }
        }
        Shape::Scan { empty } => {
            let part = parts.into_values().next().expect("one partition");
            match (part.answer, empty) {
                (Ok(PartRows::Rows { epoch, rows, more }), false) => {
                    SnapshotReply::Rows { epoch, rows, more }
                }
                (Ok(_), true) => SnapshotReply::Rows {
                    epoch: match gather.at {
                        PartAt::Epoch(e) => e,
                        PartAt::Latest { .. } => part.applied,
                    },
                    rows: Vec::new(),
                    more: false,
                },
                (Ok(_), false) => SnapshotReply::Failed(SnapshotError::Refused(
                    "a partition answered a scan with something else".to_owned(),
                )),
                (Err(e), _) => SnapshotReply::Failed(e),
            }
        }
        Shape::Get { keys, by_partition } => {
            let mut values = vec![None; keys.len()];
            let mut epoch = Epoch(0);
            for (partition, indices) in by_partition {
                let Some(Ok(PartRows::Values {
                    epoch: e,
                    values: got,
                })) = parts.remove(partition).map(|p| p.answer)
                else {
                    return SnapshotReply::Failed(SnapshotError::Refused(
                        "a partition answered a get with something else".to_owned(),
                    ));
                };
                if got.len() != indices.len() {
                    return SnapshotReply::Failed(SnapshotError::Refused(
                        "a partition answered a get with another number of values".to_owned(),
                    ));
                }
                epoch = e;
                for (i, value) in indices.iter().zip(got) {
                    values[*i] = value;
                }
            }
            SnapshotReply::Values { epoch, values }
        }
    }
}
