//! Snapshot readers: read the state at random epochs through any gateway while faults
//! strike, as `Client::snapshot` does: point reads of a few keys, at the latest epoch or an
//! older one, and whole-table scans, chunk by chunk and partition by partition, at one
//! epoch. The snapshots checker compares every answer with the serial state after its
//! epoch.

use super::*;
use detflow_protocol::snapshot::{
    At, ScanRange, SnapshotError, SnapshotOp, SnapshotRead, SnapshotReply,
};

/// How long a snapshot reader waits for an answer before it gives up on the read.
const SNAPSHOT_TIMEOUT_US: u64 = 4_000_000;

/// How far ahead of the latest epoch a read asks to be answered `NotYet`.
const FAR_AHEAD: u64 = 1_000_000;

/// Snapshot readers per run.
pub(super) const SNAPSHOT_READERS: u32 = 2;

/// One answered snapshot read, for the checker.
#[derive(Clone, Debug)]
pub(crate) enum SnapshotRecord {
    /// Values of keys at an epoch.
    Get {
        epoch: Epoch,
        keys: Vec<Key>,
        values: Vec<Option<Value>>,
    },
    /// Every row of a table at an epoch, over every partition.
    Scan {
        epoch: Epoch,
        prefix: Key,
        rows: Vec<(Key, Value)>,
    },
}

impl SnapshotRecord {
    pub(crate) fn epoch(&self) -> Epoch {
        match self {
            SnapshotRecord::Get { epoch, .. } | SnapshotRecord::Scan { epoch, .. } => *epoch,
        }
    }
}

/// A whole-table scan in progress.
#[derive(Clone, Debug)]
struct TableScan {
    prefix: Key,
    /// Fixed by the first step (`SnapshotOp::Epoch`).
    epoch: Option<Epoch>,
    partitions: u32,
    partition: u32,
    after: Option<Key>,
    limit: u32,
    rows: Vec<(Key, Value)>,
}

/// What the read in flight asked.
#[derive(Clone, Debug)]
enum Asked {
    Get { at: At, keys: Vec<Key> },
    ScanStep,
}

/// One snapshot reader.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotReader {
    rng: DetRng,
    asked: Option<(Time, Asked)>,
    scan: Option<TableScan>,
    /// The latest epoch a `Latest` read returned: later ones may not go back.
    latest: Epoch,
    /// The oldest readable epoch a partition last named.
    oldest_hint: Option<Epoch>,
    pub(crate) records: Vec<SnapshotRecord>,
    /// Answers that broke the contract as they came.
    pub(crate) failures: Vec<String>,
    /// Reads answered with an error, by kind, for the report.
    pub(crate) misses: u64,
}

impl SnapshotReader {
    pub(super) fn new(rng: DetRng) -> SnapshotReader {
        SnapshotReader {
            rng,
            asked: None,
            scan: None,
            latest: Epoch(0),
            oldest_hint: None,
            records: Vec::new(),
            failures: Vec::new(),
            misses: 0,
        }
    }

    /// When the reader first reads.
    pub(super) fn start_us(&mut self) -> u64 {
        self.rng.below(10_000)
    }
}

impl World {
    pub(super) fn on_snapshot_wake(&mut self, i: u32) {
        let reader = &self.snapshot_readers[i as usize];
        if let Some((started, _)) = &reader.asked
            && self.now.since_us(*started) < SNAPSHOT_TIMEOUT_US
        {
            return;
        }
        // A read that got no answer is given up (a scan starts over). With every fault
        // healed before it was sent, nothing excuses the silence.
        let healed_at = self.healed.then_some(self.healed_at);
        let reader = &mut self.snapshot_readers[i as usize];
        if let Some((started, _)) = reader.asked.take() {
            reader.scan = None;
            if healed_at.is_some_and(|h| started > h) {
                reader.failures.push(format!(
                    "a snapshot read sent at {started}, after every fault healed, got no answer \
                     within {} s",
                    SNAPSHOT_TIMEOUT_US / 1_000_000
                ));
            }
        }
        let not_before = reader.latest.max(self.last_done_epoch);
        let (tables, initial) = (&self.snapshot_tables, &self.initial);
        if tables.is_empty() || initial.is_empty() {
            return;
        }
        let (read, asked) = if reader.scan.is_some() || reader.rng.chance(0.2) {
            if reader.scan.is_none() {
                let prefix = reader.rng.pick(tables).clone();
                let limit = *reader.rng.pick(&[1, 7, 100, 0]);
                reader.scan = Some(TableScan {
                    prefix,
                    epoch: None,
                    partitions: 0,
                    partition: 0,
                    after: None,
                    limit,
                    rows: Vec::new(),
                });
            }
            let scan = reader.scan.as_ref().expect("just set");
            let read = match scan.epoch {
                None => SnapshotRead {
                    at: At::Latest { not_before },
                    op: SnapshotOp::Epoch,
                },
                Some(epoch) => SnapshotRead {
                    at: At::Epoch(epoch),
                    op: SnapshotOp::Scan {
                        partition: PartitionId(scan.partition),
                        range: ScanRange::prefix(scan.prefix.clone()),
                        after: scan.after.clone(),
                        limit: scan.limit,
                    },
                },
            };
            (read, Asked::ScanStep)
        } else {
            let n = reader.rng.range(1, 5) as usize;
            let mut keys: Vec<Key> = (0..n).map(|_| reader.rng.pick(initial).0.clone()).collect();
            if reader.rng.chance(0.2) {
                // A key nobody wrote.
                keys.push(reader.rng.pick(tables).clone().u64(u64::MAX));
            }
            let at = match reader.rng.below(7) {
                0 | 3 => At::Latest { not_before },
                // An epoch that will not come soon: answered `NotYet` after the wait.
                4 => At::Epoch(Epoch(not_before.0 + FAR_AHEAD)),
                // Just inside the window, where a reclaim that went too far shows.
                1 => At::Epoch(reader.oldest_hint.unwrap_or(reader.latest)),
                _ => {
                    let back = reader.rng.below(30);
                    At::Epoch(Epoch(reader.latest.0.saturating_sub(back)))
                }
            };
            let read = SnapshotRead {
                at,
                op: SnapshotOp::Get(keys.clone()),
            };
            (read, Asked::Get { at, keys })
        };
        reader.asked = Some((self.now, asked));
        let g = self.rng.below(u64::from(self.config.gateways)) as u32;
        self.send(
            Addr::SnapshotReader(i),
            Addr::Gateway(g),
            Msg::SnapshotRead(read),
        );
        let at = self.now.plus_us(SNAPSHOT_TIMEOUT_US);
        self.schedule(at, Event::SnapshotWake(i));
    }

