//! The three plug-in points of Crust: [`Transport`], [`Discovery`] and [`NatTraverser`].
//!
//! All three are object safe, so the `crust` facade (or your own stack) holds them as
//! `Box<dyn Transport>`, `Box<dyn Discovery>` and `Box<dyn NatTraverser>`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Connection, ConnectionConfig, Endpoint, PeerId, Protocol, Result, SecureStream};

/// A way to reach peers: listens for and dials authenticated connections.
///
/// Implementors do the transport-specific work (sockets, the clear-text preamble, the TLS or
/// QUIC handshake, identity checks) in [`Transport::dial_stream`] and
/// [`Listener::accept_stream`]; `crust-core` turns the authenticated stream into a
/// message-oriented [`Connection`], so framing and limits are the same on every transport.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The protocol this transport speaks.
    fn protocol(&self) -> Protocol;

    /// Our own identity, as peers will see it.
    fn local_peer_id(&self) -> PeerId;

    /// Limits applied to every connection of this transport.
    fn connection_config(&self) -> &ConnectionConfig;

    /// Starts listening on `addr` (port 0 picks a free port).
    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>>;

    /// Connects to `addr` and authenticates the peer, returning the raw authenticated stream.
    ///
    /// With `expected` set, the handshake fails with [`Error::PeerIdMismatch`](crate::Error)
    /// unless the peer proves it holds that identity's key.
    async fn dial_stream(&self, addr: SocketAddr, expected: Option<PeerId>)
    -> Result<SecureStream>;

    /// Connects to `addr`, authenticates the peer and returns a message-oriented connection.
    async fn dial(&self, addr: SocketAddr, expected: Option<PeerId>) -> Result<Connection> {
        let stream = self.dial_stream(addr, expected).await?;
        Ok(Connection::new(stream, self.connection_config()))
    }

    /// The [probe datagrams](crate::probe) that reach the socket this transport listens on
    /// and dials from (NAT filtering tests, hole punching), for transports on a datagram
    /// socket. Available once `listen` bound that socket, and taken once. The default:
    /// `None` (a stream transport has no such socket).
    fn take_probe_receiver(&self) -> Option<crate::probe::ProbeReceiver> {
        None
    }

    /// Runs our side of a coordinated hole punch (see [`crate::punch`]) from the socket we
    /// listen on, and returns the connection authenticated as `plan.peer`, whichever side's
    /// packets opened it. Bounded by the plan's timeout and packet limits; fails with
    /// [`Error::PunchTimeout`](crate::Error::PunchTimeout) when no path opened. The
    /// default: [`Error::Unsupported`](crate::Error::Unsupported).
    async fn punch_stream(&self, plan: crate::punch::PunchPlan) -> Result<SecureStream> {
        let _ = plan;
        Err(crate::Error::Unsupported(format!(
            "{} transport does not punch holes",
            self.protocol()
        )))
    }

    /// [`Transport::punch_stream`], returning a message-oriented connection.
    async fn punch(&self, plan: crate::punch::PunchPlan) -> Result<Connection> {
        let stream = self.punch_stream(plan).await?;
        Ok(Connection::new(stream, self.connection_config()))
    }
}

/// A listening socket of a [`Transport`].
///
/// Handshakes of incoming connections run concurrently and are bounded in time, so a slow
/// or hostile peer cannot hold up others; peers that fail the handshake are dropped and
/// logged, never returned.
#[async_trait]
pub trait Listener: Send + fmt::Debug {
    /// The endpoint we listen on (with the real port, never 0).
    fn local_endpoint(&self) -> Endpoint;

    /// Limits applied to accepted connections.
    fn connection_config(&self) -> &ConnectionConfig;

    /// Waits for the next authenticated incoming stream.
    ///
    /// Errors only when the listener itself can no longer accept.
    async fn accept_stream(&mut self) -> Result<SecureStream>;

