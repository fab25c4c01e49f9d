//! What each cell should show *today*, stated as code so that a regression and an
//! improvement both print `unexpected` (and make `cargo xtask natlab` exit non-zero).
//!
//! Update these when the behaviour changes on purpose: hole punching (issue 10) makes
//! direct dials between NATed hosts succeed.

use super::nat::NatType;

/// What the observation cell should see for a NAT behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    /// The WAN port equals the host's source port (TCP dial port, rUDP socket port).
    pub(crate) port_preserved: bool,
    /// Two observers at different addresses see the same rUDP port.
    pub(crate) endpoint_independent_mapping: bool,
}

/// The observation cell's expectation for `nat`. Linux `masquerade` keeps a free source
/// port and reuses a socket's mapping for every destination; `fully-random` does neither
/// (it may pick the same port by chance, about once in 30,000 runs).
pub(crate) fn observation(nat: NatType) -> Observation {
    let symmetric = nat == NatType::Symmetric;
    Observation {
        port_preserved: !symmetric,
        endpoint_independent_mapping: !symmetric,
    }
}

/// The class Crust reports once its peer-assisted filtering test has run (`nat_class`):
/// the probes tell the three cones apart.
pub(crate) fn nat_class(nat: NatType) -> &'static str {
    match nat {
        NatType::None => "public",
        NatType::FullCone => "full_cone",
        NatType::AddressRestricted => "address_restricted",
        NatType::PortRestricted => "port_restricted",
        NatType::Symmetric => "symmetric",
    }
}

/// What Crust's NAT classification (`crust-peer`'s `nat` command, `nat_type`) should say
/// right after the observations: filtering is not learnt from observations, so the three
/// cones are all `cone` until the filtering test has run.
pub(crate) fn classification(nat: NatType) -> &'static str {
    match nat {
        NatType::None => "public",
        NatType::FullCone | NatType::AddressRestricted | NatType::PortRestricted => "cone",
        NatType::Symmetric => "symmetric",
    }
}

/// Whether an unsolicited rUDP connection to a host's live mapping gets through, from
/// `(the address the host talks to but another port, another address)`.
pub(crate) fn filtering(nat: NatType) -> (bool, bool) {
    match nat {
        NatType::None | NatType::FullCone => (true, true),
        NatType::AddressRestricted => (true, false),
        NatType::PortRestricted | NatType::Symmetric => (false, false),
    }
}

/// Where `a1` dials `b1` directly in the pair cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The TCP endpoint the rendezvous `pub` observed for `b1`.
    ObservedTcp,
    /// The rUDP endpoint `pub2` observed for `b1`.
    ObservedRudp,
    /// `b1`'s own TCP listening endpoint (its LAN address).
    LanTcp,
    /// `b1`'s own rUDP listening endpoint (its LAN address).
    LanRudp,
}

impl Target {
    /// Every target, in report order.
    pub(crate) const ALL: [Target; 4] = [
        Target::ObservedTcp,
        Target::ObservedRudp,
        Target::LanTcp,
        Target::LanRudp,
    ];

    /// Short name for reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::ObservedTcp => "observed-tcp",
            Target::ObservedRudp => "observed-rudp",
            Target::LanTcp => "lan-tcp",
            Target::LanRudp => "lan-rudp",
        }
    }
}

/// Whether `a1` (behind `_a`) reaches `b1` (behind `b`) by dialling `target`, today.
///
/// - The observed endpoints are `b1`'s listening sockets behind its mapping (TCP dials
///   leave from the listening port, QUIC from its one socket): reachable when nothing
///   filters (no NAT) or the NAT lets anyone in (full cone). `b1` never sent anything to
///   `a1`, so restricted cones and symmetric NATs drop the dial.
/// - LAN endpoints are reachable from elsewhere only when they are public (no NAT); private
///   ones are not routed on the internet segment.
///
/// `a1`'s own NAT does not matter without hole punching: its outbound packets always pass.
pub(crate) fn direct_dial(_a: NatType, b: NatType, target: Target) -> bool {
    match target {
        Target::ObservedTcp | Target::ObservedRudp => {
            matches!(b, NatType::None | NatType::FullCone)
        }
        Target::LanTcp | Target::LanRudp => b == NatType::None,
    }
}

