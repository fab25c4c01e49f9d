//! [`RudpTransport`]: the `Transport` implementation, and its listener.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crust_core::punch::PunchPlan;
use crust_core::wire::{self, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use crust_core::{
    ConnectionConfig, ConnectionInfo, ConnectionPath, Direction, Endpoint, Error, Identity,
    Listener, PeerId, Protocol, Result, SecureStream, Transport, tls,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::config::RudpConfig;
use crate::listener::{RudpListener, accept_loop};
use crate::probe::ProbeSocket;
use crate::punch::PunchWaiters;
use crate::slot::Slot;
use crate::stream::{DialReader, QuicWriter};
use crust_core::probe::ProbeReceiver;

/// QUIC application error code sent when the peer's stream-open preamble is unacceptable.
pub(crate) const CLOSE_PROTOCOL_ERROR: u32 = 1;

/// The Crust reliable-UDP transport: QUIC (quinn) with Crust's mutual, key-pinned TLS 1.3.
///
/// One QUIC endpoint, i.e. one UDP socket, serves both [`listen`](Transport::listen) and
/// [`dial`](Transport::dial), so dialled peers see the port we listen on (which is what NAT
/// hole punching needs). See the [crate documentation](crate) for the design.
pub struct RudpTransport {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    identity: Identity,
    pub(crate) config: RudpConfig,
    transport_config: Arc<quinn::TransportConfig>,
    server_config: quinn::ServerConfig,
    /// Client TLS configs, key parsed once.
    client_configs: tls::ClientConfigs,
    /// quinn client config for dials that accept any peer (built once).
    any_peer_client: quinn::ClientConfig,
    endpoints: Mutex<Endpoints>,
    /// Source address the routing table picks per remote IP, for dials from a wildcard socket.
    source_ips: Mutex<HashMap<IpAddr, (IpAddr, Instant)>>,
    /// Probe datagrams that reach the main socket, until someone takes them.
    probes: ProbeSource,
    /// Hole punches waiting for an incoming connection from their peer.
    pub(crate) punch_waiters: PunchWaiters,
    /// The configuration of every QUIC endpoint: stateless-reset key from the identity.
    pub(crate) endpoint_config: quinn::EndpointConfig,
}

/// The probe datagrams of a transport's main socket (the one it listens on and dials
/// from), until someone takes them.
#[derive(Debug, Default)]
struct ProbeSource {
    slot: Mutex<Option<ProbeReceiver>>,
}

impl ProbeSource {
    fn take(&self) -> Option<ProbeReceiver> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn offer(&self, receiver: ProbeReceiver) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(receiver);
    }
}

/// How long a cached routing decision (source address towards a remote IP) is trusted.
const SOURCE_IP_TTL: Duration = Duration::from_secs(30);
/// Remote IPs whose source address is cached at most; the cache is emptied beyond.
const SOURCE_IP_CACHE_LEN: usize = 1024;

/// The endpoints of a transport.
#[derive(Default)]
struct Endpoints {
    /// The endpoint we listen on and dial from: the socket handed to
    /// [`RudpTransport::with_socket`], or the one the first `listen` bound.
    main: Option<Slot>,
    /// `main` came from the caller; `listen` must reuse it rather than bind another socket.
    main_is_given: bool,
    /// Client-only endpoints on ephemeral ports, for dials before any `listen` or towards
    /// the address family `main` cannot reach.
    client_v4: Option<quinn::Endpoint>,
    client_v6: Option<quinn::Endpoint>,
}

impl RudpTransport {
    /// A transport that binds its UDP socket on [`listen`](Transport::listen) (and, for dials
    /// made before any `listen`, on an ephemeral port).
    ///
    /// Fails only if the TLS configuration cannot be built from the configured crypto
    /// provider.
    pub fn new(identity: Identity, config: RudpConfig) -> Result<Self> {
        let inner = Inner::new(identity, config)?;
        Ok(RudpTransport {
            inner: Arc::new(inner),
        })
    }

    /// A transport on an already-bound UDP socket, e.g. one through which a NAT hole was
    /// just punched. Listening and dialling both use this very socket; [`listen`]'s address
    /// must then be the socket's own address or have port 0.
    ///
    /// Must be called from within a tokio runtime.
    ///
    /// [`listen`]: Transport::listen
    pub fn with_socket(
        identity: Identity,
        config: RudpConfig,
        socket: std::net::UdpSocket,
    ) -> Result<Self> {
        ensure_runtime()?;
        socket.set_nonblocking(true)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = runtime.wrap_udp_socket(socket)?;
        Self::with_abstract_socket(identity, config, socket)
    }

    /// A transport on a custom [`quinn::AsyncUdpSocket`], for simulations and tests (the
    /// crate's packet-loss test wraps the real socket in one that drops datagrams).
    ///
    /// This exposes quinn's types; use the re-exported [`quinn`](crate::quinn) to get the
    /// matching version. Must be called from within a tokio runtime.
    pub fn with_abstract_socket(
        identity: Identity,
        config: RudpConfig,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Result<Self> {
        ensure_runtime()?;
        let inner = Inner::new(identity, config)?;
        let endpoint = new_endpoint(socket, &inner.endpoint_config)?;
        {
            let mut endpoints = inner.endpoints();
            endpoints.main = Some(Slot::new(endpoint, false, true));
            endpoints.main_is_given = true;
        }
        Ok(RudpTransport {
            inner: Arc::new(inner),
        })
    }

    /// The configuration this transport was built with.
    pub fn config(&self) -> &RudpConfig {
        &self.inner.config
    }

    /// The local address of the socket we listen on and dial from, once there is one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let endpoints = self.inner.endpoints();
        endpoints
            .main
            .as_ref()
            .and_then(|slot| slot.endpoint.local_addr().ok())
    }
}

impl fmt::Debug for RudpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RudpTransport")
            .field("peer_id", &self.inner.identity.peer_id())
            .field("local_addr", &self.local_addr())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let endpoints = self.endpoints.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(main) = &endpoints.main {
            main.retire();
        }
    }
}

