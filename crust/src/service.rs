//! The [`Service`]: listeners, the connect race, the peer registry with its duplicate rule,
//! readers, bans and flood control.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use crust_core::wire::FrameKind;
use crust_core::{
    Connection, ConnectionInfo, Direction, Discovery, Endpoint, Identity, MessageReceiver,
    MessageSender, PeerCandidate, PeerId, Protocol, Transport,
};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{FloodAction, ServiceConfig};
use crate::endpoints;
use crate::rate::{Exceeded, RateMeter};
use crate::{Error, Event, Result};

/// The stream of [`Event`]s of a [`Service`]. Bounded: while the application does not take
/// events, readers wait (and TCP/QUIC flow control slows the peers down); nothing is dropped
/// while the service runs (once `shutdown()` has begun, events that find no room are discarded).
pub struct Events {
    /// Events travel in small batches (a burst of messages read at once costs one channel
    /// operation), handed out one by one.
    rx: mpsc::Receiver<Vec<Event>>,
    pending: std::collections::VecDeque<Event>,
    /// Room for events not yet taken by the application, counted in events (not batches):
    /// a permit comes back for every event handed out.
    room: Arc<tokio::sync::Semaphore>,
    /// Completes when `shutdown()` has finished: the stream then ends after what is queued.
    stopped: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// Extra connections (duplicates being drained, standbys) kept per peer beyond the active one.
const MAX_EXTRA_CONNECTIONS: usize = 4;

/// Candidates of one discovery source dialled at the same time.
pub const DISCOVERY_CONCURRENCY: usize = 8;

/// Most events a connection's reader hands over in one batch.
const EVENT_BATCH: usize = 64;

impl Events {
    /// The next event; `None` once the service is shut down and every event was taken.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.room.add_permits(1);
                return Poll::Ready(Some(event));
            }
            if self.stopped.as_mut().poll(cx).is_ready() {
                self.rx.close();
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.pending.extend(batch),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_event(cx)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// A Crust node: listens, connects (TCP first, reliable UDP as fallback), keeps at most one
/// connection per peer, and reports everything as [`Event`]s.
///
/// Dropping the service (or calling [`Service::shutdown`]) closes every listener and
/// connection and stops every task it started.
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
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    config: ServiceConfig,
    /// In order of preference: TCP first.
    transports: Vec<Arc<dyn Transport>>,
    state: Mutex<State>,
    events: mpsc::Sender<Vec<Event>>,
    /// Bounds the events queued for the application (see [`Events`]).
    event_room: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    next_connection_id: AtomicU64,
    /// Cancelled once `shutdown()` has finished: ends the event stream.
    stopped: CancellationToken,
    /// One channel per discovery source, for what its loop must report to it.
    discovery_reports: Mutex<Vec<mpsc::Sender<DiscoveryReport>>>,
    /// The LAN beacon, when one runs (to read its port).
    beacon: Mutex<Option<crust_beacon::BeaconHandle>>,
    /// Our address as each connected peer that dialled us reported it: one vote per peer,
    /// dropped when the peer goes, so the table never outgrows the peer table.
    observed: Mutex<HashMap<PeerId, Endpoint>>,
}

/// What a discovery source hears about, besides its own candidates.
#[derive(Clone, Copy, Debug)]
enum DiscoveryReport {
    /// We dialled `peer` at `endpoint` and it answered.
    DirectConnection(PeerId, Endpoint),
    /// No peer is connected any more.
    AllPeersLost,
}

/// Reports queued for one discovery source; beyond this, reports are dropped (they are hints).
const DISCOVERY_REPORT_QUEUE: usize = 256;

#[derive(Default)]
struct State {
    peers: HashMap<PeerId, PeerEntry>,
    banned: HashSet<PeerId>,
    listeners: Vec<Endpoint>,
    listening: bool,
}

/// The connections to one peer: `active` carries our sends; `others` are duplicates being
/// drained after a tie-break, or standbys the dialling side has not resolved yet.
struct PeerEntry {
    active: Handle,
    others: Vec<Handle>,
    /// The active connection was superseded by the peer and has ended; its successor has
    /// not registered yet (bounded by the handshake timeout).
    awaiting_successor: bool,
    /// Notified whenever `active` changes or the entry is removed.
    changed: Arc<Notify>,
}

impl PeerEntry {
    fn new(active: Handle) -> Self {
        PeerEntry {
            active,
            others: Vec::new(),
            awaiting_successor: false,
            changed: Arc::new(Notify::new()),
        }
    }

    fn set_active(&mut self, handle: Handle) -> Handle {
        self.awaiting_successor = false;
        self.changed.notify_waiters();
        std::mem::replace(&mut self.active, handle)
    }
}

#[derive(Clone)]
struct Handle {
    id: u64,
    sender: MessageSender,
    /// The peer announced that it ends this connection in favour of another one.
    superseded: Arc<AtomicBool>,
}

impl Handle {
    fn info(&self) -> &ConnectionInfo {
        self.sender.info()
    }