    pub(super) fn on_snapshot_reply(&mut self, i: u32, reply: SnapshotReply) {
        let now = self.now;
        let healed_at = self.healed.then_some(self.healed_at);
        let reader = &mut self.snapshot_readers[i as usize];
        let Some((started, asked)) = reader.asked.take() else {
            return;
        };
        // An epoch far ahead is answered `NotYet` once its wait ends, well within the
        // gateway's deadline: with the faults healed, nothing excuses `Unavailable`.
        if let (
            Asked::Get {
                at: At::Epoch(asked),
                ..
            },
            SnapshotReply::Failed(SnapshotError::Unavailable),
        ) = (&asked, &reply)
            && asked.0 >= FAR_AHEAD
            && healed_at.is_some_and(|h| started > h)
        {
            reader.failures.push(format!(
                "at {now}: a read of epoch {asked}, sent at {started} with every fault healed, \
                 was answered Unavailable instead of NotYet"
            ));
        }
        let mut fail = |why: String| reader.failures.push(format!("at {now}: {why}"));
        match (asked, reply) {
            (_, SnapshotReply::Failed(error)) => {
                reader.misses += 1;
                match error {
                    SnapshotError::TooOld { oldest, .. } => {
                        reader.oldest_hint = Some(oldest);
                        reader.latest = reader.latest.max(oldest);
                        reader.scan = None;
                    }
                    SnapshotError::Refused(why) => {
                        fail(format!("a snapshot read was refused: {why}"))
                    }
                    SnapshotError::NotYet { .. } | SnapshotError::Unavailable => {}
                }
            }
            (Asked::Get { at, keys }, SnapshotReply::Values { epoch, values }) => {
                match at {
                    At::Epoch(asked) if asked != epoch => {
                        fail(format!("a get at epoch {asked} answered at {epoch}"));
                    }
                    At::Latest { not_before } if epoch < not_before => {
                        fail(format!(
                            "a latest get after {not_before} answered at {epoch}"
                        ));
                    }
                    At::Latest { .. } => reader.latest = reader.latest.max(epoch),
                    At::Epoch(_) => {}
                }
                if values.len() != keys.len() {
                    fail(format!(
                        "{} keys asked, {} values answered",
                        keys.len(),
                        values.len()
                    ));
                } else {
                    reader.records.push(SnapshotRecord::Get {
                        epoch,
                        keys,
                        values,
                    });
                }
            }
            (Asked::ScanStep, SnapshotReply::Epoch { epoch, partitions }) => {
                let Some(scan) = reader.scan.as_mut() else {
                    return;
                };
                if epoch < reader.latest {
                    fail(format!(
                        "the latest epoch went back from {} to {epoch}",
                        reader.latest
                    ));
                }
                reader.latest = reader.latest.max(epoch);
                scan.epoch = Some(epoch);
                scan.partitions = partitions;
            }
            (Asked::ScanStep, SnapshotReply::Rows { epoch, rows, more }) => {
                let Some(scan) = reader.scan.as_mut() else {
                    return;
                };
                if scan.epoch != Some(epoch) {
                    fail(format!("a scan at {:?} answered at {epoch}", scan.epoch));
                    reader.scan = None;
                } else {
                    let ascending = rows.windows(2).all(|w| w[0].0 < w[1].0)
                        && rows
                            .first()
                            .is_none_or(|(k, _)| scan.after.as_ref().is_none_or(|after| k > after));
                    if !ascending {
                        fail(format!("a scan chunk of {} is not ascending", scan.prefix));
                    }
                    if let Some((last, _)) = rows.last() {
                        scan.after = Some(last.clone());
                    }
                    scan.rows.extend(rows);
                    if !more {
                        scan.partition += 1;
                        scan.after = None;
                    }
                    if scan.partition >= scan.partitions {
                        let mut scan = reader.scan.take().expect("in progress");
                        scan.rows.sort_by(|a, b| a.0.cmp(&b.0));
                        reader.records.push(SnapshotRecord::Scan {
                            epoch,
                            prefix: scan.prefix,
                            rows: scan.rows,
                        });
                    }
                }
            }
            (_, other) => fail(format!("a snapshot read was answered {other:?}")),
        }
        let pause = match reader.scan.is_some() {
            true => 0,
            false => reader.rng.below(20_000),
        };
        self.schedule(now.plus_us(pause + 1), Event::SnapshotWake(i));
    }
}
