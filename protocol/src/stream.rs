//! Egress streams: named, ordered sequences of events that procedures publish and external
//! consumers read from an offset.
//!
//! An event's [`Offset`] is the position of the transaction that published it in the log,
//! and its index among that transaction's events, so offsets are one global order, derived
//! from the log: a replay publishes the same events at the same offsets. The partition that
//! reports the transaction's result keeps its events. A read asks every partition for the
//! events at or after an offset and merges them up to the epoch every partition has
//! applied, so a consumer that resumes from the offset after the last event it processed
//! sees every event once, in order (at least once if it resumes from an earlier one).

use crate::ids::{Epoch, PartitionId, Position};
use crate::key::{Elem, Key, SYSTEM_TABLE};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest stream name, in bytes.
pub const STREAM_NAME_BYTES_MAX: usize = 256;

/// The most events one read returns by default.
pub const STREAM_READ_EVENTS_DEFAULT: u32 = 1_000;

/// Where an event stands in every stream: its transaction's position, then its index
/// among that transaction's events.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Offset {
    /// The publishing transaction's position.
    pub position: Position,
    /// The event's index among the transaction's events.
    pub index: u32,
}

impl Offset {
    /// The first offset of every stream.
    pub const START: Offset = Offset {
        position: Position {
            epoch: Epoch(0),
            group: 0,
            index: 0,
        },
        index: 0,
    };

    /// The offset right after this one: where a consumer that processed this event resumes.
    pub fn next(self) -> Offset {
        Offset {
            index: self.index + 1,
            ..self
        }
    }

    /// The first offset after every event of epoch `epoch` and before.
    pub fn after_epoch(epoch: Epoch) -> Offset {
        Offset {
            position: Position::new(epoch.next(), 0),
            index: 0,
        }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.position, self.index)
    }
}

/// One published event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEvent {
    /// Where it stands.
    pub offset: Offset,
    /// What the procedure published (usually MessagePack).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// One partition's share of a stream read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPart {
    /// The answering partition.
    pub partition: PartitionId,
    /// Its events at or after the read's offset, ascending, at most as many as asked.
    pub events: Vec<StreamEvent>,
    /// The last epoch it applied: it holds every event of the epochs up to it.
    pub applied: Epoch,
    /// Whether `events` holds all it has from the offset (false: the limit cut them).
    pub complete: bool,
}

/// The answer to a stream read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamReply {
    /// Events in offset order (perhaps none yet), and the offset to read from next.
    Events {
        /// The events.
        events: Vec<StreamEvent>,
        /// Where the next read starts: after the last event, or after every epoch all
        /// partitions have applied when there were fewer events than asked for.
        next: Offset,
    },
    /// Not every partition answered in time; read again (through any gateway).
    Unavailable,
    /// The read is malformed (the reason says how); reading again will not help.
    Refused(String),
}

/// Whether `name` is a valid stream name: 1 to [`STREAM_NAME_BYTES_MAX`] bytes.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > STREAM_NAME_BYTES_MAX {
        return Err(format!(
            "a stream name has 1 to {STREAM_NAME_BYTES_MAX} bytes, not {}",
            name.len()
        ));
    }
    Ok(())
}

/// Every event of stream `name`, under this prefix, in offset order.
pub fn stream_prefix(name: &str) -> Key {
    Key::table(SYSTEM_TABLE).str("stream").str(name)
}

/// The key of the event of stream `name` at `offset`.
pub fn event_key(name: &str, offset: Offset) -> Key {
    stream_prefix(name)
        .u64(offset.position.epoch.0)
        .u64(u64::from(offset.position.group))
        .u64(u64::from(offset.position.index))
        .u64(u64::from(offset.index))
}

/// The offset an event key names, if it is one.
pub fn offset_of(key: &Key) -> Option<Offset> {
    let elems = key.elems().ok()?;
    let [
        ..,
        Elem::U64(epoch),
        Elem::U64(group),
        Elem::U64(index),
        Elem::U64(n),
    ] = elems.as_slice()
    else {
        return None;
    };
    Some(Offset {
        position: Position {
            epoch: Epoch(*epoch),
            group: u16::try_from(*group).ok()?,
            index: u32::try_from(*index).ok()?,
        },
        index: u32::try_from(*n).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_sort_as_their_offsets_and_give_them_back() {
        let a = Offset {
            position: Position::new(Epoch(3), 9),
            index: 2,
        };
        let b = a.next();
        let c = Offset::after_epoch(Epoch(3));
        assert!(a < b && b < c);
        assert!(event_key("s", a) < event_key("s", b));
        assert!(event_key("s", b) < event_key("s", c));
        assert!(event_key("s", a).starts_with(&stream_prefix("s")));
        assert!(!event_key("s", a).starts_with(&stream_prefix("t")));
        assert_eq!(offset_of(&event_key("s", a)), Some(a));
        assert!(event_key("s", a).is_system());
        assert!(check_stream_name("").is_err());
        assert!(check_stream_name(&"x".repeat(257)).is_err());
        assert!(check_stream_name("orders.shipped").is_ok());
    }
}
