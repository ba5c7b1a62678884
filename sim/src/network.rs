//! The network model both worlds run on: FIFO connections, cuts (partitions and silent
//! drops), connection generations, and the messages each connection recently delivered.
//!
//! It decides nothing about delay or loss (the world draws those from its seed) and knows
//! nothing of what the messages mean: it keeps the state that makes a connection behave
//! like one, generic over the address and the message, so that the cluster world and the
//! log-only world share one model instead of two copies that drift.

use detflow_protocol::{DetRng, Time};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Recently delivered messages remembered per connection, for duplicate delivery.
const RECENT_PER_LINK: usize = 4;

/// Every connection between the addresses `A`, carrying messages `M`.
pub(crate) struct Network<A, M> {
    /// Per direction, the last scheduled arrival: a later message never overtakes it.
    last_delivery: BTreeMap<(A, A), Time>,
    /// Per connection (unordered pair), bumped when it breaks: what was in flight is lost.
    link_generation: BTreeMap<(A, A), u64>,
    /// Per direction, the last few messages delivered.
    recent: BTreeMap<(A, A), VecDeque<M>>,
    /// The directions each active cut blocks.
    blocked: BTreeMap<u64, BTreeSet<(A, A)>>,
    /// The cuts in `blocked` that are silent drops: nobody hears when they end.
    silent: BTreeSet<u64>,
    next_cut: u64,
}

impl<A: Copy + Ord, M: Clone> Network<A, M> {
    /// A network with every connection up and nothing in flight.
    pub(crate) fn new() -> Network<A, M> {
        Network {
            last_delivery: BTreeMap::new(),
            link_generation: BTreeMap::new(),
            recent: BTreeMap::new(),
            blocked: BTreeMap::new(),
            silent: BTreeSet::new(),
            next_cut: 0,
        }
    }

    /// The connection between `a` and `b`, whichever way a message goes.
    pub(crate) fn link(a: A, b: A) -> (A, A) {
        if a <= b { (a, b) } else { (b, a) }
    }

    /// Whether a cut blocks the direction `from → to`.
    pub(crate) fn is_blocked(&self, from: A, to: A) -> bool {
        self.blocked.values().any(|cut| cut.contains(&(from, to)))
    }

    /// The connection's current generation: a message sent under an older one is lost.
    pub(crate) fn generation(&self, a: A, b: A) -> u64 {
        self.link_generation
            .get(&Self::link(a, b))
            .copied()
            .unwrap_or(0)
    }

    /// When a message sent `from → to` that would arrive at `earliest` does arrive: never
    /// before one sent earlier on the same connection (FIFO).
    pub(crate) fn arrival(&mut self, from: A, to: A, earliest: Time) -> Time {
        let last = self.last_delivery.entry((from, to)).or_insert(Time::ZERO);
        let at = (*last).max(earliest);
        *last = at;
        at
    }

    /// Stalls the direction `from → to` until `until`: what is sent on it meanwhile
    /// arrives then, in order (a connection held up by a full buffer or a paused peer).
    pub(crate) fn stall(&mut self, from: A, to: A, until: Time) {
        let last = self.last_delivery.entry((from, to)).or_insert(Time::ZERO);
        *last = (*last).max(until);
    }

    /// Forgets when the directions touching `addr` last delivered: a restarted node's
    /// connections are new ones.
    pub(crate) fn forget_arrivals(&mut self, addr: A) {
        self.last_delivery
            .retain(|(a, b), _| *a != addr && *b != addr);
    }

    /// Breaks the connection between `a` and `b`: what is in flight is lost.
    pub(crate) fn reset(&mut self, a: A, b: A) {
        *self.link_generation.entry(Self::link(a, b)).or_default() += 1;
    }

    /// Remembers a message delivered `from → to`, for a later duplicate delivery.
    pub(crate) fn remember(&mut self, from: A, to: A, msg: M) {
        let recent = self.recent.entry((from, to)).or_default();
        if recent.len() == RECENT_PER_LINK {
            recent.pop_front();
        }
        recent.push_back(msg);
    }

    /// The messages recently delivered `from → to`, oldest first.
    pub(crate) fn recent(&self, from: A, to: A) -> Vec<M> {
        self.recent
            .get(&(from, to))
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Starts a cut blocking `directions` and returns its id. A partition breaks the
    /// connections it crosses (what was in flight is lost); a silent drop breaks nothing
    /// that either end could notice.
    pub(crate) fn cut(&mut self, directions: BTreeSet<(A, A)>, silent: bool) -> u64 {
        if !silent {
            for (a, b) in &directions {
                self.reset(*a, *b);
            }
        }
        let id = self.next_cut;
        self.next_cut += 1;
        self.blocked.insert(id, directions);
        if silent {
            self.silent.insert(id);
        }
        id
    }

    /// Ends cut `id`. Returns the connections it crossed, for the world to announce as
    /// re-established, or nothing if the cut had ended already or was silent.
    pub(crate) fn heal(&mut self, id: u64) -> Vec<(A, A)> {
        let Some(cut) = self.blocked.remove(&id) else {
            return Vec::new();
        };
        if self.silent.remove(&id) {
            return Vec::new();
        }
        let links: BTreeSet<(A, A)> = cut.iter().map(|(a, b)| Self::link(*a, *b)).collect();
        links.into_iter().collect()
    }

    /// The ids of every active cut.
    pub(crate) fn cuts(&self) -> Vec<u64> {
        self.blocked.keys().copied().collect()
    }
}

/// Draws the directions a partition blocks among `servers`, of which `replicas` are the
/// replicas: a single failed link (half the time between two replicas), one node isolated,
/// a minority of replicas with some other nodes, or a random split; a third of them one-way.
pub(crate) fn draw_partition<A: Copy + Ord>(
    rng: &mut DetRng,
    servers: &[A],
    replicas: &[A],
) -> BTreeSet<(A, A)> {
    let mut cut = BTreeSet::new();
    let one_way = rng.chance(0.3);
    let block = |a: A, b: A, cut: &mut BTreeSet<(A, A)>| {
        cut.insert((a, b));
        if !one_way {
            cut.insert((b, a));
        }
    };
    let n = replicas.len() as u64;
    let kind = rng.below(4);
    if kind == 0 {
        // A partial partition: one link fails while both ends still reach everyone else
        // (Jepsen's "bridge" family).
        let (a, b) = if rng.chance(0.5) && n > 1 {
            let a = rng.below(n);
            let b = (a + 1 + rng.below(n - 1)) % n;
            (replicas[a as usize], replicas[b as usize])
        } else {
            (*rng.pick(servers), *rng.pick(servers))
        };
        if a != b {
            block(a, b, &mut cut);
        }
        return cut;
    }
    let mut side: BTreeSet<A> = BTreeSet::new();
    match kind {
        1 => {
            side.insert(*rng.pick(servers));
        }
        2 => {
            let minority = (n.saturating_sub(1) / 2).max(1);
            let first = rng.below(n);
            for r in 0..minority {
                side.insert(replicas[((first + r) % n) as usize]);
            }
            for s in servers.iter().filter(|s| !replicas.contains(s)) {
                if rng.chance(0.5) {
                    side.insert(*s);
                }
            }
        }
        _ => {
            for s in servers {
                if rng.chance(0.5) {
                    side.insert(*s);
                }
            }
        }
    }
    for a in &side {
        for b in servers.iter().filter(|b| !side.contains(b)) {
            block(*a, *b, &mut cut);
        }
    }
    cut
}
