//! Where a message goes: a local component's inbox or the link to the node that hosts its
//! receiver; and which messages a peer node may send at all.

use super::{Event, Inbox, NodeStats};
use crate::config::NodeSpec;
use detflow_protocol::client_message;
use detflow_protocol::message::Message;
use detflow_protocol::{ExecutorId, NodeId, PartitionId, Placement};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Which component a channel connects, so each (sender, receiver, channel) gets its own
/// QUIC stream and FIFO order without head-of-line blocking across channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChannelHeader {
    /// Replica → replica.
    Replication,
    /// Gateway → replica (and back).
    Submissions,
    /// Replica → executor `p`.
    Plans(u32),
    /// Executor → executor `p` (reads, acks, hellos).
    Reads(u32),
    /// Executor → replica (subscriptions).
    Subscriptions,
    /// Executor ↔ gateway (results, queries, deliveries).
    Results,
    /// Executor → another replica `p` of its partition (state transfer), apart so that
    /// its large chunks never hold back reads.
    State(u32),
}

pub(super) fn channel_of(msg: &Message) -> ChannelHeader {
    match msg {
        Message::Peer { .. } => ChannelHeader::Replication,
        Message::Submit(_) | Message::NotLeader { .. } | Message::Duplicate { .. } => {
            ChannelHeader::Submissions
        }
        Message::Plan(plan) => ChannelHeader::Plans(plan.partition.0),
        Message::PlansCompacted { partition, .. } => ChannelHeader::Plans(partition.0),
        Message::StateFetch { partition, .. } | Message::StateChunk { partition, .. } => {
            ChannelHeader::State(partition.0)
        }
        Message::RemoteReads { to, .. }
        | Message::Ack { to, .. }
        | Message::Hello { to, .. }
        | Message::ReadsGone { to, .. } => ChannelHeader::Reads(to.0),
        Message::Subscribe { .. } | Message::Applied { .. } => ChannelHeader::Subscriptions,
        Message::Deliver(_)
        | Message::Query { .. }
        | Message::Result { .. }
        | Message::ResultUnknown { .. }
        | Message::StreamPart { .. }
        | Message::StreamQuery { .. }
        | Message::SnapshotPart { .. }
        | Message::SnapshotQuery { .. } => ChannelHeader::Results,
        // No task sends these to a node (and a node refuses them on any channel); they are
        // named here only so a new variant cannot slip onto a channel unnoticed.
        client_message!() => ChannelHeader::Results,
    }
}

/// Routes messages to local inboxes or to the link of the node that hosts the receiver.
pub(crate) struct Router {
    pub(super) me: NodeId,
    /// Every node's roles, for checking what a peer may send.
    pub(super) nodes: BTreeMap<NodeId, NodeSpec>,
    pub(super) placement: Arc<Placement>,
    pub(super) replica: Option<Inbox>,
    pub(super) gateway: Option<Inbox>,
    pub(super) executors: BTreeMap<PartitionId, Inbox>,
    pub(super) links: BTreeMap<NodeId, mpsc::Sender<Message>>,
    pub(super) stats: Arc<NodeStats>,
}

impl Router {
    fn to_node(&self, node: NodeId, msg: Message) {
        if node == self.me {
            self.dispatch(msg);
        } else if let Some(link) = self.links.get(&node) {
            self.send_or_shed(link, msg);
        }
    }

    pub(super) fn to_replica(&self, replica: NodeId, msg: Message) {
        self.to_node(replica, msg);
    }

    /// Sends to replica `to` of a partition: its node's link, or this node's executor.
    pub(super) fn to_executor(&self, to: ExecutorId, msg: Message) {
        if self.placement.hosts(to.partition, to.node) {
            self.to_node(to.node, msg);
        } else {
            self.stats.unroutable.inc();
        }
    }

    pub(super) fn to_gateway(&self, gateway: NodeId, msg: Message) {
        self.to_node(gateway, msg);
    }

    /// Hands a message that arrived for this node to the component it is for.
    fn dispatch(&self, msg: Message) {
        let inbox = match &msg {
            Message::Peer { .. }
            | Message::Submit(_)
            | Message::Subscribe { .. }
            | Message::Applied { .. } => self.replica.as_ref(),
            Message::Plan(plan) => self.executors.get(&plan.partition),
            Message::PlansCompacted { partition, .. }
            | Message::StateFetch { partition, .. }
            | Message::StateChunk { partition, .. } => self.executors.get(partition),
            Message::RemoteReads { to, .. }
            | Message::Ack { to, .. }
            | Message::Hello { to, .. }
            | Message::ReadsGone { to, .. } => self.executors.get(to),
            Message::Query { partition, .. }
            | Message::StreamQuery { partition, .. }
            | Message::SnapshotQuery { partition, .. } => self.executors.get(partition),
            Message::Deliver(_)
            | Message::StreamPart { .. }
            | Message::SnapshotPart { .. }
            | Message::Duplicate { .. }
            | Message::NotLeader { .. }
            | Message::Result { .. }
            | Message::ResultUnknown { .. } => self.gateway.as_ref(),
            // Client messages come over client streams, never through the router.
            client_message!() => None,
        };
        match inbox {
            Some(inbox) => self.deliver(inbox, Event::Msg(msg)),
            None => {
                self.stats.unroutable.inc();
            }
        }
    }

