//! Configuration of a [`Service`](crate::Service).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crust_core::{ConnectionConfig, Identity};

/// Limits on what one peer may send us, checked per connection.
///
/// Every limit is a token bucket: a peer may send `burst` at once and then `per_sec` on
/// average.
///
/// # Why application messages are not limited by default
/// Memory and CPU are protected without a rate limit: a connection's reader holds at most
/// one batch and one message, the event queue is bounded in count and bytes
/// ([`ServiceConfig::event_queue_len`], [`ServiceConfig::event_queue_bytes`]), and when the
/// application does not keep up the readers stop reading, so TCP's and QUIC's flow control
/// slow the sender down. A peer cannot make us buffer more than those bounds however fast
/// it sends, and every message it sends is one the application asked to read. An honest
/// bulk transfer at full speed is therefore never a flood (a byte limit used to ban a
/// 1 GiB transfer at loopback speed, so users turned protection off).
///
/// # What is limited by default: control frames
/// What a peer can make us do beyond what the application reads is control work: pings we
/// answer, frames of kinds nobody claimed that we skip, plug-in and traversal messages. An
/// honest peer sends a few per second (a ping every 2 s, a handful per hole punch, what
/// plug-ins exchange); the default allows 1 000 per second sustained and a burst of 10 000,
/// and a peer that keeps above that is reported ([`FloodLimit::ControlFrames`](crate::FloodLimit::ControlFrames)).
///
/// Applications that want message limits too (a chat that expects a few messages per
/// second per peer, say) set them with [`RateLimit::messages`] or [`RateLimit::bytes`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Sustained application messages per second. Default unlimited.
    pub messages_per_sec: f64,
    /// Message burst. Default unlimited.
    pub burst_messages: f64,
    /// Sustained application bytes per second. Default unlimited.
    pub bytes_per_sec: f64,
    /// Byte burst. Default unlimited.
    pub burst_bytes: f64,
    /// Sustained control frames (every frame that is not part of an application message)
    /// per second. Default 1 000.
    pub control_frames_per_sec: f64,
    /// Control frame burst. Default 10 000.
    pub burst_control_frames: f64,
}

/// Default sustained control frames per second (see [`RateLimit`]).
const CONTROL_FRAMES_PER_SEC: f64 = 1_000.0;
/// Default control frame burst.
const BURST_CONTROL_FRAMES: f64 = 10_000.0;

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            messages_per_sec: f64::INFINITY,
            burst_messages: f64::INFINITY,
            bytes_per_sec: f64::INFINITY,
            burst_bytes: f64::INFINITY,
            control_frames_per_sec: CONTROL_FRAMES_PER_SEC,
            burst_control_frames: BURST_CONTROL_FRAMES,
        }
    }
}

impl RateLimit {
    /// No limit at all, control frames included.
    pub fn unlimited() -> Self {
        RateLimit {
            control_frames_per_sec: f64::INFINITY,
            burst_control_frames: f64::INFINITY,
            ..RateLimit::default()
        }
    }

    /// A limit of `per_sec` messages per second with a burst of `burst` messages; bytes
    /// unlimited, control frames as by default.
    pub fn messages(per_sec: f64, burst: f64) -> Self {
        RateLimit {
            messages_per_sec: per_sec,
            burst_messages: burst,
            ..RateLimit::default()
        }
    }

    /// A limit of `per_sec` bytes per second with a burst of `burst` bytes; message count
    /// unlimited, control frames as by default.
    pub fn bytes(per_sec: f64, burst: f64) -> Self {
        RateLimit {
            bytes_per_sec: per_sec,
            burst_bytes: burst,
            ..RateLimit::default()
        }
    }

    /// This limit with `per_sec` control frames per second and a burst of `burst`.
    pub fn with_control_frames(mut self, per_sec: f64, burst: f64) -> Self {
        self.control_frames_per_sec = per_sec;
        self.burst_control_frames = burst;
        self
    }
}

/// What to do with a peer that exceeds the [`RateLimit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FloodAction {
    /// Only raise [`Event::FloodDetected`](crate::Event::FloodDetected); keep the connection.
    Report,
    /// Raise the event, disconnect the peer and ban it for the rest of the session.
    Ban,
}

