//! The de-duplication table: which `(client, seq)` pairs the log already holds.

use detflow_protocol::{ClientId, ClientWindow, RequestSeq};
use std::collections::{BTreeMap, BTreeSet};

/// Per client, every sequence number up to `contiguous` plus the ones above it seen out of
/// order. Clients number calls from 1 without gaps, so the out-of-order set stays as small
/// as the client's number of calls in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DedupTable {
    clients: BTreeMap<ClientId, Window>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Window {
    contiguous: u64,
    above: BTreeSet<u64>,
}

impl DedupTable {
    /// Records `(client, seq)`; false if it was already recorded.
    pub fn insert(&mut self, client: ClientId, seq: RequestSeq) -> bool {
        let w = self.clients.entry(client).or_default();
        if seq.0 <= w.contiguous || !w.above.insert(seq.0) {
            return false;
        }
        while w.above.remove(&(w.contiguous + 1)) {
            w.contiguous += 1;
        }
        true
    }

    /// The table as windows by ascending client: what a [`detflow_protocol::LogSnapshot`]
    /// carries.
    pub fn windows(&self) -> Vec<ClientWindow> {
        self.clients
            .iter()
            .map(|(&client, w)| ClientWindow {
                client,
                contiguous: w.contiguous,
                above: w.above.iter().copied().collect(),
            })
            .collect()
    }

    /// The table that [`DedupTable::windows`] describes.
    pub fn from_windows(windows: &[ClientWindow]) -> DedupTable {
        let mut table = DedupTable::default();
        for window in windows {
            let w = table.clients.entry(window.client).or_default();
            w.contiguous = w.contiguous.max(window.contiguous);
            w.above
                .extend(window.above.iter().filter(|&&s| s > window.contiguous));
        }
        table
    }

    /// Whether `(client, seq)` is recorded.
    pub fn contains(&self, client: ClientId, seq: RequestSeq) -> bool {
        self.clients
            .get(&client)
            .is_some_and(|w| seq.0 <= w.contiguous || w.above.contains(&seq.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_calls_collapse_into_the_window() {
        let mut t = DedupTable::default();
        let c = ClientId(9);
        assert!(t.insert(c, RequestSeq(2)));
        assert!(t.insert(c, RequestSeq(1)));
        assert!(!t.insert(c, RequestSeq(2)));
        assert!(t.contains(c, RequestSeq(1)) && !t.contains(c, RequestSeq(3)));
        assert_eq!(t.clients[&c].contiguous, 2);
        assert!(t.clients[&c].above.is_empty());
    }

    #[test]
    fn windows_round_trip() {
        let mut t = DedupTable::default();
        for (c, s) in [(1, 1), (1, 2), (1, 5), (2, 3), (3, 1)] {
            t.insert(ClientId(c), RequestSeq(s));
        }
        let back = DedupTable::from_windows(&t.windows());
        assert_eq!(back, t);
        assert!(back.contains(ClientId(1), RequestSeq(5)));
        assert!(!back.contains(ClientId(1), RequestSeq(3)));
    }
}
