//! Raft answers some messages only after the state they vouch for is on stable storage: a
//! granted vote only once the term and the vote are durable (else a restart forgets it
//! and votes twice), and a successful append acknowledgement only once the entries it
//! confirms are durable (else the leader counts toward a quorum entries a crash loses).
//!
//! Checked as the world performs each send, against what the sender's disk would recover
//! at that moment ([`crate::disk::ReplicaDisk::synced`]), not against what the replica
//! believes is durable: a replica that misjudges its own writes is caught too. A pre-vote
//! changes nothing and needs nothing durable; refusals vouch for nothing.

use crate::disk::ReplicaDisk;
use detflow_protocol::{NodeId, PeerMessage};
use detflow_sequencer::Replica;

/// Checks that `msg`, leaving `replica` for `to`, vouches only for what `disk` already
/// holds durably.
pub(crate) fn check(
    replica: &Replica,
    disk: &ReplicaDisk,
    to: NodeId,
    msg: &PeerMessage,
) -> Result<(), String> {
    let id = replica.id();
    let synced = disk.synced();
    match *msg {
        PeerMessage::Vote {
            term,
            granted: true,
        } => {
            // A durable later term also keeps this replica from voting in `term` again.
            let durable =
                synced.term > term || (synced.term == term && synced.voted_for == Some(to));
            if !durable {
                return Err(format!(
                    "{id} granted {to} its vote in term {term} before the vote was durable: \
                     its disk holds term {} and vote {:?}",
                    synced.term, synced.voted_for
                ));
            }
        }
        PeerMessage::AppendReply {
            term,
            success: true,
            match_epoch,
            ..
        } => {
            // A reply held for a write and released after a term change vouched for the
            // log as it was then. Within one term a follower never drops an entry it
            // acknowledged (the term's one leader only appends), so its log at
            // `match_epoch` is what a reply of the current term vouches for.
            if replica.term() != term || match_epoch.0 == 0 {
                return Ok(());
            }
            let held = replica.entry(match_epoch);
            let durable = synced
                .log
                .get(match_epoch.0.wrapping_sub(synced.log_start().0 + 1) as usize);
            if match_epoch <= replica.log_start()
                && (match_epoch <= synced.log_start() || durable.is_some())
            {
                // Compacted in memory (so committed), and durable as an entry or as part
                // of the snapshot on disk.
                return Ok(());
            }
            let same = match (held, durable) {
                (Some(a), Some(b)) => {
                    a.term == b.term
                        && (std::sync::Arc::ptr_eq(&a.batch, &b.batch) || *a.batch == *b.batch)
                }
                _ => false,
            };
            if !same {
                return Err(format!(
                    "{id} acknowledged epoch {match_epoch} of term {term} to {to} before it was \
                     durable: its log holds {} entries{}, its disk {}{}",
                    replica.log().len(),
                    held.map_or(String::new(), |e| format!(" (term {} there)", e.term)),
                    synced.log.len(),
                    durable.map_or(String::new(), |e| format!(" (term {} there)", e.term))
                ));
            }
        }
        _ => {}
    }
    Ok(())
}
