//! State transfer (the protocol is in [`detflow_protocol::transfer`]): a replica whose next
//! epoch the log compacted away copies the state of another replica of its partition, and
//! every replica serves images of its own state to the others.
//!
//! Who to ask, when to ask again, when to give a peer up and when to let an image go are
//! protocol decisions, so they live here, where the simulator runs them.

use super::{Executor, Output};
use crate::mailbox::Outbox;
use crate::store::Store;
use crate::system::Bookkeeping;
use detflow_protocol::transfer::{STATE_CHUNK_BYTES_MAX, StateChunk, StateFetch};
use detflow_protocol::{Epoch, ExecutorId, Key, NodeId, Position, Time};
use std::collections::BTreeMap;

/// How long a replica waits for a peer's chunk before it asks again: 1 s.
pub const TRANSFER_STALL_US: u64 = 1_000_000;

/// A peer asked this many times in a row without an answer is given up for the next one
/// (and the copy starts over from a new image of that one's state).
const ASKS_PER_PEER: u32 = 3;

/// How long a replica keeps an image no peer reads: 30 s. An image pins the store's
/// state as it was (a snapshot keeps overwritten versions on disk), so it must go.
pub const IMAGE_IDLE_US: u64 = 30_000_000;

/// The most images a replica serves at once: two replicas copying at the same time each
/// keep theirs (a third request replaces the least recently read one).
const IMAGES_MAX: usize = 2;

/// A copy in progress of a peer's state.
#[derive(Debug)]
pub(super) struct Transfer {
    /// The other replicas of the partition, asked in turn.
    peers: Vec<NodeId>,
    /// The index in `peers` of the one asked.
    peer: usize,
    /// The image being copied and the last key received of it.
    image: Option<(Epoch, Key)>,
    /// The image whose rows the store holds since it was emptied for it.
    began: Option<Epoch>,
    /// When the peer was last asked (or gave an answer that calls for a pause).
    asked_at: Time,
    /// Asks of the same chunk without an answer.
    asks: u32,
    /// Rows received of the image.
    rows: u64,
}

impl Transfer {
    fn peer(&self) -> Option<NodeId> {
        self.peers.get(self.peer).copied()
    }

    /// Gives the peer up: the next one is asked for a new image.
    fn next_peer(&mut self) {
        self.peer = (self.peer + 1) % self.peers.len().max(1);
        self.image = None;
        self.asks = 0;
    }
}

/// What the executor knows of the images it serves: by epoch, when each was last read.
pub(super) type Images = BTreeMap<Epoch, Time>;

impl<S: Store> Executor<S> {
    /// Whether this replica is copying a peer's state (it applies nothing meanwhile).
    pub fn is_transferring(&self) -> bool {
        self.transfer.is_some()
    }

    /// A sequencer replica says its log starts after `log_start`: if this replica needs
    /// an epoch before that, it copies a peer's state.
    pub(super) fn on_plans_compacted(
        &mut self,
        from: NodeId,
        log_start: Epoch,
        out: &mut Vec<Output>,
    ) {
        if !self.feed.sources().contains(&from) {
            self.stats.transfer_inputs_dropped += 1;
            return;
        }
        self.cannot_replay(log_start, out);
    }

    /// A peer dropped the reads it sent this partition through `through`.
    pub(super) fn on_reads_gone(
        &mut self,
        from: ExecutorId,
        through: Epoch,
        out: &mut Vec<Output>,
    ) {
        if !self.is_peer(from) {
            self.stats.transfer_inputs_dropped += 1;
            return;
        }
        self.cannot_replay(through, out);
    }

    /// Epochs through `through` cannot be replayed here (the log or a peer's reads lack
    /// them): if this replica needs one, it copies another replica's state.
    fn cannot_replay(&mut self, through: Epoch, out: &mut Vec<Output>) {
        if through < self.next_epoch || self.transfer.is_some() {
            return;
        }
        let me = self.me;
        let peers: Vec<NodeId> = (self.placement.replicas(self.partition).iter())
            .copied()
            .filter(|node| *node != me)
            .collect();
        self.stats.transfers_started += 1;
        // Replicas spread their asks over the peers.
        let peer = self.replica_index() % peers.len().max(1);
        self.transfer = Some(Transfer {
            peers,
            peer,
            image: None,
            began: None,
            asked_at: self.now,
            asks: 0,
            rows: 0,
        });
        self.ask_state(out);
    }

