//! How this node can be reached: NAT classification from what peers observe.
//!
//! Pure state fed by observations (a peer told us the address it sees for one of our
//! connections) and by port-mapping results; no sockets, no clock. What it can learn:
//!
//! - **No NAT** (`Public`): peers see one of our own interface addresses with our port.
//! - **Mapping behaviour** per local socket (our listening sockets: QUIC always dials from
//!   its listening socket, TCP does when it dials from its listening port): the same
//!   external `ip:port` seen by observers in different networks is endpoint-independent
//!   mapping (a cone NAT); different external ports for one local socket is
//!   endpoint-dependent mapping (a symmetric NAT, hard to punch). Whether the NAT keeps our
//!   port, and the step between ports it allocates, come along.
//! - **Mapped**: a gateway maps our port (UPnP IGD, NAT-PMP, PCP).
//!
//! Filtering behaviour (full cone vs. address- vs. port-restricted) cannot be learnt from
//! observations alone: a peer-assisted probe test (`filtering.rs`) finds it and feeds it in.
//!
//! Sybil resistance: identities are free, so an external address is only believed when
//! observers from at least `min_networks` distinct networks (IPv4 /24, IPv6 /48) agree.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crust_core::{Endpoint, PeerId, Protocol};

pub use crate::filtering::FilteringBehaviour;

/// Local sockets tracked; observations of further ones are ignored.
const MAX_SOCKETS: usize = 16;
/// Observers remembered per local socket (the oldest is forgotten first).
const MAX_OBSERVERS_PER_SOCKET: usize = 32;

/// The overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NatType {
    /// Not enough observations yet.
    Unknown,
    /// No NAT: peers see our own interface address.
    Public,
    /// A gateway maps our port for us (UPnP IGD, NAT-PMP or PCP).
    Mapped,
    /// Endpoint-independent mapping (full, address- or port-restricted cone): one external
    /// endpoint per local socket, whoever we talk to. Reachable by hole punching.
    ConeLike,
    /// Endpoint-dependent mapping: a new external port per destination. Punching needs
    /// port prediction or a relay.
    Symmetric,
}

impl NatType {
    /// A stable name for scripts: `unknown`, `public`, `mapped`, `cone`, `symmetric`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            NatType::Unknown => "unknown",
            NatType::Public => "public",
            NatType::Mapped => "mapped",
            NatType::ConeLike => "cone",
            NatType::Symmetric => "symmetric",
        }
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the NAT maps one local socket to external endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MappingBehaviour {
    /// Not enough observations.
    Unknown,
    /// The same external endpoint for every destination.
    EndpointIndependent,
    /// Different external endpoints for different destinations.
    EndpointDependent,
}

/// What is known about this node's reachability ([`Service::reachability`](crate::Service::reachability)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reachability {
    /// The verdict.
    pub nat_type: NatType,
    /// Mapping behaviour of our listening sockets (the most telling one seen).
    pub mapping: MappingBehaviour,
    /// Whether the NAT keeps our local port, when known.
    pub port_preserved: Option<bool>,
    /// The step between external ports an endpoint-dependent NAT allocated, when constant
    /// (a sequential allocator makes ports predictable).
    pub port_delta: Option<i32>,
    /// External endpoints confirmed by observers in enough distinct networks (or mapped
    /// by a gateway), best first. Only endpoints of our listening sockets: never a
    /// throw-away dial port.
    pub external: Vec<Endpoint>,
    /// Our public IP address(es) as observers agree on them.
    pub public_ips: Vec<IpAddr>,
    /// How many distinct observer networks contributed.
    pub observer_networks: usize,
    /// How the NAT filters inbound packets, once a peer-assisted test told
    /// (see [`FilteringBehaviour`]).
    pub filtering: FilteringBehaviour,
}

impl Reachability {
    /// The classic name of the NAT in front of us: `public`, `mapped`, `full_cone`,
    /// `address_restricted`, `port_restricted`, `cone` (filtering not known yet),
    /// `symmetric` or `unknown`.
    pub fn nat_class(&self) -> &'static str {
        match (self.nat_type, self.filtering) {
            (NatType::Public, _) => "public",
            (NatType::Mapped, _) => "mapped",
            (NatType::Symmetric, _) => "symmetric",
            (NatType::ConeLike, FilteringBehaviour::EndpointIndependent) => "full_cone",
            (NatType::ConeLike, FilteringBehaviour::AddressDependent) => "address_restricted",
            (NatType::ConeLike, FilteringBehaviour::AddressAndPortDependent) => "port_restricted",
            (NatType::ConeLike, _) => "cone",
            _ => "unknown",
        }
    }
}

