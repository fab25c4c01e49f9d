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
mod config;
mod punch;
mod secure;

pub use config::{TcpConfig, tracer_permitted};

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crust_core::wire::TransportMode;
use crust_core::{
    ConnectionConfig, ConnectionInfo, Direction, Endpoint, Error, Identity, Listener, PeerId,
    Protocol, Result, SecureStream, Transport,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

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