    /// Asks the current peer for the next chunk (or a new image).
    fn ask_state(&mut self, out: &mut Vec<Output>) {
        let partition = self.partition;
        let now = self.now;
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.asked_at = now;
        // A partition without another replica waits (`waiting_for` says so), looking again
        // at every stall.
        let Some(node) = transfer.peer() else {
            return;
        };
        transfer.asks += 1;
        out.push(Output::FetchState {
            to: ExecutorId { partition, node },
            fetch: StateFetch {
                image: transfer.image.clone(),
            },
        });
    }

    /// A peer's chunk of its state: stored, then the next one asked for, or the copy is
    /// complete and the replica resumes after the image's epoch.
    pub(super) fn on_state_chunk(
        &mut self,
        from: NodeId,
        chunk: StateChunk,
        out: &mut Vec<Output>,
    ) {
        let now = self.now;
        let Some(transfer) = self.transfer.as_mut().filter(|t| t.peer() == Some(from)) else {
            self.stats.transfer_inputs_dropped += 1;
            return;
        };
        let (epoch, after, rows, done) = match chunk {
            StateChunk::Unavailable => {
                // The peer holds no state to give, or no longer the image: the next peer,
                // after a pause, so two empty replicas do not ask each other without end.
                transfer.next_peer();
                transfer.asked_at = now;
                return;
            }
            StateChunk::Rows {
                epoch,
                after,
                rows,
                done,
            } => (epoch, after, rows, done),
        };
        // Only the answer to the last ask counts: a late or repeated one is dropped.
        let asked_after = transfer.image.as_ref().map(|(_, key)| key);
        let asked_epoch = transfer.image.as_ref().map(|(epoch, _)| *epoch);
        // An image of the last epoch there is could be followed by none: malformed.
        if after.as_ref() != asked_after
            || asked_epoch.is_some_and(|e| e != epoch)
            || (rows.is_empty() && !done)
            || epoch == Epoch(u64::MAX)
        {
            self.stats.transfer_inputs_dropped += 1;
            return;
        }
        if transfer.began != Some(epoch) {
            // A new image: whatever an earlier one left goes.
            self.store.restore_begin();
            transfer.began = Some(epoch);
            transfer.rows = 0;
        }
        let last = rows.last().map(|(key, _)| key.clone());
        transfer.rows += rows.len() as u64;
        transfer.asks = 0;
        self.stats.state_chunks_received += 1;
        self.store.restore_rows(rows);
        match (done, last) {
            (true, _) => {
                let rows = transfer.rows;
                let epoch = match self.bugs.transfer_resumes_late {
                    true => epoch.next(),
                    false => epoch,
                };
                self.store.restore_finish(epoch);
                self.restored(epoch, rows, out);
            }
            (false, Some(last)) => {
                transfer.image = Some((epoch, last));
                self.ask_state(out);
            }
            (false, None) => unreachable!("an empty chunk that is not the last was dropped"),
        }
    }

    /// The store holds the state after `epoch`, copied: everything the executor kept of
    /// its own state before goes, and it resumes from the next epoch.
    fn restored(&mut self, epoch: Epoch, rows: u64, out: &mut Vec<Output>) {
        self.transfer = None;
        self.stats.transfers_done += 1;
        self.next_epoch = epoch.next();
        self.cursor = 0;
        self.sent_at_cursor = false;
        self.durable = epoch;
        // Its own checkpoints are of a state it no longer has past this one.
        self.checkpointed = self.checkpointed.min(epoch);
        self.plans = self.plans.split_off(&epoch.next());
        self.checkpoints_asked = self.checkpoints_asked.split_off(&epoch.next());
        self.inbox = self.inbox.split_off(&Position::new(epoch.next(), 0));
        self.book = Bookkeeping::load(&self.store);
        self.outbox = Outbox::load(self.partition, &self.store);
        self.versions.restart_at(epoch);
        self.digest = None;
        self.digests.clear();
        out.push(Output::StateRestored { epoch, rows });
        self.feed.start(self.now);
        self.subscribe(out);
        self.greet_peers(out);
        self.drive(out);
    }