impl Inner {
    fn new(identity: Identity, config: RudpConfig) -> Result<Self> {
        if config.keep_alive_interval >= config.idle_timeout {
            return Err(Error::Transport(
                format!(
                    "keep-alive interval {:?} must be shorter than the idle timeout {:?}",
                    config.keep_alive_interval, config.idle_timeout
                )
                .into(),
            ));
        }
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(config.keep_alive_interval))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(config.idle_timeout)
                    .map_err(|e| Error::Transport(Box::new(e)))?,
            ))
            // One bidirectional stream per connection carries every message; nothing else
            // may be opened by the peer.
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into());
        let transport_config = Arc::new(transport);

        let mut tls = tls::server_config(&identity, config.crypto_provider.clone(), &[wire::ALPN])?;
        if let Some(key_log) = &config.key_log {
            tls.key_log = key_log.clone();
        }
        let quic = QuicServerConfig::try_from(Arc::new(tls))
            .map_err(|e| Error::Handshake(format!("quic server configuration: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server_config.transport_config(transport_config.clone());

        let mut client_configs =
            tls::ClientConfigs::new(&identity, config.crypto_provider.clone(), &[wire::ALPN])?;
        if let Some(key_log) = &config.key_log {
            client_configs = client_configs.with_key_log(key_log.clone());
        }
        let any_peer_client =
            quic_client_config(client_configs.for_dial(None).0, transport_config.clone())?;

        Ok(Inner {
            endpoint_config: crate::reset::endpoint_config(&identity),
            identity,
            config,
            transport_config,
            server_config,
            client_configs,
            any_peer_client,
            endpoints: Mutex::new(Endpoints::default()),
            source_ips: Mutex::new(HashMap::new()),
            probes: ProbeSource::default(),
            punch_waiters: PunchWaiters::default(),
        })
    }

    fn endpoints(&self) -> MutexGuard<'_, Endpoints> {
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint to listen on for `addr`, bound if necessary and marked as listening.
    fn listen_slot(&self, addr: SocketAddr) -> Result<Slot> {
        let mut endpoints = self.endpoints();
        if let Some(main) = endpoints.main.clone() {
            let local = main.endpoint.local_addr()?;
            let matches = addr == local
                || (addr.port() == 0
                    && addr.is_ipv4() == local.is_ipv4()
                    && (addr.ip().is_unspecified() || addr.ip() == local.ip()));
            let reuse = endpoints.main_is_given || (matches && !main.state().listening);
            if reuse {
                if !matches {
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "this transport's socket is bound to {local}, cannot listen on {addr}"
                        ),
                    )));
                }
                main.start_listening(&self.server_config)?;
                return Ok(main);
            }
        }
        let socket = bind_udp(addr)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let is_main = endpoints.main.is_none();
        let socket = runtime.wrap_udp_socket(socket)?;
        let (endpoint, probe_socket) = if is_main {
            // The main socket is the one peers observe: probes to it tell how a NAT filters,
            // and hole punches send theirs from it.
            let (socket, probes) = ProbeSocket::wrap(socket);
            self.probes.offer(probes);
            (
                new_endpoint(socket.clone(), &self.endpoint_config)?,
                Some(socket),
            )
        } else {
            (new_endpoint(socket, &self.endpoint_config)?, None)
        };
        endpoint.set_server_config(Some(self.server_config.clone()));
        let mut slot = Slot::new(endpoint, true, is_main);
        slot.probe_socket = probe_socket;
        if is_main {
            // From now on we dial from the port we listen on.
            endpoints.main = Some(slot.clone());
        }
        Ok(slot)
    }

    /// The main endpoint and its probe-aware socket, if `listen` bound it and a listener is
    /// accepting on it (a punched connection may come in through the accept loop).
    pub(crate) fn punch_socket(&self) -> Option<(quinn::Endpoint, Arc<ProbeSocket>)> {
        let endpoints = self.endpoints();
        let main = endpoints.main.as_ref()?;
        let socket = main.probe_socket.clone()?;
        main.state()
            .listening
            .then(|| (main.endpoint.clone(), socket))
    }

    /// The endpoint to dial `addr` from: the main one if it can reach `addr` (address family,
    /// loopback), otherwise a client endpoint on an ephemeral port.
    fn dial_endpoint(&self, addr: SocketAddr) -> Result<quinn::Endpoint> {
        let mut endpoints = self.endpoints();
        if let Some(main) = &endpoints.main {
            let local = main.endpoint.local_addr()?;
            let family_ok = local.is_ipv4() == addr.is_ipv4()
                || (local.is_ipv6() && local.ip().is_unspecified());
            // A socket bound to loopback cannot reach other hosts.
            let scope_ok = !local.ip().is_loopback() || addr.ip().is_loopback();
            let reachable = family_ok && scope_ok;
            if reachable {
                return Ok(main.endpoint.clone());
            }
        }
        let slot = if addr.is_ipv4() {
            &mut endpoints.client_v4
        } else {
            &mut endpoints.client_v6
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = std::net::UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let endpoint = new_endpoint(runtime.wrap_udp_socket(socket)?, &self.endpoint_config)?;
        tracing::debug!(local = ?endpoint.local_addr().ok(), "bound client endpoint for dialling");
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    fn client_config(
        &self,
        expected: Option<PeerId>,
    ) -> Result<(quinn::ClientConfig, Arc<tls::PeerKeyVerifier>)> {
        let (tls, verifier) = self.client_configs.for_dial(expected);
        let client = match expected {
            None => self.any_peer_client.clone(),
            Some(_) => quic_client_config(tls, self.transport_config.clone())?,
        };
        Ok((client, verifier))
    }

    /// Our address as the peer sees it for an outbound connection from `endpoint`: when the
    /// endpoint is bound to a wildcard address, the source address the routing table picks
    /// for `remote` (cached per remote IP for [`SOURCE_IP_TTL`]).
    fn outbound_local_addr(
        &self,
        endpoint: &quinn::Endpoint,
        remote: SocketAddr,
    ) -> Result<SocketAddr> {
        let local = endpoint.local_addr()?;
        if !local.ip().is_unspecified() {
            return Ok(local);
        }
        let now = Instant::now();
        let cached = {
            let cache = self.source_ips.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&remote.ip())
                .filter(|(_, at)| now.duration_since(*at) < SOURCE_IP_TTL)
                .map(|(ip, _)| *ip)
        };
        let ip = match cached {
            Some(ip) => ip,
            None => match route_source_ip(remote) {
                Some(ip) => {
                    let mut cache = self.source_ips.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= SOURCE_IP_CACHE_LEN {
                        cache.clear();
                    }
                    cache.insert(remote.ip(), (ip, now));
                    ip
                }
                None => local.ip(),
            },
        };
        Ok(SocketAddr::new(ip, local.port()))
    }

    async fn dial(&self, addr: SocketAddr, expected: Option<PeerId>) -> Result<SecureStream> {
        let endpoint = self.dial_endpoint(addr)?;
        let timeout = self.config.connection.handshake_timeout;
        self.dial_from(&endpoint, addr, expected, ConnectionPath::Direct, timeout)
            .await
    }

    /// Dials `addr` from `endpoint` (QUIC handshake, then the stream and our preamble),
    /// within `timeout`. The stream reports `path`.
    pub(crate) async fn dial_from(
        &self,
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        expected: Option<PeerId>,
        path: ConnectionPath,
        timeout: Duration,
    ) -> Result<SecureStream> {
        let (client, verifier) = self.client_config(expected)?;
        let linger = self.config.connection.handshake_timeout;
        let handshake = async {
            let connecting = endpoint
                .connect_with(client, addr, tls::SERVER_NAME)
                .map_err(|e| Error::Transport(Box::new(e)))?;
            let conn = connecting
                .await
                .map_err(|e| tls::dial_handshake_error(&verifier, e))?;
            let peer_id = peer_id_of(&conn)?;
            if let Some(expected) = expected {
                if expected != peer_id {
                    conn.close(CLOSE_PROTOCOL_ERROR.into(), b"unexpected peer");
                    return Err(Error::PeerIdMismatch {
                        expected,
                        actual: peer_id,
                    });
                }
            }
            let (mut send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| Error::Handshake(format!("opening the stream: {e}")))?;
            send.write_all(&wire::preamble(PROTOCOL_VERSION, MIN_PROTOCOL_VERSION))
                .await
                .map_err(|e| Error::Handshake(format!("sending the preamble: {e}")))?;
            // The acceptor's preamble is not waited for: it is checked as the first 8 bytes
            // read from the stream (see the crate docs), saving a round trip.
            let local_addr = self.outbound_local_addr(endpoint, addr)?;
            let reader = DialReader::new(recv, conn.clone(), CLOSE_PROTOCOL_ERROR);
            Ok(secure_stream(
                conn,
                send,
                reader,
                peer_id,
                local_addr,
                (Direction::Outbound, path),
                linger,
            ))
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => {
                tracing::debug!(peer = %stream.info.peer_id, remote = %addr, %path, "dialled");
                Ok(stream)
            }
            Ok(Err(e)) => {
                tracing::debug!(remote = %addr, error = %e, "dial failed");
                Err(e)
            }
            Err(_) => {
                tracing::debug!(remote = %addr, ?timeout, "dial handshake timed out");
                Err(Error::HandshakeTimeout(timeout))
            }
        }
    }
}