/// Configuration of a [`Service`](crate::Service). Every field has a documented default;
/// `ServiceConfig::default()` listens on all IPv4 interfaces on random ports.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The node identity. Default: `None`, a fresh identity for this session.
    pub identity: Option<Identity>,
    /// Address to listen on. Default `0.0.0.0` (all IPv4 interfaces).
    pub listen_ip: IpAddr,
    /// A second, IPv6 address to listen on beside [`ServiceConfig::listen_ip`] (on the same
    /// port numbers when fixed ports are configured). Default `Some(::)`: every node is
    /// dual-stack; global IPv6 addresses then appear in `our_endpoints()`. A machine without
    /// IPv6 only logs a warning. `None` in [`ServiceConfig::loopback`].
    pub listen_ipv6: Option<IpAddr>,
    /// TCP listening port; 0 picks a random free port. Default 0.
    pub tcp_port: u16,
    /// Reliable-UDP listening port; 0 picks a random free port. Default 0.
    pub rudp_port: u16,
    /// Use TCP at all. Default `true`.
    pub enable_tcp: bool,
    /// Use reliable UDP at all. Default `true`.
    pub enable_rudp: bool,
    /// Report loopback addresses in [`Service::our_endpoints`](crate::Service::our_endpoints)
    /// (for tests and single-machine demos). Default `false`.
    pub include_loopback: bool,
    /// Message size, send queue and handshake limits of every connection.
    /// Default [`ConnectionConfig::default`] (16 MiB messages, 10 s handshakes).
    pub connection: ConnectionConfig,
    /// How long a TCP attempt runs alone before reliable UDP is tried in parallel
    /// (happy eyeballs). Default 250 ms.
    pub tcp_head_start: Duration,
    /// Upper bound for one `connect()` call, all attempts included. Default 20 s.
    pub connect_timeout: Duration,
    /// Connect by `PeerId` ([`Service::connect_peer`](crate::Service::connect_peer),
    /// [`Service::connect_to`](crate::Service::connect_to)) punches a hole through NATs,
    /// introduced by a connected peer, when direct dials do not answer. Default `true`.
    pub hole_punching: bool,
    /// How long direct dials run alone before a hole punch starts beside them (at once
    /// when they all failed, or when no endpoint is known). Default 1 s.
    pub punch_head_start: Duration,
    /// Per-peer inbound limits. Default [`RateLimit::default`].
    pub rate_limit: RateLimit,
    /// What to do with peers over the limit. Default [`FloodAction::Ban`].
    pub flood_action: FloodAction,
    /// Events buffered for the application before readers wait (backpressure, never loss).
    /// Default 4096; at least 1. Events caused by the application's own calls (`connect`,
    /// `disconnect`, `ban`) never wait and may exceed it.
    pub event_queue_len: usize,
    /// Message payload bytes buffered for the application before readers wait. Default
    /// 64 MiB; at least 1. One message always fits into an empty queue, whatever its size
    /// (up to the connection's `max_message_size`). Together with the per-connection bound
    /// (a reader holds at most one batch of under 256 KiB plus one message, or one message
    /// being received), this bounds the memory peers can make us hold however fast they
    /// send: what the application does not take slows the senders down instead.
    pub event_queue_bytes: usize,
    /// Relayed connections: whether we relay for others (within limits), use relays and
    /// accept relayed connections. Default [`RelayConfig::default`](crate::RelayConfig):
    /// all three, at most 64 circuits (8 per peer), 1 GiB and 1 hour per circuit.
    pub relay: crate::RelayConfig,
    /// Peer exchange with connected peers (a node that knows one peer comes to know many).
    /// Default [`GossipConfig::default`](crate::GossipConfig): on, a push of up to 16
    /// records to each peer every 30 s, at most 20 messages per peer per minute accepted
    /// (burst 10) and 256 peers learned per source. While on, the built-in gossip owns
    /// frame kind 4 (`PeerExchange`): plug-ins cannot claim it.
    pub gossip: crate::GossipConfig,
    /// Most simultaneous peers; further connections are refused. Default 10 000.
    pub max_peers: usize,
    /// How often every connection is pinged (round-trip time, liveness). Default 2 s.
    pub ping_interval: Duration,
    /// A peer from which nothing was heard for this long although we pinged it is lost
    /// ([`LostReason::PingTimeout`](crate::LostReason::PingTimeout)). Default 8 s. Time
    /// during which our application did not take events does not count against the peer,
    /// but a peer's own timeout does count ours: an application that stops taking events
    /// for longer than its peers' ping timeout is dropped by them.
    pub ping_timeout: Duration,
    /// Peers the address book remembers (least recently seen evicted first). Default 4096.
    pub address_book_capacity: usize,
    /// An external address peers report is believed once observers in this many distinct
    /// networks (IPv4 /24, IPv6 /48) agree (identities are free; networks are not).
    /// Default 2.
    pub min_observer_networks: usize,
    /// Bootstrap from hard-coded contacts and the cache of peers reached directly in
    /// earlier sessions (see `crust-bootstrap`): started by `start_listening()`, it keeps
    /// trying with backoff until a peer answers, and starts over when every peer is lost.
    /// Default `None` (no bootstrap).
    pub bootstrap: Option<crust_bootstrap::BootstrapConfig>,
    /// Find peers on the local network by UDP broadcast (see `crust-beacon`): started by
    /// `start_listening()`, it announces our endpoints and connects to the peers it hears.
    /// Default `None` (no beacon).
    pub beacon: Option<crust_beacon::BeaconConfig>,
    /// Ask the home router to map our listening ports (PCP, NAT-PMP or UPnP IGD, see
    /// `crust-nat`): started by `start_listening()`, mapped endpoints lead
    /// `our_endpoints()` and are removed again on shutdown. No gateway is a normal outcome
    /// (one `PortMappingUnavailable` event). Default `None` (off: it talks to the default
    /// gateway of the machine, which tests and single-machine demos must not do);
    /// `crust-peer` turns it on unless `--loopback` or `--no-port-mapping` is given.
    pub port_mapping: Option<crust_nat::PortMapConfig>,
    /// **Tracer mode** for TCP, for debugging (see `crust_tcp::TcpConfig::tracer`): TCP
    /// frames travel **unencrypted** after an authenticated handshake, so a capture with
    /// `tools/wireshark/crust.lua` shows them. Peers must be tracer nodes too: a tracer node
    /// and a normal node refuse each other's TCP connections (`ModeMismatch`). Reliable UDP
    /// stays encrypted (use [`ServiceConfig::key_log_file`] to see it, or disable it).
    /// Logged as a warning; refused by [`Service::new`](crate::Service::new) in a release
    /// build unless [`ServiceConfig::allow_tracer_in_release`] is set. Default `false`.
    pub tracer: bool,
    /// Lets a release build run [`ServiceConfig::tracer`]. Default `false`.
    pub allow_tracer_in_release: bool,
    /// Append the TLS secrets of every TCP and QUIC session to this file (`SSLKEYLOGFILE`
    /// format), so Wireshark (`tls.keylog_file`) can decrypt captures of them.
    ///
    /// **Security warning:** anyone who holds this file and a capture reads the traffic.
    /// For debugging only; delete the file afterwards. Default `None` (the `SSLKEYLOGFILE`
    /// environment variable is not read).
    pub key_log_file: Option<std::path::PathBuf>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            identity: None,
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            listen_ipv6: Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            tcp_port: 0,
            rudp_port: 0,
            enable_tcp: true,
            enable_rudp: true,
            include_loopback: false,
            connection: ConnectionConfig::default(),
            tcp_head_start: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(20),
            hole_punching: true,
            punch_head_start: Duration::from_secs(1),
            rate_limit: RateLimit::default(),
            flood_action: FloodAction::Ban,
            event_queue_len: 4096,
            event_queue_bytes: 64 * 1024 * 1024,
            relay: crate::RelayConfig::default(),
            gossip: crate::GossipConfig::default(),
            max_peers: 10_000,
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(8),
            address_book_capacity: 4096,
            min_observer_networks: 2,
            bootstrap: None,
            beacon: None,
            port_mapping: None,
            tracer: false,
            allow_tracer_in_release: false,
            key_log_file: None,
        }
    }
}

