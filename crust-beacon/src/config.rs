//! [`BeaconConfig`]: ports, timing and bounds of a beacon.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The beacon port every node shares by default.
pub const DEFAULT_PORT: u16 = 5483;

/// Settings of a [`Beacon`](crate::Beacon) and its [`BeaconState`](crate::BeaconState).
///
/// Every field has a documented default ([`BeaconConfig::default`]) and a builder method.
///
/// ```
/// use std::time::Duration;
/// use crust_beacon::BeaconConfig;
/// let config = BeaconConfig::default()
///     .with_port(0)
///     .with_broadcast_addrs(vec!["127.255.255.255".parse()?])
///     .with_announce_interval(Duration::from_secs(1));
/// assert_eq!(config.max_peers, 256);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BeaconConfig {
    /// The UDP port beacons are sent to and received on. Default [`DEFAULT_PORT`] (5483).
    /// `0` binds a free port (tests; see [`Beacon::beacon_acceptor_port`](crate::Beacon::beacon_acceptor_port))
    /// and then sends to that port.
    pub port: u16,
    /// The local address the beacon socket binds. Default `0.0.0.0` (needed to receive
    /// broadcasts).
    pub bind_ip: IpAddr,
    /// Where announcements go, each at [`port`](Self::port). Default `[255.255.255.255]`.
    /// Directed broadcast addresses (`192.168.1.255`) or, for tests, unicast or loopback
    /// broadcast (`127.255.255.255`) addresses work as well.
    pub broadcast_addrs: Vec<IpAddr>,
    /// The mean time between two announcements; each actual gap is jittered uniformly by
    /// ±25 %. Default 5 s.
    pub announce_interval: Duration,
    /// The least time between two of our announcements, also when a new peer or new
    /// endpoints ask for an early one. Default 1 s.
    pub min_announce_gap: Duration,
    /// How long a peer is remembered after its last beacon. Default 20 s.
    pub peer_ttl: Duration,
    /// The most peers remembered; beacons of further peers are ignored until some expire.
    /// Default 256.
    pub max_peers: usize,
    /// The most sender addresses tracked for rate limiting; datagrams from further
    /// addresses are dropped while the table is full of active senders. Default 1024.
    pub max_senders: usize,
    /// Beacons accepted per second from one sender IP address (also the burst size);
    /// the rest are dropped. `0` counts as 1. Default 10.
    pub sender_rate: u32,
}

impl Default for BeaconConfig {
    fn default() -> Self {
        BeaconConfig {
            port: DEFAULT_PORT,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            broadcast_addrs: vec![IpAddr::V4(Ipv4Addr::BROADCAST)],
            announce_interval: Duration::from_secs(5),
            min_announce_gap: Duration::from_secs(1),
            peer_ttl: Duration::from_secs(20),
            max_peers: 256,
            max_senders: 1024,
            sender_rate: 10,
        }
    }
}

impl BeaconConfig {
    /// Sets [`port`](Self::port).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets [`bind_ip`](Self::bind_ip).
    pub fn with_bind_ip(mut self, ip: IpAddr) -> Self {
        self.bind_ip = ip;
        self
    }

    /// Sets [`broadcast_addrs`](Self::broadcast_addrs).
    pub fn with_broadcast_addrs(mut self, addrs: Vec<IpAddr>) -> Self {
        self.broadcast_addrs = addrs;
        self
    }

    /// Sets [`announce_interval`](Self::announce_interval).
    pub fn with_announce_interval(mut self, interval: Duration) -> Self {
        self.announce_interval = interval;
        self
    }

    /// Sets [`min_announce_gap`](Self::min_announce_gap).
    pub fn with_min_announce_gap(mut self, gap: Duration) -> Self {
        self.min_announce_gap = gap;
        self
    }

    /// Sets [`peer_ttl`](Self::peer_ttl).
    pub fn with_peer_ttl(mut self, ttl: Duration) -> Self {
        self.peer_ttl = ttl;
        self
    }

    /// Sets [`max_peers`](Self::max_peers).
    pub fn with_max_peers(mut self, max: usize) -> Self {
        self.max_peers = max;
        self
    }

    /// Sets [`max_senders`](Self::max_senders).
    pub fn with_max_senders(mut self, max: usize) -> Self {
        self.max_senders = max;
        self
    }

    /// Sets [`sender_rate`](Self::sender_rate).
    pub fn with_sender_rate(mut self, per_second: u32) -> Self {
        self.sender_rate = per_second;
        self
    }
}
