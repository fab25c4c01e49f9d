//! # crust-tcp
//!
//! The TCP transport of [Crust](https://github.com/crust-p2p/crust): every connection is TCP
//! carrying TLS 1.3 (rustls) with mutual authentication by key pinning, and Crust's
//! length-prefixed frames inside.
//!
//! On connect both sides first send the 8-byte clear-text Crust preamble (magic `CRST` and
//! the protocol versions they speak), so strangers and incompatible versions fail fast with
//! [`Error::NotCrust`] or
//! [`Error::VersionMismatch`]. The dialer pipelines it: its preamble and TLS ClientHello go
//! out together, and the listener's preamble is checked as the first 8 bytes read
//! ([`crust_core::wire::PreambleStream`]), so it costs no round trip. Then TLS 1.3 runs with
//! the nodes' self-signed certificates; the verifiers accept exactly the peer's key (and
//! when dialling with an expected [`PeerId`], only that one). See `docs/protocol.md`.
//!
//! ## Tracer mode and key log (debugging)
//!
//! With [`TcpConfig::tracer`] the preamble announces tracer mode, each side proves its
//! `PeerId` by signing both sides' fresh nonces ([`crust_core::tracer`]), and the frames then
//! travel in clear text so a capture shows them (`tools/wireshark/crust.lua`). A tracer node
//! and a normal node refuse each other with [`Error::ModeMismatch`]. With
//! [`TcpConfig::key_log`] the TLS secrets of every session go to a key log instead, for
//! Wireshark to decrypt normal sessions. **Both expose the traffic: never in production.**
//!
//! ## What a listener bounds
//!
//! Each incoming connection takes a *handshake slot* from the moment its handshake starts
//! until its authenticated stream is in the accept queue. Everything is bounded, and no
//! single source can take it all:
//!
//! - **Slots in flight:** [`TcpConfig::max_pending_handshakes`] (256) in all, of which one IP
//!   address may hold [`TcpConfig::max_pending_handshakes_per_ip`] (64) and one subnet (IPv4
//!   /24, IPv6 /64) [`TcpConfig::max_pending_handshakes_per_subnet`] (128). A host that opens
//!   connections and then stalls them (the slowloris attack) holds at most its share until
//!   the handshake timeout (10 s) cuts them; the other slots stay free for everyone else.
//! - **Waiting connections:** a connection beyond a share or the total is not dropped: it
//!   waits, at most [`TcpConfig::max_queued_handshakes`] (1024) in all and
//!   [`TcpConfig::max_queued_handshakes_per_ip`] (512) per address, for at most
//!   [`TcpConfig::handshake_queue_timeout`] (5 s). Waiting connections are served round-robin
//!   across subnets and oldest first within one, so a burst of honest connections from one
//!   NAT is served a share at a time and a heavy source cannot starve the others; a full
//!   queue makes room by closing a connection of the source with the most waiting.
//! - **Finished handshakes:** at most [`TcpConfig::accept_queue_len`] (128) authenticated
//!   connections wait for [`Listener::accept`]; beyond that, finished handshakes keep their
//!   slots, so an application that does not accept holds back new handshakes rather than
//!   letting connections pile up.
//!
//! The fair share is [`crust_core::limits::HandshakeQueue`], a plain struct tested without
//! sockets.
//!
//! ```
//! use crust_core::{Identity, Transport};
//! use crust_tcp::{TcpConfig, TcpTransport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> crust_core::Result<()> {
//! let alice = TcpTransport::new(Identity::generate()?, TcpConfig::default())?;
//! let bob = TcpTransport::new(Identity::generate()?, TcpConfig::default())?;
//! let mut listener = bob.listen("127.0.0.1:0".parse().expect("addr")).await?;
//! let addr = listener.local_endpoint().addr();
//!
//! let (dialed, accepted) = tokio::join!(alice.dial(addr, Some(bob.local_peer_id())), listener.accept());
//! let (mut to_bob, mut to_alice) = (dialed?, accepted?);
//! to_bob.send("hello bob".into()).await?;
//! assert_eq!(to_alice.recv().await?, "hello bob");
//! assert_eq!(to_alice.peer_id(), alice.local_peer_id());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod accept;
mod punch;
mod secure;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crust_core::limits::FairShare;
use crust_core::wire::TransportMode;
use crust_core::{
    ConnectionConfig, ConnectionInfo, Direction, Endpoint, Error, Identity, Listener, PeerId,
    Protocol, Result, SecureStream, Transport, tls,
};
use rustls::crypto::CryptoProvider;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// Configuration of a [`TcpTransport`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TcpConfig {
    /// Message size limit, send queue and handshake timeout. Default: [`ConnectionConfig::default`].
    pub connection: ConnectionConfig,
    /// The rustls crypto provider. Default: [`tls::default_crypto_provider`] (*ring*).
    pub crypto_provider: Arc<CryptoProvider>,
    /// Dial from the port we listen on (SO_REUSEADDR + SO_REUSEPORT), as TCP hole punching
    /// by simultaneous open needs. Default: `false` (dial from an ephemeral port).
    pub dial_from_listen_port: bool,
    /// Incoming handshakes in flight at once, over all sources. Connections beyond it wait
    /// for a slot in the listener's queue (see [`TcpConfig::max_queued_handshakes`]). A slot
    /// is held from the start of the handshake until the authenticated connection is in the
    /// accept queue, so an application that is slow to [`Listener::accept`] holds back new
    /// handshakes instead of letting finished ones pile up. Default 256.
    pub max_pending_handshakes: usize,
    /// Incoming handshakes in flight at once from one IP address: its fair share of the
    /// slots, so that one host that opens connections and stalls them cannot take every
    /// slot. Connections beyond it wait in the queue (they are not dropped), so honest bursts
    /// from one address (a NAT, a proxy) are all served, a share at a time. Default 64 (a
    /// quarter of the default slots); `usize::MAX` turns the per-address share off.
    pub max_pending_handshakes_per_ip: usize,
    /// Incoming handshakes in flight at once from one subnet (an IPv4 /24, an IPv6 /64), so
    /// that a host with many addresses cannot take every slot either. Connections beyond it
    /// wait in the queue. Default 128 (half of the default slots); `usize::MAX` turns it off.
    pub max_pending_handshakes_per_subnet: usize,
    /// Connections waiting for a handshake slot, over all sources. Waiting connections are
    /// served round-robin across subnets and oldest first within one. When the queue is full
    /// a newcomer takes the place of the newest waiting connection of the address with the
    /// most waiting (if it has more waiting than the newcomer's address), otherwise the
    /// newcomer is closed at once. Default 1024.
    pub max_queued_handshakes: usize,
    /// Connections from one IP address waiting for a handshake slot; newcomers beyond it
    /// are closed at once. Default 512.
    pub max_queued_handshakes_per_ip: usize,
    /// How long a connection may wait for a handshake slot before it is closed. A dialler
    /// gives up after its own handshake timeout anyway, which includes this wait. Default 5 s.
    pub handshake_queue_timeout: Duration,
    /// Authenticated connections waiting for [`Listener::accept`]. Default 128.
    pub accept_queue_len: usize,
    /// TCP keep-alive idle time, so vanished peers are noticed on idle connections.
    /// Default 30 s; `None` disables it.
    pub tcp_keepalive: Option<Duration>,
    /// Listen backlog. Default 1024.
    pub listen_backlog: u32,
    /// **Tracer mode** (for debugging): the preamble announces it, each side proves its
    /// `PeerId` by signing both sides' fresh nonces with its identity key, and then the
    /// frames travel in **clear text**, exactly as they would inside TLS, so a packet
    /// capture (with `tools/wireshark/crust.lua`) shows them. Authenticated, not secret.
    /// A tracer node and a normal node refuse each other with [`Error::ModeMismatch`]; there
    /// is no fallback. Enabling it logs a warning; in a release build (without
    /// `debug_assertions`) [`TcpTransport::new`] refuses it unless
    /// [`TcpConfig::allow_tracer_in_release`] is set too. Default `false`.
    pub tracer: bool,
    /// Lets a release build use [`TcpConfig::tracer`]. Default `false`.
    pub allow_tracer_in_release: bool,
    /// Log the TLS secrets of every session here (`SSLKEYLOGFILE` format, e.g.
    /// [`tls::KeyLogWriter`]), so Wireshark can decrypt a capture.
    ///
    /// **Security warning:** whoever holds the log and a capture reads the traffic. For
    /// debugging only. Default `None`.
    pub key_log: Option<Arc<dyn rustls::KeyLog>>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        // 256 slots; a quarter per address, half per subnet; a queue of 1024 (512 per
        // address) and a wait of at most 5 s.
        let share = FairShare::new(256);
        TcpConfig {
            connection: ConnectionConfig::default(),
            crypto_provider: tls::default_crypto_provider(),
            dial_from_listen_port: false,
            max_pending_handshakes: share.max_in_flight,
            max_pending_handshakes_per_ip: share.max_in_flight_per_ip,
            max_pending_handshakes_per_subnet: share.max_in_flight_per_subnet,
            max_queued_handshakes: share.max_queued,
            max_queued_handshakes_per_ip: share.max_queued_per_ip,
            handshake_queue_timeout: share.max_wait,
            accept_queue_len: 128,
            tcp_keepalive: Some(Duration::from_secs(30)),
            listen_backlog: 1024,
            tracer: false,
            allow_tracer_in_release: false,
            key_log: None,
        }
    }
}