    /// The `PeerId` of the side that dialled this connection.
    fn dialer(&self, us: PeerId) -> PeerId {
        match self.info().direction {
            Direction::Outbound => us,
            Direction::Inbound => self.info().peer_id,
        }
    }
}

/// What the registry decided about a new connection.
enum Admission {
    /// A peer we had no connection to.
    NewPeer,
    /// The successor of a superseded connection: it simply takes over.
    Successor,
    /// A duplicate. `retire` is the connection we end ourselves (with a `Superseded` notice),
    /// if any; `announce` says whether to report the resolution.
    Duplicate {
        retire: Option<Handle>,
        announce: bool,
    },
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
        if config.enable_tcp {
            let tcp_config =
                crust_tcp::TcpConfig::default().with_connection_config(config.connection.clone());
            transports.push(Box::new(crust_tcp::TcpTransport::new(
                identity.clone(),
                tcp_config,
            )?));
        }
        if config.enable_rudp {
            let rudp_config =
                crust_rudp::RudpConfig::default().with_connection_config(config.connection.clone());
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
        // At most `capacity` events wait for the application; every batch holds at least one,
        // so the channel (sized in batches) never fills before the room does.
        let capacity = config
            .event_queue_len
            .clamp(EVENT_BATCH, tokio::sync::Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::channel(capacity);
        let room = Arc::new(tokio::sync::Semaphore::new(capacity));
        let inner = Arc::new(Inner {
            identity,
            config,
            transports,
            state: Mutex::new(State::default()),
            events: tx,
            event_room: room.clone(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_connection_id: AtomicU64::new(1),
            stopped: CancellationToken::new(),
            discovery_reports: Mutex::new(Vec::new()),
            beacon: Mutex::new(None),
            observed: Mutex::new(HashMap::new()),
        });
        let stopped = Box::pin(inner.stopped.clone().cancelled_owned());
        Ok((
            Service { inner },
            Events {
                rx,
                room,
                pending: std::collections::VecDeque::new(),
                stopped,
            },
        ))
    }

    /// Our `PeerId`.
    pub fn peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Listens on every enabled transport (on the configured address and ports, random ports
    /// by default) and starts accepting. Returns the bound endpoints; emits
    /// [`Event::ListenerStarted`] for each.
    pub async fn start_listening(&self) -> Result<Vec<Endpoint>> {
        let inner = &self.inner;
        {
            let mut state = inner.lock();
            if state.listening {
                return Err(Error::Listen("already listening".into()));
            }
            state.listening = true;
        }
        // Listen on every transport first, so that a failure leaves nothing running.
        let mut listeners = Vec::with_capacity(inner.transports.len());
        for transport in &inner.transports {
            let port = match transport.protocol() {
                Protocol::Tcp => inner.config.tcp_port,
                Protocol::Rudp => inner.config.rudp_port,
                _ => 0,
            };
            let addr = SocketAddr::new(inner.config.listen_ip, port);
            match transport.listen(addr).await {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    drop(listeners);
                    inner.lock().listening = false;
                    return Err(e.into());
                }
            }
        }
        let mut bound = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let endpoint = listener.local_endpoint();
            bound.push(endpoint);
            inner.lock().listeners.push(endpoint);
            let task_inner = inner.clone();
            inner.tasks.spawn(
                async move { task_inner.accept_loop(listener).await }
                    .instrument(tracing::info_span!("listener", %endpoint)),
            );
            tracing::info!(%endpoint, peer = %inner.identity.peer_id(), "listening");
            inner.emit(Event::ListenerStarted { endpoint }).await;
        }
        if let Some(bootstrap) = &inner.config.bootstrap {
            let discovery = crust_bootstrap::BootstrapDiscovery::from_config(bootstrap);
            if let Some(outcome) = discovery.cache_load_outcome() {
                tracing::info!(?outcome, "bootstrap cache loaded");
            }
            self.add_discovery(Box::new(discovery));
        }
        if let Some(beacon) = &inner.config.beacon {
            let endpoints = self.our_endpoints();
            match crust_beacon::BeaconDiscovery::bind(beacon.clone(), self.peer_id(), endpoints)
                .await
            {
                Ok(discovery) => {
                    *inner.beacon.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(discovery.beacon().handle());
                    self.add_discovery(Box::new(discovery));
                }
                Err(e) => {
                    // Discovery is an aid, not a precondition: keep the listeners running.
                    tracing::warn!(error = %e, "cannot start the LAN beacon");
                }
            }
        }
        Ok(bound)
    }

    /// The UDP port of the LAN beacon, when one runs (see [`ServiceConfig::beacon`]); the
    /// seed's `get_beacon_acceptor_port`, for tests that start several nodes on one host.
    pub fn beacon_acceptor_port(&self) -> Option<u16> {
        self.inner
            .beacon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|b| b.beacon_acceptor_port())
    }

    /// Our endpoints as peers that dialled us observed them (from their `ObservedAddress`
    /// messages), most confirmed first, with how many distinct peers reported each. With a
    /// NAT in between, these are the external addresses to publish (once enough peers
    /// agree); peers can lie, so a single report proves little.
    pub fn observed_endpoints(&self) -> Vec<(Endpoint, usize)> {
        let observed = self
            .inner
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut votes: HashMap<Endpoint, usize> = HashMap::new();
        for endpoint in observed.values() {
            *votes.entry(*endpoint).or_insert(0) += 1;
        }
        let mut out: Vec<(Endpoint, usize)> = votes.into_iter().collect();
        out.sort_by_key(|(endpoint, votes)| (std::cmp::Reverse(*votes), *endpoint));
        out
    }

