//! Snapshot reads: [`Client::snapshot`], [`Snapshot`], [`Scan`] and
//! [`Client::call_read_only`].
//!
//! A snapshot is the state of every partition after one epoch: one consistent cut, read
//! without entering the log, while transactions go on. [`At::Latest`] picks the latest
//! epoch every partition involved has applied, at or after the last epoch this session
//! wrote in (read-your-writes); the first read of a [`Snapshot`] fixes its epoch, and every
//! later read of it reads that same epoch, so all of a snapshot's reads are one cut.

use crate::Client;
use detflow_executor::{Procedure, ReadView, Registry};
use detflow_protocol::message::Message;
pub use detflow_protocol::snapshot::ScanRange;
use detflow_protocol::snapshot::{
    At as WireAt, SnapshotError, SnapshotOp, SnapshotRead, SnapshotReply,
};
use detflow_protocol::{
    AbortReason, ClientId, Epoch, Key, KeySpec, NodeId, Outcome, PartitionId, RequestSeq,
    Transaction, Value, codec,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;

/// Which epoch a snapshot reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// The latest epoch applied by every partition involved, and not before the last
    /// epoch this session wrote in.
    Latest,
    /// The state after exactly this epoch (within the partitions' retention window).
    Epoch(Epoch),
}

/// Why a snapshot read returned no rows.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The epoch is older than a partition retains.
    #[error("epoch {asked} is no longer retained; the oldest readable epoch is {oldest}")]
    TooOld {
        /// The epoch asked for.
        asked: Epoch,
        /// The oldest epoch still readable there.
        oldest: Epoch,
    },
    /// A partition had not applied the epoch within the read's wait.
    #[error("epoch {asked} is not applied yet: partition {partition} is at {applied}")]
    NotYet {
        /// The epoch asked for.
        asked: Epoch,
        /// The partition behind.
        partition: PartitionId,
        /// What it has applied.
        applied: Epoch,
    },
    /// The read is malformed or not allowed; reading again will not help.
    #[error("snapshot read refused: {0}")]
    Refused(String),
    /// This client may not read that (reading the log takes an operator's certificate).
    #[error("refused: {0}")]
    Denied(String),
    /// No gateway answered within the client's attempts.
    #[error("no gateway answered the snapshot read after {attempts} attempts; last: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A read-only call's procedure aborted.
    #[error("the procedure aborted: {0}")]
    Aborted(AbortReason),
    /// A read-only call's procedure wrote, sent a letter or published an event: it must be
    /// called through the log.
    #[error("{0} is not read-only: it writes, sends letters or publishes events")]
    NotReadOnly(String),
    /// A read-only call's output did not decode as the procedure's output type.
    #[error("output does not decode: {0}")]
    BadOutput(String),
}

/// A consistent cut of the cluster's state (see the module docs).
pub struct Snapshot<'c> {
    client: &'c Client,
    at: At,
    /// Fixed by the first answer.
    epoch: OnceLock<Epoch>,
}