#[async_trait]
impl Transport for RudpTransport {
    fn take_probe_receiver(&self) -> Option<ProbeReceiver> {
        self.inner.probes.take()
    }

    fn protocol(&self) -> Protocol {
        Protocol::Rudp
    }

    fn local_peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    fn connection_config(&self) -> &ConnectionConfig {
        &self.inner.config.connection
    }

    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>> {
        let slot = self.inner.listen_slot(addr)?;
        let local = slot.endpoint.local_addr()?;
        let capacity = self.inner.config.max_concurrent_handshakes.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let task = tokio::spawn(accept_loop(
            slot.endpoint.clone(),
            self.inner.punch_waiters.clone(),
            local,
            tx,
            self.inner.config.fair_share(),
            self.inner.config.connection.handshake_timeout,
        ));
        tracing::debug!(%local, peer_id = %self.inner.identity.peer_id(), "listening");
        Ok(Box::new(RudpListener {
            local: Endpoint::rudp(local),
            config: self.inner.config.connection.clone(),
            incoming: rx,
            task,
            slot,
        }))
    }

    async fn dial_stream(
        &self,
        addr: SocketAddr,
        expected: Option<PeerId>,
    ) -> Result<SecureStream> {
        self.inner.dial(addr, expected).await
    }

    async fn punch_stream(&self, plan: PunchPlan) -> Result<SecureStream> {
        crate::punch::punch(&self.inner, plan).await
    }
}

