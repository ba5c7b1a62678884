//! Identifiers and virtual time.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// A numbered slice of the log; epochs are consecutive from 1.
    Epoch(u64)
);
id!(
    /// A partition of the key space.
    PartitionId(u32)
);
id!(
    /// A node (process) of the cluster.
    NodeId(u32)
);
id!(
    /// A client session.
    ClientId(u64)
);
id!(
    /// A client's call number within its session; numbered from 1.
    RequestSeq(u64)
);

id!(
    /// A Raft term of the sequencer group: at most one leader per term.
    Term(u64)
);
id!(
    /// A replica's durable write, numbered from 1 per incarnation: `Persist` carries it,
    /// `Persisted` names the last one synced.
    WriteId(u64)
);

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

/// One call of a client session: the key of exactly-once execution.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct CallId {
    /// The session.
    pub client: ClientId,
    /// The call's number within the session.
    pub seq: RequestSeq,
}

impl CallId {
    /// Call `seq` of session `client`.
    pub fn new(client: ClientId, seq: RequestSeq) -> CallId {
        CallId { client, seq }
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.client, self.seq)
    }
}

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

/// A transaction's place in the global serial order.
///
/// Ordered by epoch, then sequencer group (always 0 until several replica groups exist),
/// then index within the batch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// The epoch whose batch holds the transaction.
    pub epoch: Epoch,
    /// The sequencer replica group that ordered it.
    pub group: u16,
    /// The index within the batch.
    pub index: u32,
}

impl Position {
    /// The position of the `index`-th transaction of `epoch`'s batch in group 0.
    pub fn new(epoch: Epoch, index: u32) -> Position {
        Position {
            epoch,
            group: 0,
            index,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.epoch, self.group, self.index)
    }
}

/// Virtual or real time in microseconds, passed into every state machine as `now`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    /// Time zero.
    pub const ZERO: Time = Time(0);

    /// This time plus `us` microseconds.
    pub fn plus_us(self, us: u64) -> Time {
        Time(self.0.saturating_add(us))
    }

    /// Microseconds from `earlier` to this time, or 0 if `earlier` is later.
    pub fn since_us(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}