impl Client {
    /// A snapshot of the state at `at`. Nothing is read until its first read.
    pub fn snapshot(&self, at: At) -> Snapshot<'_> {
        let epoch = OnceLock::new();
        if let At::Epoch(e) = at {
            let _ = epoch.set(e);
        }
        Snapshot {
            client: self,
            at,
            epoch,
        }
    }

    /// Runs the read-only procedure `P` on a snapshot, at the latest epoch, instead of
    /// ordering it in the log: its footprint's keys are read at one epoch, then it runs
    /// here. A procedure that writes is refused ([`ReadError::NotReadOnly`]).
    pub async fn call_read_only<P: Procedure>(
        &self,
        args: &P::Args,
    ) -> Result<(Epoch, P::Output), ReadError> {
        self.snapshot(At::Latest).call::<P>(args).await
    }

    /// Notes that this session's call was ordered in `epoch`, for read-your-writes.
    pub(crate) fn wrote_in(&self, epoch: Epoch) {
        self.last_epoch
            .fetch_max(epoch.0, std::sync::atomic::Ordering::Relaxed);
    }

    /// One snapshot request through the gateways, retried on `Unavailable` and transport
    /// failures as calls are.
    async fn snapshot_request(&self, read: SnapshotRead) -> Result<SnapshotReply, ReadError> {
        let policy = self.policy;
        let gateways = self.links.gateways.len();
        let mut backoff = policy.backoff;
        let mut last = String::new();
        // The gateway that answered last, until it fails: a dead node then costs one
        // attempt, not one in every few reads.
        let first = self.next_gateway.load(std::sync::atomic::Ordering::Relaxed);
        for attempt in 1..=policy.attempts_max {
            let gateway = (first + attempt as usize - 1) % gateways;
            let msg = Message::SnapshotRead(read.clone());
            let answer =
                tokio::time::timeout(policy.attempt_timeout, self.request(gateway, &msg)).await;
            match answer {
                Ok(Ok(Message::Snapshot(SnapshotReply::Failed(error)))) => match error {
                    SnapshotError::Unavailable => last = "not every partition answered".into(),
                    SnapshotError::TooOld { asked, oldest } => {
                        return Err(ReadError::TooOld { asked, oldest });
                    }
                    SnapshotError::NotYet {
                        asked,
                        partition,
                        applied,
                    } => {
                        return Err(ReadError::NotYet {
                            asked,
                            partition,
                            applied,
                        });
                    }
                    SnapshotError::Refused(why) => return Err(ReadError::Refused(why)),
                },
                Ok(Ok(Message::Snapshot(reply))) => {
                    self.next_gateway
                        .store(gateway, std::sync::atomic::Ordering::Relaxed);
                    return Ok(reply);
                }
                Ok(Ok(other)) => last = format!("unexpected answer {other:?}"),
                Ok(Err((e, conn))) => {
                    self.forget(gateway, conn).await;
                    last = e.to_string();
                }
                Err(_) => last = "timed out".into(),
            }
            if attempt == policy.attempts_max {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.backoff_max);
        }
        Err(ReadError::Unavailable {
            attempts: policy.attempts_max,
            last,
        })
    }
}

fn unexpected(reply: &SnapshotReply) -> ReadError {
    ReadError::Refused(format!("unexpected answer {reply:?}"))
}