impl Reachability {
    fn unknown() -> Self {
        Reachability {
            nat_type: NatType::Unknown,
            mapping: MappingBehaviour::Unknown,
            port_preserved: None,
            port_delta: None,
            external: Vec::new(),
            public_ips: Vec::new(),
            observer_networks: 0,
            filtering: FilteringBehaviour::Unknown,
        }
    }
}

#[derive(Clone, Debug)]
struct Observation {
    observed: SocketAddr,
    network: IpAddr,
    at: Instant,
}

/// The classifier. See the module docs.
#[derive(Debug)]
pub(crate) struct NatClassifier {
    min_networks: usize,
    /// Per (protocol, local socket): each observer's latest observation.
    sockets: HashMap<(Protocol, SocketAddr), HashMap<PeerId, Observation>>,
    /// Our listening ports per protocol (observations of other local ports are dial ports).
    listen_ports: Vec<(Protocol, u16)>,
    local_ips: Vec<IpAddr>,
    mapped: Vec<Endpoint>,
    filtering: FilteringBehaviour,
}

impl NatClassifier {
    /// A classifier believing an external address once observers from `min_networks`
    /// distinct networks agree (at least 1).
    pub(crate) fn new(min_networks: usize) -> Self {
        NatClassifier {
            min_networks: min_networks.max(1),
            sockets: HashMap::new(),
            listen_ports: Vec::new(),
            local_ips: Vec::new(),
            mapped: Vec::new(),
            filtering: FilteringBehaviour::Unknown,
        }
    }

    /// The filtering behaviour a peer-assisted test found.
    pub(crate) fn set_filtering(&mut self, filtering: FilteringBehaviour) {
        self.filtering = filtering;
    }

    /// The filtering behaviour known so far.
    pub(crate) fn filtering(&self) -> FilteringBehaviour {
        self.filtering
    }

    /// Our listening sockets' ports, per protocol.
    pub(crate) fn set_listen_ports(&mut self, ports: Vec<(Protocol, u16)>) {
        self.listen_ports = ports;
    }

    /// Our interface addresses.
    pub(crate) fn set_local_ips(&mut self, ips: Vec<IpAddr>) {
        self.local_ips = ips;
    }

    /// The external endpoints a gateway maps for us now.
    pub(crate) fn set_mapped(&mut self, mapped: Vec<Endpoint>) {
        self.mapped = mapped;
    }

    /// The external endpoints a gateway maps for us now.
    pub(crate) fn mapped(&self) -> &[Endpoint] {
        &self.mapped
    }

