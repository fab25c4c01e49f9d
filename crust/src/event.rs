//! Events a [`Service`](crate::Service) hands to the application.

use bytes::Bytes;
use crust_core::{ConnectionPath, Direction, Endpoint, PeerId, Protocol};

use crate::reachability::Reachability;
use crate::reason::{ConnectFailure, FloodLimit, LostReason};

/// Something happened that the application may want to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A listener is accepting connections on `endpoint`.
    ListenerStarted {
        /// The endpoint listened on (the bound address; see `our_endpoints()` for reachable ones).
        endpoint: Endpoint,
    },
    /// A peer is connected and authenticated.
    NewPeer {
        /// Who.
        peer: PeerId,
        /// The peer's address.
        endpoint: Endpoint,
        /// Whether we dialled or accepted.
        direction: Direction,
        /// The transport the connection uses.
        protocol: Protocol,
        /// How the connection was made: a dial or accept, a mapped port, a hole punch.
        path: ConnectionPath,
    },
    /// A relayed connection to `peer` was replaced by a connection of our own (a dial or a
    /// hole punch) without losing, duplicating or reordering a message; the relay's circuit
    /// is released once the relayed connection has drained.
    ConnectionUpgraded {
        /// Who.
        peer: PeerId,
        /// The peer's endpoint on the new connection.
        endpoint: Endpoint,
        /// Direction of the new connection.
        direction: Direction,
        /// Its transport.
        protocol: Protocol,
        /// How it was made.
        path: ConnectionPath,
    },
    /// The connection to a peer ended.
    LostPeer {
        /// Who.
        peer: PeerId,
        /// Why (typed; its `Display` says it in words).
        reason: LostReason,
    },
    /// A connection to `peer` ended before the peer confirmed the last `count` of the
    /// `sent` messages [`Service::send`](crate::Service::send) (or `send_many`) accepted on
    /// it: they may not have arrived. Messages stay in order on a connection, so these are
    /// exactly the last `count` sent on it; every earlier one was confirmed. "Confirmed"
    /// means the peer's Crust received the message and queued it for its application, not
    /// that the application processed it.
    ///
    /// Emitted before the [`Event::LostPeer`] of that end, except after
    /// [`Service::disconnect`](crate::Service::disconnect), whose `LostPeer` comes at once
    /// while the graceful close (which normally confirms everything) runs on. Also emitted
    /// while shutting down. A connection that ends with everything confirmed reports
    /// nothing.
    MessagesUnconfirmed {
        /// The peer the messages were for.
        peer: PeerId,
        /// How many of the last messages sent on the connection were not confirmed.
        count: u64,
        /// How many messages were sent on the connection in all.
        sent: u64,
    },
    /// A message from a peer.
    Message {
        /// The sender.
        peer: PeerId,
        /// The message.
        payload: Bytes,
    },
    /// A background connection attempt (see `Service::connect_in_background`) failed.
    ConnectFailed {
        /// The endpoints that were tried.
        endpoints: Vec<Endpoint>,
        /// The peer we dialled for, when known.
        peer: Option<PeerId>,
        /// Why (typed; its `Display` says it in words).
        reason: ConnectFailure,
    },
    /// Two connections to the same peer existed (simultaneous dial); the one dialled by the
    /// smaller `PeerId` was kept on both sides and the other closed after draining.
    DuplicateConnectionClosed {
        /// The peer.
        peer: PeerId,
        /// Direction (from our side) of the connection that was kept.
        kept: Direction,
    },
    /// A peer exceeded the configured rate limit.
    FloodDetected {
        /// Who.
        peer: PeerId,
        /// Which limit.
        limit: FloodLimit,
        /// Whether the peer was banned as a consequence.
        banned: bool,
    },
    /// A connection to a peer found by a discovery source (bootstrap cache or config, LAN
    /// beacon, …) succeeded. Also reported to the source as a direct connection.
    BootstrapConnected {
        /// Who.
        peer: PeerId,
        /// The endpoint we reached it at.
        endpoint: Endpoint,
        /// The discovery source's name.
        source: String,
    },
    /// A peer told us the address at which it sees us (a hint for NAT traversal; peers can
    /// lie, so count agreeing peers before trusting it).
    AddressObserved {
        /// Who reported it.
        peer: PeerId,
        /// Our address as the peer sees it, with the connection's protocol.
        endpoint: Endpoint,
        /// The connection's direction from our side: `Inbound` means the peer dialled us, so
        /// this is an address at which we were reachable; `Outbound` means it is the
        /// (possibly NAT-mapped) source address of a connection we made.
        direction: Direction,
    },
    /// What we know about how this node can be reached changed (NAT type, external
    /// endpoints); see [`Service::reachability`](crate::Service::reachability).
    ReachabilityChanged {
        /// The new state.
        reachability: Reachability,
    },
    /// A gateway maps one of our listening ports (or renewed the mapping at another
    /// external endpoint): peers anywhere can dial `external`.
    PortMapped {
        /// Our listening endpoint.
        local: Endpoint,
        /// Where the gateway forwards from.
        external: Endpoint,
        /// How: `"pcp"`, `"natpmp"` or `"upnp"`.
        method: &'static str,
    },
    /// A port mapping is gone (the port mapper tries to re-create it).
    PortMappingLost {
        /// The endpoint that no longer forwards to us.
        external: Endpoint,
        /// Why, in words.
        reason: String,
    },
    /// No gateway offers port mapping (reported once; the mapper keeps probing quietly).
    PortMappingUnavailable,
    /// The gateway's external address changed.
    ExternalAddressChanged {
        /// The old address.
        old: std::net::IpAddr,
        /// The new one.
        new: std::net::IpAddr,
    },
    /// A peer was banned for the rest of the session.
    PeerBanned {
        /// Who.
        peer: PeerId,
    },
    /// Gossip from a connected peer taught us peers the address book did not know (as
    /// hints: connecting to one by its `PeerId` makes its TLS handshake prove the id).
    PeersLearned {
        /// Who told us (connected, authenticated).
        from: PeerId,
        /// The peers new to the address book.
        peers: Vec<PeerId>,
    },
}