impl TcpConfig {
    /// Sets [`TcpConfig::connection`].
    pub fn with_connection_config(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets [`TcpConfig::crypto_provider`].
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.crypto_provider = provider;
        self
    }

    /// Sets [`TcpConfig::dial_from_listen_port`].
    pub fn with_dial_from_listen_port(mut self, enabled: bool) -> Self {
        self.dial_from_listen_port = enabled;
        self
    }

    /// Sets [`TcpConfig::max_pending_handshakes`] (at least 1); the shares per address and
    /// per subnet are left as they are.
    pub fn with_max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n.max(1);
        self
    }

    /// Sets [`TcpConfig::max_pending_handshakes_per_ip`] (at least 1).
    pub fn with_max_pending_handshakes_per_ip(mut self, n: usize) -> Self {
        self.max_pending_handshakes_per_ip = n.max(1);
        self
    }

    /// Sets [`TcpConfig::max_pending_handshakes_per_subnet`] (at least 1).
    pub fn with_max_pending_handshakes_per_subnet(mut self, n: usize) -> Self {
        self.max_pending_handshakes_per_subnet = n.max(1);
        self
    }

    /// Sets [`TcpConfig::max_queued_handshakes`] and
    /// [`TcpConfig::max_queued_handshakes_per_ip`] (each at least 1).
    pub fn with_max_queued_handshakes(mut self, total: usize, per_ip: usize) -> Self {
        self.max_queued_handshakes = total.max(1);
        self.max_queued_handshakes_per_ip = per_ip.max(1);
        self
    }

    /// Sets [`TcpConfig::handshake_queue_timeout`].
    pub fn with_handshake_queue_timeout(mut self, wait: Duration) -> Self {
        self.handshake_queue_timeout = wait;
        self
    }

    /// Sets [`TcpConfig::accept_queue_len`] (at least 1).
    pub fn with_accept_queue_len(mut self, n: usize) -> Self {
        self.accept_queue_len = n.max(1);
        self
    }

    /// The handshake slots' fair share as configured here.
    fn fair_share(&self) -> FairShare {
        let mut share = FairShare::new(self.max_pending_handshakes);
        share.max_in_flight_per_ip = self.max_pending_handshakes_per_ip;
        share.max_in_flight_per_subnet = self.max_pending_handshakes_per_subnet;
        share.max_queued = self.max_queued_handshakes;
        share.max_queued_per_ip = self.max_queued_handshakes_per_ip;
        share.max_wait = self.handshake_queue_timeout;
        share
    }

    /// Sets [`TcpConfig::tcp_keepalive`].
    pub fn with_tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp_keepalive = idle;
        self
    }

    /// Sets [`TcpConfig::tracer`].
    pub fn with_tracer(mut self, enabled: bool) -> Self {
        self.tracer = enabled;
        self
    }

    /// Sets [`TcpConfig::allow_tracer_in_release`].
    pub fn with_tracer_allowed_in_release(mut self, allowed: bool) -> Self {
        self.allow_tracer_in_release = allowed;
        self
    }

    /// Sets [`TcpConfig::key_log`].
    pub fn with_key_log(mut self, key_log: Arc<dyn rustls::KeyLog>) -> Self {
        self.key_log = Some(key_log);
        self
    }

    /// The mode the connections of this configuration use.
    pub fn mode(&self) -> TransportMode {
        if self.tracer {
            TransportMode::Tracer
        } else {
            TransportMode::Tls
        }
    }
}

