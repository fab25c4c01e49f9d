//! The crate's error type.

use std::net::IpAddr;
use std::time::Duration;

use crust_core::Protocol;

use crate::MappingMethod;

/// Errors of `crust-nat`: what a gateway answered (or failed to answer) to a mapping
/// request, and requests this crate cannot serve.
///
/// "No gateway" is not an error: it is the normal outcome on many networks and is
/// reported once as [`PortMapEvent::NoGateway`](crate::PortMapEvent::NoGateway).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The gateway did not answer within the configured time.
    #[error("{method} gateway did not answer within {timeout:?}")]
    Timeout {
        /// The protocol we spoke.
        method: MappingMethod,
        /// How long we waited.
        timeout: Duration,
    },
    /// The gateway could not be reached (refused, unreachable, connection reset).
    #[error("{method} gateway unreachable: {source}")]
    Unreachable {
        /// The protocol we spoke.
        method: MappingMethod,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The gateway does not speak this protocol version or does not offer the operation
    /// (PCP asked of a NAT-PMP-only gateway, an unknown opcode, a missing UPnP action).
    #[error("{method} not supported by the gateway: {detail}")]
    Unsupported {
        /// The protocol we spoke.
        method: MappingMethod,
        /// What the gateway said.
        detail: String,
    },
    /// The requested external port is mapped to another client (UPnP error 718
    /// `ConflictInMappingEntry`).
    #[error("{method}: external port {external_port} conflicts with another mapping")]
    Conflict {
        /// The protocol we spoke.
        method: MappingMethod,
        /// The external port we asked for.
        external_port: u16,
    },
    /// The gateway grants only permanent leases (UPnP error 725
    /// `OnlyPermanentLeasesSupported`); the mapper retries with lease 0.
    #[error("{method}: the gateway only supports permanent leases")]
    OnlyPermanentLeases {
        /// The protocol we spoke.
        method: MappingMethod,
    },
    /// The gateway rejected the request's arguments (UPnP error 402 `Invalid Args`, PCP
    /// `MALFORMED_REQUEST`/`MALFORMED_OPTION`/`ADDRESS_MISMATCH`).
    #[error("{method}: the gateway rejected the request's arguments: {detail}")]
    InvalidArgs {
        /// The protocol we spoke.
        method: MappingMethod,
        /// What the gateway said.
        detail: String,
    },
    /// The gateway refused us (UPnP error 606, PCP/NAT-PMP `NOT_AUTHORIZED`), often
    /// because the mapping is disabled or its policy forbids this port or client.
    #[error("{method}: not authorized by the gateway")]
    NotAuthorized {
        /// The protocol we spoke.
        method: MappingMethod,
    },
    /// Another error answered by the gateway, usually temporary (out of resources,
    /// network failure, quota); retried with backoff.
    #[error("{method} gateway error{}: {detail}", code.map(|c| format!(" {c}")).unwrap_or_default())]
    Gateway {
        /// The protocol we spoke.
        method: MappingMethod,
        /// The protocol's numeric error code, when it has one (UPnP error codes).
        code: Option<u16>,
        /// What the gateway said.
        detail: String,
    },
    /// The gateway's answer was malformed or did not match the request.
    #[error("{method}: invalid answer from the gateway: {detail}")]
    InvalidResponse {
        /// The protocol we spoke.
        method: MappingMethod,
        /// What was wrong with it.
        detail: String,
    },
    /// The gateway has no usable external address (it reported `0.0.0.0`, as
    /// `miniupnpd` does when its WAN address is private and it was not told its public
    /// one).
    #[error("{method}: the gateway has no external address")]
    NoExternalAddress {
        /// The protocol we spoke.
        method: MappingMethod,
    },
    /// The mapping's external address is private or reserved and
    /// [`allow_reserved_external`](crate::PortMapConfig::allow_reserved_external) is off.
    #[error("external address {0} is in a private or reserved range")]
    ReservedExternal(IpAddr),
    /// The request's protocol has no port mapping (only TCP and UDP do).
    #[error("protocol {0} cannot be port-mapped")]
    UnsupportedProtocol(Protocol),
    /// The request's local address cannot be mapped (port 0 or a loopback address).
    #[error("local address {0} cannot be port-mapped")]
    InvalidLocal(std::net::SocketAddr),
    /// More mapping requests than [`MAX_REQUESTS`](crate::MAX_REQUESTS); the rest are
    /// ignored.
    #[error("too many mapping requests (the maximum is {max})")]
    TooManyRequests {
        /// The maximum.
        max: usize,
    },
    /// [`NatTraverser::punch`](crust_core::NatTraverser::punch) was called on the port
    /// mapper, which maps ports but does not punch holes.
    #[error("the port mapper does not punch holes")]
    PunchUnsupported,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the lease policy reacts to an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureClass {
    /// No answer: the method is unusable on this gateway (for now).
    Unreachable,
    /// The gateway does not speak this protocol or operation: try the next method.
    Unsupported,
    /// The external port is taken: try another one.
    Conflict,
    /// Retry with a permanent lease.
    OnlyPermanent,
    /// Refused for this request: do not ask again with this method until the gateway
    /// changes.
    Rejected,
    /// Probably temporary: retry the same thing after a backoff.
    Transient,
}

impl Error {
    /// How the lease policy reacts to this error.
    pub(crate) fn class(&self) -> FailureClass {
        match self {
            Error::Timeout { .. } | Error::Unreachable { .. } => FailureClass::Unreachable,
            Error::Unsupported { .. } => FailureClass::Unsupported,
            Error::Conflict { .. } => FailureClass::Conflict,
            Error::OnlyPermanentLeases { .. } => FailureClass::OnlyPermanent,
            Error::InvalidArgs { .. }
            | Error::NotAuthorized { .. }
            | Error::NoExternalAddress { .. }
            | Error::ReservedExternal(_)
            | Error::UnsupportedProtocol(_)
            | Error::InvalidLocal(_)
            | Error::TooManyRequests { .. }
            | Error::PunchUnsupported => FailureClass::Rejected,
            Error::Gateway { .. } | Error::InvalidResponse { .. } => FailureClass::Transient,
        }
    }
}
