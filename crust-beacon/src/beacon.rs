//! The tokio glue: [`Beacon`] (a socket plus a driver task) and [`BeaconDiscovery`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use crust_core::{Discovery, Endpoint, PeerCandidate, PeerId};
use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{BeaconConfig, BeaconState, Error, MAX_PACKET_LEN, PeerRecord, Result};

/// Consecutive receive errors after which the driver gives up.
const MAX_RECV_ERRORS: u32 = 64;

/// A running LAN beacon: a UDP socket on the shared beacon port and a driver task that
/// announces us and listens for other nodes' beacons (see [`BeaconState`] for the rules).
///
/// The socket is bound with `SO_REUSEADDR`, `SO_REUSEPORT` (Unix) and `SO_BROADCAST`, so
/// several nodes on one host share the port and all of them receive every broadcast.
/// Dropping the `Beacon` stops the driver task.
pub struct Beacon {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    targets: Vec<SocketAddr>,
    task: JoinHandle<()>,
}

struct Shared {
    state: Mutex<BeaconState>,
    /// Signalled when candidates are queued or the driver ended.
    candidates: Notify,
    /// Signalled when the driver should re-check its schedule (new endpoints).
    wake: Notify,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BeaconState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Beacon {
    /// Binds the beacon socket to [`bind_ip`](BeaconConfig::bind_ip) and
    /// [`port`](BeaconConfig::port) and starts announcing `endpoints` as `our_id` on the
    /// current tokio runtime (call it from within one).
    ///
    /// Fails with [`Error::Bind`] when the socket cannot be created, configured or bound.
    pub async fn bind(
        config: BeaconConfig,
        our_id: PeerId,
        endpoints: Vec<Endpoint>,
    ) -> Result<Self> {
        let bind_addr = SocketAddr::new(config.bind_ip, config.port);
        let socket = bind_shared(bind_addr).map_err(|source| Error::Bind {
            addr: bind_addr,
            source,
        })?;
        let local_addr = socket.local_addr()?;
        let targets: Vec<SocketAddr> = config
            .broadcast_addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, local_addr.port()))
            .collect();
        let state = BeaconState::new(&config, our_id, endpoints, Instant::now().into_std());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            candidates: Notify::new(),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        tracing::debug!(local = %local_addr, targets = ?targets, peer = %our_id, "beacon started");
        let task = tokio::spawn(drive(shared.clone(), socket, targets.clone()));
        Ok(Beacon {
            shared,
            local_addr,
            targets,
            task,
        })
    }

    /// The port the beacon socket is bound to (the real one when
    /// [`port`](BeaconConfig::port) was 0); other beacons sharing this port hear us.
    pub fn beacon_acceptor_port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The address the beacon socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where our announcements go.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Replaces the endpoints we announce (e.g. once the service listens); an early
    /// announcement follows, rate-limited by [`min_announce_gap`](BeaconConfig::min_announce_gap).
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        set_endpoints(&self.shared, endpoints);
    }

    /// The peers heard recently.
    pub fn peers(&self) -> Vec<PeerRecord> {
        self.shared.lock().peers().cloned().collect()
    }

    /// A cheap, cloneable handle to update our endpoints and read the peer table after the
    /// beacon was handed away (e.g. boxed as a `Discovery` into a service). The handle does
    /// not keep the beacon running: dropping the `Beacon` stops it.
    pub fn handle(&self) -> BeaconHandle {
        BeaconHandle {
            shared: self.shared.clone(),
            local_addr: self.local_addr,
        }
    }

    /// Waits for new or changed peers. Returns `None` once the driver has stopped (the
    /// socket failed persistently).
    ///
    /// Cancel safe: candidates stay queued until a call returns them.
    pub async fn next_candidates(&self) -> Option<Vec<PeerCandidate>> {
        loop {
            let candidates = self.shared.lock().take_candidates();
            if !candidates.is_empty() {
                return Some(candidates);
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return None;
            }
            // `notify_one` stores a permit when nobody waits, so no wake-up is lost
            // between the check above and this wait.
            self.shared.candidates.notified().await;
        }
    }

    /// Whether the driver task has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Beacon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Beacon")
            .field("local_addr", &self.local_addr)
            .field("targets", &self.targets)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Beacon {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.closed.store(true, Ordering::Release);
    }
}