impl ServiceConfig {
    /// A config for tests and demos on one machine: listens on 127.0.0.1 and reports
    /// loopback endpoints.
    pub fn loopback() -> Self {
        ServiceConfig {
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            listen_ipv6: None,
            include_loopback: true,
            ..ServiceConfig::default()
        }
    }

    /// Sets [`ServiceConfig::identity`].
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sets [`ServiceConfig::listen_ip`].
    pub fn with_listen_ip(mut self, ip: IpAddr) -> Self {
        self.listen_ip = ip;
        self
    }

    /// Sets [`ServiceConfig::listen_ipv6`] (`None`: IPv4 only).
    pub fn with_listen_ipv6(mut self, ip: Option<IpAddr>) -> Self {
        self.listen_ipv6 = ip;
        self
    }

    /// Sets the TCP and reliable-UDP listening ports (0 = random).
    pub fn with_ports(mut self, tcp: u16, rudp: u16) -> Self {
        self.tcp_port = tcp;
        self.rudp_port = rudp;
        self
    }

    /// Enables or disables TCP.
    pub fn with_tcp(mut self, enabled: bool) -> Self {
        self.enable_tcp = enabled;
        self
    }

    /// Sets [`ServiceConfig::tracer`] (TCP frames in clear text, for debugging).
    pub fn with_tracer(mut self, enabled: bool) -> Self {
        self.tracer = enabled;
        self
    }

