//! Hole punching: what a transport needs to open a direct connection through NATs once a
//! common peer has coordinated the attempt (that coordination is the `crust` facade's job,
//! see `docs/protocol.md`).
//!
//! A punch is always done **by the transport, on its own sockets**: the NAT mapping that
//! peers observed is the one of the transport's listening socket (TCP dials leave from
//! the listening port, QUIC listens and dials on one UDP socket), so only that socket can
//! use it. That is why punching is a [`Transport::punch`](crate::Transport::punch) method
//! and not a separate component handing sockets around.
//!
//! Both sides call `punch` at (about) the same moment with a [`PunchPlan`] that names the
//! peer (pinned: the TLS handshake fails unless the peer proves that identity), the
//! addresses to try, who takes the client role of the handshake, and how hard to try.
//! A connection that the peer's packets open towards us (an incoming TCP connection on the
//! listening port, an incoming QUIC connection) counts as a win just like our own dial.

use std::net::SocketAddr;
use std::time::Duration;

use crate::PeerId;

/// How a connection came to be. Reported in [`ConnectionInfo`](crate::ConnectionInfo)
/// and by the facade's events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionPath {
    /// An ordinary dial or accept.
    #[default]
    Direct,
    /// A dial to an endpoint a gateway maps for the peer (UPnP IGD, NAT-PMP, PCP).
    Mapped,
    /// A UDP hole punch (reliable UDP).
    PunchedUdp,
    /// A TCP hole punch (simultaneous open).
    PunchedTcp,
    /// Through a relay: a TLS session inside a circuit the peer `via` carries for us (the
    /// connection's addresses and protocol are those of our connection to `via`).
    Relayed {
        /// The relay.
        via: crate::PeerId,
    },
}

impl ConnectionPath {
    /// A stable name for scripts and logs: `direct`, `mapped`, `punched-udp`, `punched-tcp`,
    /// `relayed`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            ConnectionPath::Direct => "direct",
            ConnectionPath::Mapped => "mapped",
            ConnectionPath::PunchedUdp => "punched-udp",
            ConnectionPath::PunchedTcp => "punched-tcp",
            ConnectionPath::Relayed { .. } => "relayed",
        }
    }
}

impl std::fmt::Display for ConnectionPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of the handshake we take on a punched connection. Both sides must agree;
/// the coordination decides (the facade: the node that asked for the punch is the client,
/// except that a symmetric-NAT side doing the birthday search is always the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchRole {
    /// We run the client side of TLS (TCP) or start the QUIC connection (UDP).
    Client,
    /// We run the server side of TLS (TCP) or wait for the peer's QUIC connection (UDP).
    Server,
}

/// How to search for an open path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PunchStrategy {
    /// Both NATs keep one mapping per socket (or there is none): send from our listening
    /// socket to each of the peer's candidates until the peer's packets arrive.
    Direct,
    /// We are behind a symmetric NAT and the peer is not: open `sockets` fresh UDP sockets
    /// and send from each towards the peer's candidates, so that one of our many new
    /// mappings is found by the peer's probes ([`PunchStrategy::BirthdayProbe`]).
    /// UDP only.
    BirthdayOpen {
        /// How many sockets to open (about 256).
        sockets: usize,
    },
    /// The peer is behind a symmetric NAT and we are not: probe ports of the peer's
    /// address from our listening socket, predicted ones first, then random ones in
    /// `port_range`. UDP only.
    BirthdayProbe {
        /// Ports to try first (predicted from a NAT that allocates sequentially).
        predicted: Vec<u16>,
        /// How many random ports to probe at most (about 1,000).
        probes: usize,
        /// The range random ports are drawn from (inclusive).
        port_range: (u16, u16),
    },
}

/// One side of a coordinated hole punch (see the [module docs](self)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PunchPlan {
    /// The peer; the connection must authenticate as exactly this identity.
    pub peer: PeerId,
    /// Addresses of the peer to send to, best first (observed external endpoints, mapped
    /// ones, LAN addresses). For [`PunchStrategy::BirthdayProbe`], the peer's public IP
    /// comes from the first candidate.
    pub candidates: Vec<SocketAddr>,
    /// Our side of the handshake.
    pub role: PunchRole,
    /// How to search.
    pub strategy: PunchStrategy,
    /// The nonce our probe datagrams carry (UDP). Exchanged over the authenticated
    /// coordination, so the peer counts only our probes, not a stranger's.
    pub local_nonce: u64,
    /// The nonce the peer's probe datagrams carry: only probes with it open the path (a
    /// third party that does not know it cannot make us adopt its address).
    pub peer_nonce: u64,
    /// How long to wait before sending the first punch packet (so that both sides start
    /// together). The transport is ready for the peer's packets and connections from the
    /// moment `punch` is called: what arrives early counts.
    pub start_delay: Duration,
    /// The attempt gives up after this long (counted from the call, delay included).
    pub timeout: Duration,
    /// Time between two rounds of punch packets (probe datagrams or connect attempts).
    pub interval: Duration,
    /// Punch packets sent at most per second, all sockets and candidates together.
    pub max_packets_per_second: u32,
    /// Punch packets sent at most in the whole attempt.
    pub max_packets: usize,
}

impl PunchPlan {
    /// A plan with the default pace: 5 s, a round every 50 ms, at most 1,000 packets per
    /// second and 4,000 in all. `nonces` is `(local_nonce, peer_nonce)`.
    pub fn new(
        peer: PeerId,
        candidates: Vec<SocketAddr>,
        role: PunchRole,
        strategy: PunchStrategy,
        nonces: (u64, u64),
    ) -> Self {
        PunchPlan {
            peer,
            candidates,
            role,
            strategy,
            local_nonce: nonces.0,
            peer_nonce: nonces.1,
            start_delay: Duration::ZERO,
            timeout: Duration::from_secs(5),
            interval: Duration::from_millis(50),
            max_packets_per_second: 1_000,
            max_packets: 4_000,
        }
    }

    /// Sets [`PunchPlan::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`PunchPlan::start_delay`].
    pub fn with_start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// Sets [`PunchPlan::interval`] (at least 1 ms).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets [`PunchPlan::max_packets_per_second`] (at least 1) and
    /// [`PunchPlan::max_packets`].
    pub fn with_packet_limits(mut self, per_second: u32, total: usize) -> Self {
        self.max_packets_per_second = per_second.max(1);
        self.max_packets = total;
        self
    }
}
