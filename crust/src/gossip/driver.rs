//! The async side of gossip: a push to every new peer and to every peer each interval,
//! answers to requests, and learned records into the address book.

use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use crust_core::{Endpoint, MessageSender, PeerAddr, PeerId, Transport};

use super::GOSSIP_FRAME;
use super::messages::GossipMessage;
use super::table::{GossipTable, Outcome};
use crate::config::{FloodAction, ServiceConfig};
use crate::node::{ConnHandle, Node};
use crate::{Event, LostReason};

/// Gossip state of a node (see [`GossipTable`]).
#[derive(Debug)]
pub(crate) struct GossipState {
    table: GossipTable,
    /// Peers whose budget overflow was reported and not yet followed by a message within
    /// it (a [`FloodAction::Report`] node reports each burst once).
    reported: std::collections::HashSet<PeerId>,
}

impl GossipState {
    pub(crate) fn new(
        us: PeerId,
        config: &ServiceConfig,
        transports: &[Arc<dyn Transport>],
    ) -> Self {
        GossipState {
            table: GossipTable::new(
                us,
                config.gossip.clone(),
                transports.iter().map(|t| t.protocol()).collect(),
                config.include_loopback,
            ),
            reported: std::collections::HashSet::new(),
        }
    }
}

impl Node {
    fn gossip(&self) -> MutexGuard<'_, GossipState> {
        self.gossip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoints we give for ourselves: external ones first, then our listeners on
    /// each interface address.
    fn gossip_own_endpoints(&self) -> Vec<Endpoint> {
        let mut out = self.reachability().classifier.classify().external;
        for endpoint in self.interface_endpoints() {
            if !out.contains(&endpoint) {
                out.push(endpoint);
            }
        }
        out
    }

    /// Our records for `peer` (at most `max`), encoded, or `None` when there are none.
    fn gossip_records_for(&self, peer: PeerId, own: &[Endpoint], max: usize) -> Option<Bytes> {
        let records = self.gossip().table.select(peer, own, Instant::now(), max);
        (!records.is_empty()).then(|| GossipMessage::Records(records).encode())
    }

    /// A new peer: tell it what we know. No `Request`: the peer, running the same code,
    /// pushes to us at once too (a request would double the traffic of every new
    /// connection; we still answer requests from peers that send them).
    pub(crate) fn gossip_peer_connected(&self, peer: PeerId, sender: &MessageSender) {
        if !self.config.gossip.enabled {
            return;
        }
        self.gossip().table.connected(peer, Instant::now());
        let want = self.config.gossip.records_per_message;
        let own = self.gossip_own_endpoints();
        if let Some(records) = self.gossip_records_for(peer, &own, want) {
            sender.try_send_frame(GOSSIP_FRAME, records);
        }
    }

    /// `peer` is gone: its records are no longer sent, its budget is forgotten.
    pub(crate) fn gossip_peer_gone(&self, peer: PeerId) {
        let mut gossip = self.gossip();
        gossip.table.disconnected(peer);
        gossip.reported.remove(&peer);
    }

    /// A gossip message from `peer` (frame kind 4, while gossip is enabled).
    pub(crate) fn handle_gossip_frame(&self, peer: PeerId, handle: &ConnHandle, payload: &Bytes) {
        let message = match GossipMessage::decode(payload) {
            Ok(message) => message,
            Err(_) => {
                tracing::debug!(%peer, "ignoring a malformed gossip message");
                return;
            }
        };
        // Frames still read after the peer was removed (banned, say) are not kept.
        if !self.registry().contains(peer) {
            return;
        }
        let now = Instant::now();
        let outcome = {
            let mut gossip = self.gossip();
            let outcome = gossip.table.on_message(peer, message, now);
            match outcome {
                Ok(outcome) => {
                    gossip.reported.remove(&peer);
                    Ok(outcome)
                }
                // Reported once per burst (the peer is banned by default anyway).
                Err(_) if !gossip.reported.insert(peer) => return,
                Err(limit) => Err(limit),
            }
        };
        match outcome {
            Err(limit) => {
                let ban = self.config.flood_action == FloodAction::Ban;
                tracing::warn!(%peer, %limit, ban, "peer sends gossip beyond its budget");
                self.emit_now(Event::FloodDetected {
                    peer,
                    limit,
                    banned: ban,
                });
                if ban {
                    self.ban([peer], LostReason::Flood(limit));
                }
            }
            Ok(Outcome::Answer(want)) => {
                let own = self.gossip_own_endpoints();
                if let Some(records) = self.gossip_records_for(peer, &own, want) {
                    handle.sender.try_send_frame(GOSSIP_FRAME, records);
                }
            }
            Ok(Outcome::Learned {
                hints,
                ignored,
                over_cap,
            }) => {
                if ignored + over_cap > 0 {
                    tracing::debug!(%peer, ignored, over_cap, "gossip records not used");
                }
                let mut learned = Vec::new();
                let mut book = self.address_book();
                for hint in hints {
                    // Whoever told us is connected to the peer: a relay or hole-punch
                    // coordinator to try.
                    let mut addr = PeerAddr::new(hint.peer).with_endpoints(hint.endpoints);
                    if hint.peer != peer {
                        addr.relays.push(peer);
                    }
                    let heard = now.checked_sub(hint.age).unwrap_or(now);
                    if book.insert_hint(&addr, heard) {
                        learned.push(hint.peer);
                    }
                }
                drop(book);
                if !learned.is_empty() {
                    tracing::debug!(%peer, learned = learned.len(), "peers learned by gossip");
                    // Bounded: a source teaches at most `max_records_per_source` peers.
                    self.emit_now(Event::PeersLearned {
                        from: peer,
                        peers: learned,
                    });
                }
            }
        }
    }

    /// Pushes records to every connected peer each interval, for as long as the service
    /// runs.
    pub(crate) async fn gossip_loop(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.config.gossip.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; new peers got a push when they connected.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let own = self.gossip_own_endpoints();
            let max = self.config.gossip.records_per_message;
            let connections = self.active_connections();
            let connected = connections.iter().map(|(peer, _)| *peer).collect();
            self.gossip().table.retain_connected(&connected);
            for (peer, handle) in connections {
                if let Some(records) = self.gossip_records_for(peer, &own, max) {
                    // Never wait: a full control lane means the peer is busy; next time.
                    handle.sender.try_send_frame(GOSSIP_FRAME, records);
                }
            }
        }
    }
}