    /// The endpoints our listeners are bound to (may be `0.0.0.0`; see [`Service::our_endpoints`]).
    pub fn listening_endpoints(&self) -> Vec<Endpoint> {
        self.inner.lock().listeners.clone()
    }

    /// Every endpoint at which peers may reach us: each listener on each interface address.
    /// Never port 0, never an unspecified address, never loopback unless
    /// [`ServiceConfig::include_loopback`] is set.
    pub fn our_endpoints(&self) -> Vec<Endpoint> {
        let bound = self.listening_endpoints();
        let needs_interfaces = bound.iter().any(|ep| ep.addr().ip().is_unspecified());
        let interfaces = if needs_interfaces {
            endpoints::interface_addresses()
        } else {
            Vec::new()
        };
        endpoints::reachable_endpoints(&bound, &interfaces, self.inner.config.include_loopback)
    }

    /// Connects to a peer reachable at `endpoints` (of any protocol), TCP first.
    ///
    /// TCP endpoints are tried first; reliable-UDP endpoints join the race after
    /// [`ServiceConfig::tcp_head_start`] or as soon as every TCP attempt failed (happy
    /// eyeballs). The first authenticated connection wins; attempts still in flight run to
    /// their end and are then closed gracefully, so the peer never keeps a connection we
    /// abandoned. With `expected`, only that peer is accepted. Returns the peer's id once a
    /// connection is registered ([`Event::NewPeer`] is emitted for a new peer).
    pub async fn connect(
        &self,
        endpoints: &[Endpoint],
        expected: Option<PeerId>,
    ) -> Result<PeerId> {
        self.inner
            .clone()
            .connect(endpoints.to_vec(), expected)
            .await
    }