fn set_endpoints(shared: &Shared, endpoints: Vec<Endpoint>) {
    let now = Instant::now().into_std();
    shared.lock().set_endpoints(now, endpoints);
    shared.wake.notify_one();
}

/// A handle on a running [`Beacon`] (see [`Beacon::handle`]).
#[derive(Clone)]
pub struct BeaconHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl BeaconHandle {
    /// See [`Beacon::set_endpoints`].
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        set_endpoints(&self.shared, endpoints);
    }

    /// See [`Beacon::peers`].
    pub fn peers(&self) -> Vec<PeerRecord> {
        self.shared.lock().peers().cloned().collect()
    }

    /// See [`Beacon::beacon_acceptor_port`].
    pub fn beacon_acceptor_port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Whether the beacon has stopped (its socket failed, or the `Beacon` was dropped).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for BeaconHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BeaconHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn bind_shared(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    socket.set_reuse_port(true)?;
    if matches!(addr.ip(), IpAddr::V4(_)) {
        socket.set_broadcast(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn drive(shared: Arc<Shared>, socket: UdpSocket, targets: Vec<SocketAddr>) {
    // One byte more than the limit, so oversized datagrams are seen as such.
    let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
    let mut errors = 0u32;
    loop {
        let deadline = Instant::from_std(shared.lock().poll_timeout());
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    errors = 0;
                    let now = Instant::now().into_std();
                    let mut state = shared.lock();
                    let heard = state.handle_datagram(now, from, buf.get(..len).unwrap_or_default());
                    tracing::trace!(from = %from, ?heard, "beacon datagram");
                    if state.has_candidates() {
                        shared.candidates.notify_one();
                    }
                }
                Err(e) => {
                    errors += 1;
                    tracing::debug!(error = %e, errors, "beacon receive failed");
                    if errors >= MAX_RECV_ERRORS {
                        tracing::warn!(error = %e, "beacon socket keeps failing; beacon stopped");
                        break;
                    }
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                shared.lock().handle_timeout(Instant::now().into_std());
            }
            () = shared.wake.notified() => {}
        }
        let transmit = shared.lock().poll_transmit(Instant::now().into_std());
        if let Some(bytes) = transmit {
            for target in &targets {
                if let Err(e) = socket.send_to(&bytes, target).await {
                    tracing::debug!(target = %target, error = %e, "cannot send beacon");
                }
            }
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.candidates.notify_one();
}

/// A [`Beacon`] as a [`Discovery`] source named `"beacon"`: yields every new or changed
/// peer heard on the LAN, with its [`PeerId`] (claimed by the beacon, proven by the dial).
///
/// [`next_candidates`](Discovery::next_candidates) is cancel safe and waits until a peer
/// is heard; it returns `None` only when the beacon socket failed for good.
#[derive(Debug)]
pub struct BeaconDiscovery {
    beacon: Beacon,
}

impl BeaconDiscovery {
    /// Wraps a running beacon.
    pub fn new(beacon: Beacon) -> Self {
        BeaconDiscovery { beacon }
    }

    /// Binds a [`Beacon`] (see [`Beacon::bind`]) and wraps it.
    pub async fn bind(
        config: BeaconConfig,
        our_id: PeerId,
        endpoints: Vec<Endpoint>,
    ) -> Result<Self> {
        Ok(Self::new(Beacon::bind(config, our_id, endpoints).await?))
    }

    /// The beacon (e.g. to [`set_endpoints`](Beacon::set_endpoints) or read the port).
    pub fn beacon(&self) -> &Beacon {
        &self.beacon
    }
}

#[async_trait]
impl Discovery for BeaconDiscovery {
    fn name(&self) -> &str {
        "beacon"
    }

    async fn next_candidates(&mut self) -> Option<Vec<PeerCandidate>> {
        self.beacon.next_candidates().await
    }
}
