//! [`GatewayClient`]: the protocol I/O the lease policy asks for — PCP and NAT-PMP via
//! `crab_nat`, UPnP IGD via `igd-next` — with every call bounded in time and every
//! gateway answer turned into a [`Granted`] or a typed [`Error`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, TimeoutConfig, natpmp, pcp};
use crust_core::Protocol;
use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{
    AddPortError, GetExternalIpError, PortMappingProtocol, RemovePortError, RequestError,
    SearchOptions,
};

use crate::lease::{Granted, PmpProbe, ProbeOutcome, UpnpProbe};
use crate::{Error, Mapping, MappingMethod, MappingRequest, PortMapConfig, addr};

/// The SSDP multicast group and port.
const SSDP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900);

/// The most characters of gateway-supplied text kept in an error.
const MAX_DETAIL: usize = 200;

/// Talks to the gateways the last probe found.
pub(crate) struct GatewayClient {
    config: PortMapConfig,
    /// The last PCP/NAT-PMP gateway found and our address towards it.
    pmp: Option<(IpAddr, IpAddr)>,
    /// The external address the last NAT-PMP probe reported.
    pmp_external: Option<IpAddr>,
    /// The last UPnP device found and our address towards it.
    upnp: Option<(Gateway<Tokio>, IpAddr)>,
    /// PCP/NAT-PMP leases by slot (PCP renewals must reuse the nonce).
    leases: HashMap<usize, PortMapping>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("pmp", &self.pmp)
            .field("upnp", &self.upnp.as_ref().map(|(g, _)| g.to_string()))
            .field("leases", &self.leases.len())
            .finish_non_exhaustive()
    }
}

