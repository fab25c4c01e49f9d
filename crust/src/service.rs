//! [`Service`]: the public handle of a Crust node. Thin: every call is carried out by the
//! shared [`Node`](crate::node::Node) state and the modules around it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crust_core::wire::FrameKind;
use crust_core::{
    ConnectionInfo, Discovery, Endpoint, Identity, PeerAddr, PeerId, Protocol, Transport,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::ServiceConfig;
use crate::conn_task::Cause;
use crate::control::ControlChannel;
use crate::delivery::Closing;
use crate::events::{EventQueue, Events};
use crate::node::{DISCOVERY_REPORT_QUEUE, MANUAL_PING_BIT, MAX_MANUAL_PINGS, ManualPing, Node};
use crate::reachability::Reachability;
use crate::reason::{ConnectFailure, LostReason};
use crate::{Error, Event, Result, plugins};

/// A Crust node: listens, connects (TCP first, reliable UDP as fallback), keeps at most one
/// connection per peer, and reports everything as [`Event`]s.
///
/// `Service` is a cheap [`Clone`] handle: clones share one node. When the last handle is
/// dropped (or [`Service::shutdown`] is called) every listener and connection closes and
/// every task the service started stops.
///
/// ```
/// use crust::{Event, Service, ServiceConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), crust::Error> {
/// let (alice, _alice_events) = Service::new(ServiceConfig::loopback())?;
/// let (bob, mut bob_events) = Service::new(ServiceConfig::loopback())?;
/// alice.start_listening().await?;
/// bob.start_listening().await?;
///
/// let bob_id = alice.connect(&bob.our_endpoints(), Some(bob.peer_id())).await?;
/// alice.send(bob_id, "hi bob".into()).await?;
/// while let Some(event) = bob_events.recv().await {
///     if let Event::Message { peer, payload } = event {
///         assert_eq!(peer, alice.peer_id());
///         assert_eq!(payload, "hi bob");
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Service {
    node: Arc<Node>,
    /// Dropped with the last handle: then the node is torn down.
    _last_handle: Arc<LastHandle>,
}

/// Tears the node down when the last [`Service`] handle goes.
struct LastHandle(Arc<Node>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.shutdown.cancel();
        // Also refuse connections still being set up: one registered after this point
        // would otherwise live on (and keep answering pings) with nobody to use it.
        let connections = self.0.registry().shut_down();
        for connection in connections {
            connection.sender.abort();
        }
    }
}

/// A connected peer: its active connection, round-trip time and age.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The connection that carries our messages to the peer.
    pub connection: ConnectionInfo,
    /// The smoothed round-trip time measured by pings, once one was answered.
    pub rtt: Option<Duration>,
    /// How long this connection has been in use.
    pub connected_for: Duration,
}

impl Service {
    /// Creates a service with the built-in TCP and reliable-UDP transports.
    ///
    /// Returns the service and its event stream. Nothing listens until
    /// [`Service::start_listening`]. Must be called inside a tokio runtime.
    pub fn new(config: ServiceConfig) -> Result<(Service, Events)> {
        let identity = match &config.identity {
            Some(identity) => identity.clone(),
            None => Identity::generate()?,
        };
        let mut transports: Vec<Box<dyn Transport>> = Vec::new();
        let key_log = match &config.key_log_file {
            Some(path) => Some(crust_core::tls::KeyLogWriter::create(path)?),
            None => None,
        };
        if config.enable_tcp {
            // Dialling from the listening port makes the port peers observe (and a NAT maps)
            // the one we listen on: what NAT classification and TCP hole punching need.
            let mut tcp_config = crust_tcp::TcpConfig::default()
                .with_connection_config(config.connection.clone())
                .with_dial_from_listen_port(true)
                .with_tracer(config.tracer)
                .with_tracer_allowed_in_release(config.allow_tracer_in_release);
            if let Some(key_log) = &key_log {
                tcp_config = tcp_config.with_key_log(key_log.clone());
            }
            transports.push(Box::new(crust_tcp::TcpTransport::new(
                identity.clone(),
                tcp_config,
            )?));
        }
        if config.enable_rudp {
            let mut rudp_config =
                crust_rudp::RudpConfig::default().with_connection_config(config.connection.clone());
            if let Some(key_log) = &key_log {
                rudp_config = rudp_config.with_key_log(key_log.clone());
            }
            transports.push(Box::new(crust_rudp::RudpTransport::new(
                identity.clone(),
                rudp_config,
            )?));
        }
        Self::with_transports(
            ServiceConfig {
                identity: Some(identity),
                ..config
            },
            transports,
        )
    }