    /// Sets [`ServiceConfig::allow_tracer_in_release`].
    pub fn with_tracer_allowed_in_release(mut self, allowed: bool) -> Self {
        self.allow_tracer_in_release = allowed;
        self
    }

    /// Sets [`ServiceConfig::key_log_file`] (TLS secrets for Wireshark, for debugging).
    pub fn with_key_log_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.key_log_file = Some(path.into());
        self
    }

    /// Enables or disables reliable UDP.
    pub fn with_rudp(mut self, enabled: bool) -> Self {
        self.enable_rudp = enabled;
        self
    }

    /// Sets [`ServiceConfig::include_loopback`].
    pub fn with_loopback_endpoints(mut self, include: bool) -> Self {
        self.include_loopback = include;
        self
    }

    /// Sets [`ServiceConfig::connection`].
    pub fn with_connection_config(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets [`ServiceConfig::tcp_head_start`].
    pub fn with_tcp_head_start(mut self, head_start: Duration) -> Self {
        self.tcp_head_start = head_start;
        self
    }

    /// Sets [`ServiceConfig::hole_punching`].
    pub fn with_hole_punching(mut self, enabled: bool) -> Self {
        self.hole_punching = enabled;
        self
    }

    /// Sets [`ServiceConfig::punch_head_start`].
    pub fn with_punch_head_start(mut self, head_start: Duration) -> Self {
        self.punch_head_start = head_start;
        self
    }

    /// Sets [`ServiceConfig::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ServiceConfig::rate_limit`] and [`ServiceConfig::flood_action`].
    pub fn with_rate_limit(mut self, limit: RateLimit, action: FloodAction) -> Self {
        self.rate_limit = limit;
        self.flood_action = action;
        self
    }

    /// Sets [`ServiceConfig::event_queue_len`] (at least 1).
    pub fn with_event_queue_len(mut self, len: usize) -> Self {
        self.event_queue_len = len.max(1);
        self
    }

    /// Sets [`ServiceConfig::relay`].
    pub fn with_relay(mut self, relay: crate::RelayConfig) -> Self {
        self.relay = relay;
        self
    }

    /// Sets [`ServiceConfig::gossip`].
    pub fn with_gossip(mut self, gossip: crate::GossipConfig) -> Self {
        self.gossip = gossip;
        self
    }

    /// Sets [`ServiceConfig::event_queue_bytes`] (at least 1).
    pub fn with_event_queue_bytes(mut self, bytes: usize) -> Self {
        self.event_queue_bytes = bytes.max(1);
        self
    }

    /// Sets [`ServiceConfig::bootstrap`]; its listening ports, when set, override
    /// [`ServiceConfig::tcp_port`] and [`ServiceConfig::rudp_port`].
    pub fn with_bootstrap(mut self, bootstrap: crust_bootstrap::BootstrapConfig) -> Self {
        if let Some(port) = bootstrap.tcp_port {
            self.tcp_port = port;
        }
        if let Some(port) = bootstrap.rudp_port {
            self.rudp_port = port;
        }
        self.bootstrap = Some(bootstrap);
        self
    }

    /// Sets [`ServiceConfig::port_mapping`].
    pub fn with_port_mapping(mut self, port_mapping: crust_nat::PortMapConfig) -> Self {
        self.port_mapping = Some(port_mapping);
        self
    }

    /// Sets [`ServiceConfig::beacon`].
    pub fn with_beacon(mut self, beacon: crust_beacon::BeaconConfig) -> Self {
        self.beacon = Some(beacon);
        self
    }

    /// Sets [`ServiceConfig::ping_interval`] and [`ServiceConfig::ping_timeout`] (the
    /// timeout is raised to at least twice the interval).
    pub fn with_ping(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ping_interval = interval;
        self.ping_timeout = timeout.max(interval * 2);
        self
    }

    /// Sets [`ServiceConfig::address_book_capacity`].
    pub fn with_address_book_capacity(mut self, capacity: usize) -> Self {
        self.address_book_capacity = capacity;
        self
    }

    /// Sets [`ServiceConfig::min_observer_networks`] (at least 1).
    pub fn with_min_observer_networks(mut self, networks: usize) -> Self {
        self.min_observer_networks = networks.max(1);
        self
    }

    /// Sets [`ServiceConfig::max_peers`].
    pub fn with_max_peers(mut self, max: usize) -> Self {
        self.max_peers = max;
        self
    }
}