/// Whether tracer mode may run: always in a debug build, in a release build only when
/// explicitly allowed.
pub fn tracer_permitted(debug_build: bool, allowed_in_release: bool) -> bool {
    debug_build || allowed_in_release
}

/// The TCP + TLS 1.3 transport.
pub struct TcpTransport {
    identity: Identity,
    config: TcpConfig,
    /// Preamble and TLS (or tracer authentication), both sides.
    handshaker: secure::Handshaker,
    /// Addresses we listen on, for dialling from the listening port.
    listen_addrs: Arc<Mutex<Vec<SocketAddr>>>,
    /// Hole punches in progress, waiting for connections from these addresses.
    punch_waiters: punch::PunchWaiters,
}

impl TcpTransport {
    /// A transport for `identity`.
    ///
    /// Fails with [`Error::Unsupported`] when [`TcpConfig::tracer`] is set in a release
    /// build without [`TcpConfig::allow_tracer_in_release`].
    pub fn new(identity: Identity, config: TcpConfig) -> Result<Self> {
        if config.tracer {
            if !tracer_permitted(cfg!(debug_assertions), config.allow_tracer_in_release) {
                return Err(Error::Unsupported(
                    "tracer mode (frames in clear text) is refused in a release build unless allow_tracer_in_release is set".into(),
                ));
            }
            tracing::warn!(peer = %identity.peer_id(), "TRACER MODE ON: TCP frames travel UNENCRYPTED (authenticated, not secret); peers in normal mode are refused; for debugging only");
        }
        let handshaker = secure::Handshaker::new(
            identity.clone(),
            config.crypto_provider.clone(),
            config.mode(),
            config.key_log.clone(),
        )?;
        Ok(TcpTransport {
            handshaker,
            identity,
            config,
            listen_addrs: Arc::new(Mutex::new(Vec::new())),
            punch_waiters: punch::PunchWaiters::default(),
        })
    }