    /// `observer`, reached from our local socket `local` over `protocol`, sees that socket
    /// as `observed`; the observer's own address (as we see it) is `observer_addr`. Returns
    /// whether the verdict may have changed (cheap to tell: only a new `(observed, network)`
    /// pair, a changed or evicted observer can change it), so callers classify only then.
    pub(crate) fn observe(
        &mut self,
        observer: PeerId,
        protocol: Protocol,
        local: SocketAddr,
        observed: SocketAddr,
        observer_addr: IpAddr,
        now: Instant,
    ) -> bool {
        if !self.listen_ports.contains(&(protocol, local.port())) {
            // A throw-away dial port tells nothing about where we can be reached.
            return false;
        }
        let key = (protocol, local);
        if !self.sockets.contains_key(&key) && self.sockets.len() >= MAX_SOCKETS {
            return false;
        }
        let network = network_of(observer_addr);
        let observers = self.sockets.entry(key).or_default();
        let pair_known = observers
            .values()
            .any(|o| o.observed == observed && o.network == network);
        let mut changed = !pair_known
            || observers
                .get(&observer)
                .is_some_and(|o| o.observed != observed || o.network != network);
        if !observers.contains_key(&observer) && observers.len() >= MAX_OBSERVERS_PER_SOCKET {
            changed = true;
            let oldest = observers
                .iter()
                .min_by_key(|(id, o)| (o.at, **id))
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                observers.remove(&oldest);
            }
        }
        observers.insert(
            observer,
            Observation {
                observed,
                network,
                at: now,
            },
        );
        changed
    }

    /// The current verdict.
    pub(crate) fn classify(&self) -> Reachability {
        let mut out = Reachability::unknown();
        let mut networks_all: BTreeSet<IpAddr> = BTreeSet::new();
        let mut public = false;
        let mut cone = false;
        let mut symmetric = false;
        let mut external: Vec<Endpoint> = Vec::new();
        let mut public_ips: Vec<IpAddr> = Vec::new();
        let mut sockets: Vec<_> = self.sockets.iter().collect();
        sockets.sort_by_key(|((protocol, local), _)| (*protocol, *local));
        for ((protocol, local), observers) in sockets {
            // Distinct networks behind each observed external endpoint.
            let mut by_endpoint: HashMap<SocketAddr, BTreeSet<IpAddr>> = HashMap::new();
            for observation in observers.values() {
                networks_all.insert(observation.network);
                by_endpoint
                    .entry(observation.observed)
                    .or_default()
                    .insert(observation.network);
            }
            let mut confirmed: Vec<(SocketAddr, usize)> = by_endpoint
                .iter()
                .filter(|(_, networks)| networks.len() >= self.min_networks)
                .map(|(addr, networks)| (*addr, networks.len()))
                .collect();
            confirmed.sort_by_key(|(addr, n)| (std::cmp::Reverse(*n), *addr));
            for (addr, _) in &confirmed {
                if !public_ips.contains(&addr.ip()) {
                    public_ips.push(addr.ip());
                }
                if self.local_ips.contains(&addr.ip()) && addr.port() == local.port() {
                    public = true;
                } else {
                    cone = true;
                }
                let endpoint = Endpoint::new(*protocol, *addr);
                if !external.contains(&endpoint) {
                    external.push(endpoint);
                }
                out.port_preserved = Some(addr.port() == local.port());
            }
            // One external IP, several ports, from observers in distinct networks:
            // endpoint-dependent mapping.
            let mut ports_by_ip: HashMap<IpAddr, Vec<(Instant, u16)>> = HashMap::new();
            for observation in observers.values() {
                ports_by_ip
                    .entry(observation.observed.ip())
                    .or_default()
                    .push((observation.at, observation.observed.port()));
            }
            for (ip, mut ports) in ports_by_ip {
                let networks: BTreeSet<IpAddr> = observers
                    .values()
                    .filter(|o| o.observed.ip() == ip)
                    .map(|o| o.network)
                    .collect();
                let distinct_ports: BTreeSet<u16> = ports.iter().map(|(_, p)| *p).collect();
                if distinct_ports.len() >= 2 && networks.len() >= self.min_networks.min(2) {
                    symmetric = true;
                    if !public_ips.contains(&ip) {
                        public_ips.push(ip);
                    }
                    out.port_preserved = Some(distinct_ports.contains(&local.port()));
                    ports.sort();
                    let deltas: BTreeSet<i32> = ports
                        .windows(2)
                        .map(|w| i32::from(w[1].1) - i32::from(w[0].1))
                        .collect();
                    out.port_delta = (deltas.len() == 1)
                        .then(|| deltas.into_iter().next())
                        .flatten();
                }
            }
        }
        out.observer_networks = networks_all.len();
        out.filtering = self.filtering;
        out.public_ips = public_ips;
        out.mapping = if symmetric {
            MappingBehaviour::EndpointDependent
        } else if cone || public {
            MappingBehaviour::EndpointIndependent
        } else {
            MappingBehaviour::Unknown
        };
        out.nat_type = if !self.mapped.is_empty() {
            NatType::Mapped
        } else if public && !symmetric {
            NatType::Public
        } else if symmetric {
            NatType::Symmetric
        } else if cone {
            NatType::ConeLike
        } else {
            NatType::Unknown
        };
        if symmetric {
            // External ports of a symmetric NAT are per destination: none is an endpoint.
            external.clear();
        }
        let mut all = self.mapped.clone();
        for endpoint in external {
            if !all.contains(&endpoint) {
                all.push(endpoint);
            }
        }
        out.external = all;
        out
    }
}

