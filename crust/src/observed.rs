//! Our address as connected peers observe it: one vote per peer, dropped when the peer goes,
//! so the table never outgrows the peer table and one peer cannot stuff it.

use std::collections::HashMap;
use std::net::SocketAddr;

use crust_core::{Endpoint, PeerId};

/// Votes of connected peers for where they see us.
#[derive(Debug, Default)]
pub(crate) struct ObservedAddresses {
    votes: HashMap<PeerId, Endpoint>,
}

impl ObservedAddresses {
    /// Records `peer`'s vote (replacing its earlier one).
    pub(crate) fn record(&mut self, peer: PeerId, endpoint: Endpoint) {
        self.votes.insert(peer, endpoint);
    }

    /// Drops the vote of a peer that is gone.
    pub(crate) fn forget(&mut self, peer: PeerId) {
        self.votes.remove(&peer);
    }

    /// Each observed endpoint with the number of peers reporting it, most confirmed first.
    pub(crate) fn tally(&self) -> Vec<(Endpoint, usize)> {
        let mut votes: HashMap<Endpoint, usize> = HashMap::new();
        for endpoint in self.votes.values() {
            *votes.entry(*endpoint).or_insert(0) += 1;
        }
        let mut out: Vec<(Endpoint, usize)> = votes.into_iter().collect();
        out.sort_by_key(|(endpoint, votes)| (std::cmp::Reverse(*votes), *endpoint));
        out
    }
}

/// An observed address worth recording: a concrete unicast address with a port.
pub(crate) fn usable_observed_address(addr: SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vote_per_peer() {
        let ep = |s: &str| s.parse::<Endpoint>().expect("endpoint");
        let mut table = ObservedAddresses::default();
        let (a, b, c) = (
            PeerId::from_bytes([1; 32]),
            PeerId::from_bytes([2; 32]),
            PeerId::from_bytes([3; 32]),
        );
        table.record(a, ep("tcp://192.0.2.1:1"));
        table.record(a, ep("tcp://192.0.2.9:9"));
        table.record(b, ep("tcp://192.0.2.9:9"));
        table.record(c, ep("tcp://192.0.2.1:1"));
        assert_eq!(
            table.tally(),
            vec![(ep("tcp://192.0.2.9:9"), 2), (ep("tcp://192.0.2.1:1"), 1)]
        );
        table.forget(a);
        table.forget(b);
        assert_eq!(table.tally(), vec![(ep("tcp://192.0.2.1:1"), 1)]);
    }

    #[test]
    fn unusable_addresses() {
        assert!(!usable_observed_address("0.0.0.0:1".parse().expect("addr")));
        assert!(!usable_observed_address(
            "192.0.2.1:0".parse().expect("addr")
        ));
        assert!(!usable_observed_address(
            "224.0.0.1:5".parse().expect("addr")
        ));
        assert!(usable_observed_address(
            "192.0.2.1:5".parse().expect("addr")
        ));
    }
}