    /// The transport's configuration.
    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// The mode of this transport's connections.
    pub fn mode(&self) -> TransportMode {
        self.handshaker.mode()
    }

    fn listen_port_for(&self, remote: SocketAddr) -> Option<SocketAddr> {
        if !self.config.dial_from_listen_port {
            return None;
        }
        let addrs = self.listen_addrs.lock().unwrap_or_else(|p| p.into_inner());
        addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == remote.is_ipv4())
    }

    /// Connects to `addr`, from the listening port when configured. When that port cannot
    /// be used for this destination (the same four-tuple already exists, e.g. the peer
    /// dialled us from its listening port to ours), falls back to an ephemeral port.
    async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream> {
        if let Some(local) = self.listen_port_for(addr) {
            match self.connect_from(addr, Some(local)).await {
                Ok(stream) => return Ok(stream),
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrInUse
                            | std::io::ErrorKind::AddrNotAvailable
                            | std::io::ErrorKind::InvalidInput
                    ) =>
                {
                    tracing::debug!(%addr, %local, error = %e, "cannot dial from the listening port; using an ephemeral one");
                }
                Err(e) => return Err(e),
            }
        }
        self.connect_from(addr, None).await
    }

    async fn connect_from(&self, addr: SocketAddr, local: Option<SocketAddr>) -> Result<TcpStream> {
        let socket = new_socket(addr)?;
        if let Some(local) = local {
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(local)?;
        }
        let stream = socket.connect(addr).await?;
        configure_stream(&stream, self.config.tcp_keepalive)?;
        Ok(stream)
    }
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("peer_id", &self.identity.peer_id())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Transport for TcpTransport {
    fn protocol(&self) -> Protocol {
        Protocol::Tcp
    }

    fn local_peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    fn connection_config(&self) -> &ConnectionConfig {
        &self.config.connection
    }

    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>> {
        if addr.port() != 0 {
            // The listener needs SO_REUSEPORT (so dials can leave from its port), which
            // would also let a second node bind the same port silently and have the kernel
            // split connections between them. A probe bind without it fails with "address
            // in use" when anyone listens there (sockets in TIME_WAIT do not count).
            let probe = new_socket(addr)?;
            probe.set_reuseaddr(true)?;
            probe.bind(addr)?;
            drop(probe);
        }
        let socket = new_socket(addr)?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = Arc::new(socket.listen(self.config.listen_backlog)?);
        let local = listener.local_addr()?;
        self.listen_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(local);
        let (tx, rx) = mpsc::channel(self.config.accept_queue_len.max(1));
        let accept_task = tokio::spawn(accept::accept_loop(
            listener.clone(),
            self.handshaker.clone(),
            self.config.clone(),
            tx,
            self.punch_waiters.clone(),
        ));
        tracing::debug!(endpoint = %Endpoint::tcp(local), peer = %self.identity.peer_id(), "tcp listener started");
        Ok(Box::new(TcpListener {
            local,
            incoming: rx,
            accept_task: accept_task.abort_handle(),
            socket: listener,
            config: self.config.connection.clone(),
            listen_addrs: self.listen_addrs.clone(),
        }))
    }

    async fn dial_stream(
        &self,
        addr: SocketAddr,
        expected: Option<PeerId>,
    ) -> Result<SecureStream> {
        let timeout = self.config.connection.handshake_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let first = tokio::time::timeout_at(deadline, self.handshake(addr, expected, true))
            .await
            .map_err(|_| Error::HandshakeTimeout(timeout))?;
        let stream = match first {
            // Both sides dialling from their listening ports at the same moment open one TCP
            // connection on which both act as TLS clients (simultaneous open): that
            // handshake fails. Try once more from an ephemeral port.
            Err(Error::Handshake(_) | Error::NotCrust | Error::ConnectionClosed)
                if self.listen_port_for(addr).is_some() =>
            {
                tracing::debug!(%addr, "handshake from the listening port failed; retrying from an ephemeral port");
                tokio::time::timeout_at(deadline, self.handshake(addr, expected, false))
                    .await
                    .map_err(|_| Error::HandshakeTimeout(timeout))??
            }
            other => other?,
        };
        tracing::debug!(peer = %stream.info.peer_id, endpoint = %Endpoint::tcp(addr), "tcp connection established");
        Ok(stream)
    }

    async fn punch_stream(&self, plan: crust_core::PunchPlan) -> Result<SecureStream> {
        self.punch_tcp(plan).await
    }
}