/// The authenticated `PeerId` of an established connection.
pub(crate) fn peer_id_of(conn: &quinn::Connection) -> Result<PeerId> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| Error::Handshake("peer presented no certificate".into()))?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| Error::Handshake("unexpected peer identity type".into()))?;
    tls::peer_id_from_certificates(Some(&certs))
}

/// A non-blocking UDP socket bound to `addr`. IPv6 sockets are IPv6-only, so IPv4 and IPv6
/// listeners can use the same port number side by side.
pub(crate) fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The source address the routing table picks to reach `remote`.
fn route_source_ip(remote: SocketAddr) -> Option<IpAddr> {
    let probe_bind: SocketAddr = if remote.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A connected UDP socket sends nothing; it only lets the kernel pick the source address.
    std::net::UdpSocket::bind(probe_bind)
        .and_then(|probe| {
            probe.connect(remote)?;
            probe.local_addr()
        })
        .map(|a| a.ip())
        .ok()
}

fn quic_client_config(
    tls: Arc<rustls::ClientConfig>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Handshake(format!("quic client configuration: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport);
    Ok(client)
}

pub(crate) fn secure_stream(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: impl tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
    peer_id: PeerId,
    local_addr: SocketAddr,
    (direction, path): (Direction, ConnectionPath),
    linger: Duration,
) -> SecureStream {
    SecureStream {
        info: ConnectionInfo {
            peer_id,
            local_addr,
            remote_addr: conn.remote_address(),
            protocol: Protocol::Rudp,
            direction,
            path,
        },
        reader: Box::new(recv),
        writer: Box::new(QuicWriter::new(send, linger)),
        keep_alive: Some(Box::new(conn)),
    }
}

pub(crate) fn new_endpoint(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    config: &quinn::EndpointConfig,
) -> Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::new_with_abstract_socket(
        config.clone(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

fn ensure_runtime() -> Result<()> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|e| Error::Io(io::Error::other(e)))
}
