//! Frames on one QUIC stream: the typed writer, and the reader that refuses what it must.

use crate::metrics::Metrics;
use crate::{FRAME_TOO_LARGE, MALFORMED_FRAME, READ_TIMEOUT, TransportError};
use detflow_protocol::frame::{self, FrameDecoder, FrameError};
use quinn::VarInt;
use serde::{Serialize, de::DeserializeOwned};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The most bytes one stream read takes from QUIC at a time.
pub(crate) const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The bytes of partially received frames one connection may hold, all its streams
/// together. Without it a peer could announce a large frame on every stream it may open
/// and send all but its last byte.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicU64,
    max: u64,
}

impl Budget {
    pub(crate) fn new(max: u64) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            max,
        }
    }

    /// Takes `bytes` from the budget, or nothing if they do not fit.
    fn charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(before >= bytes, "released more than was charged");
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// The sending half of a channel or request stream: writes one frame per message, in order.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    frame_bytes_max: u32,
}

impl FrameWriter {
    pub(crate) fn new(send: quinn::SendStream, frame_bytes_max: u32) -> FrameWriter {
        FrameWriter {
            send,
            frame_bytes_max,
        }
    }

    /// Encodes `msg` as one frame and writes it, waiting for flow control.
    ///
    /// If the peer stopped the stream (for instance because it refused a frame), this fails
    /// with a [`TransportError::Write`] whose [`TransportError::stop_code`] says why.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), TransportError> {
        let frame = frame::encode(msg, self.frame_bytes_max).map_err(TransportError::Encode)?;
        self.send.write_all(&frame).await?;
        Ok(())
    }

    /// Appends `msg` to `frames` as one frame under this stream's limit, for
    /// [`FrameWriter::write_frames`]; on an error `frames` is left as it was.
    pub fn encode_into<T: Serialize>(
        &self,
        msg: &T,
        frames: &mut Vec<u8>,
    ) -> Result<(), TransportError> {
        frame::encode_into(msg, self.frame_bytes_max, frames).map_err(TransportError::Encode)
    }

    /// Writes frames made by [`FrameWriter::encode_into`] in one go: one wake-up of the
    /// connection, however many messages.
    pub async fn write_frames(&mut self, frames: &[u8]) -> Result<(), TransportError> {
        self.send.write_all(frames).await?;
        Ok(())
    }

    /// Ends the stream cleanly: the reader gets `Ok(None)` after the last frame.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        Ok(self.send.finish()?)
    }

    /// Waits until the peer stops the stream (`Some(code)`) or has received all of it
    /// after [`finish`](FrameWriter::finish) (`None`).
    pub async fn stopped(&self) -> Result<Option<VarInt>, TransportError> {
        Ok(self.send.stopped().await?)
    }
}

/// Why a reader gave up on its stream; every later `recv` returns it again.
#[derive(Clone, Debug)]
enum Refusal {
    Budget(u64),
    Frame(FrameError),
    Timeout(Duration),
}

impl Refusal {
    fn error(&self) -> TransportError {
        match self {
            Refusal::Budget(budget_bytes) => TransportError::BufferBudget {
                budget_bytes: *budget_bytes,
            },
            Refusal::Frame(e) => TransportError::Frame(e.clone()),
            Refusal::Timeout(timeout) => TransportError::FrameTimeout { timeout: *timeout },
        }
    }
}

#[derive(Debug)]
enum ReaderState {
    Open,
    Finished,
    Failed(Refusal),
}

/// What a [`FrameReader`] needs from its connection.
#[derive(Clone, Debug)]
pub(crate) struct ReaderContext {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) budget: Arc<Budget>,
    pub(crate) frame_bytes_max: u32,
    pub(crate) frame_read_timeout: Duration,
}

/// The receiving half of a channel or request stream: decodes frames as they arrive.
///
/// Holds only the bytes of the frame being received (the memory charged to its
/// connection's budget), and gives each frame [`crate::Limits::frame_read_timeout`] from its first byte.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    context: ReaderContext,
    state: ReaderState,
    /// Bytes taken from the connection's budget: the memory the decoder holds (its buffer's
    /// capacity, which a frame's bytes may exceed by at most the growth step).
    charged: u64,
    /// When the first byte of the frame being received arrived.
    frame_started: Option<Instant>,
    /// By when the first frame must be whole, for a stream that must speak first.
    first_frame_deadline: Option<Instant>,
}

impl FrameReader {
    /// A reader for `recv`. With `speaks_first` (a request stream, a channel before its
    /// header) the first frame must arrive within the read timeout from now; otherwise the
    /// stream may stay idle between frames for as long as its connection lives.
    pub(crate) fn new(
        recv: quinn::RecvStream,
        context: ReaderContext,
        speaks_first: bool,
    ) -> FrameReader {
        let first_frame_deadline =
            speaks_first.then(|| Instant::now() + context.frame_read_timeout);
        FrameReader {
            recv,
            decoder: FrameDecoder::new(context.frame_bytes_max),
            context,
            state: ReaderState::Open,
            charged: 0,
            frame_started: None,
            first_frame_deadline,
        }
    }