/// The network an observer is in, for counting distinct networks: IPv4 /24, IPv6 /48.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "10.0.0.2:4000";

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn classifier(min_networks: usize) -> NatClassifier {
        let mut c = NatClassifier::new(min_networks);
        c.set_listen_ports(vec![(Protocol::Rudp, 4000), (Protocol::Tcp, 4001)]);
        c.set_local_ips(vec!["10.0.0.2".parse().expect("ip")]);
        c
    }

    fn observe(c: &mut NatClassifier, n: u8, observed: &str, observer: &str) {
        let _ = c.observe(
            peer(n),
            Protocol::Rudp,
            addr(LOCAL),
            addr(observed),
            observer.parse().expect("ip"),
            Instant::now(),
        );
    }

    #[test]
    fn only_new_facts_may_change_the_verdict() {
        let mut c = classifier(2);
        let seen = |c: &mut NatClassifier, n: u8, observed: &str, observer: &str| {
            c.observe(
                peer(n),
                Protocol::Rudp,
                addr(LOCAL),
                addr(observed),
                observer.parse().expect("ip"),
                Instant::now(),
            )
        };
        assert!(seen(&mut c, 1, "198.51.100.1:4000", "203.0.113.5"));
        // Another identity in the same network, same address: nothing new.
        assert!(!seen(&mut c, 2, "198.51.100.1:4000", "203.0.113.6"));
        assert!(!seen(&mut c, 1, "198.51.100.1:4000", "203.0.113.5"));
        // A new network, or an observer changing its story, may change the verdict.
        assert!(seen(&mut c, 3, "198.51.100.1:4000", "192.0.2.9"));
        assert!(seen(&mut c, 1, "198.51.100.1:4999", "203.0.113.5"));
    }

    #[test]
    fn nothing_known_is_unknown() {
        assert_eq!(classifier(2).classify().nat_type, NatType::Unknown);
    }

    #[test]
    fn cone_needs_two_networks_to_agree() {
        let mut c = classifier(2);
        observe(&mut c, 1, "198.51.100.1:4000", "203.0.113.5");
        assert_eq!(
            c.classify().nat_type,
            NatType::Unknown,
            "one observer proves little"
        );
        // A second identity in the same /24 is not a second network.
        observe(&mut c, 2, "198.51.100.1:4000", "203.0.113.6");
        assert_eq!(c.classify().nat_type, NatType::Unknown);
        observe(&mut c, 3, "198.51.100.1:4000", "192.0.2.9");
        let r = c.classify();
        assert_eq!(r.nat_type, NatType::ConeLike);
        assert_eq!(r.mapping, MappingBehaviour::EndpointIndependent);
        assert_eq!(r.port_preserved, Some(true));
        assert_eq!(
            r.external,
            vec![Endpoint::new(Protocol::Rudp, addr("198.51.100.1:4000"))]
        );
        assert_eq!(
            r.public_ips,
            vec!["198.51.100.1".parse::<IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn symmetric_from_different_ports_with_their_delta() {
        let mut c = classifier(2);
        observe(&mut c, 1, "198.51.100.1:50000", "203.0.113.5");
        observe(&mut c, 2, "198.51.100.1:50002", "192.0.2.9");
        let r = c.classify();
        assert_eq!(r.nat_type, NatType::Symmetric);
        assert_eq!(r.mapping, MappingBehaviour::EndpointDependent);
        assert_eq!(r.port_preserved, Some(false));
        assert_eq!(r.port_delta, Some(2));
        assert!(
            r.external.is_empty(),
            "no per-destination port is an endpoint"
        );
        assert_eq!(r.public_ips.len(), 1);
    }

    #[test]
    fn own_address_seen_is_public() {
        let mut c = classifier(2);
        observe(&mut c, 1, "10.0.0.2:4000", "203.0.113.5");
        observe(&mut c, 2, "10.0.0.2:4000", "192.0.2.9");
        assert_eq!(c.classify().nat_type, NatType::Public);
    }

    #[test]
    fn mapping_wins_and_leads_the_endpoints() {
        let mut c = classifier(1);
        observe(&mut c, 1, "198.51.100.1:4000", "203.0.113.5");
        let mapped = Endpoint::new(Protocol::Tcp, addr("198.51.100.1:4001"));
        c.set_mapped(vec![mapped]);
        let r = c.classify();
        assert_eq!(r.nat_type, NatType::Mapped);
        assert_eq!(r.external[0], mapped);
        assert_eq!(r.external.len(), 2);
    }

    #[test]
    fn dial_ports_and_floods_are_bounded() {
        let mut c = classifier(1);
        // A throw-away dial port is ignored.
        let _ = c.observe(
            peer(1),
            Protocol::Tcp,
            addr("10.0.0.2:55555"),
            addr("198.51.100.1:55555"),
            "203.0.113.5".parse().expect("ip"),
            Instant::now(),
        );
        assert_eq!(c.classify().nat_type, NatType::Unknown);
        // Many observers: at most MAX_OBSERVERS_PER_SOCKET kept.
        for n in 0..100u8 {
            observe(&mut c, n, "198.51.100.1:4000", &format!("192.0.{n}.1"));
        }
        let kept: usize = c.sockets.values().map(|o| o.len()).sum();
        assert_eq!(kept, MAX_OBSERVERS_PER_SOCKET);
        assert_eq!(c.classify().nat_type, NatType::ConeLike);
    }
}
