//! The NAT behaviours a lab router can have, and the nftables ruleset of each.
//!
//! The rulesets are small commented files in `xtask/natlab/`: `router.nft` (the table and
//! the WAN-side input firewall every router has) followed by one file per behaviour. They
//! are loaded as one `nft -f -` transaction, so re-configuring a router is atomic.

use std::fmt;

/// Common part of every router's ruleset: replaces the `natlab` table, WAN input firewall.
const ROUTER: &str = include_str!("../../natlab/router.nft");

/// One NAT behaviour (RFC 4787 terms in the docs of each variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum NatType {
    /// No NAT: routed public addresses behind the router, no filtering.
    None,
    /// Endpoint-independent mapping and filtering (emulated: masquerade + dynamic DNAT map).
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering (emulated like the full
    /// cone, plus a set of the addresses each mapping sent to).
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (`masquerade`).
    PortRestricted,
    /// Endpoint-dependent mapping with random ports (`masquerade fully-random`).
    Symmetric,
}

impl NatType {
    /// The types that translate (what hole punching is about).
    pub(crate) const BEHIND: [NatType; 4] = [
        NatType::FullCone,
        NatType::AddressRestricted,
        NatType::PortRestricted,
        NatType::Symmetric,
    ];

    /// Every behaviour, in the order the matrix lists them.
    pub(crate) const ALL: [NatType; 5] = [
        NatType::None,
        NatType::FullCone,
        NatType::AddressRestricted,
        NatType::PortRestricted,
        NatType::Symmetric,
    ];

    /// The name used in cell names, reports and on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            NatType::None => "none",
            NatType::FullCone => "full-cone",
            NatType::AddressRestricted => "address-restricted",
            NatType::PortRestricted => "port-restricted",
            NatType::Symmetric => "symmetric",
        }
    }

    /// The behaviour called `name` (also `masquerade` and `masquerade-random`).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "masquerade" => return Some(NatType::PortRestricted),
            "masquerade-random" => return Some(NatType::Symmetric),
            _ => {}
        }
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the hosts behind the router have private addresses behind a translation.
    pub(crate) fn translates(self) -> bool {
        self != NatType::None
    }

    /// The file of this behaviour (without the common `router.nft` part).
    fn rules(self) -> &'static str {
        match self {
            NatType::None => include_str!("../../natlab/none.nft"),
            NatType::FullCone => include_str!("../../natlab/full-cone.nft"),
            NatType::AddressRestricted => include_str!("../../natlab/address-restricted.nft"),
            NatType::PortRestricted => include_str!("../../natlab/port-restricted.nft"),
            NatType::Symmetric => include_str!("../../natlab/symmetric.nft"),
        }
    }

    /// The complete ruleset for a router of this behaviour, for `nft -f -`.
    pub(crate) fn ruleset(self) -> String {
        format!("{ROUTER}\n{}", self.rules())
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in NatType::ALL {
            assert_eq!(NatType::from_name(t.name()), Some(t));
        }
        assert_eq!(
            NatType::from_name("masquerade"),
            Some(NatType::PortRestricted)
        );
        assert_eq!(NatType::from_name("cone"), None);
    }

    #[test]
    fn every_ruleset_replaces_the_table() {
        for t in NatType::ALL {
            let rules = t.ruleset();
            assert!(rules.contains("delete table ip natlab"), "{t}");
            assert!(
                rules.contains("chain forward"),
                "{t}: filtering is explicit"
            );
        }
        assert!(NatType::Symmetric.ruleset().contains("fully-random"));
        assert!(!NatType::PortRestricted.ruleset().contains("fully-random"));
    }
}
