//! State transfer: a partition replica that lost its state copies a peer replica's.
//!
//! A replica whose store is gone (its disk was wiped, and the archive holds no checkpoint
//! it can reach) needs epochs the log may have compacted away. The plan server tells it so
//! ([`crate::message::Message::PlansCompacted`]); it then asks another replica of its own
//! partition for an image of its state ([`StateFetch`]). The peer captures its state after
//! the last epoch it applied (a store snapshot, not a copy) and sends it in bounded chunks
//! ([`StateChunk`]), each asked for after the last key of the one before, so a transfer
//! resumes where it stopped and never buffers a whole partition in one message. The
//! receiver then subscribes to plans from the epoch after the image's.
//!
//! ```text
//!  lost replica                       peer replica (same partition)
//!  Fetch { image: None }        ───▶  captures its state after epoch E
//!                               ◀───  Rows { epoch: E, rows, done: false }
//!  Fetch { image: Some((E, k)) }───▶  rows after key k of the same image
//!                               ◀───  Rows { epoch: E, rows, done: true }
//!  Subscribe { from: E + 1 }    ───▶  (a sequencer replica)
//! ```

use crate::ids::Epoch;
use crate::key::Key;
use crate::txn::Value;
use serde::{Deserialize, Serialize};

/// The most key and value bytes one chunk carries: a chunk stops after the row that
/// reaches it, so a partition of any size travels in bounded messages.
pub const STATE_CHUNK_BYTES_MAX: usize = 512 << 10;

/// What a replica asks a peer replica of its partition for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFetch {
    /// `None`: a new image of the peer's latest state. `Some((epoch, after))`: the rows of
    /// the image of `epoch` that follow key `after` (the last one received).
    pub image: Option<(Epoch, Key)>,
}

/// A peer's answer to a [`StateFetch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateChunk {
    /// Rows of the image of the state after `epoch`, ascending in the image's order.
    Rows {
        /// The epoch after which the image holds the state.
        epoch: Epoch,
        /// The key these rows follow, as asked (`None`: the image's first rows).
        after: Option<Key>,
        /// The rows.
        rows: Vec<(Key, Value)>,
        /// Whether these are the image's last rows.
        done: bool,
    },
    /// The peer cannot serve it: it holds no state yet (it is being transferred one
    /// itself) or no longer holds the image asked for. Ask again for a new image.
    Unavailable,
}
