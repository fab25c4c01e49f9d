//! Errors of the `crust` facade.

use crust_core::wire::FrameKind;
use crust_core::{Endpoint, PeerId, Protocol};

use crate::reason::{DialFailure, summarize};

/// Everything the [`Service`](crate::Service) API can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A transport-level failure (handshake, I/O, limits).
    #[error(transparent)]
    Core(#[from] crust_core::Error),
    /// No connection to this peer exists.
    #[error("not connected to peer {0}")]
    NotConnected(PeerId),
    /// The peer is banned for this session.
    #[error("peer {0} is banned")]
    Banned(PeerId),
    /// `connect()` was given no endpoint this service can dial.
    #[error("no endpoint to dial (enabled transports: {0:?})")]
    NoUsableEndpoint(Vec<Protocol>),
    /// Every connection attempt failed; each endpoint with its failure.
    #[error("all connection attempts failed: {}", summarize(.0))]
    ConnectFailed(Vec<(Endpoint, DialFailure)>),
    /// `connect()` did not succeed within the configured connect timeout.
    #[error("no answer within {} s (peer offline, firewall or NAT?)", .0.as_secs_f64())]
    ConnectTimeout(std::time::Duration),
    /// Connect by `PeerId`: the address book knows no endpoint of this peer.
    #[error("no known address for peer {0} (add one, or let discovery find it)")]
    UnknownPeer(PeerId),
    /// We would exceed the configured maximum number of peers.
    #[error("peer limit of {0} reached")]
    TooManyPeers(usize),
    /// The dialled node turned out to be ourselves.
    #[error("refusing to connect to ourselves")]
    SelfConnect,
    /// `start_listening()` was called twice, or with every transport disabled.
    #[error("listening: {0}")]
    Listen(String),
    /// A control channel cannot use this frame kind: the service itself uses it, or another
    /// channel already has it.
    #[error("frame kind {0:?} is not available for a control channel")]
    ControlKindUnavailable(FrameKind),
    /// [`Service::ping`](crate::Service::ping): no pong within this time.
    #[error("no answer to our ping within {} s", .0.as_secs_f64())]
    PingTimeout(std::time::Duration),
    /// [`Service::ping`](crate::Service::ping): this many pings already wait for an answer.
    #[error("{0} pings to this peer already wait for an answer")]
    TooManyPings(usize),
    /// Connecting by hole punch failed (typed; names both NAT classes where they matter).
    #[error("hole punch: {0}")]
    PunchFailed(#[from] crate::PunchFailure),
    /// No direct path, no hole punch (when one was tried: `punch`), and no relay worked.
    #[error("{}", relay_failed(.relay, .punch.as_deref()))]
    RelayFailed {
        /// Why no relay could connect us.
        relay: crate::RelayFailure,
        /// Why the hole punch tried before failed, if one was tried.
        punch: Option<Box<crate::PunchFailure>>,
    },
    /// The service has been shut down.
    #[error("service is shut down")]
    Shutdown,
}

fn relay_failed(relay: &crate::RelayFailure, punch: Option<&crate::PunchFailure>) -> String {
    match punch {
        Some(punch) => format!("relay: {relay} (after the hole punch failed: {punch})"),
        None => format!("relay: {relay}"),
    }
}

/// Shorthand for `Result<T, crust::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
