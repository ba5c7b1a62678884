//! The node's QUIC connections: one link task per peer node writing what the router queued
//! for it, and the accept task that serves what peers and clients open.

use super::clients::{ClientService, serve_client};
use super::router::{ChannelHeader, Router, channel_of};
use super::stats::{PeerLabel, status};
use super::{Clock, NodeStats};
use crate::transport::{Connection, Endpoint, FrameWriter, PeerRole};
use detflow_protocol::NodeId;
use detflow_protocol::message::{ClientRequest, Message};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a link must have stayed up for its loss to count as a fresh failure, retried
/// at once, rather than as one more refusal, retried after a growing pause.
const LINK_STABLE: Duration = Duration::from_secs(1);

/// The longest pause between handshakes with a peer that keeps closing at once: short,
/// because the peer is usually a restarted node about to serve.
const REFUSED_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// The most queued messages a link takes for one round of writes.
const LINK_BATCH_MAX: usize = 512;

/// A channel's encoded frames are written as soon as they reach this size.
const LINK_BATCH_BYTES: usize = 1 << 20;

/// Keeps a connection to one node and writes every message for it, one stream per channel.
pub(super) async fn link_task(
    endpoint: Endpoint,
    node: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Message>,
    router: Arc<Router>,
) {
    // Messages taken from the queue but not written when the link went down.
    let mut unwritten: u64 = 0;
    let mut backoff = Duration::from_millis(20);
    loop {
        let conn = match endpoint.connect(addr).await {
            Ok(conn) if conn.node_id() == Some(node.0) => conn,
            Ok(conn) => {
                // The certificate verified but names another node: a misconfigured
                // cluster (or an impostor); never send it this node's traffic.
                tracing::warn!(%node, %addr, peer = ?conn.node_id(),
                    "the node at this address presents another node's certificate");
                conn.close();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(%node, %addr, error = %e, "connect failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        let up_since = tokio::time::Instant::now();
        // What queued while the link was down is stale: a peer that restarted would first
        // wade through thousands of old plans, reads and acks (a whole outage's worth)
        // before anything current. Every channel recovers from loss, and the link-up below
        // makes every machine here re-send what the peer needs now (hellos and the reads
        // they lack, plan subscriptions, Raft's retransmissions).
        let mut stale = std::mem::take(&mut unwritten);
        while rx.try_recv().is_ok() {
            stale += 1;
        }
        if stale > 0 {
            router.stats.shed.inc_by(stale);
            tracing::info!(%node, stale, "dropped the messages queued while the link was down");
        }
        tracing::info!(%node, %addr, "link up");
        router.link_up(node);
        let mut writers: BTreeMap<ChannelHeader, FrameWriter> = BTreeMap::new();
        // Everything queued goes out together: one write per channel per wake-up instead
        // of one per message, so the connection packs many messages into each packet.
        let mut batch: Vec<Message> = Vec::new();
        let mut frames: BTreeMap<ChannelHeader, Vec<u8>> = BTreeMap::new();
        'link: loop {
            match rx.recv().await {
                Some(msg) => batch.push(msg),
                None => return,
            }
            while batch.len() < LINK_BATCH_MAX {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            router
                .stats
                .backlogs
                .get_or_create(&PeerLabel { peer: node.0 })
                .set(rx.len() as u64);
            let mut messages = batch.drain(..);
            while let Some(msg) = messages.next() {
                let header = channel_of(&msg);
                let writer = match writers.entry(header) {
                    std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        match conn.open_channel(&header).await {
                            Ok(w) => slot.insert(w),
                            Err(e) => {
                                tracing::info!(%node, error = %e, "link down");
                                unwritten = 1 + messages.count() as u64;
                                break 'link;
                            }
                        }
                    }
                };
                let bytes = frames.entry(header).or_default();
                match writer.encode_into(&msg, bytes) {
                    Ok(()) => {}
                    // The message is too big for a frame. That is this node's bug (every
                    // message carrying user data is bounded below the frame limit), not a
                    // dead link; dropping the link would only make it flap.
                    Err(e) => {
                        router.stats.encode_failures.inc();
                        tracing::error!(%node, ?header, error = %e, "dropped a message that does not encode");
                    }
                }
                // Large messages (plans, reads) go out at once rather than pile up.
                if bytes.len() >= LINK_BATCH_BYTES {
                    let written = writer.write_frames(bytes).await;
                    bytes.clear();
                    if let Err(e) = written {
                        tracing::info!(%node, error = %e, "link down");
                        break 'link;
                    }
                }
            }
            drop(messages);
            for (header, bytes) in &mut frames {
                // Every channel with frames has its writer: they were encoded by it.
                let Some(writer) = writers.get_mut(header).filter(|_| !bytes.is_empty()) else {
                    continue;
                };
                let written = writer.write_frames(bytes).await;
                bytes.clear();
                if let Err(e) = written {
                    tracing::info!(%node, error = %e, "link down");
                    break 'link;
                }
            }
        }
        // What was written but not delivered is lost; the channels replay it.
        // A peer that closes at once (it is still loading its stores, or refuses this node)
        // is not back: keep backing off rather than handshaking with it 30 times a second,
        // which costs both nodes CPU that their replay needs.
        if up_since.elapsed() >= LINK_STABLE {
            backoff = Duration::from_millis(20);
        } else {
            backoff = (backoff * 2).min(REFUSED_BACKOFF_MAX);
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Answers status requests while the node loads its stores, so that loading progress
/// (`NodeStatus::rows_loaded`, `warehouses_loaded`) shows as it happens. Every other
/// request, and every peer, is turned away: nothing else runs yet. Returns, when
/// `loaded` fires, after closing what it accepted, so clients reconnect to the real
/// service.
pub(super) async fn serve_status_while_loading(
    endpoint: Endpoint,
    stats: Arc<NodeStats>,
    me: NodeId,
    clock: Clock,
    loaded: tokio::sync::oneshot::Receiver<()>,
) {
    let mut accepted = Vec::new();
    let mut streams = tokio::task::JoinSet::new();
    let mut loaded = std::pin::pin!(loaded);
    loop {
        let incoming = tokio::select! {
            _ = &mut loaded => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(conn) = incoming else { continue };
        if conn.role() != PeerRole::Client {
            // A peer reconnects (with back-off) once this node serves.
            conn.close();
            continue;
        }
        accepted.push(conn.clone());
        let stats = stats.clone();
        streams.spawn(async move {
            while let Ok((mut writer, mut reader)) = conn.accept_bi().await {
                if let Ok(Some(ClientRequest::Status)) = reader.recv::<ClientRequest>().await {
                    let answer = Message::StatusReply(status(&stats, me, clock));
                    let _ = writer.send(&answer).await;
                    let _ = writer.finish();
                }
                // Anything else gets no answer: the client retries once the node serves.
            }
        });
    }
    streams.abort_all();
    for conn in accepted {
        conn.close();
    }
}

/// Accepts connections: nodes open channels, clients open a stream per call.
pub(super) async fn accept_task(
    endpoint: Endpoint,
    router: Arc<Router>,
    clients: Arc<ClientService>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let conn = match incoming {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "refused a connection");
                continue;
            }
        };
        match (conn.role(), conn.node_id()) {
            (PeerRole::Node, Some(id)) => {
                tokio::spawn(serve_node(conn, NodeId(id), router.clone()));
            }
            (PeerRole::Client, _) => {
                tokio::spawn(serve_client(conn, clients.clone()));
            }
            (PeerRole::Node, None) => conn.close(),
        }
    }
}

async fn serve_node(conn: Connection, sender: NodeId, router: Arc<Router>) {
    if !router.nodes.contains_key(&sender) || sender == router.me {
        tracing::warn!(%sender, remote = %conn.remote_address(),
            "refused a node certificate that is not another node of this cluster");
        router.stats.peer_rejected.inc();
        conn.close();
        return;
    }
    loop {
        let (header, mut reader) = match conn.accept_channel::<ChannelHeader>().await {
            Ok(channel) => channel,
            Err(_) => return,
        };
        let router = router.clone();
        tokio::spawn(async move {
            loop {
                match reader.recv::<Message>().await {
                    Ok(Some(msg)) => router.dispatch_from(sender, msg),
                    Ok(None) => return,
                    // Only refused input is worth a warning; a lost connection (a peer that
                    // restarted, say) is routine and was logged as bad input on every restart.
                    Err(e) if e.is_refused_input() => {
                        tracing::warn!(?header, %sender, error = %e, "closed a channel with bad input");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(?header, error = %e, "channel ended");
                        return;
                    }
                }
            }
        });
    }
}
