//! Control channels: how a plug-in (hole-punch coordination, relay, gossip, or your own
//! protocol) exchanges its own control frames with connected peers without any change to
//! the service.
//!
//! A plug-in claims a frame kind with [`Service::control_channel`](crate::Service::control_channel)
//! and gets a [`ControlChannel`]: `send` queues a frame on the peer's connection in the
//! control lane (which never waits behind large user messages), `recv` yields the frames of
//! that kind peers sent us. The inbound queue of a channel is bounded: frames that arrive
//! while it is full are dropped and counted ([`ControlChannel::dropped`]), so a plug-in that
//! falls behind never stalls message delivery; control protocols retry on their own.
//! Frames of kinds nobody claimed are skipped.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use crust_core::PeerId;
use crust_core::wire::FrameKind;
use tokio::sync::mpsc;

use crate::node::Node;
use crate::{Error, Result};

/// Largest control payload a channel sends or accepts (64 KiB): control frames are small,
/// and every one is buffered whole.
pub const MAX_CONTROL_PAYLOAD: usize = 64 * 1024;

/// Frame kind bytes below this are reserved for Crust itself (except the plug-in kinds
/// [`FrameKind::PeerExchange`], claimable only while the built-in gossip is off
/// ([`GossipConfig::enabled`](crate::GossipConfig::enabled)), and
/// [`FrameKind::ConnectionInfoRelay`]).
pub const FIRST_PLUGIN_KIND: u8 = 32;

/// A control frame a peer sent on a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControlMessage {
    /// The sender (authenticated by the connection).
    pub peer: PeerId,
    /// The frame's payload.
    pub payload: Bytes,
}

struct Route {
    tx: mpsc::Sender<ControlMessage>,
    dropped: Arc<AtomicU64>,
}

/// The claimed kinds and where their frames go.
#[derive(Default)]
pub(crate) struct ControlRoutes {
    routes: RwLock<HashMap<u8, Route>>,
}

impl ControlRoutes {
    /// True when `kind` may be claimed by a plug-in.
    fn claimable(kind: FrameKind) -> bool {
        match kind {
            FrameKind::PeerExchange | FrameKind::ConnectionInfoRelay => true,
            FrameKind::Unknown(b) => b >= FIRST_PLUGIN_KIND,
            _ => false,
        }
    }

    fn claim(&self, kind: FrameKind, capacity: usize) -> Result<ChannelEnd> {
        if !Self::claimable(kind) {
            return Err(Error::ControlKindUnavailable(kind));
        }
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let byte = kind.to_byte();
        if routes.get(&byte).is_some_and(|route| !route.tx.is_closed()) {
            return Err(Error::ControlKindUnavailable(kind));
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        routes.insert(
            byte,
            Route {
                tx,
                dropped: dropped.clone(),
            },
        );
        Ok(ChannelEnd { rx, dropped })
    }

    fn release(&self, kind: FrameKind) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if routes
            .get(&kind.to_byte())
            .is_some_and(|route| route.tx.is_closed())
        {
            routes.remove(&kind.to_byte());
        }
    }

    /// Hands a frame of `kind` from `peer` to its channel. Returns false when no channel
    /// claimed the kind.
    pub(crate) fn dispatch(&self, kind: FrameKind, peer: PeerId, payload: Bytes) -> bool {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let Some(route) = routes.get(&kind.to_byte()) else {
            return false;
        };
        if payload.len() > MAX_CONTROL_PAYLOAD {
            route.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, ?kind, len = payload.len(), "oversized control frame dropped");
            return true;
        }
        if route.tx.try_send(ControlMessage { peer, payload }).is_err() {
            route.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, ?kind, "control channel full (or closed); frame dropped");
        }
        true
    }

    /// A peer is gone (nothing to do yet; the hook keeps the shape for per-peer state).
    pub(crate) fn peer_gone(&self, _peer: PeerId) {}
}

struct ChannelEnd {
    rx: mpsc::Receiver<ControlMessage>,
    dropped: Arc<AtomicU64>,
}

