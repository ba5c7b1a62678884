//! Length-prefixed MessagePack framing.
//!
//! A frame is a 4-byte big-endian length, then that many bytes of MessagePack. The
//! decoder checks the length against its limit before it reserves any memory for the
//! body, so an oversized or hostile prefix costs nothing but an error. It never reserves
//! for bytes that have not arrived either: its buffer grows with what is received, never
//! past the end of the frame being received, and a large buffer is given back once its
//! frame is taken out.

use serde::{Serialize, de::DeserializeOwned};

/// The default maximum frame body: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;

/// The buffer capacity a decoder keeps between frames; a larger one, grown for a large
/// frame, is given back once that frame is taken out.
const KEPT_CAPACITY_BYTES: usize = 64 * 1024;

/// Why a frame was refused. After any error the stream is unusable and should be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body does not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The length prefix exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced body length.
        len: u32,
        /// The limit.
        max: u32,
    },
}

/// Encodes `msg` as one frame, or refuses if its body would exceed `max` bytes.
pub fn encode<T: Serialize>(msg: &T, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    rmp_serde::encode::write(&mut out, msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - 4;
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l <= max)
        .ok_or(FrameError::TooLarge {
            len: u32::try_from(len).unwrap_or(u32::MAX),
            max,
        })?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// A sans-IO frame decoder: feed it bytes as they arrive, take messages out.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u32,
    buf: Vec<u8>,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder that refuses frames over `max` body bytes.
    pub fn new(max: u32) -> FrameDecoder {
        FrameDecoder {
            max,
            buf: Vec::new(),
            failed: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        let target = self.capacity_after_push(bytes.len());
        if target > self.buf.capacity() {
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes the decoder's buffer holds allocated (at least [`FrameDecoder::buffered`]).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// What [`FrameDecoder::capacity`] will be after pushing `len` more bytes, so that a
    /// caller can account for the memory before it is taken.
    pub fn capacity_after_push(&self, len: usize) -> usize {
        let needed = self.buf.len() + len;
        if needed <= self.buf.capacity() {
            return self.buf.capacity();
        }
        // Grow geometrically (amortised copies), but not past the end of the frame being
        // received: doubling a 16 MiB frame's buffer would hold 32 MiB.
        let frame_end = self.frame_end().unwrap_or(usize::MAX).max(needed);
        self.buf
            .capacity()
            .saturating_mul(2)
            .clamp(needed, frame_end)
    }

    /// Where the frame at the front of the buffer ends, once its length is known and
    /// within the limit.
    fn frame_end(&self) -> Option<usize> {
        let prefix: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(prefix);
        (len <= self.max).then(|| 4 + len as usize)
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the error that
    /// ends the stream (returned again on every later call).
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.failed {
            return Err(FrameError::Malformed("stream already failed".into()));
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len > self.max {
            self.failed = true;
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let end = 4 + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let decoded = rmp_serde::from_slice(&self.buf[4..end]);
        self.buf.drain(..end);
        if self.buf.capacity() > KEPT_CAPACITY_BYTES && self.buf.len() < KEPT_CAPACITY_BYTES {
            // A large frame is done: give its memory back rather than hold it for the
            // life of the stream.
            self.buf.shrink_to(KEPT_CAPACITY_BYTES);
        }
        decoded.map(Some).map_err(|e| {
            self.failed = true;
            FrameError::Malformed(e.to_string())
        })
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Call, Message};
    use crate::{ClientId, RequestSeq};

    fn call() -> Message {
        Message::Call(Call {
            client: ClientId(1),
            seq: RequestSeq(2),
            procedure: "bank.transfer".into(),
            args: vec![1, 2, 3],
        })
    }

    #[test]
    fn round_trips_across_split_reads() {
        let mut wire = encode(&call(), DEFAULT_MAX_FRAME_BYTES).unwrap();
        wire.extend(encode(&call(), DEFAULT_MAX_FRAME_BYTES).unwrap());
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            dec.push(chunk);
            while let Some(m) = dec.next_frame::<Message>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![call(), call()]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            dec.next_frame::<Message>(),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: 1024
            })
        );
        assert!(encode(&call(), 4).is_err());
    }

    #[test]
    fn the_buffer_grows_with_the_bytes_and_never_past_the_frame() {
        let frame = encode(&vec![7u8; 3 << 20], DEFAULT_MAX_FRAME_BYTES).unwrap();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        // A length prefix alone reserves nothing for the body.
        dec.push(&frame[..4]);
        assert!(dec.buf.capacity() < 1024, "{}", dec.buf.capacity());
        let mut received = 4;
        for chunk in frame[4..].chunks(64 * 1024) {
            let predicted = dec.capacity_after_push(chunk.len());
            dec.push(chunk);
            assert_eq!(dec.capacity(), predicted);
            received += chunk.len();
            // At most twice what arrived, and never more than the whole frame.
            assert!(dec.buf.capacity() <= 2 * received);
            assert!(dec.buf.capacity() <= frame.len());
        }
        assert_eq!(dec.buf.capacity(), frame.len());
        let body = dec.next_frame::<Vec<u8>>().unwrap().unwrap();
        assert_eq!(body.len(), 3 << 20);
        // The frame is out: its memory is given back.
        assert!(dec.buf.capacity() <= KEPT_CAPACITY_BYTES);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn malformed_body_is_an_error_not_a_panic() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]);
        assert!(matches!(
            dec.next_frame::<Message>(),
            Err(FrameError::Malformed(_))
        ));
        assert!(dec.next_frame::<Message>().is_err());
    }

    #[test]
    fn wire_tags_are_variant_names() {
        let bytes = crate::codec::encode(&call());
        // fixmap(1), fixstr(4) "Call": renaming a variant changes the wire format.
        assert_eq!(&bytes[..6], &[0x81, 0xa4, b'C', b'a', b'l', b'l']);
    }
}