impl TcpTransport {
    /// One TCP connect (from the listening port when configured and `from_listen_port`),
    /// then preamble and TLS.
    async fn handshake(
        &self,
        addr: SocketAddr,
        expected: Option<PeerId>,
        from_listen_port: bool,
    ) -> Result<SecureStream> {
        let tcp = if from_listen_port {
            self.connect_tcp(addr).await?
        } else {
            self.connect_from(addr, None).await?
        };
        let local_addr = tcp.local_addr()?;
        // Pipelined preamble: ours goes out with the ClientHello, and the listener's is
        // checked as the first 8 bytes TLS reads, so no round trip is spent waiting for it.
        let secured = self.handshaker.client(tcp, expected, true).await?;
        let info = ConnectionInfo {
            peer_id: secured.peer_id,
            local_addr,
            remote_addr: addr,
            protocol: Protocol::Tcp,
            direction: Direction::Outbound,
            path: crust_core::ConnectionPath::Direct,
        };
        Ok(SecureStream {
            info,
            reader: secured.reader,
            writer: secured.writer,
            keep_alive: None,
        })
    }
}

/// A listening TCP socket; dropping it stops accepting.
struct TcpListener {
    local: SocketAddr,
    incoming: mpsc::Receiver<SecureStream>,
    accept_task: tokio::task::AbortHandle,
    /// The listening socket, shared with the accept task, so dropping the listener can stop
    /// it at once instead of when the aborted task is finally dropped.
    socket: Arc<tokio::net::TcpListener>,
    config: ConnectionConfig,
    listen_addrs: Arc<Mutex<Vec<SocketAddr>>>,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        // Stop accepting now: new connection attempts are refused from this moment on.
        let _ = socket2::SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Both);
        self.accept_task.abort();
        let mut addrs = self.listen_addrs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = addrs.iter().position(|a| *a == self.local) {
            addrs.remove(i);
        }
    }
}

