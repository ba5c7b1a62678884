//! Length-prefixed MessagePack framing.
//!
//! A frame is a 4-byte big-endian length, then that many bytes of MessagePack. The
//! decoder checks the length against its limit before it reserves any memory for the
//! body, so an oversized or hostile prefix costs nothing but an error. It never reserves
//! for bytes that have not arrived either: it holds what it received in blocks of at most
//! [`BLOCK_BYTES`], allocated as bytes arrive and freed as frames are taken out. Blocks
//! rather than one growing buffer, because a peer that starts many large frames at once
//! would otherwise make the allocator juggle (and keep) buffers of every size up to the
//! largest frame; small blocks of one size are reused from one stream to the next and
//! given back. (Measured on a node flooded with partial 16 MiB frames: one growing buffer
//! per stream peaked at about three times the bytes held, 16 KiB blocks at little more
//! than the bytes held.) A frame within one block decodes in place; a longer one is read
//! across its blocks.

use serde::{Serialize, de::DeserializeOwned};
use std::collections::VecDeque;
use std::io::Read;

/// The default maximum frame body: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;

/// The largest block a decoder holds received bytes in: a small allocation, which
/// allocators recycle well.
pub const BLOCK_BYTES: usize = 16 * 1024;

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
    let mut out = Vec::new();
    encode_into(msg, max, &mut out)?;
    Ok(out)
}