    /// Waits for the next authenticated incoming connection.
    async fn accept(&mut self) -> Result<Connection> {
        let stream = self.accept_stream().await?;
        Ok(Connection::new(stream, self.connection_config()))
    }
}

/// A peer worth trying to connect to, as found by a [`Discovery`] source.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCandidate {
    /// The peer's identity, when the source knows it (then dials can insist on it).
    pub peer_id: Option<PeerId>,
    /// Where the peer may be reached, best first.
    pub endpoints: Vec<Endpoint>,
}

impl PeerCandidate {
    /// A candidate at the given endpoints.
    pub fn new(peer_id: Option<PeerId>, endpoints: Vec<Endpoint>) -> Self {
        PeerCandidate { peer_id, endpoints }
    }
}

/// A source of candidate peers over time: a bootstrap cache, LAN beacons, gossip.
#[async_trait]
pub trait Discovery: Send + fmt::Debug {
    /// A short name for logs and events, such as `"beacon"` or `"bootstrap-cache"`.
    fn name(&self) -> &str;

    /// Waits for the next candidates. `None` means this source has nothing to offer for
    /// now; the owner keeps the source (to report connections to it) and asks again after
    /// [`Discovery::all_peers_lost`].
    ///
    /// Must be cancel safe: the owner may drop the future while it waits (to report a
    /// connection in between) and call again.
    async fn next_candidates(&mut self) -> Option<Vec<PeerCandidate>>;

    /// Tells the source we reached `peer` directly at `endpoint` (we dialled it and it
    /// answered; a bootstrap cache remembers such peers for the next session). Called for
    /// every direct connection, also ones the source did not propose. The default does
    /// nothing.
    fn direct_connection(&mut self, peer: PeerId, endpoint: Endpoint) {
        let _ = (peer, endpoint);
    }

    /// Tells the source that we are connected to no peer any more (a bootstrap starts over).
    /// The default does nothing.
    fn all_peers_lost(&mut self) {}
}

/// The socket a successful hole punch leaves open, ready to hand to a transport.
#[derive(Debug)]
#[non_exhaustive]
pub enum PunchedSocket {
    /// A UDP socket with an open NAT mapping towards the peer (hand it to the rUDP transport).
    Udp(std::net::UdpSocket),
    /// A TCP stream connected to the peer by simultaneous open.
    Tcp(std::net::TcpStream),
}

/// A hole-punch request: what we know about the peer, coordinated through a peer both
/// sides already know.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PunchRequest {
    /// The peer to reach.
    pub peer: PeerId,
    /// The protocol to punch for.
    pub protocol: Protocol,
    /// Our local address to punch from (the transport's listening port).
    pub local: SocketAddr,
    /// The peer's candidate addresses (observed external ones first).
    pub peer_candidates: Vec<SocketAddr>,
    /// How long to keep trying.
    pub timeout: Duration,
}

impl PunchRequest {
    /// A request to punch towards `peer` from `local`.
    pub fn new(
        peer: PeerId,
        protocol: Protocol,
        local: SocketAddr,
        peer_candidates: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Self {
        PunchRequest {
            peer,
            protocol,
            local,
            peer_candidates,
            timeout,
        }
    }
}

/// Makes a node reachable from behind NATs: port mappings (UPnP IGD), external address
/// discovery and hole punching.
#[async_trait]
pub trait NatTraverser: Send + Sync + fmt::Debug {
    /// A short name for logs and events, such as `"upnp"`.
    fn name(&self) -> &str;

    /// Externally reachable endpoints for a local listening endpoint (e.g. a UPnP mapping).
    /// An empty list means this traverser could not obtain one.
    async fn external_endpoints(&self, local: Endpoint) -> Result<Vec<Endpoint>>;

    /// Performs our side of a coordinated hole punch and returns the opened socket.
    async fn punch(&self, request: PunchRequest) -> Result<PunchedSocket>;
}