/// A plug-in's end of one control frame kind.
///
/// `send` queues a frame on the peer's connection in the control lane (which never waits
/// behind large user messages); `recv` yields the frames of this kind peers sent us. The
/// inbound queue is bounded: frames arriving while it is full are dropped and counted
/// ([`ControlChannel::dropped`]), so a plug-in that falls behind never stalls message
/// delivery; control protocols retry on their own. Dropping the channel frees the kind.
///
/// ```
/// use crust::{Service, ServiceConfig, wire::FrameKind};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), crust::Error> {
/// let (alice, _a) = Service::new(ServiceConfig::loopback())?;
/// let (bob, _b) = Service::new(ServiceConfig::loopback())?;
/// bob.start_listening().await?;
/// let kind = FrameKind::Unknown(crust::FIRST_PLUGIN_KIND);
/// let mut alice_gossip = alice.control_channel(kind, 64)?;
/// let mut bob_gossip = bob.control_channel(kind, 64)?;
/// let bob_id = alice.connect(&bob.our_endpoints(), Some(bob.peer_id())).await?;
/// alice_gossip.send(bob_id, "hello, plug-in".into()).await?;
/// let message = bob_gossip.recv().await.expect("a frame");
/// assert_eq!((message.peer, &message.payload[..]), (alice.peer_id(), &b"hello, plug-in"[..]));
/// # drop(alice_gossip);
/// # Ok(()) }
/// ```
pub struct ControlChannel {
    kind: FrameKind,
    rx: mpsc::Receiver<ControlMessage>,
    dropped: Arc<AtomicU64>,
    node: Arc<Node>,
}

impl ControlChannel {
    pub(crate) fn open(node: Arc<Node>, kind: FrameKind, capacity: usize) -> Result<Self> {
        // The built-in gossip owns its kind while it runs (see `gossip/`).
        if kind == crate::gossip::GOSSIP_FRAME && node.config.gossip.enabled {
            return Err(Error::ControlKindUnavailable(kind));
        }
        let end = node.control.claim(kind, capacity)?;
        Ok(ControlChannel {
            kind,
            rx: end.rx,
            dropped: end.dropped,
            node,
        })
    }

    /// The frame kind this channel carries.
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// Queues a control frame for a connected peer in the control lane (it overtakes large
    /// user messages queued before it). Waits only while that lane is full.
    pub async fn send(&self, peer: PeerId, payload: Bytes) -> Result<()> {
        let sender = self.sender_for(peer, payload.len())?;
        sender
            .send_frame(self.kind, payload)
            .await
            .map_err(Error::from)
    }

    /// Queues a control frame if there is room right now; `Ok(false)` when the lane is full
    /// or the connection is ending.
    pub fn try_send(&self, peer: PeerId, payload: Bytes) -> Result<bool> {
        let sender = self.sender_for(peer, payload.len())?;
        Ok(sender.try_send_frame(self.kind, payload))
    }

    /// The next control frame a peer sent on this channel; `None` once the service stopped.
    pub async fn recv(&mut self) -> Option<ControlMessage> {
        tokio::select! {
            message = self.rx.recv() => message,
            _ = self.node.stopped.cancelled() => self.rx.try_recv().ok(),
        }
    }

    /// Frames dropped so far because this channel was full or they were oversized.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The peers connected now (the ones [`ControlChannel::send`] can reach).
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.node
            .active_connections()
            .into_iter()
            .map(|(peer, _)| peer)
            .collect()
    }

    fn sender_for(&self, peer: PeerId, len: usize) -> Result<crust_core::MessageSender> {
        if len > MAX_CONTROL_PAYLOAD {
            return Err(Error::Core(crust_core::Error::MessageTooLarge {
                size: len as u64,
                max: MAX_CONTROL_PAYLOAD,
            }));
        }
        self.node
            .registry()
            .active(peer)
            .map(|(_, handle)| handle.sender.clone())
            .ok_or(Error::NotConnected(peer))
    }
}

impl Drop for ControlChannel {
    fn drop(&mut self) {
        self.rx.close();
        self.node.control.release(self.kind);
    }
}

impl fmt::Debug for ControlChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlChannel")
            .field("kind", &self.kind)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}