/// Appends `msg` to `out` as one frame, so that several frames go out in one write; on a
/// refusal (the body would exceed `max` bytes) `out` is left as it was.
pub fn encode_into<T: Serialize>(msg: &T, max: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    if let Err(e) = rmp_serde::encode::write(out, msg) {
        out.truncate(start);
        return Err(FrameError::Malformed(e.to_string()));
    }
    let len = out.len() - start - 4;
    match u32::try_from(len).ok().filter(|l| *l <= max) {
        Some(len) => {
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        None => {
            out.truncate(start);
            Err(FrameError::TooLarge {
                len: u32::try_from(len).unwrap_or(u32::MAX),
                max,
            })
        }
    }
}

/// A sans-IO frame decoder: feed it bytes as they arrive, take messages out.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u32,
    /// Received bytes not yet taken out, in order; every block but the last is full
    /// (holds [`BLOCK_BYTES`]) or was partly consumed from its front.
    blocks: VecDeque<Vec<u8>>,
    /// Bytes of the front block already taken out.
    head: usize,
    /// Bytes received and not yet taken out.
    buffered: usize,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder that refuses frames over `max` body bytes.
    pub fn new(max: u32) -> FrameDecoder {
        FrameDecoder {
            max,
            blocks: VecDeque::new(),
            head: 0,
            buffered: 0,
            failed: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.buffered += bytes.len();
        while !bytes.is_empty() {
            if self
                .blocks
                .back()
                .is_none_or(|last| last.len() >= BLOCK_BYTES)
            {
                self.blocks.push_back(Vec::new());
            }
            let block = self
                .blocks
                .back_mut()
                .expect("a block was just made sure of");
            let take = bytes.len().min(BLOCK_BYTES - block.len());
            let target = block_capacity(block, take);
            if target > block.capacity() {
                block.reserve_exact(target - block.len());
            }
            block.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }

    /// The bytes the decoder holds allocated (at least [`FrameDecoder::buffered`], and at
    /// most that plus one block).
    pub fn capacity(&self) -> usize {
        self.blocks.iter().map(Vec::capacity).sum()
    }

    /// What [`FrameDecoder::capacity`] will be after pushing `len` more bytes, so that a
    /// caller can account for the memory before it is taken.
    pub fn capacity_after_push(&self, len: usize) -> usize {
        let mut capacity = self.capacity();
        let mut left = len;
        if let Some(last) = self.blocks.back()
            && last.len() < BLOCK_BYTES
        {
            let take = left.min(BLOCK_BYTES - last.len());
            capacity += block_capacity(last, take).max(last.capacity()) - last.capacity();
            left -= take;
        }
        // Then full blocks, and a last one of exactly what remains.
        capacity + left
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the error that
    /// ends the stream (returned again on every later call).
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.failed {
            return Err(FrameError::Malformed("stream already failed".into()));
        }
        let mut prefix = [0u8; 4];
        if self.buffered < prefix.len() {
            return Ok(None);
        }
        self.reader(prefix.len())
            .read_exact(&mut prefix)
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        let len = u32::from_be_bytes(prefix);
        if len > self.max {
            self.failed = true;
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let end = 4 + len as usize;
        if self.buffered < end {
            return Ok(None);
        }
        let decoded = match self.blocks.front() {
            // The common case, a frame within one block: decode in place.
            Some(front) if self.head + end <= front.len() => {
                rmp_serde::from_slice(&front[self.head + 4..self.head + end])
            }
            _ => {
                let mut reader = self.reader(end);
                reader.skip(4);
                rmp_serde::from_read(reader)
            }
        };
        self.consume(end);
        decoded.map(Some).map_err(|e| {
            self.failed = true;
            FrameError::Malformed(e.to_string())
        })
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// A reader over the next `len` buffered bytes (which must be there).
    fn reader(&self, len: usize) -> BlockReader<'_> {
        BlockReader {
            blocks: &self.blocks,
            block: 0,
            offset: self.head,
            left: len,
        }
    }

    /// Takes the next `len` buffered bytes out, freeing the blocks they emptied. The last
    /// block, once empty, is kept for the next bytes: it is at most one block.
    fn consume(&mut self, len: usize) {
        debug_assert!(len <= self.buffered);
        self.buffered -= len;
        self.head += len;
        while self.blocks.len() > 1 && self.head >= self.blocks[0].len() {
            self.head -= self.blocks[0].len();
            self.blocks.pop_front();
        }
        if self.blocks.len() == 1 && self.head == self.blocks[0].len() {
            self.blocks[0].clear();
            self.head = 0;
        }
    }
}

/// The capacity `block` grows to, to take `take` more bytes: doubling (amortised copies),
/// at least what is needed, at most a block.
fn block_capacity(block: &Vec<u8>, take: usize) -> usize {
    let needed = block.len() + take;
    if needed <= block.capacity() {
        return block.capacity();
    }
    block
        .capacity()
        .saturating_mul(2)
        .clamp(needed, BLOCK_BYTES.max(needed))
}

/// Reads buffered bytes across blocks without copying them out first.
struct BlockReader<'a> {
    blocks: &'a VecDeque<Vec<u8>>,
    block: usize,
    offset: usize,
    left: usize,
}

impl BlockReader<'_> {
    fn skip(&mut self, mut n: usize) {
        while n > 0 {
            let Some(block) = self.blocks.get(self.block) else {
                return;
            };
            let step = n.min(block.len() - self.offset).min(self.left);
            if step == 0 && self.offset == block.len() {
                self.block += 1;
                self.offset = 0;
                continue;
            }
            if step == 0 {
                return;
            }
            self.offset += step;
            self.left -= step;
            n -= step;
        }
    }
}

impl Read for BlockReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.left == 0 || out.is_empty() {
                return Ok(0);
            }
            let Some(block) = self.blocks.get(self.block) else {
                return Ok(0);
            };
            if self.offset == block.len() {
                self.block += 1;
                self.offset = 0;
                continue;
            }
            let n = out.len().min(block.len() - self.offset).min(self.left);
            out[..n].copy_from_slice(&block[self.offset..self.offset + n]);
            self.offset += n;
            self.left -= n;
            return Ok(n);
        }
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
    fn frames_appended_in_one_buffer_decode_in_order_and_a_refusal_leaves_it_alone() {
        let mut buf = Vec::new();
        encode_into(&call(), DEFAULT_MAX_FRAME_BYTES, &mut buf).unwrap();
        let one = buf.len();
        assert!(encode_into(&vec![1u8; 64], 16, &mut buf).is_err());
        assert_eq!(buf.len(), one, "a refused frame leaves nothing behind");
        encode_into(&call(), DEFAULT_MAX_FRAME_BYTES, &mut buf).unwrap();
        let one_frame = encode(&call(), DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(buf, [one_frame.clone(), one_frame].concat());
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        dec.push(&buf);
        assert_eq!(dec.next_frame::<Message>().unwrap(), Some(call()));
        assert_eq!(dec.next_frame::<Message>().unwrap(), Some(call()));
        assert_eq!(dec.next_frame::<Message>().unwrap(), None);
    }

    #[test]
    fn memory_follows_the_bytes_in_blocks_and_is_given_back() {
        let frame = encode(&vec![7u8; 3 << 20], DEFAULT_MAX_FRAME_BYTES).unwrap();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        // A length prefix alone reserves nothing for the body.
        dec.push(&frame[..4]);
        assert!(dec.capacity() < 1024, "{}", dec.capacity());
        let mut received = 4;
        for chunk in frame[4..].chunks(1000) {
            let predicted = dec.capacity_after_push(chunk.len());
            dec.push(chunk);
            assert_eq!(dec.capacity(), predicted);
            received += chunk.len();
            // Never more than what arrived and one block.
            assert!(dec.capacity() <= received + BLOCK_BYTES);
            assert_eq!(dec.buffered(), received);
        }
        let body = dec.next_frame::<Vec<u8>>().unwrap().unwrap();
        assert_eq!(body, vec![7u8; 3 << 20]);
        // The frame is out: its memory is given back, but for one block at most.
        assert!(dec.capacity() <= BLOCK_BYTES);
        assert_eq!(dec.buffered(), 0);

        // Frames that straddle blocks, pushed in pieces of every size.
        let frames: Vec<Vec<u8>> = (0..40)
            .map(|i| encode(&vec![i as u8; i * 997], DEFAULT_MAX_FRAME_BYTES).unwrap())
            .collect();
        let wire: Vec<u8> = frames.concat();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut got = Vec::new();
        let mut at = 0;
        for step in (1..).map(|n| (n * 7919) % 70_001 + 1) {
            if at >= wire.len() {
                break;
            }
            let end = (at + step).min(wire.len());
            let predicted = dec.capacity_after_push(end - at);
            dec.push(&wire[at..end]);
            assert_eq!(dec.capacity(), predicted);
            at = end;
            while let Some(body) = dec.next_frame::<Vec<u8>>().unwrap() {
                got.push(body);
            }
            assert!(dec.capacity() <= dec.buffered() + 2 * BLOCK_BYTES);
        }
        let expected: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; i * 997]).collect();
        assert_eq!(got, expected);
        assert_eq!(dec.buffered(), 0);
        assert!(dec.capacity() <= BLOCK_BYTES);
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