/// The protocol a punch cell runs (the node's other transport is disabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PunchProtocol {
    Udp,
    Tcp,
}

impl PunchProtocol {
    pub(crate) const ALL: [PunchProtocol; 2] = [PunchProtocol::Udp, PunchProtocol::Tcp];

    pub(crate) fn name(self) -> &'static str {
        match self {
            PunchProtocol::Udp => "udp",
            PunchProtocol::Tcp => "tcp",
        }
    }

    /// The `path` a punched connection of this protocol reports.
    pub(crate) fn path(self) -> &'static str {
        match self {
            PunchProtocol::Udp => "punched-udp",
            PunchProtocol::Tcp => "punched-tcp",
        }
    }

    /// The endpoint scheme of the transport.
    pub(crate) fn name_in_endpoints(self) -> &'static str {
        match self {
            PunchProtocol::Udp => "rudp",
            PunchProtocol::Tcp => "tcp",
        }
    }

    /// The `crust-peer` flag that disables the other transport.
    pub(crate) fn disable_other(self) -> &'static str {
        match self {
            PunchProtocol::Udp => "--no-tcp",
            PunchProtocol::Tcp => "--no-rudp",
        }
    }
}

/// What a punch cell should show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PunchExpectation {
    /// The share of trials that must connect (0: none can).
    pub(crate) min_success: f64,
    /// Failures must come within this time and name both NAT classes.
    pub(crate) fail_within: Option<std::time::Duration>,
}

/// Median time to a punched connection must stay under this.
pub(crate) const PUNCH_MEDIAN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What hole punching achieves between `a` and `b` (both behind NAT):
/// - cones of any filtering: always, by UDP and by TCP (one mapping per socket: what the
///   rendezvous observed is what the peer must reach; the two sides' packets open both
///   filters);
/// - symmetric against a cone, by UDP: the birthday search (256 sockets on the symmetric
///   side, 1,000 probes from the other) finds a pair with a probability of about 98 %
///   (`1 - (1 - 256/64,512)^1000`); against a port-restricted cone as well, since the
///   cone's probes open its filter towards each port they try. Not by TCP: Crust runs no
///   birthday search over TCP (every attempt is a SYN);
/// - symmetric on both sides: never; fails at once with both classes named.
pub(crate) fn punch(a: NatType, b: NatType, protocol: PunchProtocol) -> PunchExpectation {
    let symmetric = [a, b].iter().filter(|t| **t == NatType::Symmetric).count();
    let other = if a == NatType::Symmetric { b } else { a };
    let min_success = match (symmetric, protocol) {
        (0, _) => 1.0,
        (1, PunchProtocol::Udp) if other == NatType::PortRestricted => 0.90,
        (1, PunchProtocol::Udp) => 0.95,
        _ => 0.0,
    };
    PunchExpectation {
        min_success,
        fail_within: (symmetric == 2).then_some(std::time::Duration::from_secs(5)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filtering_is_ordered_by_strictness() {
        // A stricter NAT never lets in what a looser one refuses.
        let order = [
            NatType::None,
            NatType::FullCone,
            NatType::AddressRestricted,
            NatType::PortRestricted,
        ];
        for pair in order.windows(2) {
            let (loose, strict) = (filtering(pair[0]), filtering(pair[1]));
            assert!(loose.0 >= strict.0 && loose.1 >= strict.1, "{pair:?}");
        }
    }

    #[test]
    fn only_public_or_full_cone_hosts_are_dialled_directly() {
        for a in NatType::ALL {
            for b in NatType::ALL {
                let any = Target::ALL.iter().any(|t| direct_dial(a, b, *t));
                assert_eq!(any, matches!(b, NatType::None | NatType::FullCone));
            }
        }
    }
}