    /// Like [`Service::connect`], but returns at once; failures are reported as
    /// [`Event::ConnectFailed`].
    pub fn connect_in_background(&self, endpoints: Vec<Endpoint>, expected: Option<PeerId>) {
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            if let Err(e) = inner.clone().connect(endpoints.clone(), expected).await {
                inner
                    .emit(Event::ConnectFailed {
                        endpoints,
                        error: e.to_string(),
                    })
                    .await;
            }
        });
    }

    /// Plugs in a discovery source (a bootstrap cache, LAN beacons, gossip): the service
    /// takes its candidates as they come, connects to the ones it is not connected to (up to
    /// [`DISCOVERY_CONCURRENCY`] at a time, TCP first like [`Service::connect`]), reports
    /// each success as [`Event::BootstrapConnected`] and tells the source which peers it
    /// reached directly (so a bootstrap cache can remember them). Runs until the source is
    /// exhausted or the service stops. Any number of sources can be added.
    pub fn add_discovery(&self, discovery: Box<dyn Discovery>) {
        let inner = self.inner.clone();
        let (reports_tx, reports) = mpsc::channel(DISCOVERY_REPORT_QUEUE);
        self.inner
            .discovery_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reports_tx);
        let span = tracing::info_span!("discovery", source = discovery.name());
        self.inner
            .tasks
            .spawn(inner.discovery_loop(discovery, reports).instrument(span));
    }

    /// Queues a message for a connected peer.
    ///
    /// If the connection in use is being replaced (duplicate resolution), the message goes
    /// out on its successor; it is never queued on a connection that already ended.
    pub async fn send(&self, peer: PeerId, payload: Bytes) -> Result<()> {
        // Fast path: queue without waiting while the registry is locked (no handle clone).
        let payload = {
            let state = self.inner.lock();
            let Some(entry) = state.peers.get(&peer) else {
                return Err(Error::NotConnected(peer));
            };
            match entry.active.sender.try_send(payload) {
                Ok(None) => return Ok(()),
                // Full or closed: the slow path below waits for room or a successor.
                Ok(Some(payload)) => payload,
                Err(e) => return Err(e.into()),
            }
        };
        let deadline = tokio::time::Instant::now() + self.inner.config.connection.handshake_timeout;
        loop {
            let (id, sender) = {
                let state = self.inner.lock();
                match state.peers.get(&peer) {
                    Some(entry) => (entry.active.id, entry.active.sender.clone()),
                    None => return Err(Error::NotConnected(peer)),
                }
            };
            match sender.send(payload.clone()).await {
                Err(crust_core::Error::ConnectionClosed) => {}
                other => return other.map_err(Error::from),
            }
            // The connection ended before taking the message: wait for its successor while
            // the peer is still registered, then try again on it.
            let changed = {
                let state = self.inner.lock();
                match state.peers.get(&peer) {
                    None => return Err(Error::NotConnected(peer)),
                    Some(entry) if entry.active.id != id => continue,
                    Some(entry) => entry.changed.clone(),
                }
            };
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let replaced = {
                let state = self.inner.lock();
                state.peers.get(&peer).map(|e| e.active.id != id)
            };
            match replaced {
                None => return Err(Error::NotConnected(peer)),
                Some(true) => continue,
                Some(false) => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
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
        let sender = {
            let state = self.inner.lock();
            match state.peers.get(&peer) {
                Some(entry) => entry.active.sender.clone(),
                None => return Err(Error::NotConnected(peer)),
            }
        };
        sender.send_many(messages).await.map_err(Error::from)
    }

    /// The connected peers, with the connection each uses.
    pub fn peers(&self) -> Vec<ConnectionInfo> {
        let state = self.inner.lock();
        state
            .peers
            .values()
            .map(|e| e.active.info().clone())
            .collect()
    }

    /// True when `peer` is connected.
    pub fn is_connected(&self, peer: PeerId) -> bool {
        self.inner.lock().peers.contains_key(&peer)
    }

    /// Closes the connection to `peer` gracefully (queued messages are still written).
    /// Returns whether the peer was connected; emits [`Event::LostPeer`] if it was.
    pub async fn disconnect(&self, peer: PeerId) -> bool {
        let entry = self.inner.lock().peers.remove(&peer);
        let Some(entry) = entry else { return false };
        entry.changed.notify_waiters();
        self.inner.forget_observation(peer);
        for handle in std::iter::once(entry.active).chain(entry.others) {
            handle.sender.close().await;
        }
        self.inner
            .emit(Event::LostPeer {
                peer,
                reason: "disconnected by us".into(),
            })
            .await;
        if self.inner.lock().peers.is_empty() {
            self.inner
                .report_to_discovery(DiscoveryReport::AllPeersLost);
        }
        true
    }

    /// Bans peers for the rest of this session: disconnects them at once and refuses them
    /// from now on, in both directions. One call for any number of peers.
    pub async fn ban(&self, peers: impl IntoIterator<Item = PeerId>) {
        self.inner.ban(peers).await
    }

    /// True when `peer` is banned.
    pub fn is_banned(&self, peer: PeerId) -> bool {
        self.inner.lock().banned.contains(&peer)
    }

    /// Stops listening, closes every connection gracefully (bounded by the handshake
    /// timeout) and waits for every task of the service to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let handles: Vec<Handle> = {
            let mut state = self.inner.lock();
            state
                .peers
                .drain()
                .flat_map(|(_, e)| {
                    e.changed.notify_waiters();
                    std::iter::once(e.active).chain(e.others)
                })
                .collect()
        };
        futures::future::join_all(handles.iter().map(|h| h.sender.close())).await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.stopped.cancel();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
        let state = self.inner.lock();
        for entry in state.peers.values() {
            entry.active.sender.abort();
            for other in &entry.others {
                other.sender.abort();
            }
        }
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

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn emit(&self, event: Event) {
        self.emit_batch(vec![event]).await
    }

    async fn emit_batch(&self, events: Vec<Event>) {
        if events.is_empty() || self.events.is_closed() {
            // Nobody listens any more: nothing to keep.
            return;
        }
        let n = u32::try_from(events.len()).unwrap_or(u32::MAX);
        // Wait for room (counted in events), but not past shutdown or the listener leaving.
        let permit = match self.event_room.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return,
            Err(tokio::sync::TryAcquireError::NoPermits) => tokio::select! {
                permit = self.event_room.clone().acquire_many_owned(n) => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = self.shutdown.cancelled() => return,
                _ = self.events.closed() => return,
            },
        };
        // The permits return one by one as the application takes the events.
        permit.forget();
        if self.events.try_send(events).is_err() {
            self.event_room.add_permits(n as usize);
        }
    }

    fn transport_for(&self, protocol: Protocol) -> Option<Arc<dyn Transport>> {
        self.transports
            .iter()
            .find(|t| t.protocol() == protocol)
            .cloned()
    }

    /// Records `peer`'s vote for where it sees us (on a connection it dialled); a new vote
    /// from the same peer replaces its old one.
    fn record_observation(&self, peer: PeerId, endpoint: Endpoint) {
        let still_connected = self.lock().peers.contains_key(&peer);
        if still_connected {
            self.observed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer, endpoint);
        }
    }

    /// Drops the vote of a peer that is gone.
    fn forget_observation(&self, peer: PeerId) {
        self.observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
    }

    /// Tells every discovery source about a direct connection or the loss of all peers.
    fn report_to_discovery(&self, report: DiscoveryReport) {
        let channels = self
            .discovery_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for channel in channels.iter() {
            if channel.try_send(report).is_err() {
                tracing::debug!(
                    ?report,
                    "discovery source is not keeping up; report dropped"
                );
            }
        }
    }

    /// Drives one discovery source: takes its candidates (while it has any), connects to
    /// them, and passes it every report, for as long as the service runs.
    async fn discovery_loop(
        self: Arc<Self>,
        mut discovery: Box<dyn Discovery>,
        mut reports: mpsc::Receiver<DiscoveryReport>,
    ) {
        let source = discovery.name().to_owned();
        let mut exhausted = false;
        loop {
            let candidates = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    // Connections made just before the end still reach the source.
                    apply_discovery_reports(&mut *discovery, &mut reports);
                    return;
                }
                report = reports.recv() => {
                    match report {
                        Some(DiscoveryReport::DirectConnection(peer, endpoint)) => {
                            discovery.direct_connection(peer, endpoint);
                        }
                        Some(DiscoveryReport::AllPeersLost) => {
                            discovery.all_peers_lost();
                            exhausted = false;
                        }
                        None => return,
                    }
                    continue;
                }
                candidates = discovery.next_candidates(), if !exhausted => candidates,
            };
            let Some(candidates) = candidates else {
                tracing::debug!(%source, "discovery source has nothing more for now");
                exhausted = true;
                continue;
            };
            let wanted: Vec<PeerCandidate> = {
                let state = self.lock();
                candidates
                    .into_iter()
                    .filter(|c| {
                        !c.endpoints.is_empty()
                            && c.peer_id.is_none_or(|id| {
                                id != self.identity.peer_id()
                                    && !state.peers.contains_key(&id)
                                    && !state.banned.contains(&id)
                            })
                    })
                    .collect()
            };
            let mut attempts = futures::stream::iter(wanted)
                .map(|candidate| {
                    let inner = self.clone();
                    async move {
                        let outcome = inner
                            .clone()
                            .connect(candidate.endpoints.clone(), candidate.peer_id)
                            .await;
                        (candidate, outcome)
                    }
                })
                .buffer_unordered(DISCOVERY_CONCURRENCY);
            loop {
                let next = tokio::select! {
                    _ = self.shutdown.cancelled() => {
                        drop(attempts);
                        apply_discovery_reports(&mut *discovery, &mut reports);
                        return;
                    }
                    next = attempts.next() => next,
                };
                let Some((candidate, outcome)) = next else {
                    break;
                };
                match outcome {
                    Ok(peer) => {
                        // The source hears of the connection before the application does.
                        apply_discovery_reports(&mut *discovery, &mut reports);
                        let endpoint = self
                            .lock()
                            .peers
                            .get(&peer)
                            .map(|e| e.active.info().remote_endpoint());
                        if let Some(endpoint) = endpoint {
                            self.emit(Event::BootstrapConnected {
                                peer,
                                endpoint,
                                source: source.clone(),
                            })
                            .await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%source, endpoints = ?candidate.endpoints, error = %e, "candidate not reached");
                    }
                }
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, mut listener: Box<dyn crust_core::Listener>) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(conn) => {
                    // Registering is quick (it waits only if the application's event
                    // queue is full, which then slows accepting down: backpressure).
                    let peer = conn.peer_id();
                    if let Err(e) = self.clone().register(conn).await {
                        tracing::debug!(%peer, error = %e, "incoming connection refused");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listener stopped");
                    return;
                }
            }
        }
    }

    async fn connect(
        self: Arc<Self>,
        endpoints: Vec<Endpoint>,
        expected: Option<PeerId>,
    ) -> Result<PeerId> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Shutdown);
        }
        if let Some(peer) = expected {
            if peer == self.identity.peer_id() {
                return Err(Error::SelfConnect);
            }
            let state = self.lock();
            if state.banned.contains(&peer) {
                return Err(Error::Banned(peer));
            }
            if state.peers.contains_key(&peer) {
                return Ok(peer);
            }
        }
        let mut first: Vec<Endpoint> = Vec::new();
        let mut fallback: Vec<Endpoint> = Vec::new();
        for ep in endpoints {
            if self.transport_for(ep.protocol()).is_none()
                || first.contains(&ep)
                || fallback.contains(&ep)
            {
                continue;
            }
            if ep.protocol() == Protocol::Tcp {
                first.push(ep);
            } else {
                fallback.push(ep);
            }
        }
        if first.is_empty() && fallback.is_empty() {
            return Err(Error::NoUsableEndpoint(
                self.transports.iter().map(|t| t.protocol()).collect(),
            ));
        }
        let (result_tx, mut result_rx) = oneshot::channel();
        let span = tracing::info_span!("connect", expected = ?expected);
        // The race runs inside this call (no task hop on the way to the first connection);
        // whatever is still in flight once the outcome is known moves to a background task.
        let mut race = DetachOnDrop {
            future: Some(Box::pin(
                self.clone()
                    .race(first, fallback, expected, result_tx)
                    .instrument(span),
            )),
            tasks: self.tasks.clone(),
        };
        let mut race_done = false;
        let timeout = self.config.connect_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let outcome = loop {
            tokio::select! {
                biased;
                result = &mut result_rx => break result.unwrap_or(Err(Error::Shutdown)),
                _ = race.run(), if !race_done => race_done = true,
                _ = &mut deadline => break Err(Error::ConnectTimeout(timeout)),
                _ = self.shutdown.cancelled() => break Err(Error::Shutdown),
            }
        };
        if race_done {
            race.future = None;
        }
        // Dropping `race` moves unfinished attempts to a background task.
        drop(race);
        outcome
    }

    /// Runs the happy-eyeballs race and reports the first outcome on `result`. Keeps
    /// driving the remaining attempts afterwards so that late winners are registered (and
    /// closed gracefully as duplicates) instead of being abandoned half-open.
    async fn race(
        self: Arc<Self>,
        first: Vec<Endpoint>,
        fallback: Vec<Endpoint>,
        expected: Option<PeerId>,
        result: oneshot::Sender<Result<PeerId>>,
    ) {
        let mut result = Some(result);
        let mut attempts = FuturesUnordered::new();
        let dial = |ep: Endpoint| {
            let transport = self.transport_for(ep.protocol());
            async move {
                let outcome = match transport {
                    Some(t) => t.dial(ep.addr(), expected).await,
                    None => Err(crust_core::Error::Parse(format!("no transport for {ep}"))),
                };
                (ep, outcome)
            }
        };
        for ep in &first {
            attempts.push(dial(*ep));
        }
        let mut fallback = Some(fallback);
        if attempts.is_empty() {
            for ep in fallback.take().unwrap_or_default() {
                attempts.push(dial(ep));
            }
        }
        let head_start = tokio::time::sleep(self.config.tcp_head_start);
        tokio::pin!(head_start);
        let mut errors = Vec::new();
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = &mut head_start, if fallback.is_some() => {
                    tracing::debug!("tcp head start over; racing reliable udp");
                    for ep in fallback.take().unwrap_or_default() {
                        attempts.push(dial(ep));
                    }
                    continue;
                }
                next = attempts.next(), if !attempts.is_empty() => next,
            };
            let Some((ep, outcome)) = next else { break };
            match outcome {
                Ok(conn) => {
                    let registered = self.clone().register(conn).await;
                    match registered {
                        Ok(peer) => {
                            if let Some(tx) = result.take() {
                                tracing::debug!(%peer, endpoint = %ep, "connect won");
                                let _ = tx.send(Ok(peer));
                            }
                            // A winner exists: attempts in flight finish, no new ones start.
                            fallback = None;
                        }
                        Err(e) => {
                            tracing::debug!(endpoint = %ep, error = %e, "connection not registered");
                            if result.is_some()
                                && matches!(
                                    e,
                                    Error::Banned(_)
                                        | Error::SelfConnect
                                        | Error::TooManyPeers(_)
                                        | Error::Shutdown
                                )
                            {
                                if let Some(tx) = result.take() {
                                    let _ = tx.send(Err(e));
                                }
                                // The outcome is decided: start no fallback dials.
                                fallback = None;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(endpoint = %ep, error = %e, "attempt failed");
                    errors.push((ep, e));
                    if attempts.is_empty() {
                        if let Some(eps) = fallback.take() {
                            // Every TCP attempt failed before the head start ended: go now.
                            for ep in eps {
                                attempts.push(dial(ep));
                            }
                        }
                    }
                }
            }
            if attempts.is_empty() && fallback.is_none() {
                break;
            }
        }
        if let Some(tx) = result.take() {
            let _ = tx.send(Err(Error::ConnectFailed(errors)));
        }
    }

    /// Adds an authenticated connection to the registry, applying bans, the peer limit and
    /// the one-connection-per-peer rule, and starts its reader.
    async fn register(self: Arc<Self>, conn: Connection) -> Result<PeerId> {
        let us = self.identity.peer_id();
        let peer = conn.peer_id();
        let (sender, receiver) = conn.split();
        let handle = Handle {
            id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
            sender,
            superseded: Arc::new(AtomicBool::new(false)),
        };
        let refuse = |e: Error| {
            handle.sender.abort();
            Err(e)
        };
        if peer == us {
            return refuse(Error::SelfConnect);
        }
        let admission = {
            let mut state = self.lock();
            if self.shutdown.is_cancelled() {
                drop(state);
                return refuse(Error::Shutdown);
            }
            if state.banned.contains(&peer) {
                drop(state);
                return refuse(Error::Banned(peer));
            }
            let max_peers = self.config.max_peers;
            let peers_len = state.peers.len();
            match state.peers.get_mut(&peer) {
                None if peers_len >= max_peers => {
                    drop(state);
                    return refuse(Error::TooManyPeers(max_peers));
                }
                None => {
                    state.peers.insert(peer, PeerEntry::new(handle.clone()));
                    Admission::NewPeer
                }
                Some(entry) if entry.awaiting_successor => {
                    entry.set_active(handle.clone());
                    Admission::Successor
                }
                Some(entry) => admit_duplicate(entry, &handle, us),
            }
        };
        // The reader runs for every connection, also for duplicates being drained, so that
        // everything the peer sent before ending a connection is delivered.
        let span = tracing::info_span!("connection", %peer, id = handle.id, protocol = %handle.info().protocol);
        self.tasks.spawn(
            self.clone()
                .read_loop(handle.clone(), receiver)
                .instrument(span),
        );
        let info = handle.info().clone();
        // Tell the peer where we see it (NAT traversal hint); a fresh connection has room.
        handle.sender.try_send_frame(
            FrameKind::ObservedAddress,
            crust_core::wire::encode_observed_address(info.remote_addr),
        );
        if info.direction == Direction::Outbound {
            // Only a connection we dialled proves the peer is directly reachable.
            self.report_to_discovery(DiscoveryReport::DirectConnection(
                peer,
                info.remote_endpoint(),
            ));
        }
        match admission {
            Admission::NewPeer => {
                tracing::info!(%peer, endpoint = %info.remote_endpoint(), direction = ?info.direction, "new peer");
                self.emit(Event::NewPeer {
                    peer,
                    endpoint: info.remote_endpoint(),
                    direction: info.direction,
                    protocol: info.protocol,
                })
                .await;
            }
            Admission::Successor => {
                tracing::debug!(%peer, "successor connection took over");
                self.emit(Event::DuplicateConnectionClosed {
                    peer,
                    kept: info.direction,
                })
                .await;
            }
            Admission::Duplicate { retire, announce } => {
                if let Some(retired) = retire {
                    self.retire_in_background(retired);
                }
                if announce {
                    let kept = self
                        .lock()
                        .peers
                        .get(&peer)
                        .map(|e| e.active.info().direction);
                    if let Some(kept) = kept {
                        tracing::debug!(%peer, ?kept, "duplicate connection resolved");
                        self.emit(Event::DuplicateConnectionClosed { peer, kept })
                            .await;
                    }
                }
            }
        }
        Ok(peer)
    }

    /// Ends our side of a duplicate gracefully, telling the peer a successor exists; the
    /// reader keeps draining until the peer ends its side, bounded by the handshake timeout.
    fn retire_in_background(&self, handle: Handle) {
        let deadline = self.config.connection.handshake_timeout;
        self.tasks.spawn(async move {
            let _ = handle
                .sender
                .send_frame(FrameKind::Superseded, Bytes::new())
                .await;
            handle.sender.finish().await;
            if tokio::time::timeout(deadline, handle.sender.closed())
                .await
                .is_err()
            {
                handle.sender.abort();
            }
        });
    }

    async fn read_loop(self: Arc<Self>, handle: Handle, mut receiver: MessageReceiver) {
        let peer = handle.info().peer_id;
        let mut meter = RateMeter::new(&self.config.rate_limit, Instant::now());
        let mut batch = Vec::new();
        // A connection carries one observed address; later ones are ignored.
        let mut observation_seen = false;
        let reason = 'read: loop {
            // Shutdown aborts every connection, which ends this wait too.
            let mut next = receiver.recv_frame().await.map(Some);
            // Then take whatever else already arrived, and hand it over as one batch.
            loop {
                let frame = match next {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        self.emit_batch(std::mem::take(&mut batch)).await;
                        break 'read e.to_string();
                    }
                };
                if let Err(exceeded) = meter.on_message(frame.payload.len()) {
                    let limit = match exceeded {
                        Exceeded::Messages => "messages",
                        Exceeded::Bytes => "bytes",
                    };
                    let ban = self.config.flood_action == FloodAction::Ban;
                    tracing::warn!(%peer, limit, ban, "peer exceeds the rate limit");
                    batch.push(Event::FloodDetected {
                        peer,
                        limit,
                        banned: ban,
                    });
                    self.emit_batch(std::mem::take(&mut batch)).await;
                    if ban {
                        self.ban([peer]).await;
                        break 'read format!("banned for flooding ({limit})");
                    }
                    // Reported once per burst: start a fresh meter.
                    meter = RateMeter::new(&self.config.rate_limit, Instant::now());
                }
                match frame.kind {
                    FrameKind::Message => batch.push(Event::Message {
                        peer,
                        payload: frame.payload,
                    }),
                    FrameKind::Ping => {
                        // Never wait on a peer that pings faster than it reads.
                        handle.sender.try_send_frame(FrameKind::Pong, frame.payload);
                    }
                    FrameKind::Superseded => handle.superseded.store(true, Ordering::Relaxed),
                    FrameKind::ObservedAddress if observation_seen => {
                        tracing::debug!(%peer, "ignoring a repeated observed address");
                    }
                    FrameKind::ObservedAddress => {
                        observation_seen = true;
                        match crust_core::wire::decode_observed_address(&frame.payload) {
                            Ok(addr) if !usable_observed_address(addr) => {
                                tracing::debug!(%peer, %addr, "ignoring an unusable observed address");
                            }
                            Ok(addr) => {
                                let info = handle.info();
                                let endpoint = Endpoint::new(info.protocol, addr);
                                if info.direction == Direction::Inbound {
                                    self.record_observation(peer, endpoint);
                                }
                                batch.push(Event::AddressObserved {
                                    peer,
                                    endpoint,
                                    direction: info.direction,
                                });
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "ignoring a bad observed address")
                            }
                        }
                    }
                    other => tracing::trace!(%peer, kind = ?other, "ignoring control frame"),
                }
                if batch.len() >= EVENT_BATCH {
                    break;
                }
                next = receiver.try_recv_frame();
            }
            self.emit_batch(std::mem::take(&mut batch)).await;
        };
        self.connection_ended(&handle, reason).await;
    }

    async fn connection_ended(self: &Arc<Self>, handle: &Handle, reason: String) {
        enum Outcome {
            Nothing,
            Lost,
            AwaitSuccessor,
        }
        let peer = handle.info().peer_id;
        let id = handle.id;
        let outcome = {
            let mut state = self.lock();
            let Some(entry) = state.peers.get_mut(&peer) else {
                return;
            };
            if entry.active.id != id {
                entry.others.retain(|h| h.id != id);
                Outcome::Nothing
            } else if let Some(i) = entry
                .others
                .iter()
                .position(|h| !h.sender.is_closed() && !h.superseded.load(Ordering::Relaxed))
            {
                // Promote a live standby.
                let standby = entry.others.remove(i);
                entry.set_active(standby);
                Outcome::Nothing
            } else if handle.superseded.load(Ordering::Relaxed) {
                entry.awaiting_successor = true;
                Outcome::AwaitSuccessor
            } else {
                if let Some(entry) = state.peers.remove(&peer) {
                    entry.changed.notify_waiters();
                    for other in &entry.others {
                        other.sender.abort();
                    }
                }
                Outcome::Lost
            }
        };
        match outcome {
            Outcome::Nothing => {}
            Outcome::AwaitSuccessor => {
                tracing::debug!(%peer, "connection superseded; waiting for its successor");
                let inner = self.clone();
                let wait = self.config.connection.handshake_timeout;
                self.tasks.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = inner.shutdown.cancelled() => return,
                    }
                    let expired = {
                        let mut state = inner.lock();
                        let waiting = matches!(
                            state.peers.get(&peer),
                            Some(e) if e.awaiting_successor && e.active.id == id
                        );
                        if waiting {
                            if let Some(entry) = state.peers.remove(&peer) {
                                entry.changed.notify_waiters();
                            }
                        }
                        waiting
                    };
                    if expired {
                        inner.forget_observation(peer);
                        inner
                            .emit(Event::LostPeer {
                                peer,
                                reason: "superseded connection was never replaced".into(),
                            })
                            .await;
                        if inner.lock().peers.is_empty() {
                            inner.report_to_discovery(DiscoveryReport::AllPeersLost);
                        }
                    }
                });
            }
            Outcome::Lost => {
                self.forget_observation(peer);
                if !self.shutdown.is_cancelled() {
                    tracing::info!(%peer, %reason, "lost peer");
                    self.emit(Event::LostPeer { peer, reason }).await;
                    if self.lock().peers.is_empty() {
                        self.report_to_discovery(DiscoveryReport::AllPeersLost);
                    }
                }
            }
        }
    }

    async fn ban(&self, peers: impl IntoIterator<Item = PeerId>) {
        let mut banned_now = Vec::new();
        let mut to_close = Vec::new();
        {
            let mut state = self.lock();
            for peer in peers {
                if state.banned.insert(peer) {
                    banned_now.push(peer);
                }
                if let Some(entry) = state.peers.remove(&peer) {
                    entry.changed.notify_waiters();
                    self.forget_observation(peer);
                    to_close.push((peer, entry));
                }
            }
        }
        for (_, entry) in &to_close {
            entry.active.sender.abort();
            for other in &entry.others {
                other.sender.abort();
            }
        }
        for peer in banned_now {
            tracing::info!(%peer, "banned");
            self.emit(Event::PeerBanned { peer }).await;
        }
        let lost_any = !to_close.is_empty();
        for (peer, _) in to_close {
            self.emit(Event::LostPeer {
                peer,
                reason: "banned".into(),
            })
            .await;
        }
        if lost_any && self.lock().peers.is_empty() {
            self.report_to_discovery(DiscoveryReport::AllPeersLost);
        }
    }
}

