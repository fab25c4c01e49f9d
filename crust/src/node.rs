//! The state every part of a running service shares, and the actions that touch several
//! parts at once (losing, disconnecting and banning a peer).
//!
//! The pieces live in their own modules: the pure [`Registry`], [`AddressBook`] and
//! [`ObservedAddresses`]; the event queue (`events.rs`); connection tasks (`conn_task.rs`);
//! the connect race (`dial.rs`); discovery (`discovery_driver.rs`); control channels
//! (`control.rs`); listeners (`listen.rs`). [`Service`](crate::Service) is the public
//! handle over it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crust_core::{Endpoint, Identity, MessageSender, PeerId, Protocol, Transport};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address_book::AddressBook;
use crate::config::ServiceConfig;
use crate::control::ControlRoutes;
use crate::delivery::Closing;
use crate::events::EventQueue;
use crate::observed::ObservedAddresses;
use crate::reachability::{NatClassifier, Reachability};
use crate::registry::{ConnId, Registry};
use crate::{Event, LostReason};

/// One registered connection, as the async code needs it.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    pub(crate) id: ConnId,
    pub(crate) sender: MessageSender,
    /// Smoothed round-trip time in microseconds; 0 until the first pong.
    pub(crate) rtt_micros: Arc<AtomicU64>,
    /// When the connection was registered.
    pub(crate) since: Instant,
    /// Pings the application asked for ([`Service::ping`](crate::Service::ping)), waiting
    /// for their pongs.
    pub(crate) manual_pings: Arc<Mutex<Vec<ManualPing>>>,
    /// Messages sent and confirmed, received and acknowledged (`delivery.rs`).
    pub(crate) delivery: Arc<crate::delivery::Delivery>,
    /// Cancelled once the connection's reader has handed over everything it read.
    pub(crate) reader_done: tokio_util::sync::CancellationToken,
}

/// A ping the application is waiting on.
#[derive(Debug)]
pub(crate) struct ManualPing {
    pub(crate) nonce: u64,
    pub(crate) sent: Instant,
    pub(crate) answer: tokio::sync::oneshot::Sender<Duration>,
}

/// Application pings in flight per connection; more are refused.
pub(crate) const MAX_MANUAL_PINGS: usize = 16;

/// Nonces of application pings have this bit set (liveness pings never do).
pub(crate) const MANUAL_PING_BIT: u64 = 1 << 63;

impl ConnHandle {
    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

/// What a discovery source hears about, besides its own candidates.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DiscoveryReport {
    /// We dialled `peer` at `endpoint` and it answered.
    DirectConnection(PeerId, Endpoint),
    /// No peer is connected any more.
    AllPeersLost,
}

/// Reports queued for one discovery source; beyond this, reports are dropped (they are hints).
pub(crate) const DISCOVERY_REPORT_QUEUE: usize = 256;

/// The NAT classifier and the verdict last reported to the application.
#[derive(Debug)]
pub(crate) struct ReachabilityState {
    pub(crate) classifier: NatClassifier,
    pub(crate) last: Option<Reachability>,
}

