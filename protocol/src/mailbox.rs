//! Asynchronous messages between services: letters, their outboxes and their delivery.
//!
//! A procedure sends a [`Letter`] (a call of another procedure, without waiting for it).
//! The partition that reports the sending transaction's result keeps the letter in its
//! outbox, numbered in send order, durably with the epoch that sent it. That partition
//! then has the letters delivered by a [`Delivery`]: an ordinary transaction, submitted
//! through a gateway and ordered in a later epoch, whose footprint is the union of the
//! letters' own footprints and of the sender's outbox keys. Executing it checks each
//! letter against the outbox, runs it, deletes it and advances the outbox's
//! [`MailboxMark`], all in one transaction: a letter is consumed exactly once, whatever
//! was resubmitted, replayed or failed over, and in the order it was sent.

use crate::ids::{ClientId, PartitionId};
use crate::key::{Elem, Key, SYSTEM_TABLE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The procedure name of delivery transactions. Clients cannot call it: only an executor
/// asks for a delivery, and only through its node's gateway.
pub const DELIVER_PROCEDURE: &str = "_sys.deliver";

/// A one-way call of a procedure, sent by a transaction to run in a later one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    /// The procedure to run, e.g. `shipping.ship`.
    pub procedure: String,
    /// Its MessagePack-encoded arguments.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
}

/// A batch of consecutive letters of one outbox to consume, the arguments of a
/// [`DELIVER_PROCEDURE`] transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The partition whose outbox holds the letters.
    pub from: PartitionId,
    /// The outbox's delivery number: one more than the deliveries it has consumed, so a
    /// delivery ordered twice consumes nothing the second time. Also the call's sequence
    /// number, which keeps the sequencer's de-duplication window contiguous.
    pub batch: u64,
    /// The number of the first letter.
    pub first: u64,
    /// The letters, numbered from `first`.
    pub letters: Vec<Letter>,
    /// Letters the gateway found undeliverable (their footprint cannot be computed or
    /// routed), by index in `letters`, with the reason: they are consumed with that abort
    /// instead of blocking the outbox.
    #[serde(default)]
    pub refused: BTreeMap<u32, String>,
}

/// How far an outbox's letters were consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxMark {
    /// Every letter numbered up to this one was consumed.
    pub delivered: u64,
    /// Deliveries executed that consumed letters.
    pub batches: u64,
}

/// The session id under which partition `from`'s deliveries are ordered. Session ids the
/// nodes hand to clients are odd (and the simulator's are small), so these never collide.
pub fn mailbox_client(from: PartitionId) -> ClientId {
    ClientId((1 << 63) | (u64::from(from.0) << 1))
}

/// Whether `client` is a partition's delivery session (see [`mailbox_client`]).
pub fn is_mailbox_client(client: ClientId) -> bool {
    client.0 >> 63 == 1 && client.0 & 1 == 0
}

/// The outbox's letters of partition `from`, all under this prefix.
pub fn outbox_prefix(from: PartitionId) -> Key {
    Key::table(SYSTEM_TABLE).str("mail").u64(u64::from(from.0))
}

/// The letters of `from`'s outbox, in number order, under this prefix.
pub fn letters_prefix(from: PartitionId) -> Key {
    outbox_prefix(from).str("letter")
}

/// Letter `seq` of `from`'s outbox.
pub fn letter_key(from: PartitionId, seq: u64) -> Key {
    letters_prefix(from).u64(seq)
}

/// `from`'s [`MailboxMark`].
pub fn mark_key(from: PartitionId) -> Key {
    outbox_prefix(from).str("mark")
}

/// The number the next letter `from` sends gets (the sender's own counter).
pub fn next_letter_key(from: PartitionId) -> Key {
    outbox_prefix(from).str("next")
}

/// The partition an outbox key belongs to, if `key` is one: the only keys of the system
/// table a transaction may name, and only a delivery.
pub fn outbox_partition(key: &Key) -> Option<PartitionId> {
    if !key.is_system() {
        return None;
    }
    match key.elems().ok()?.as_slice() {
        [Elem::Str(_), Elem::Str(mail), Elem::U64(p), ..] if mail == "mail" => {
            u32::try_from(*p).ok().map(PartitionId)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keys_name_their_partition() {
        let p = PartitionId(7);
        for key in [letter_key(p, 3), mark_key(p), next_letter_key(p)] {
            assert!(key.is_system());
            assert!(key.starts_with(&outbox_prefix(p)));
            assert_eq!(outbox_partition(&key), Some(p));
        }
        assert_eq!(
            outbox_partition(&Key::table(SYSTEM_TABLE).str("results")),
            None
        );
        assert_eq!(outbox_partition(&Key::table("mail").u64(1)), None);
    }

    #[test]
    fn mailbox_sessions_are_never_client_sessions() {
        assert!(is_mailbox_client(mailbox_client(PartitionId(0))));
        assert!(is_mailbox_client(mailbox_client(PartitionId(u32::MAX))));
        assert!(!is_mailbox_client(ClientId(u64::MAX)));
        assert!(!is_mailbox_client(ClientId(3)));
        assert_ne!(
            mailbox_client(PartitionId(1)),
            mailbox_client(PartitionId(2))
        );
    }
}