/// An observed address worth recording: a concrete unicast address with a port.
fn usable_observed_address(addr: SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast()
}

/// Passes a discovery source every report already queued for it, without waiting.
fn apply_discovery_reports(
    discovery: &mut dyn Discovery,
    reports: &mut mpsc::Receiver<DiscoveryReport>,
) {
    while let Ok(report) = reports.try_recv() {
        match report {
            DiscoveryReport::DirectConnection(peer, endpoint) => {
                discovery.direct_connection(peer, endpoint)
            }
            DiscoveryReport::AllPeersLost => discovery.all_peers_lost(),
        }
    }
}

/// Owns a future that must run to completion: polled in place while its owner waits for
/// it, and moved to a background task if the owner stops waiting (returns early or is
/// cancelled), so connection attempts are never abandoned half-way.
struct DetachOnDrop<F: Future<Output = ()> + Send + 'static> {
    future: Option<Pin<Box<F>>>,
    tasks: TaskTracker,
}

impl<F: Future<Output = ()> + Send + 'static> DetachOnDrop<F> {
    /// Polls the future in place; completes when it does.
    async fn run(&mut self) {
        if let Some(future) = self.future.as_mut() {
            future.as_mut().await;
        }
        self.future = None;
    }
}

impl<F: Future<Output = ()> + Send + 'static> Drop for DetachOnDrop<F> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                self.tasks.spawn(future);
            }
        }
    }
}