impl ReachabilityState {
    /// The verdict now, and whether it changed since last reported (then it is recorded
    /// as reported).
    pub(crate) fn update(&mut self) -> Option<Reachability> {
        let now = self.classifier.classify();
        if self.last.as_ref() == Some(&now) {
            return None;
        }
        self.last = Some(now.clone());
        Some(now)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Listening {
    pub(crate) started: bool,
    pub(crate) endpoints: Vec<Endpoint>,
}

/// The shared state of a running service.
pub(crate) struct Node {
    pub(crate) identity: Identity,
    pub(crate) config: ServiceConfig,
    /// In order of preference: TCP first.
    pub(crate) transports: Vec<Arc<dyn Transport>>,
    pub(crate) registry: Mutex<Registry<ConnHandle>>,
    /// Notified whenever a peer's active connection changes or a peer is removed (senders
    /// waiting for a successor connection re-check).
    pub(crate) registry_changed: Notify,
    pub(crate) events: Arc<EventQueue>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled once `shutdown()` has finished: ends the event stream.
    pub(crate) stopped: CancellationToken,
    pub(crate) tasks: TaskTracker,
    next_connection_id: AtomicU64,
    pub(crate) listening: Mutex<Listening>,
    /// One channel per discovery source, for what its loop must report to it.
    pub(crate) discovery_reports: Mutex<Vec<mpsc::Sender<DiscoveryReport>>>,
    pub(crate) observed: Mutex<ObservedAddresses>,
    pub(crate) address_book: Mutex<AddressBook>,
    pub(crate) control: ControlRoutes,
    /// NAT classification and the last verdict reported.
    pub(crate) reachability: Mutex<ReachabilityState>,
    /// The NAT filtering test (`probe_driver.rs`).
    pub(crate) probes: Mutex<crate::probe_driver::ProbeState>,
    /// Plug-ins started from the config (see `plugins.rs`).
    pub(crate) plugins: Mutex<crate::plugins::Started>,
    /// Hole punching: as coordinator, initiator and responder (`punch/`).
    pub(crate) punch: Mutex<crate::punch::PunchState>,
    /// Relayed connections: as relay and as an end (`relay/`).
    pub(crate) relay: Mutex<crate::relay::RelayState>,
    /// Peer exchange (`gossip/`).
    pub(crate) gossip: Mutex<crate::gossip::GossipState>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    pub(crate) fn new(
        identity: Identity,
        config: ServiceConfig,
        transports: Vec<Arc<dyn Transport>>,
        events: Arc<EventQueue>,
    ) -> Self {
        Node {
            relay: Mutex::new(crate::relay::RelayState::new(&config.relay)),
            gossip: Mutex::new(crate::gossip::GossipState::new(
                identity.peer_id(),
                &config,
                &transports,
            )),
            registry: Mutex::new(Registry::new(identity.peer_id(), config.max_peers)),
            address_book: Mutex::new(AddressBook::new(config.address_book_capacity)),
            reachability: Mutex::new(ReachabilityState {
                classifier: NatClassifier::new(config.min_observer_networks),
                last: None,
            }),
            identity,
            config,
            transports,
            registry_changed: Notify::new(),
            events,
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_connection_id: AtomicU64::new(1),
            listening: Mutex::new(Listening::default()),
            discovery_reports: Mutex::new(Vec::new()),
            observed: Mutex::new(ObservedAddresses::default()),
            control: ControlRoutes::default(),

            plugins: Mutex::new(crate::plugins::Started::default()),
            probes: Mutex::new(crate::probe_driver::ProbeState::default()),
            punch: Mutex::new(crate::punch::PunchState::default()),
        }
    }

    pub(crate) fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry<ConnHandle>> {
        lock(&self.registry)
    }

    pub(crate) fn listening(&self) -> MutexGuard<'_, Listening> {
        lock(&self.listening)
    }

    pub(crate) fn observed(&self) -> MutexGuard<'_, ObservedAddresses> {
        lock(&self.observed)
    }

