//! [`PortMapConfig`]: protocols, timeouts, leases and bounds of a port mapper.

use std::net::IpAddr;
use std::time::Duration;

/// The most mapping requests one [`PortMapper`](crate::PortMapper) serves; further ones
/// are reported as failed.
pub const MAX_REQUESTS: usize = 32;

/// Settings of a [`PortMapper`](crate::PortMapper).
///
/// Every field has a documented default ([`PortMapConfig::default`]) and a builder method.
///
/// ```
/// use std::time::Duration;
/// use crust_nat::PortMapConfig;
/// let config = PortMapConfig::default()
///     .with_upnp(false)
///     .with_lease_duration(Duration::from_secs(600));
/// assert!(config.pcp && config.natpmp && !config.upnp);
/// assert!(config.allow_reserved_external);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortMapConfig {
    /// Try PCP (RFC 6887). Default `true`. Tried first: one UDP round trip.
    pub pcp: bool,
    /// Try NAT-PMP (RFC 6886) when the gateway speaks it but not PCP. Default `true`.
    pub natpmp: bool,
    /// Try UPnP IGD (v1 and v2), found by an SSDP multicast search. Default `true`. Used
    /// when neither PCP nor NAT-PMP works.
    pub upnp: bool,
    /// The PCP/NAT-PMP gateway. Default `None`: the IPv4 default gateway of the routing
    /// table (read from `/proc/net/route` on Linux; elsewhere PCP/NAT-PMP need this set).
    /// UPnP always finds its gateway by SSDP.
    pub gateway: Option<IpAddr>,
    /// The lease asked for. Default 3600 s. Renewed at half the granted lifetime.
    pub lease_duration: Duration,
    /// The least time between two renewals of one mapping, whatever the gateway grants.
    /// Default 1 s.
    pub min_renew_interval: Duration,
    /// PCP/NAT-PMP: how long to wait for the first answer; doubled for each retry.
    /// Default 250 ms (the RFCs' value).
    pub pmp_timeout: Duration,
    /// PCP/NAT-PMP: retries after the first request. Default 1, so a silent gateway costs
    /// 250 + 500 ms.
    pub pmp_retries: u8,
    /// UPnP: how long the SSDP search waits for a gateway. Default 2 s.
    pub upnp_search_timeout: Duration,
    /// UPnP: the deadline of each request to the gateway (description, SOAP call).
    /// Default 3 s.
    pub request_timeout: Duration,
    /// After no gateway answered: the first re-probe delay, doubled each time up to
    /// [`reprobe_max`](Self::reprobe_max). Default 30 s.
    pub reprobe_initial: Duration,
    /// The longest delay between two probes while no gateway answers. Default 300 s.
    pub reprobe_max: Duration,
    /// After a mapping or renewal failed: the first retry delay, doubled each time up to
    /// [`retry_max`](Self::retry_max). Default 2 s.
    pub retry_initial: Duration,
    /// The longest delay between two attempts of one mapping; also how long a request
    /// that every protocol refused waits before it is tried again. Default 300 s.
    pub retry_max: Duration,
    /// External ports tried for one mapping when the gateway says the port is taken
    /// (UPnP 718) before the request is given up for this protocol. Default 8.
    pub max_port_attempts: u32,
    /// Keep mappings whose external address is private or reserved (RFC 1918, CGNAT
    /// 100.64/10, documentation and benchmarking ranges such as 198.18/15 or
    /// 203.0.113/24). Default `true`: such an address is still the best a node behind
    /// two NATs can offer (peers behind the same outer NAT reach it), and test labs use
    /// those ranges. `false` removes such mappings and reports
    /// [`Error::ReservedExternal`](crate::Error::ReservedExternal).
    pub allow_reserved_external: bool,
    /// How long [`shutdown`](crate::PortMapper::shutdown) (or the clean-up after a drop)
    /// may spend removing mappings. Default 2 s.
    pub shutdown_timeout: Duration,
    /// Capacity of the event channel. Default 64; `0` counts as 1.
    pub event_capacity: usize,
    /// The description UPnP gateways show for our mappings. Default `"crust"`.
    pub description: String,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        PortMapConfig {
            pcp: true,
            natpmp: true,
            upnp: true,
            gateway: None,
            lease_duration: Duration::from_secs(3600),
            min_renew_interval: Duration::from_secs(1),
            pmp_timeout: Duration::from_millis(250),
            pmp_retries: 1,
            upnp_search_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            reprobe_initial: Duration::from_secs(30),
            reprobe_max: Duration::from_secs(300),
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            max_port_attempts: 8,
            allow_reserved_external: true,
            shutdown_timeout: Duration::from_secs(2),
            event_capacity: 64,
            description: "crust".to_owned(),
        }
    }
}

impl PortMapConfig {
    /// Sets [`pcp`](Self::pcp).
    pub fn with_pcp(mut self, enabled: bool) -> Self {
        self.pcp = enabled;
        self
    }

    /// Sets [`natpmp`](Self::natpmp).
    pub fn with_natpmp(mut self, enabled: bool) -> Self {
        self.natpmp = enabled;
        self
    }

    /// Sets [`upnp`](Self::upnp).
    pub fn with_upnp(mut self, enabled: bool) -> Self {
        self.upnp = enabled;
        self
    }

    /// Sets [`gateway`](Self::gateway).
    pub fn with_gateway(mut self, gateway: Option<IpAddr>) -> Self {
        self.gateway = gateway;
        self
    }

    /// Sets [`lease_duration`](Self::lease_duration).
    pub fn with_lease_duration(mut self, lease: Duration) -> Self {
        self.lease_duration = lease;
        self
    }

    /// Sets [`min_renew_interval`](Self::min_renew_interval).
    pub fn with_min_renew_interval(mut self, interval: Duration) -> Self {
        self.min_renew_interval = interval;
        self
    }

    /// Sets [`pmp_timeout`](Self::pmp_timeout) and [`pmp_retries`](Self::pmp_retries).
    pub fn with_pmp_timeout(mut self, first: Duration, retries: u8) -> Self {
        self.pmp_timeout = first;
        self.pmp_retries = retries;
        self
    }

    /// Sets [`upnp_search_timeout`](Self::upnp_search_timeout).
    pub fn with_upnp_search_timeout(mut self, timeout: Duration) -> Self {
        self.upnp_search_timeout = timeout;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`reprobe_initial`](Self::reprobe_initial) and [`reprobe_max`](Self::reprobe_max).
    pub fn with_reprobe(mut self, initial: Duration, max: Duration) -> Self {
        self.reprobe_initial = initial;
        self.reprobe_max = max;
        self
    }

    /// Sets [`retry_initial`](Self::retry_initial) and [`retry_max`](Self::retry_max).
    pub fn with_retry(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max;
        self
    }

    /// Sets [`max_port_attempts`](Self::max_port_attempts).
    pub fn with_max_port_attempts(mut self, attempts: u32) -> Self {
        self.max_port_attempts = attempts;
        self
    }

    /// Sets [`allow_reserved_external`](Self::allow_reserved_external).
    pub fn with_allow_reserved_external(mut self, allow: bool) -> Self {
        self.allow_reserved_external = allow;
        self
    }

    /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets [`event_capacity`](Self::event_capacity).
    pub fn with_event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Sets [`description`](Self::description).
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
}