    /// Queues an event for a local task, shedding (counted) if its inbox is full.
    pub(super) fn deliver(&self, inbox: &Inbox, event: Event) {
        self.send_or_shed(inbox, event);
    }

    /// Queues `item`; a full queue sheds it (counted): its reader is not keeping up, and
    /// every channel tolerates loss (replays and retries recover it), as it tolerates a
    /// network that drops. A closed queue means the node is shutting down.
    fn send_or_shed<T>(&self, queue: &mpsc::Sender<T>, item: T) {
        if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(item) {
            self.stats.shed.inc();
        }
    }

    /// Hands a message from peer node `sender` (as its certificate says) to its component,
    /// unless it contradicts what `sender` is (DESIGN.md §10c): a node speaks only for
    /// itself, for the partitions it hosts and in the roles it has.
    pub(super) fn dispatch_from(&self, sender: NodeId, msg: Message) {
        match self.admit(sender, &msg) {
            Ok(()) => self.dispatch(msg),
            Err(reason) => {
                self.stats.peer_rejected.inc();
                tracing::debug!(%sender, reason, "refused a message from a peer");
            }
        }
    }

    fn admit(&self, sender: NodeId, msg: &Message) -> Result<(), &'static str> {
        let spec = self
            .nodes
            .get(&sender)
            .ok_or("not a node of this cluster")?;
        let hosts = |p: &PartitionId| self.placement.hosts(*p, sender);
        let mine = |p: &PartitionId| self.placement.hosts(*p, self.me);
        let check = |ok: bool, reason| if ok { Ok(()) } else { Err(reason) };
        match msg {
            Message::Peer { from, .. } => check(
                *from == sender && spec.replica,
                "replication from another node",
            ),
            Message::Submit(txn) => check(
                spec.gateway && txn.gateway == sender,
                "a submission for another gateway",
            ),
            Message::NotLeader { from, txn, .. } => check(
                *from == sender && spec.replica && txn.gateway == self.me,
                "a refusal on behalf of another replica",
            ),
            Message::Duplicate { .. } => check(spec.replica, "a duplicate from a non-replica"),
            Message::Subscribe {
                partition, node, ..
            }
            | Message::Applied {
                partition, node, ..
            } => check(
                hosts(partition) && *node == sender,
                "a subscription or report for a partition it does not host, or for another node",
            ),
            Message::Plan(plan) => check(
                spec.replica && mine(&plan.partition),
                "a plan from a non-replica or for a partition not here",
            ),
            Message::PlansCompacted {
                from, partition, ..
            } => check(
                *from == sender && spec.replica && mine(partition),
                "a compaction notice from a non-replica or for a partition not here",
            ),
            Message::StateFetch {
                partition, node, ..
            }
            | Message::StateChunk {
                partition, node, ..
            } => check(
                *node == sender && hosts(partition) && mine(partition),
                "a state transfer between nodes that do not both host the partition",
            ),
            Message::RemoteReads { to, reads } => check(
                hosts(&reads.from) && mine(to),
                "reads of a partition it does not host",
            ),
            Message::Ack { from, node, to, .. }
            | Message::Hello { from, node, to, .. }
            | Message::ReadsGone { from, node, to, .. } => check(
                hosts(from) && *node == sender && mine(to),
                "an ack or hello for a partition it does not host",
            ),
            Message::Deliver(delivery) => check(
                hosts(&delivery.from) && self.gateway.is_some(),
                "a delivery for a partition it does not host, or to a node without a gateway",
            ),
            Message::StreamQuery { gateway, .. } => check(
                spec.gateway && *gateway == sender,
                "a stream query on behalf of another gateway",
            ),
            Message::StreamPart { part, .. } => check(
                hosts(&part.partition),
                "a stream share of a partition it does not host",
            ),
            Message::SnapshotQuery { gateway, .. } => check(
                spec.gateway && *gateway == sender,
                "a snapshot query on behalf of another gateway",
            ),
            Message::SnapshotPart { part, .. } => check(
                hosts(&part.partition),
                "a snapshot answer of a partition it does not host",
            ),
            Message::Query { gateway, .. } => check(
                spec.gateway && *gateway == sender,
                "a query on behalf of another gateway",
            ),
            Message::Result { from, .. } => {
                check(hosts(from), "a result for a partition it does not host")
            }
            Message::ResultUnknown { .. } => check(
                !spec.partitions.is_empty(),
                "a result from a node without partitions",
            ),
            client_message!() => Err("a client message on a node channel"),
        }
    }

    /// Tells the gateway on this node that the replica here follows `leader` now.
    pub(super) fn leader_changed(&self, leader: NodeId) {
        if let Some(gateway) = &self.gateway {
            self.deliver(gateway, Event::Leader(leader));
        }
    }

    pub(super) fn link_up(&self, node: NodeId) {
        for inbox in self
            .executors
            .values()
            .chain(&self.replica)
            .chain(&self.gateway)
        {
            self.deliver(inbox, Event::LinkUp(node));
        }
    }
}