    /// Creates a service over your own transports (any mix of [`Transport`] implementations,
    /// in order of preference). They must all use the identity in `config` (or, when it is
    /// `None`, one shared identity).
    pub fn with_transports(
        config: ServiceConfig,
        transports: Vec<Box<dyn Transport>>,
    ) -> Result<(Service, Events)> {
        let Some(first) = transports.first() else {
            return Err(Error::Listen("no transport enabled".into()));
        };
        let identity_id = first.local_peer_id();
        if transports.iter().any(|t| t.local_peer_id() != identity_id) {
            return Err(Error::Listen("transports use different identities".into()));
        }
        let identity = match &config.identity {
            Some(identity) if identity.peer_id() == identity_id => identity.clone(),
            Some(_) => {
                return Err(Error::Listen(
                    "transports do not use the configured identity".into(),
                ));
            }
            None => {
                return Err(Error::Listen(
                    "config.identity must be the transports' identity".into(),
                ));
            }
        };
        let mut transports: Vec<Arc<dyn Transport>> =
            transports.into_iter().map(Arc::from).collect();
        // Stable sort: TCP first, everything else after, keeping the caller's order otherwise.
        transports.sort_by_key(|t| t.protocol() != Protocol::Tcp);
        let queue = EventQueue::new(config.event_queue_len, config.event_queue_bytes);
        let node = Arc::new(Node::new(identity, config, transports, queue.clone()));
        let events = Events::new(queue, node.stopped.clone());
        if node.config.gossip.enabled {
            // Pushes peer records to connected peers each interval until shutdown.
            let span = tracing::info_span!("gossip");
            node.tasks
                .spawn(node.clone().gossip_loop().instrument(span));
        }
        Ok((
            Service {
                _last_handle: Arc::new(LastHandle(node.clone())),
                node,
            },
            events,
        ))
    }

    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Our `PeerId`.
    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.node.identity
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.node.config
    }

    /// Listens on every enabled transport (on the configured address and ports, random ports
    /// by default) and starts accepting; then starts the plug-ins the config asks for
    /// (bootstrap, beacon). Returns the bound endpoints; emits [`Event::ListenerStarted`]
    /// for each.
    pub async fn start_listening(&self) -> Result<Vec<Endpoint>> {
        let bound = self.node.start_listening().await?;
        plugins::start_configured(self).await;
        Ok(bound)
    }

    /// The UDP port of the LAN beacon, when one runs (see [`ServiceConfig::beacon`]); the
    /// seed's `get_beacon_acceptor_port`, for tests that start several nodes on one host.
    pub fn beacon_acceptor_port(&self) -> Option<u16> {
        self.node.plugins().beacon_acceptor_port()
    }

    /// Our endpoints as peers that dialled us observed them (from their `ObservedAddress`
    /// messages), most confirmed first, with how many distinct peers reported each. With a
    /// NAT in between, these are the external addresses to publish (once enough peers
    /// agree); peers can lie, so a single report proves little.
    pub fn observed_endpoints(&self) -> Vec<(Endpoint, usize)> {
        self.node.observed_tally()
    }

    /// How this node can be reached, as far as peers' observations and port mappings tell:
    /// NAT type, mapping behaviour, confirmed external endpoints. Changes are reported as
    /// [`Event::ReachabilityChanged`].
    pub fn reachability(&self) -> Reachability {
        self.node.reachability().classifier.classify()
    }

    /// Tells the service which external endpoints a gateway maps for it now (what a
    /// port-mapping plug-in such as `crust-nat` reports): they lead
    /// [`Service::our_endpoints`] and make the NAT type [`NatType::Mapped`](crate::NatType::Mapped).
    pub fn set_mapped_endpoints(&self, mapped: Vec<Endpoint>) {
        self.node.set_mapped_endpoints(mapped);
    }

    /// The endpoints our listeners are bound to (may be `0.0.0.0`; see [`Service::our_endpoints`]).
    pub fn listening_endpoints(&self) -> Vec<Endpoint> {
        self.node.listening().endpoints.clone()
    }

    /// Every endpoint at which peers may reach us, best first: external endpoints a
    /// gateway maps for us, then external endpoints of our listening sockets that observers
    /// in enough distinct networks confirmed ([`Service::reachability`]), then each listener
    /// on each interface address (how peers on the same LAN, also behind the same NAT,
    /// reach us). Never port 0, never an unspecified address, never a throw-away dial port,
    /// never loopback unless [`ServiceConfig::include_loopback`] is set.
    pub fn our_endpoints(&self) -> Vec<Endpoint> {
        let mut out = self.reachability().external;
        for endpoint in self.interface_endpoints() {
            if !out.contains(&endpoint) {
                out.push(endpoint);
            }
        }
        out
    }

    /// Our listeners on each interface address (no external endpoints).
    pub fn interface_endpoints(&self) -> Vec<Endpoint> {
        self.node.interface_endpoints()
    }

    /// Our own [`PeerAddr`]: our id and [`Service::our_endpoints`], to hand to others.
    pub fn our_addr(&self) -> PeerAddr {
        PeerAddr::new(self.peer_id()).with_endpoints(self.our_endpoints())
    }

    /// Connects to a peer reachable at `endpoints` (of any protocol), TCP first.
    ///
    /// TCP endpoints are tried first; reliable-UDP endpoints join the race after
    /// [`ServiceConfig::tcp_head_start`] or as soon as every TCP attempt failed (happy
    /// eyeballs). The first authenticated connection wins; attempts still in flight run to
    /// their end and are then closed gracefully, so the peer never keeps a connection we
    /// abandoned. With `expected`, only that peer is accepted. Returns the peer's id once a
    /// connection is registered ([`Event::NewPeer`] is emitted for a new peer).
    ///
    /// Never waits for room in the event queue: it may be awaited by the task that takes
    /// the events.
    pub async fn connect(
        &self,
        endpoints: &[Endpoint],
        expected: Option<PeerId>,
    ) -> Result<PeerId> {
        self.node
            .connect(endpoints.to_vec(), expected, Cause::Application)
            .await
    }

    /// Connects to the peer `addr` names: at its endpoints and at every endpoint the
    /// address book knows for it. Endpoints given are remembered in the address book.
    pub async fn connect_to(&self, addr: PeerAddr) -> Result<PeerId> {
        self.node.connect_addr(addr, Cause::Application).await
    }

    /// Connects to a peer by its `PeerId` alone, at the endpoints the address book knows
    /// (from the bootstrap cache, beacons, earlier connections, [`Service::add_address`]).
    /// [`Error::UnknownPeer`] when it knows none.
    pub async fn connect_peer(&self, peer: PeerId) -> Result<PeerId> {
        self.connect_to(PeerAddr::new(peer)).await
    }

    /// Like [`Service::connect`], but returns at once; failures are reported as
    /// [`Event::ConnectFailed`].
    pub fn connect_in_background(&self, endpoints: Vec<Endpoint>, expected: Option<PeerId>) {
        let node = self.node.clone();
        self.node.tasks.spawn(async move {
            let outcome = node
                .connect(endpoints.clone(), expected, Cause::Application)
                .await;
            if let Err(e) = outcome {
                node.emit_now(Event::ConnectFailed {
                    endpoints,
                    peer: expected,
                    reason: ConnectFailure::from(&e),
                });
            }
        });
    }

    /// Tells the address book where `addr.peer_id` may be reached (most recent first), so
    /// that [`Service::connect_peer`] can find it.
    pub fn add_address(&self, addr: PeerAddr) {
        self.node.address_book().insert(&addr, Instant::now());
    }

    /// What the address book knows about `peer`.
    pub fn known_address(&self, peer: PeerId) -> Option<PeerAddr> {
        self.node.address_book().lookup(peer)
    }

    /// Removes `peer` from the address book. Returns whether it was known.
    pub fn forget_address(&self, peer: PeerId) -> bool {
        self.node.address_book().remove(peer)
    }

    /// Every peer in the address book, most recently seen first.
    pub fn known_peers(&self) -> Vec<PeerAddr> {
        self.node.known_peers()
    }

    /// Plugs in a discovery source (a bootstrap cache, LAN beacons, gossip): the service
    /// takes its candidates as they come, records those that name their peer in the
    /// address book, connects to the ones it is not connected to (up to
    /// [`DISCOVERY_CONCURRENCY`](crate::DISCOVERY_CONCURRENCY) at a time, TCP first like
    /// [`Service::connect`]), reports each success as [`Event::BootstrapConnected`] and
    /// tells the source which peers it reached directly (so a bootstrap cache can remember
    /// them). Runs until the source is exhausted or the service stops. Any number of
    /// sources can be added.
    pub fn add_discovery(&self, discovery: Box<dyn Discovery>) {
        let (reports_tx, reports) = mpsc::channel(DISCOVERY_REPORT_QUEUE);
        self.node
            .discovery_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reports_tx);
        let span = tracing::info_span!("discovery", source = discovery.name());
        self.node.tasks.spawn(
            self.node
                .clone()
                .discovery_loop(discovery, reports)
                .instrument(span),
        );
    }

    /// Claims a control frame kind for a plug-in and returns its [`ControlChannel`], whose
    /// inbound queue holds up to `capacity` frames. Plug-ins may claim
    /// [`FrameKind::PeerExchange`] (only while the built-in gossip is off:
    /// [`GossipConfig::enabled`](crate::GossipConfig::enabled)), [`FrameKind::ConnectionInfoRelay`] and
    /// `FrameKind::Unknown(b)` for `b >=` [`FIRST_PLUGIN_KIND`](crate::FIRST_PLUGIN_KIND);
    /// one channel per kind at a time ([`Error::ControlKindUnavailable`] otherwise).
    pub fn control_channel(&self, kind: FrameKind, capacity: usize) -> Result<ControlChannel> {
        ControlChannel::open(self.node.clone(), kind, capacity)
    }

    /// Queues a message for a connected peer.
    ///
    /// If the connection in use is being replaced (duplicate resolution), the message goes
    /// out on its successor; it is never queued on a connection that already ended.
    pub async fn send(&self, peer: PeerId, payload: Bytes) -> Result<()> {
        // Fast path: queue without waiting while the registry is locked (no handle clone).
        let payload = {
            let registry = self.node.registry();
            let Some((_, active)) = registry.active(peer) else {
                return Err(Error::NotConnected(peer));
            };
            let counted = active.delivery.count(1);
            match active.sender.try_send(payload) {
                Ok(None) => {
                    counted.keep();
                    return Ok(());
                }
                // Full or closed: the slow path below waits for room or a successor.
                Ok(Some(payload)) => payload,
                Err(e) => return Err(e.into()),
            }
        };
        let deadline = tokio::time::Instant::now() + self.node.config.connection.handshake_timeout;
        loop {
            let (id, sender, delivery) = {
                let registry = self.node.registry();
                match registry.active(peer) {
                    Some((id, active)) => (id, active.sender.clone(), active.delivery.clone()),
                    None => return Err(Error::NotConnected(peer)),
                }
            };
            // One message is queued at the instant the send completes, so a send dropped
            // while waiting for room queued nothing: the guard then takes the count back.
            let counted = delivery.count(1);
            match sender.send(payload.clone()).await {
                Err(crust_core::Error::ConnectionClosed) => {}
                Ok(()) => {
                    counted.keep();
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            drop(counted);
            // The connection ended before taking the message: wait for its successor while
            // the peer is still registered, then try again on it.
            let changed = self.node.registry_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.node.registry().active(peer).map(|(now, _)| now != id) {
                None => return Err(Error::NotConnected(peer)),
                Some(true) => continue,
                Some(false) => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Error::Core(crust_core::Error::ConnectionClosed));
            }
        }
    }

    /// Queues several messages for a connected peer in one go (in order, one lock per
    /// burst): the fastest way to send many small messages. If any message is over the
    /// maximum size nothing is queued. Unlike [`Service::send`], a batch is not moved to a
    /// successor connection if the connection ends under it: on
    /// [`crust_core::Error::ConnectionClosed`] an unknown prefix may have been queued.
    pub async fn send_many(&self, peer: PeerId, messages: &[Bytes]) -> Result<()> {
        let (sender, delivery) = {
            let registry = self.node.registry();
            match registry.active(peer) {
                Some((_, active)) => (active.sender.clone(), active.delivery.clone()),
                None => return Err(Error::NotConnected(peer)),
            }
        };
        // Counted for good before anything is queued: a prefix may be queued even when this
        // future is dropped halfway, or fails with `ConnectionClosed` (over-reporting is
        // safe, under-reporting is not).
        let n = messages.len() as u64;
        delivery.count(n).keep();
        let outcome = sender.send_many(messages).await;
        if let Err(crust_core::Error::MessageTooLarge { .. }) = &outcome {
            // Sizes are checked before anything is queued.
            delivery.uncount(n);
        }
        outcome.map_err(Error::from)
    }

    /// The connected peers, with the connection each uses.
    pub fn peers(&self) -> Vec<ConnectionInfo> {
        self.node
            .active_connections()
            .into_iter()
            .map(|(_, handle)| handle.sender.info().clone())
            .collect()
    }

    /// A connected peer's connection, round-trip time and age.
    pub fn peer_info(&self, peer: PeerId) -> Option<PeerInfo> {
        let registry = self.node.registry();
        let (_, handle) = registry.active(peer)?;
        Some(PeerInfo {
            connection: handle.sender.info().clone(),
            rtt: handle.rtt(),
            connected_for: handle.since.elapsed(),
        })
    }

    /// Pings a connected peer and returns the round-trip time (the ping overtakes large
    /// messages queued before it). [`Error::PingTimeout`] after
    /// [`ServiceConfig::ping_timeout`].
    pub async fn ping(&self, peer: PeerId) -> Result<Duration> {
        let handle = self
            .node
            .registry()
            .active(peer)
            .map(|(_, handle)| handle.clone())
            .ok_or(Error::NotConnected(peer))?;
        let nonce = MANUAL_PING_BIT | self.node.next_connection_id();
        let (answer, answered) = tokio::sync::oneshot::channel();
        {
            let mut pings = handle
                .manual_pings
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if pings.len() >= MAX_MANUAL_PINGS {
                return Err(Error::TooManyPings(MAX_MANUAL_PINGS));
            }
            pings.push(ManualPing {
                nonce,
                sent: Instant::now(),
                answer,
            });
        }
        let forget = || {
            handle
                .manual_pings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|ping| ping.nonce != nonce);
        };
        if let Err(e) = handle
            .sender
            .send_frame(FrameKind::Ping, crate::liveness::encode_nonce(nonce))
            .await
        {
            forget();
            return Err(e.into());
        }
        let timeout = self.node.config.ping_timeout;
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(_)) => Err(Error::NotConnected(peer)),
            Err(_) => {
                forget();
                Err(Error::PingTimeout(timeout))
            }
        }
    }

    /// True when `peer` is connected.
    pub fn is_connected(&self, peer: PeerId) -> bool {
        self.node.registry().contains(peer)
    }

    /// Closes the connection to `peer` gracefully (queued messages are still written).
    /// Returns whether the peer was connected; emits [`Event::LostPeer`] (reason
    /// [`LostReason::Disconnected`]) if it was. Never waits for room in the event queue.
    pub async fn disconnect(&self, peer: PeerId) -> bool {
        self.node.disconnect(peer)
    }

    /// Bans peers for the rest of this session: disconnects them at once and refuses them
    /// from now on, in both directions. One call for any number of peers. Never waits for
    /// room in the event queue.
    pub async fn ban(&self, peers: impl IntoIterator<Item = PeerId>) {
        self.node.ban(peers, LostReason::Banned)
    }

    /// Circuits this node relays for others right now (see [`RelayConfig`](crate::RelayConfig)).
    pub fn relayed_circuits(&self) -> usize {
        self.node.relay_state().circuits()
    }

    /// True when `peer` is banned.
    pub fn is_banned(&self, peer: PeerId) -> bool {
        self.node.registry().is_banned(peer)
    }

    /// Stops listening, closes every connection gracefully (bounded by the handshake
    /// timeout) and waits for every task of the service to end. The event stream ends
    /// after the events already queued.
    pub async fn shutdown(&self) {
        self.node.shutdown.cancel();
        // Port mappings are removed from the gateway (bounded time) before we go.
        let mapper = self.node.plugins().take_port_mapper();
        if let Some(mapper) = mapper {
            mapper.shutdown().await;
        }
        let connections = self.node.registry().shut_down();
        self.node.registry_changed.notify_waiters();
        // Each connection: our closing acknowledgement, what is queued written, the peer's
        // end awaited (so that it confirms what we sent), bounded by the close timeout.
        let timeout = self.node.config.connection.handshake_timeout;
        futures::future::join_all(
            connections
                .iter()
                .map(|c| Node::close_gracefully(c, Closing::Stop, timeout)),
        )
        .await;
        self.node.tasks.close();
        self.node.tasks.wait().await;
        self.node.stopped.cancel();
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("peer_id", &self.peer_id())
            .field("listeners", &self.listening_endpoints())
            .finish_non_exhaustive()
    }
}