/// The one-connection-per-peer rule, applied when `new` arrives while `entry` exists.
///
/// - Connections dialled by different sides (simultaneous dial): both sides keep the one
///   dialled by the smaller `PeerId`. Only the side that dialled the loser ends it, and only
///   once it holds the winner, announcing `Superseded` first, so the other side never takes
///   the end for a lost peer.
/// - Connections dialled by the same side: the dialer keeps its active one and retires the
///   new one the same way; the accepting side makes the newest active (a restarted peer's
///   old connection is likely dead) and keeps the previous one as a standby.
///
/// Retired connections are drained in both directions, so no message is lost.
fn admit_duplicate(entry: &mut PeerEntry, new: &Handle, us: PeerId) -> Admission {
    let admission = resolve_duplicate(entry, new, us);
    // A peer that keeps dialling without retiring its duplicates must not pin connections
    // without bound: beyond the cap, the oldest extra connections are aborted.
    while entry.others.len() > MAX_EXTRA_CONNECTIONS {
        let oldest = entry.others.remove(0);
        tracing::warn!(peer = %oldest.info().peer_id, "too many connections from one peer; aborting the oldest extra one");
        oldest.sender.abort();
    }
    admission
}

fn resolve_duplicate(entry: &mut PeerEntry, new: &Handle, us: PeerId) -> Admission {
    let active_dialer = entry.active.dialer(us);
    let new_dialer = new.dialer(us);
    if active_dialer != new_dialer {
        let loser = if new_dialer < active_dialer {
            entry.set_active(new.clone())
        } else {
            new.clone()
        };
        entry.others.push(loser.clone());
        let we_dialled_loser = loser.info().direction == Direction::Outbound;
        Admission::Duplicate {
            retire: we_dialled_loser.then_some(loser),
            announce: true,
        }
    } else if new_dialer == us {
        entry.others.push(new.clone());
        Admission::Duplicate {
            retire: Some(new.clone()),
            announce: false,
        }
    } else {
        let old = entry.set_active(new.clone());
        entry.others.push(old);
        Admission::Duplicate {
            retire: None,
            announce: false,
        }
    }
}