    /// The next message; `Ok(None)` once the sender finished the stream cleanly.
    ///
    /// A frame over the limit or one that does not decode as `T` (including a stream that
    /// ends inside a frame) stops the stream with [`FRAME_TOO_LARGE`] or
    /// [`MALFORMED_FRAME`], is counted, and returns [`TransportError::Frame`]. A frame that
    /// does not arrive in time stops it with [`READ_TIMEOUT`]
    /// ([`TransportError::FrameTimeout`]); one that would overdraw the connection's budget
    /// with [`FRAME_TOO_LARGE`] ([`TransportError::BufferBudget`]). Every later call
    /// returns the same error.
    ///
    /// Cancel-safe: dropping the future loses no bytes.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        match &self.state {
            ReaderState::Open => {}
            ReaderState::Finished => return Ok(None),
            ReaderState::Failed(refusal) => return Err(refusal.error()),
        }
        loop {
            match self.decoder.next_frame::<T>() {
                Ok(Some(msg)) => {
                    self.on_frame();
                    return Ok(Some(msg));
                }
                Ok(None) => {}
                Err(e) => return Err(self.refuse(Refusal::Frame(e))),
            }
            let deadline = self.deadline();
            let read = self.recv.read_chunk(READ_CHUNK_BYTES, true);
            let chunk = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                    Ok(chunk) => chunk?,
                    Err(_) => {
                        let timeout = self.context.frame_read_timeout;
                        return Err(self.refuse(Refusal::Timeout(timeout)));
                    }
                },
                None => read.await?,
            };
            match chunk {
                Some(chunk) => {
                    // Charge the memory the decoder will hold, before it takes it.
                    let after = self.decoder.capacity_after_push(chunk.bytes.len()) as u64;
                    let growth = after.saturating_sub(self.charged);
                    if !self.context.budget.charge(growth) {
                        let budget = self.context.budget.max;
                        return Err(self.refuse(Refusal::Budget(budget)));
                    }
                    self.charged += growth;
                    if self.decoder.buffered() == 0 {
                        self.frame_started = Some(Instant::now());
                    }
                    self.decoder.push(&chunk.bytes);
                    debug_assert_eq!(self.decoder.capacity() as u64, self.charged);
                }
                None if self.decoder.buffered() == 0 => {
                    self.state = ReaderState::Finished;
                    return Ok(None);
                }
                None => {
                    let buffered = self.decoder.buffered();
                    let error = FrameError::Malformed(format!(
                        "stream ended inside a frame ({buffered} bytes unread)"
                    ));
                    return Err(self.refuse(Refusal::Frame(error)));
                }
            }
        }
    }

    /// A frame was taken out of the decoder: return its bytes to the budget and start the
    /// clock of the next one if part of it is already here.
    fn on_frame(&mut self) {
        let held = self.decoder.capacity() as u64;
        self.context
            .budget
            .release(self.charged.saturating_sub(held));
        self.charged = held.min(self.charged);
        self.first_frame_deadline = None;
        self.frame_started = (self.decoder.buffered() > 0).then(Instant::now);
    }

    /// The earliest deadline in force: the current frame's, and the first frame's.
    fn deadline(&self) -> Option<Instant> {
        let frame = self
            .frame_started
            .map(|started| started + self.context.frame_read_timeout);
        match (frame, self.first_frame_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Refuses the stream for a frame error the caller found (a channel that ended before
    /// its header): stops it, counts it.
    pub(crate) fn refuse_frame(&mut self, error: FrameError) -> TransportError {
        self.refuse(Refusal::Frame(error))
    }

    /// Stops the stream with the code for `refusal`, counts it, drops what was buffered,
    /// and remembers it.
    fn refuse(&mut self, refusal: Refusal) -> TransportError {
        let metrics = &self.context.metrics;
        let (code, counter) = match &refusal {
            Refusal::Budget(_) => (FRAME_TOO_LARGE, &metrics.frames_rejected_over_budget),
            Refusal::Frame(FrameError::TooLarge { .. }) => {
                (FRAME_TOO_LARGE, &metrics.frames_rejected_too_large)
            }
            Refusal::Frame(FrameError::Malformed(_)) => {
                (MALFORMED_FRAME, &metrics.frames_rejected_malformed)
            }
            Refusal::Timeout(_) => (READ_TIMEOUT, &metrics.frames_timed_out),
        };
        Metrics::count(counter);
        // Fails only if the stream is already finished or stopped, when there is no one
        // left to tell.
        let _ = self.recv.stop(code);
        self.drop_buffered();
        let error = refusal.error();
        tracing::debug!(error = %error, "refused an incoming stream");
        self.state = ReaderState::Failed(refusal);
        error
    }

    /// Frees the partial frame and returns its bytes to the connection's budget.
    fn drop_buffered(&mut self) {
        self.decoder = FrameDecoder::new(self.context.frame_bytes_max);
        self.context.budget.release(self.charged);
        self.charged = 0;
        self.frame_started = None;
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.context.budget.release(self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_what_does_not_fit_and_takes_back_what_is_released() {
        let budget = Budget::new(10);
        assert!(budget.charge(6));
        assert!(!budget.charge(5));
        assert!(budget.charge(4));
        assert_eq!(budget.used(), 10);
        budget.release(6);
        assert!(budget.charge(5));
        assert!(!budget.charge(u64::MAX));
        assert_eq!(budget.used(), 9);
    }
}