    /// A peer replica asks for (more of) an image of this replica's state.
    pub(super) fn on_state_fetch(
        &mut self,
        from: NodeId,
        fetch: StateFetch,
        out: &mut Vec<Output>,
    ) {
        if from == self.me || !self.placement.hosts(self.partition, from) {
            self.stats.transfer_inputs_dropped += 1;
            return;
        }
        let to = ExecutorId {
            partition: self.partition,
            node: from,
        };
        if self.transfer.is_some() {
            out.push(Output::SendState {
                to,
                chunk: StateChunk::Unavailable,
            });
            return;
        }
        match fetch.image {
            Some((epoch, after)) => self.send_image_rows(to, epoch, Some(after), out),
            // An image is captured between epochs: mid-epoch, the store holds part of the
            // epoch in progress.
            None if self.cursor > 0 => {
                self.image_waiting.insert(from);
            }
            None => {
                let epoch = self.capture_image();
                self.send_image_rows(to, epoch, None, out);
            }
        }
    }

    /// Captures an image of the state after the last applied epoch, letting the least
    /// recently read one go if too many are held.
    fn capture_image(&mut self) -> Epoch {
        let epoch = self.store.capture_image();
        self.images.insert(epoch, self.now);
        while self.images.len() > IMAGES_MAX {
            let oldest = (self.images.iter())
                .min_by_key(|(_, read)| **read)
                .map(|(epoch, _)| *epoch)
                .expect("more than one image");
            self.images.remove(&oldest);
            self.store.release_image(oldest);
        }
        epoch
    }

    /// Sends the rows of image `epoch` after `after`, or says it is not held.
    fn send_image_rows(
        &mut self,
        to: ExecutorId,
        epoch: Epoch,
        after: Option<Key>,
        out: &mut Vec<Output>,
    ) {
        let rows = match self.images.get_mut(&epoch) {
            Some(read) => {
                *read = self.now;
                self.store
                    .image_rows(epoch, after.as_ref(), STATE_CHUNK_BYTES_MAX)
            }
            None => None,
        };
        let chunk = match rows {
            Some((rows, done)) => {
                self.stats.state_chunks_sent += 1;
                StateChunk::Rows {
                    epoch,
                    after,
                    rows,
                    done,
                }
            }
            None => StateChunk::Unavailable,
        };
        out.push(Output::SendState { to, chunk });
    }

    /// Answers the asks for a new image that came mid-epoch, now that the epoch is
    /// committed.
    pub(super) fn serve_image_waiting(&mut self, out: &mut Vec<Output>) {
        if self.image_waiting.is_empty() || self.cursor > 0 {
            return;
        }
        let epoch = self.capture_image();
        for node in std::mem::take(&mut self.image_waiting) {
            let to = ExecutorId {
                partition: self.partition,
                node,
            };
            self.send_image_rows(to, epoch, None, out);
        }
    }

    /// On every tick: asks again (or the next peer) when a chunk is late, and lets images
    /// no peer read for a while go.
    pub(super) fn transfer_tick(&mut self, out: &mut Vec<Output>) {
        let now = self.now;
        if let Some(transfer) = self.transfer.as_mut()
            && now >= transfer.asked_at.plus_us(TRANSFER_STALL_US)
        {
            if transfer.asks >= ASKS_PER_PEER {
                self.stats.transfer_peers_given_up += 1;
                transfer.next_peer();
            }
            self.ask_state(out);
        }
        let idle: Vec<Epoch> = (self.images.iter())
            .filter(|(_, read)| now >= read.plus_us(IMAGE_IDLE_US))
            .map(|(epoch, _)| *epoch)
            .collect();
        for epoch in idle {
            self.images.remove(&epoch);
            self.store.release_image(epoch);
        }
    }

    /// When the transfer or the images next need a tick.
    pub(super) fn transfer_deadline(&self) -> Option<Time> {
        let ask = (self.transfer.as_ref()).map(|t| t.asked_at.plus_us(TRANSFER_STALL_US));
        let release = (self.images.values())
            .map(|read| read.plus_us(IMAGE_IDLE_US))
            .min();
        ask.into_iter().chain(release).min()
    }

    /// What the transfer waits for, for `waiting_for`.
    pub(super) fn transfer_status(&self) -> Option<String> {
        let transfer = self.transfer.as_ref()?;
        Some(match transfer.peer() {
            None => "copying a peer's state, but the partition has no other replica".into(),
            Some(peer) => format!(
                "copying the state of the replica on node {peer} ({} rows of the image of \
                 epoch {} so far, ask {} of the chunk)",
                transfer.rows,
                transfer.began.map_or(0, |e| e.0),
                transfer.asks
            ),
        })
    }
}