/// Our address on the interface the kernel would use to reach `target` (no packet is
/// sent: connecting a UDP socket only picks a route).
fn local_ip_towards(target: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect((target, 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

fn detail(text: impl std::fmt::Display) -> String {
    text.to_string().chars().take(MAX_DETAIL).collect()
}

fn internet_protocol(protocol: Protocol) -> Result<InternetProtocol, Error> {
    match protocol {
        Protocol::Tcp => Ok(InternetProtocol::Tcp),
        Protocol::Rudp => Ok(InternetProtocol::Udp),
        other => Err(Error::UnsupportedProtocol(other)),
    }
}

fn upnp_protocol(protocol: Protocol) -> Result<PortMappingProtocol, Error> {
    match protocol {
        Protocol::Tcp => Ok(PortMappingProtocol::TCP),
        Protocol::Rudp => Ok(PortMappingProtocol::UDP),
        other => Err(Error::UnsupportedProtocol(other)),
    }
}

fn unmapped_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl GatewayClient {
    pub(crate) fn new(config: &PortMapConfig) -> Self {
        GatewayClient {
            config: config.clone(),
            pmp: None,
            pmp_external: None,
            upnp: None,
            leases: HashMap::new(),
        }
    }

    fn pmp_timeouts(&self) -> TimeoutConfig {
        TimeoutConfig {
            initial_timeout: self.config.pmp_timeout,
            max_retries: usize::from(self.config.pmp_retries),
            max_retry_timeout: Some(self.config.request_timeout),
        }
    }

    /// The longest a PCP/NAT-PMP exchange can take with [`pmp_timeouts`](Self::pmp_timeouts).
    fn pmp_budget(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut wait = self.config.pmp_timeout;
        for _ in 0..=self.config.pmp_retries {
            total += wait;
            wait = (wait * 2).min(self.config.request_timeout);
        }
        total
    }

    /// Looks for a PCP/NAT-PMP server and a UPnP device, concurrently.
    pub(crate) async fn probe(&mut self) -> ProbeOutcome {
        let (pmp, upnp) = tokio::join!(self.probe_pmp(), self.probe_upnp());
        // The gateways found are kept until another one is found: the lease policy decides
        // what to map with, and removals at shutdown go to the last gateway known.
        let (pmp, pmp_state) = pmp;
        if pmp_state.is_some() {
            self.pmp = pmp_state;
        }
        if let PmpProbe::NatPmp { external_ip } = pmp {
            self.pmp_external = Some(external_ip);
        }
        let upnp = upnp.map(|(gateway, local, external_ip)| {
            let identity = format!("{}{}", gateway.addr, gateway.control_url);
            tracing::debug!(gateway = %gateway, ?external_ip, "UPnP gateway found");
            self.upnp = Some((gateway, local));
            UpnpProbe {
                identity,
                external_ip,
            }
        });
        tracing::debug!(?pmp, upnp = ?upnp, "gateway probe done");
        ProbeOutcome { pmp, upnp }
    }

    async fn probe_pmp(&self) -> (PmpProbe, Option<(IpAddr, IpAddr)>) {
        if !(self.config.pcp || self.config.natpmp) {
            return (PmpProbe::Absent, None);
        }
        let Some(gateway) = self.config.gateway.or_else(addr::default_gateway) else {
            tracing::debug!("no default gateway: no PCP/NAT-PMP");
            return (PmpProbe::Absent, None);
        };
        let Some(local) = local_ip_towards(gateway) else {
            return (PmpProbe::Absent, None);
        };
        let request = natpmp::external_address(gateway.into(), Some(self.pmp_timeouts()));
        let probe = match tokio::time::timeout(self.pmp_budget() * 2, request).await {
            Ok(Ok(ip)) => PmpProbe::NatPmp {
                external_ip: IpAddr::V4(ip),
            },
            // A server answered, but in a version it prefers: a PCP-only server.
            Ok(Err(natpmp::Failure::UnsupportedVersion(_))) => PmpProbe::PcpOnly,
            Ok(Err(natpmp::Failure::Timeout | natpmp::Failure::Socket(_))) | Err(_) => {
                PmpProbe::Absent
            }
            Ok(Err(e)) => {
                tracing::debug!(%gateway, error = %e, "NAT-PMP server answered with an error");
                PmpProbe::Failing
            }
        };
        let state = (!matches!(probe, PmpProbe::Absent)).then_some((gateway, local));
        (probe, state)
    }

    async fn probe_upnp(&self) -> Option<(Gateway<Tokio>, IpAddr, Option<IpAddr>)> {
        if !self.config.upnp {
            return None;
        }
        // Bound to our address on the interface multicast leaves by, so the search goes
        // out on the LAN (and fails at once where there is no route at all).
        let Some(local) = local_ip_towards(SSDP_ADDR.ip()) else {
            tracing::debug!("no route for SSDP multicast: no UPnP");
            return None;
        };
        let timeout = self.config.upnp_search_timeout;
        let options = SearchOptions {
            bind_addr: SocketAddr::new(local, 0),
            broadcast_address: SSDP_ADDR,
            timeout: Some(timeout),
            single_search_timeout: Some(timeout),
        };
        let search = igd_next::aio::tokio::search_gateway(options);
        let gateway = match tokio::time::timeout(timeout + Duration::from_millis(100), search).await
        {
            Ok(Ok(gateway)) => gateway,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no UPnP gateway");
                return None;
            }
            Err(_) => return None,
        };
        let local = local_ip_towards(gateway.addr.ip()).unwrap_or(local);
        let external = tokio::time::timeout(self.config.request_timeout, gateway.get_external_ip())
            .await
            .ok()
            .and_then(Result::ok)
            .map(unmapped_v4);
        Some((gateway, local, external))
    }

    /// Creates or renews the mapping of `slot`.
    pub(crate) async fn map(
        &mut self,
        slot: usize,
        method: MappingMethod,
        request: MappingRequest,
        external_port: u16,
        lease: Duration,
        renewal: bool,
    ) -> Result<Granted, Error> {
        match method {
            MappingMethod::Upnp => self.map_upnp(request, external_port, lease).await,
            MappingMethod::Pcp | MappingMethod::NatPmp => {
                self.map_pmp(slot, method, request, external_port, lease, renewal)
                    .await
            }
        }
    }

    async fn map_upnp(
        &self,
        request: MappingRequest,
        external_port: u16,
        lease: Duration,
    ) -> Result<Granted, Error> {
        let method = MappingMethod::Upnp;
        let (gateway, local) = self.upnp.as_ref().ok_or_else(|| not_found(method))?;
        let protocol = upnp_protocol(request.protocol)?;
        let internal_ip = match request.local.ip() {
            ip if ip.is_unspecified() => *local,
            ip => unmapped_v4(ip),
        };
        let internal = SocketAddr::new(internal_ip, request.local.port());
        let lease_secs = u32::try_from(lease.as_secs()).unwrap_or(u32::MAX);
        let timeout = self.config.request_timeout;
        let add = gateway.add_port(
            protocol,
            external_port,
            internal,
            lease_secs,
            &self.config.description,
        );
        tokio::time::timeout(timeout, add)
            .await
            .map_err(|_| Error::Timeout { method, timeout })?
            .map_err(|e| match add_port_error(e) {
                Error::Conflict { method, .. } => Error::Conflict {
                    method,
                    external_port,
                },
                other => other,
            })?;
        let external_ip = tokio::time::timeout(timeout, gateway.get_external_ip())
            .await
            .map_err(|_| Error::Timeout { method, timeout })?
            .map_err(external_ip_error)?;
        Ok(Granted {
            external: SocketAddr::new(unmapped_v4(external_ip), external_port),
            gateway: gateway.addr.ip(),
            lifetime: (lease_secs != 0).then(|| Duration::from_secs(u64::from(lease_secs))),
            epoch: None,
        })
    }

    async fn map_pmp(
        &mut self,
        slot: usize,
        method: MappingMethod,
        request: MappingRequest,
        external_port: u16,
        lease: Duration,
        renewal: bool,
    ) -> Result<Granted, Error> {
        let (gateway, client) = self.pmp.ok_or_else(|| not_found(method))?;
        let protocol = internet_protocol(request.protocol)?;
        let internal_port =
            NonZeroU16::new(request.local.port()).ok_or(Error::InvalidLocal(request.local))?;
        // Lifetime 0 deletes a PCP/NAT-PMP mapping: "permanent" is a UPnP notion.
        let lease = if lease.is_zero() {
            self.config.lease_duration
        } else {
            lease
        };
        let options = PortMappingOptions {
            external_port: NonZeroU16::new(external_port),
            lifetime_seconds: Some(u32::try_from(lease.as_secs()).unwrap_or(u32::MAX)),
            timeout_config: Some(self.pmp_timeouts()),
        };
        let budget = self.pmp_budget() * 2;
        let timeout = |_| Error::Timeout {
            method,
            timeout: budget,
        };
        let previous = self
            .leases
            .get(&slot)
            .filter(|l| renewal && lease_method(l) == method)
            .cloned();
        let mapping = match (previous, method) {
            (Some(mut lease), _) => {
                tokio::time::timeout(budget, lease.renew())
                    .await
                    .map_err(timeout)?
                    .map_err(|e| match e {
                        crab_nat::MappingFailure::Pcp(e) => pcp_error(e, budget),
                        crab_nat::MappingFailure::NatPmp(e) => natpmp_error(method, e, budget),
                    })?;
                lease
            }
            (None, MappingMethod::Pcp) => {
                let base =
                    pcp::BaseMapRequest::new(gateway.into(), client, protocol, internal_port);
                tokio::time::timeout(budget, pcp::port_mapping(base, None, None, options))
                    .await
                    .map_err(timeout)?
                    .map_err(|e| pcp_error(e, budget))?
            }
            (None, _) => tokio::time::timeout(
                budget,
                natpmp::port_mapping(gateway.into(), protocol, internal_port, options),
            )
            .await
            .map_err(timeout)?
            .map_err(|e| natpmp_error(method, e, budget))?,
        };
        let external_ip = match mapping.mapping_type() {
            crab_nat::PortMappingType::Pcp { external_ip, .. } => unmapped_v4(external_ip),
            crab_nat::PortMappingType::NatPmp => {
                let request = natpmp::external_address(gateway.into(), Some(self.pmp_timeouts()));
                match tokio::time::timeout(budget, request).await {
                    Ok(Ok(ip)) => IpAddr::V4(ip),
                    other => {
                        tracing::debug!(?other, "NAT-PMP external address request failed");
                        self.pmp_external
                            .ok_or(Error::NoExternalAddress { method })?
                    }
                }
            }
        };
        let granted = Granted {
            external: SocketAddr::new(external_ip, mapping.external_port().get()),
            gateway,
            lifetime: Some(Duration::from_secs(u64::from(mapping.lifetime()))),
            epoch: Some(mapping.gateway_epoch()),
        };
        self.leases.insert(slot, mapping);
        Ok(granted)
    }

    /// Removes `mapping` (slot `slot`) from its gateway.
    pub(crate) async fn unmap(&mut self, slot: usize, mapping: &Mapping) -> Result<(), Error> {
        let method = mapping.method;
        match method {
            MappingMethod::Upnp => {
                let (gateway, _) = self.upnp.as_ref().ok_or_else(|| not_found(method))?;
                let protocol = upnp_protocol(mapping.protocol)?;
                let timeout = self.config.request_timeout;
                let remove = gateway.remove_port(protocol, mapping.external.port());
                match tokio::time::timeout(timeout, remove).await {
                    Err(_) => Err(Error::Timeout { method, timeout }),
                    Ok(Ok(()) | Err(RemovePortError::NoSuchPortMapping)) => Ok(()),
                    Ok(Err(RemovePortError::ActionNotAuthorized)) => {
                        Err(Error::NotAuthorized { method })
                    }
                    Ok(Err(RemovePortError::RequestError(e))) => Err(request_error(method, e)),
                }
            }
            MappingMethod::Pcp | MappingMethod::NatPmp => {
                let lease = self.leases.remove(&slot).ok_or_else(|| not_found(method))?;
                let budget = self.pmp_budget() * 2;
                match tokio::time::timeout(budget, lease.try_drop()).await {
                    Err(_) => Err(Error::Timeout {
                        method,
                        timeout: budget,
                    }),
                    Ok(Ok(())) => Ok(()),
                    Ok(Err((crab_nat::MappingFailure::Pcp(e), _))) => Err(pcp_error(e, budget)),
                    Ok(Err((crab_nat::MappingFailure::NatPmp(e), _))) => {
                        Err(natpmp_error(method, e, budget))
                    }
                }
            }
        }
    }
}

fn lease_method(lease: &PortMapping) -> MappingMethod {
    match lease.mapping_type() {
        crab_nat::PortMappingType::Pcp { .. } => MappingMethod::Pcp,
        crab_nat::PortMappingType::NatPmp => MappingMethod::NatPmp,
    }
}

/// The method's gateway is not known (the last probe did not find it).
fn not_found(method: MappingMethod) -> Error {
    Error::Unreachable {
        method,
        source: "no gateway for this protocol".into(),
    }
}

fn pcp_error(e: pcp::Failure, budget: Duration) -> Error {
    use pcp::Failure as F;
    let method = MappingMethod::Pcp;
    match e {
        F::Timeout => Error::Timeout {
            method,
            timeout: budget,
        },
        F::Socket(source) => Error::Unreachable {
            method,
            source: Box::new(source),
        },
        F::UnsupportedVersion(_)
        | F::UnsupportedOpcode
        | F::UnsupportedOption
        | F::UnsupportedProtocol => Error::Unsupported {
            method,
            detail: detail(e),
        },
        F::NotAuthorized(_) => Error::NotAuthorized { method },
        F::MalformedRequest | F::MalformedOption | F::AddressMismatch => Error::InvalidArgs {
            method,
            detail: detail(e),
        },
        F::NetworkFailure(_)
        | F::NoResources(_)
        | F::UserExceededQuota(_)
        | F::CannotProvideExternal(_)
        | F::ExcessiveRemotePeers => Error::Gateway {
            method,
            code: None,
            detail: detail(e),
        },
        F::Nonce | F::InvalidResponse(_) => Error::InvalidResponse {
            method,
            detail: detail(e),
        },
    }
}

fn natpmp_error(method: MappingMethod, e: natpmp::Failure, budget: Duration) -> Error {
    use natpmp::Failure as F;
    match e {
        F::Timeout => Error::Timeout {
            method,
            timeout: budget,
        },
        F::Socket(source) => Error::Unreachable {
            method,
            source: Box::new(source),
        },
        F::UnsupportedVersion(_) | F::UnsupportedOpcode => Error::Unsupported {
            method,
            detail: detail(e),
        },
        F::NotAuthorized => Error::NotAuthorized { method },
        F::NetworkFailure | F::OutOfResources => Error::Gateway {
            method,
            code: None,
            detail: detail(e),
        },
        F::InvalidResponse(_) => Error::InvalidResponse {
            method,
            detail: detail(e),
        },
    }
}

/// A UPnP SOAP/HTTP failure as an [`Error`]: the classic error codes get their own
/// variants (402 invalid args, 606 not authorized, 718 conflict, 725 permanent only).
pub(crate) fn request_error(method: MappingMethod, e: RequestError) -> Error {
    match e {
        RequestError::ErrorCode(402, text) => Error::InvalidArgs {
            method,
            detail: detail(format_args!("402 {text}")),
        },
        RequestError::ErrorCode(606, _) => Error::NotAuthorized { method },
        RequestError::ErrorCode(718, _) => Error::Conflict {
            method,
            external_port: 0,
        },
        RequestError::ErrorCode(725, _) => Error::OnlyPermanentLeases { method },
        RequestError::ErrorCode(code @ (401 | 602), text) => Error::Unsupported {
            method,
            detail: detail(format_args!("{code} {text}")),
        },
        RequestError::ErrorCode(code, text) => Error::Gateway {
            method,
            code: Some(code),
            detail: detail(text),
        },
        RequestError::UnsupportedAction(action) => Error::Unsupported {
            method,
            detail: detail(action),
        },
        RequestError::IoError(source) => Error::Unreachable {
            method,
            source: Box::new(source),
        },
        RequestError::AttoHttpError(source) => Error::Unreachable {
            method,
            source: Box::new(source),
        },
        RequestError::HyperError(source) => Error::Unreachable {
            method,
            source: Box::new(source),
        },
        RequestError::HyperClientError(source) => Error::Unreachable {
            method,
            source: Box::new(source),
        },
        RequestError::HttpError(e) => Error::InvalidResponse {
            method,
            detail: detail(e),
        },
        RequestError::InvalidResponse(text) => Error::InvalidResponse {
            method,
            detail: detail(text),
        },
        RequestError::Utf8Error(e) => Error::InvalidResponse {
            method,
            detail: detail(e),
        },
    }
}

/// An `AddPortMapping` failure as an [`Error`].
pub(crate) fn add_port_error(e: AddPortError) -> Error {
    let method = MappingMethod::Upnp;
    match e {
        AddPortError::ActionNotAuthorized => Error::NotAuthorized { method },
        AddPortError::PortInUse => Error::Conflict {
            method,
            external_port: 0,
        },
        AddPortError::OnlyPermanentLeasesSupported => Error::OnlyPermanentLeases { method },
        AddPortError::InternalPortZeroInvalid
        | AddPortError::ExternalPortZeroInvalid
        | AddPortError::SamePortValuesRequired
        | AddPortError::DescriptionTooLong => Error::InvalidArgs {
            method,
            detail: detail(e),
        },
        AddPortError::RequestError(e) => request_error(method, e),
    }
}

fn external_ip_error(e: GetExternalIpError) -> Error {
    let method = MappingMethod::Upnp;
    match e {
        GetExternalIpError::ActionNotAuthorized => Error::NotAuthorized { method },
        GetExternalIpError::RequestError(e) => request_error(method, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;

    #[test]
    fn classic_upnp_error_codes_are_typed() {
        let code = |c, text: &str| {
            request_error(MappingMethod::Upnp, RequestError::ErrorCode(c, text.into()))
        };
        assert!(matches!(
            code(402, "Invalid Args"),
            Error::InvalidArgs { .. }
        ));
        assert!(matches!(
            code(606, "Action not authorized"),
            Error::NotAuthorized { .. }
        ));
        assert!(matches!(
            code(718, "ConflictInMappingEntry"),
            Error::Conflict { .. }
        ));
        assert!(matches!(
            code(725, "OnlyPermanentLeasesSupported"),
            Error::OnlyPermanentLeases { .. }
        ));
        assert!(matches!(
            code(401, "Invalid Action"),
            Error::Unsupported { .. }
        ));
        assert!(matches!(
            code(501, "Action Failed"),
            Error::Gateway {
                code: Some(501),
                ..
            }
        ));
        assert_eq!(code(402, "x").class(), FailureClass::Rejected);
        assert_eq!(code(718, "x").class(), FailureClass::Conflict);
        assert_eq!(code(725, "x").class(), FailureClass::OnlyPermanent);
        assert_eq!(code(501, "x").class(), FailureClass::Transient);
        assert!(matches!(
            add_port_error(AddPortError::PortInUse),
            Error::Conflict { .. }
        ));
        assert!(matches!(
            add_port_error(AddPortError::OnlyPermanentLeasesSupported),
            Error::OnlyPermanentLeases { .. }
        ));
        assert!(matches!(
            add_port_error(AddPortError::RequestError(RequestError::ErrorCode(
                402,
                "Invalid Args".into()
            ))),
            Error::InvalidArgs { .. }
        ));
    }

    #[test]
    fn gateway_text_is_bounded() {
        let long = "x".repeat(10_000);
        match request_error(MappingMethod::Upnp, RequestError::InvalidResponse(long)) {
            Error::InvalidResponse { detail, .. } => assert_eq!(detail.len(), MAX_DETAIL),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pmp_failures_are_classified() {
        let budget = Duration::from_secs(1);
        assert_eq!(
            pcp_error(pcp::Failure::Timeout, budget).class(),
            FailureClass::Unreachable
        );
        assert_eq!(
            pcp_error(
                pcp::Failure::UnsupportedVersion(crab_nat::VersionCode::NatPmp),
                budget
            )
            .class(),
            FailureClass::Unsupported
        );
        assert_eq!(
            pcp_error(pcp::Failure::NotAuthorized(0), budget).class(),
            FailureClass::Rejected
        );
        assert_eq!(
            pcp_error(pcp::Failure::NoResources(30), budget).class(),
            FailureClass::Transient
        );
        assert_eq!(
            natpmp_error(
                MappingMethod::NatPmp,
                natpmp::Failure::NetworkFailure,
                budget
            )
            .class(),
            FailureClass::Transient
        );
    }

    #[test]
    fn pmp_budget_sums_the_retries() {
        let config = PortMapConfig::default().with_pmp_timeout(Duration::from_millis(250), 2);
        let client = GatewayClient::new(&config);
        assert_eq!(client.pmp_budget(), Duration::from_millis(250 + 500 + 1000));
    }

    #[test]
    fn local_address_towards_loopback() {
        assert_eq!(
            local_ip_towards("127.0.0.1".parse().expect("ip")),
            Some("127.0.0.1".parse().expect("ip"))
        );
    }
}
