//! What the mapper is asked for and what it reports: [`MappingRequest`], [`Mapping`],
//! [`MappingMethod`], [`PortMapEvent`], [`LostReason`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crust_core::{Endpoint, Protocol};

use crate::Error;

/// The protocol a gateway granted a mapping with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MappingMethod {
    /// Port Control Protocol (RFC 6887), UDP port 5351 of the gateway.
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886), PCP's predecessor on the same port.
    NatPmp,
    /// UPnP Internet Gateway Device v1 or v2 (`WANIPConnection`), found by SSDP.
    Upnp,
}

impl MappingMethod {
    /// A short name: `pcp`, `natpmp` or `upnp`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            MappingMethod::Pcp => "pcp",
            MappingMethod::NatPmp => "natpmp",
            MappingMethod::Upnp => "upnp",
        }
    }
}

impl fmt::Display for MappingMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A local listening port to make reachable from outside the NAT.
///
/// ```
/// use crust_core::Protocol;
/// use crust_nat::MappingRequest;
/// let request = MappingRequest::new(Protocol::Tcp, "0.0.0.0:4000".parse()?);
/// assert_eq!(request.local.port(), 4000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct MappingRequest {
    /// The transport: [`Protocol::Tcp`] maps a TCP port, [`Protocol::Rudp`] a UDP port.
    pub protocol: Protocol,
    /// The local listening address. An unspecified IP (`0.0.0.0`) stands for our address
    /// on the interface towards the gateway; the port must not be 0.
    pub local: SocketAddr,
}

impl MappingRequest {
    /// A request to map `local` for `protocol`.
    pub const fn new(protocol: Protocol, local: SocketAddr) -> Self {
        MappingRequest { protocol, local }
    }

    /// A request for the listening address of a transport endpoint.
    pub const fn for_endpoint(endpoint: Endpoint) -> Self {
        Self::new(endpoint.protocol(), endpoint.addr())
    }
}

/// A port mapping a gateway granted us: `external` reaches `local`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mapping {
    /// The transport ([`Protocol::Rudp`] for UDP).
    pub protocol: Protocol,
    /// The local address from the [`MappingRequest`].
    pub local: SocketAddr,
    /// Where peers on the other side of the gateway reach us.
    pub external: SocketAddr,
    /// The protocol that granted it.
    pub method: MappingMethod,
    /// The gateway that granted it.
    pub gateway: IpAddr,
    /// The lease the gateway granted; `None` for a permanent one (a gateway that only
    /// grants permanent leases). Renewed at half-life either way, and removed on shutdown.
    pub lifetime: Option<Duration>,
}

impl Mapping {
    /// The request this mapping serves.
    pub fn request(&self) -> MappingRequest {
        MappingRequest::new(self.protocol, self.local)
    }

    /// The external endpoint peers can dial.
    pub fn external_endpoint(&self) -> Endpoint {
        Endpoint::new(self.protocol, self.external)
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} via {}",
            self.protocol, self.external, self.local, self.method
        )
    }
}

/// Why a [`Mapping`] is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The gateway restarted and forgot its mappings (NAT-PMP/PCP epoch went back, or the
    /// UPnP device came back at a new address); the mapper re-creates it.
    GatewayRestarted,
    /// The lease ran out while renewals failed (the gateway is gone or unreachable).
    Expired,
    /// On renewal the gateway said the external port now belongs to someone else; the
    /// mapper re-creates it on another port.
    Conflict,
    /// The gateway refused the renewal; the mapper retries later.
    Refused,
    /// The protocol that granted it is no longer offered by the gateway.
    MethodGone,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::GatewayRestarted => "gateway restarted",
            LostReason::Expired => "lease expired",
            LostReason::Conflict => "external port taken",
            LostReason::Refused => "renewal refused",
            LostReason::MethodGone => "protocol no longer offered",
        })
    }
}

/// What the [`PortMapper`](crate::PortMapper) reports on its event channel.
///
/// The channel is bounded; when the receiver falls behind, further events are dropped
/// (and logged) rather than delaying renewals. [`PortMapper::mappings`](crate::PortMapper::mappings)
/// is always current.
#[derive(Debug)]
#[non_exhaustive]
pub enum PortMapEvent {
    /// A mapping exists now, or its external endpoint changed (new, re-created after a
    /// loss, moved to another port or external address).
    Mapped(Mapping),
    /// A mapping was renewed unchanged.
    Renewed(Mapping),
    /// A mapping is gone; the mapper tries to get it back (a `Mapped` follows when it
    /// succeeds).
    Lost {
        /// The mapping as it was.
        mapping: Mapping,
        /// Why.
        reason: LostReason,
    },
    /// The gateway's external address changed; every mapping moved with it (each is
    /// reported again as `Mapped`).
    ExternalAddressChanged {
        /// The previous external address.
        old: IpAddr,
        /// The new external address.
        new: IpAddr,
    },
    /// A request could not be mapped by any enabled protocol; retried after
    /// [`retry_max`](crate::PortMapConfig::retry_max).
    Failed {
        /// The request.
        request: MappingRequest,
        /// The last gateway answer.
        error: Error,
    },
    /// No gateway answered. Reported once each time the mapper goes from "gateway or
    /// not yet known" to "none"; it keeps probing quietly with a capped exponential
    /// backoff.
    NoGateway,
}