impl<'c> Snapshot<'c> {
    /// The epoch this snapshot reads, once its first read fixed it.
    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch.get().copied()
    }

    fn wire_at(&self) -> WireAt {
        match (self.epoch.get().copied(), self.at) {
            (Some(e), _) | (None, At::Epoch(e)) => WireAt::Epoch(e),
            (None, At::Latest) => WireAt::Latest {
                not_before: Epoch(
                    self.client
                        .last_epoch
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
            },
        }
    }

    /// Fixes the snapshot's epoch at `epoch` (the first answer's); a later answer at
    /// another epoch is a gateway's error.
    fn fix(&self, epoch: Epoch) -> Result<(), ReadError> {
        let fixed = *self.epoch.get_or_init(|| epoch);
        match fixed == epoch {
            true => Ok(()),
            false => Err(ReadError::Refused(format!(
                "answered at epoch {epoch}, not the snapshot's {fixed}"
            ))),
        }
    }

    /// The epoch of the snapshot, asking the cluster for it if no read fixed it yet.
    pub async fn resolve(&self) -> Result<(Epoch, u32), ReadError> {
        let read = SnapshotRead {
            at: self.wire_at(),
            op: SnapshotOp::Epoch,
        };
        match self.client.snapshot_request(read).await? {
            SnapshotReply::Epoch { epoch, partitions } => {
                self.fix(epoch)?;
                Ok((epoch, partitions))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The value of `key` (`None`: absent).
    pub async fn get(&self, key: &Key) -> Result<Option<Value>, ReadError> {
        let mut values = self.get_many(std::slice::from_ref(key)).await?;
        Ok(values.pop().flatten())
    }

    /// The values of `keys`, in order (at most
    /// [`SNAPSHOT_KEYS_MAX`](detflow_protocol::snapshot::SNAPSHOT_KEYS_MAX) per call).
    pub async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Value>>, ReadError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let read = SnapshotRead {
            at: self.wire_at(),
            op: SnapshotOp::Get(keys.to_vec()),
        };
        match self.client.snapshot_request(read).await? {
            SnapshotReply::Values { epoch, values } if values.len() == keys.len() => {
                self.fix(epoch)?;
                Ok(values)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The rows of `range` over every partition, in key order, in bounded chunks.
    pub fn scan(&self, range: ScanRange) -> Scan<'_, 'c> {
        Scan {
            snapshot: self,
            range,
            chunk_rows: 0,
            cursors: None,
        }
    }

    /// One partition's rows of `range`, in key order, in bounded chunks: scanning the
    /// partitions side by side reads a table in parallel.
    pub fn scan_partition(
        &self,
        partition: PartitionId,
        range: ScanRange,
    ) -> PartitionScan<'_, 'c> {
        PartitionScan {
            snapshot: self,
            partition,
            range,
            after: None,
            done: false,
            chunk_rows: 0,
        }
    }

    /// One chunk of `partition`'s rows of `range` after `after`, which it moves to the
    /// chunk's last key; and whether more may follow. At most `limit` rows (0: the
    /// cluster's default) and about a mebibyte. [`Snapshot::scan_partition`] loops over
    /// this; a caller that must own its cursor (a task of its own) calls it directly.
    pub async fn scan_chunk(
        &self,
        partition: PartitionId,
        range: &ScanRange,
        after: &mut Option<Key>,
        limit: u32,
    ) -> Result<(Vec<(Key, Value)>, bool), ReadError> {
        let read = SnapshotRead {
            at: self.wire_at(),
            op: SnapshotOp::Scan {
                partition,
                range: range.clone(),
                after: after.clone(),
                limit,
            },
        };
        match self.client.snapshot_request(read).await? {
            SnapshotReply::Rows { epoch, rows, more } => {
                self.fix(epoch)?;
                if let Some((last, _)) = rows.last() {
                    *after = Some(last.clone());
                }
                let more = more && !rows.is_empty();
                Ok((rows, more))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Runs the read-only procedure `P` on this snapshot (see
    /// [`Client::call_read_only`]): the epoch read and the output.
    pub async fn call<P: Procedure>(
        &self,
        args: &P::Args,
    ) -> Result<(Epoch, P::Output), ReadError> {
        let mut registry = Registry::new();
        registry.register::<P>();
        let (epoch, output) = self
            .call_raw(&registry, P::NAME, &codec::encode(args))
            .await?;
        let output = codec::decode(&output).map_err(|e| ReadError::BadOutput(e.0))?;
        Ok((epoch, output))
    }

    /// Runs the read-only procedure `procedure` of `registry` with encoded `args` on this
    /// snapshot: its footprint's keys are read at this snapshot's epoch, then it runs here
    /// with the serial executor. The epoch read and the encoded output.
    pub async fn call_raw(
        &self,
        registry: &Registry,
        procedure: &str,
        args: &[u8],
    ) -> Result<(Epoch, Vec<u8>), ReadError> {
        let footprint = registry
            .footprint(procedure, args)
            .map_err(|e| ReadError::Refused(e.to_string()))?;
        let mut rows: BTreeMap<Key, Value> = BTreeMap::new();
        let exact: Vec<Key> = footprint
            .entries
            .iter()
            .filter_map(|(spec, _)| match spec {
                KeySpec::Exact(k) => Some(k.clone()),
                KeySpec::Prefix(_) => None,
            })
            .collect();
        for keys in exact.chunks(detflow_protocol::snapshot::SNAPSHOT_KEYS_MAX) {
            let values = self.get_many(keys).await?;
            for (key, value) in keys.iter().zip(values) {
                if let Some(value) = value {
                    rows.insert(key.clone(), value);
                }
            }
        }
        for (spec, _) in &footprint.entries {
            if let KeySpec::Prefix(prefix) = spec {
                let mut scan = self.scan(ScanRange::prefix(prefix.clone()));
                while let Some(chunk) = scan.next().await? {
                    rows.extend(chunk);
                }
            }
        }
        // A snapshot with no key to read still names its epoch.
        let epoch = match self.epoch() {
            Some(e) => e,
            None => self.resolve().await?.0,
        };
        let txn = Transaction {
            client: ClientId(0),
            seq: RequestSeq(0),
            gateway: NodeId(0),
            procedure: procedure.to_owned(),
            args: args.to_vec(),
            footprint,
        };
        let view: &dyn ReadView = &rows;
        let (outcome, effects) = detflow_executor::serial::run(registry, &txn, view, usize::MAX);
        let output = match outcome {
            Outcome::Committed(output) => output,
            Outcome::Aborted(reason) => return Err(ReadError::Aborted(reason)),
        };
        let wrote = effects
            .is_some_and(|e| !(e.writes.is_empty() && e.letters.is_empty() && e.events.is_empty()));
        if wrote {
            return Err(ReadError::NotReadOnly(procedure.to_owned()));
        }
        Ok((epoch, output))
    }
}

/// One partition's rows of a range, chunk by chunk ([`Snapshot::scan_partition`]).
pub struct PartitionScan<'s, 'c> {
    snapshot: &'s Snapshot<'c>,
    partition: PartitionId,
    range: ScanRange,
    after: Option<Key>,
    done: bool,
    chunk_rows: u32,
}

impl PartitionScan<'_, '_> {
    /// Sets the most rows per chunk (0: the cluster's default).
    pub fn chunk_rows(mut self, rows: u32) -> Self {
        self.chunk_rows = rows;
        self
    }

    /// The next chunk of rows, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<(Key, Value)>>, ReadError> {
        if self.done {
            return Ok(None);
        }
        if self.snapshot.epoch().is_none() {
            self.snapshot.resolve().await?;
        }
        let (rows, more) = self
            .snapshot
            .scan_chunk(
                self.partition,
                &self.range,
                &mut self.after,
                self.chunk_rows,
            )
            .await?;
        self.done = !more;
        Ok(Some(rows))
    }
}

/// One partition's cursor in a [`Scan`].
struct Cursor {
    rows: VecDeque<(Key, Value)>,
    after: Option<Key>,
    more: bool,
}

/// The rows of a range over every partition, in key order ([`Snapshot::scan`]). It holds
/// at most one chunk per partition.
pub struct Scan<'s, 'c> {
    snapshot: &'s Snapshot<'c>,
    range: ScanRange,
    chunk_rows: u32,
    cursors: Option<Vec<Cursor>>,
}

impl Scan<'_, '_> {
    /// Sets the most rows per chunk and partition (0: the cluster's default).
    pub fn chunk_rows(mut self, rows: u32) -> Self {
        self.chunk_rows = rows;
        self
    }

    /// Fetches the next chunk of every partition whose rows ran out while it has more.
    async fn refill(&mut self) -> Result<(), ReadError> {
        if self.cursors.is_none() {
            let (_, partitions) = self.snapshot.resolve().await?;
            self.cursors = Some(
                (0..partitions)
                    .map(|_| Cursor {
                        rows: VecDeque::new(),
                        after: None,
                        more: true,
                    })
                    .collect(),
            );
        }
        let cursors = self.cursors.as_mut().expect("just set");
        for (p, cursor) in cursors.iter_mut().enumerate() {
            if !cursor.rows.is_empty() || !cursor.more {
                continue;
            }
            let partition = PartitionId(p as u32);
            let (rows, more) = self
                .snapshot
                .scan_chunk(partition, &self.range, &mut cursor.after, self.chunk_rows)
                .await?;
            cursor.more = more;
            cursor.rows = rows.into();
        }
        Ok(())
    }

    /// The next rows in key order, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<(Key, Value)>>, ReadError> {
        self.refill().await?;
        let cursors = self.cursors.as_mut().expect("refilled");
        let mut out = Vec::new();
        // Rows come out while every partition that has more still holds some: past that
        // point, its next chunk may hold smaller keys.
        while !cursors.iter().any(|c| c.rows.is_empty() && c.more) {
            let Some(next) = cursors
                .iter_mut()
                .filter(|c| !c.rows.is_empty())
                .min_by(|a, b| a.rows[0].0.cmp(&b.rows[0].0))
            else {
                break;
            };
            out.push(next.rows.pop_front().expect("not empty"));
        }
        match out.is_empty() {
            true => Ok(None),
            false => Ok(Some(out)),
        }
    }

    /// Every remaining row, in key order (for ranges known to be small).
    pub async fn collect(mut self) -> Result<Vec<(Key, Value)>, ReadError> {
        let mut rows = Vec::new();
        while let Some(chunk) = self.next().await? {
            rows.extend(chunk);
        }
        Ok(rows)
    }
}