#[async_trait]
impl Listener for TcpListener {
    fn local_endpoint(&self) -> Endpoint {
        Endpoint::tcp(self.local)
    }

    fn connection_config(&self) -> &ConnectionConfig {
        &self.config
    }

    async fn accept_stream(&mut self) -> Result<SecureStream> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| Error::Io(std::io::Error::other("tcp listener stopped accepting")))
    }
}

/// A socket of `addr`'s family. IPv6 sockets are IPv6-only, so an IPv4 and an IPv6
/// listener can share a port number without the kernel splitting connections between them.
fn new_socket(addr: SocketAddr) -> Result<TcpSocket> {
    Ok(if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let socket = TcpSocket::new_v6()?;
        socket2::SockRef::from(&socket).set_only_v6(true)?;
        socket
    })
}

pub(crate) fn configure_stream(stream: &TcpStream, keepalive: Option<Duration>) -> Result<()> {
    stream.set_nodelay(true)?;
    if let Some(idle) = keepalive {
        let params = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(5))
            .with_retries(4);
        socket2::SockRef::from(stream).set_tcp_keepalive(&params)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracer_needs_an_explicit_allowance_in_release_builds() {
        assert!(tracer_permitted(true, false));
        assert!(tracer_permitted(true, true));
        assert!(tracer_permitted(false, true));
        assert!(!tracer_permitted(false, false));
        // This test build has debug assertions: tracer mode starts without the allowance.
        let transport = TcpTransport::new(
            Identity::generate().expect("identity"),
            TcpConfig::default().with_tracer(true),
        );
        assert_eq!(
            transport.map(|t| t.mode()).ok(),
            cfg!(debug_assertions).then_some(TransportMode::Tracer)
        );
    }

    /// A listener shut down (as [`TcpListener`]'s drop does) while its receiver is still
    /// alive: accept fails with EINVAL, and the loop ends quietly instead of warning every
    /// 50 ms until it is aborted.
    #[tokio::test]
    async fn accept_loop_ends_when_the_listener_is_shut_down() {
        let transport = TcpTransport::new(
            Identity::generate().expect("identity"),
            TcpConfig::default(),
        )
        .expect("transport");
        let listener = Arc::new(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
        socket2::SockRef::from(&*listener)
            .shutdown(std::net::Shutdown::Both)
            .expect("shutdown");
        let (tx, _rx) = mpsc::channel(1);
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            accept::accept_loop(
                listener,
                transport.handshaker.clone(),
                transport.config.clone(),
                tx,
                punch::PunchWaiters::default(),
            ),
        )
        .await;
        assert!(ended.is_ok(), "the accept loop kept running");
    }
}