    pub(crate) fn address_book(&self) -> MutexGuard<'_, AddressBook> {
        lock(&self.address_book)
    }

    pub(crate) fn reachability(&self) -> MutexGuard<'_, ReachabilityState> {
        lock(&self.reachability)
    }

    pub(crate) fn plugins(&self) -> MutexGuard<'_, crate::plugins::Started> {
        lock(&self.plugins)
    }

    pub(crate) fn next_connection_id(&self) -> ConnId {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn transport_for(&self, protocol: Protocol) -> Option<Arc<dyn Transport>> {
        self.transports
            .iter()
            .find(|t| t.protocol() == protocol)
            .cloned()
    }

    /// Hands events to the application, waiting for room (backpressure on what peers do).
    pub(crate) async fn emit_wait(&self, events: Vec<Event>) -> bool {
        self.events.push_wait(events, &self.shutdown).await
    }

    /// Hands an event to the application at once (for what the application's calls do).
    pub(crate) fn emit_now(&self, event: Event) {
        self.events.push_now(vec![event]);
    }

    /// Tells every discovery source about a direct connection or the loss of all peers.
    pub(crate) fn report_to_discovery(&self, report: DiscoveryReport) {
        let channels = lock(&self.discovery_reports);
        for channel in channels.iter() {
            if channel.try_send(report).is_err() {
                tracing::debug!(
                    ?report,
                    "discovery source is not keeping up; report dropped"
                );
            }
        }
    }

    /// Everything that follows once `peer` is gone from the registry: its observation is
    /// forgotten, waiting senders re-check, the application hears why (unless we are
    /// shutting down), and discovery hears when no peer is left.
    pub(crate) fn peer_removed(&self, peer: PeerId, reason: LostReason, none_left: bool) {
        self.observed().forget(peer);
        self.control.peer_gone(peer);
        self.relay_link_lost(peer);
        self.gossip_peer_gone(peer);
        self.registry_changed.notify_waiters();
        if self.shutdown.is_cancelled() {
            return;
        }
        tracing::info!(%peer, %reason, "lost peer");
        self.emit_now(Event::LostPeer { peer, reason });
        if none_left {
            self.report_to_discovery(DiscoveryReport::AllPeersLost);
        }
    }

    /// Closes every connection to `peer` gracefully. Returns whether it was connected.
    pub(crate) fn disconnect(&self, peer: PeerId) -> bool {
        let (connections, none_left) = {
            let mut registry = self.registry();
            let connections = registry.remove(peer);
            (connections, registry.is_empty())
        };
        let Some(connections) = connections else {
            return false;
        };
        self.peer_removed(peer, LostReason::Disconnected, none_left);
        // The graceful close (our closing acknowledgement, queued messages written, the
        // peer's end awaited, bounded by the close timeout) runs in the background: the
        // caller never waits on the peer.
        let timeout = self.config.connection.handshake_timeout;
        self.tasks.spawn(async move {
            futures::future::join_all(
                connections
                    .iter()
                    .map(|c| Node::close_gracefully(c, Closing::Stop, timeout)),
            )
            .await;
        });
        true
    }

    /// Bans peers for the rest of the session and aborts their connections.
    pub(crate) fn ban(&self, peers: impl IntoIterator<Item = PeerId>, reason: LostReason) {
        for peer in peers {
            let outcome = self.registry().ban(peer);
            for connection in &outcome.connections {
                connection.sender.abort();
                self.report_unconfirmed(connection, false);
            }
            if outcome.newly_banned {
                tracing::info!(%peer, "banned");
                self.emit_now(Event::PeerBanned { peer });
            }
            if !outcome.connections.is_empty() {
                self.peer_removed(peer, reason.clone(), outcome.none_left);
            }
        }
    }

    /// The external endpoints a gateway maps for us now (see `Service::set_mapped_endpoints`).
    pub(crate) fn set_mapped_endpoints(&self, mapped: Vec<Endpoint>) {
        let changed = {
            let mut reachability = self.reachability();
            reachability.classifier.set_mapped(mapped);
            reachability.update()
        };
        if let Some(reachability) = changed {
            self.emit_now(Event::ReachabilityChanged { reachability });
        }
    }

    /// The port of our reliable-UDP listening socket (the one peers observe).
    pub(crate) fn rudp_listen_port(&self) -> Option<u16> {
        self.listening()
            .endpoints
            .iter()
            .find(|ep| ep.protocol() == Protocol::Rudp)
            .map(|ep| ep.addr().port())
    }

    /// Every peer's active connection.
    pub(crate) fn active_connections(&self) -> Vec<(PeerId, ConnHandle)> {
        self.registry()
            .active_connections()
            .map(|(peer, handle)| (peer, handle.clone()))
            .collect()
    }

    /// The peers we have a connection to.
    pub(crate) fn active_peers(&self) -> Vec<PeerId> {
        self.registry()
            .active_connections()
            .map(|(peer, _)| peer)
            .collect()
    }

    /// Our listeners on each interface address (no external endpoints).
    pub(crate) fn interface_endpoints(&self) -> Vec<Endpoint> {
        let bound = self.listening().endpoints.clone();
        let needs_interfaces = bound.iter().any(|ep| ep.addr().ip().is_unspecified());
        let interfaces = if needs_interfaces {
            crate::endpoints::interface_addresses()
        } else {
            Vec::new()
        };
        crate::endpoints::reachable_endpoints(&bound, &interfaces, self.config.include_loopback)
    }

    /// Every known address, for [`Service::known_peers`](crate::Service::known_peers).
    pub(crate) fn known_peers(&self) -> Vec<crust_core::PeerAddr> {
        self.address_book().all()
    }

    /// The observed-address tally.
    pub(crate) fn observed_tally(&self) -> Vec<(Endpoint, usize)> {
        self.observed().tally()
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.identity.peer_id())
            .finish_non_exhaustive()
    }
}
