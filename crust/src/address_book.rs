//! The address book: where each known peer may be reached, fed by every source (discovery
//! candidates from the bootstrap cache, LAN beacons or gossip, endpoints that answered our
//! dials, addresses the application adds), so that a peer can be connected to by its
//! `PeerId` alone.
//!
//! Gossip records enter as hints ([`AddressBook::insert_hint`]) that never displace what
//! was learned otherwise.
//!
//! Pure and bounded: at most `capacity` peers (the least recently touched one is evicted,
//! hint-only peers first)
//! and [`MAX_ENDPOINTS_PER_PEER`] endpoints per peer (most recent first). Time is passed in.

use std::collections::HashMap;
use std::time::Instant;

use crust_core::{Endpoint, PeerAddr, PeerId};

/// Endpoints remembered per peer; older ones are forgotten first.
pub const MAX_ENDPOINTS_PER_PEER: usize = 8;

/// Relay hints remembered per peer.
const MAX_RELAYS_PER_PEER: usize = 4;

#[derive(Clone, Debug)]
struct Entry {
    /// Most recent (or most recently confirmed) first.
    endpoints: Vec<Endpoint>,
    relays: Vec<PeerId>,
    touched: Instant,
    /// Everything known comes from gossip hints ([`AddressBook::insert_hint`]): such an
    /// entry is the first evicted, and only such entries make room for hints.
    hint_only: bool,
}

/// Bounded map from `PeerId` to the ways to reach the peer.
#[derive(Clone, Debug)]
pub(crate) struct AddressBook {
    capacity: usize,
    entries: HashMap<PeerId, Entry>,
}

impl AddressBook {
    /// An empty book holding at most `capacity` peers (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        AddressBook {
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// Learns `addr` at `now`: its endpoints go first (most recent knowledge), duplicates
    /// are merged, and the peer becomes the most recently touched. A record without any
    /// endpoint or relay is ignored.
    pub(crate) fn insert(&mut self, addr: &PeerAddr, now: Instant) {
        if addr.endpoints.is_empty() && addr.relays.is_empty() {
            return;
        }
        if !self.entries.contains_key(&addr.peer_id) && self.entries.len() >= self.capacity {
            self.evict_oldest();
        }
        let entry = self.entries.entry(addr.peer_id).or_insert_with(|| Entry {
            endpoints: Vec::new(),
            relays: Vec::new(),
            touched: now,
            hint_only: false,
        });
        entry.touched = now;
        entry.hint_only = false;
        for endpoint in addr.endpoints.iter().rev() {
            entry.endpoints.retain(|known| known != endpoint);
            entry.endpoints.insert(0, *endpoint);
        }
        entry.endpoints.truncate(MAX_ENDPOINTS_PER_PEER);
        for relay in addr.relays.iter().rev() {
            entry.relays.retain(|known| known != relay);
            entry.relays.insert(0, *relay);
        }
        entry.relays.truncate(MAX_RELAYS_PER_PEER);
    }

    /// Learns a gossip hint heard at `heard` (the record's age taken off). A hint never
    /// displaces what was learned otherwise: its endpoints go after the known ones while
    /// there is room, and a new peer takes the place of the oldest hint-only peer when the
    /// book is full (never of a peer known otherwise; then the hint is dropped). Returns
    /// whether the peer was new to the book.
    pub(crate) fn insert_hint(&mut self, addr: &PeerAddr, heard: Instant) -> bool {
        if addr.endpoints.is_empty() && addr.relays.is_empty() {
            return false;
        }
        let new = !self.entries.contains_key(&addr.peer_id);
        if new && self.entries.len() >= self.capacity {
            let oldest_hint = self
                .entries
                .iter()
                .filter(|(_, entry)| entry.hint_only)
                .min_by_key(|(id, entry)| (entry.touched, **id))
                .map(|(id, _)| *id);
            match oldest_hint {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => return false,
            }
        }
        let entry = self.entries.entry(addr.peer_id).or_insert_with(|| Entry {
            endpoints: Vec::new(),
            relays: Vec::new(),
            touched: heard,
            hint_only: true,
        });
        if entry.hint_only {
            entry.touched = entry.touched.max(heard);
        }
        for endpoint in &addr.endpoints {
            if entry.endpoints.len() < MAX_ENDPOINTS_PER_PEER && !entry.endpoints.contains(endpoint)
            {
                entry.endpoints.push(*endpoint);
            }
        }
        for relay in &addr.relays {
            if entry.relays.len() < MAX_RELAYS_PER_PEER && !entry.relays.contains(relay) {
                entry.relays.push(*relay);
            }
        }
        new
    }

    /// We reached `peer` at `endpoint` at `now`: the endpoint moves to the front.
    pub(crate) fn confirm(&mut self, peer: PeerId, endpoint: Endpoint, now: Instant) {
        self.insert(&PeerAddr::new(peer).with_endpoints([endpoint]), now);
    }

    /// The known ways to reach `peer`.
    pub(crate) fn lookup(&self, peer: PeerId) -> Option<PeerAddr> {
        self.entries.get(&peer).map(|entry| to_addr(peer, entry))
    }

    /// Forgets `peer`.
    pub(crate) fn remove(&mut self, peer: PeerId) -> bool {
        self.entries.remove(&peer).is_some()
    }

    /// Every known peer, most recently touched first.
    pub(crate) fn all(&self) -> Vec<PeerAddr> {
        let mut entries: Vec<(&PeerId, &Entry)> = self.entries.iter().collect();
        entries.sort_by_key(|(id, entry)| (std::cmp::Reverse(entry.touched), **id));
        entries
            .into_iter()
            .map(|(peer, entry)| to_addr(*peer, entry))
            .collect()
    }

    /// How many peers are known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Evicts the least recently touched peer, gossip hints first.
    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(id, entry)| (!entry.hint_only, entry.touched, **id))
            .map(|(id, _)| *id);
        if let Some(oldest) = oldest {
            self.entries.remove(&oldest);
        }
    }
}

fn to_addr(peer: PeerId, entry: &Entry) -> PeerAddr {
    let mut addr = PeerAddr::new(peer).with_endpoints(entry.endpoints.iter().copied());
    addr.relays = entry.relays.clone();
    addr
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn ep(s: &str) -> Endpoint {
        s.parse().expect("endpoint")
    }

    #[test]
    fn newest_endpoints_first_without_duplicates() {
        let t0 = Instant::now();
        let mut book = AddressBook::new(10);
        book.insert(
            &PeerAddr::new(peer(1))
                .with_endpoints([ep("tcp://10.0.0.1:1"), ep("rudp://10.0.0.1:2")]),
            t0,
        );
        book.insert(
            &PeerAddr::new(peer(1))
                .with_endpoints([ep("tcp://192.0.2.1:3"), ep("tcp://10.0.0.1:1")]),
            t0,
        );
        let addr = book.lookup(peer(1)).expect("known");
        assert_eq!(
            addr.endpoints,
            vec![
                ep("tcp://192.0.2.1:3"),
                ep("tcp://10.0.0.1:1"),
                ep("rudp://10.0.0.1:2")
            ]
        );
        book.confirm(peer(1), ep("rudp://10.0.0.1:2"), t0);
        assert_eq!(
            book.lookup(peer(1)).expect("known").endpoints[0],
            ep("rudp://10.0.0.1:2")
        );
    }

    #[test]
    fn bounded_in_peers_and_endpoints() {
        let t0 = Instant::now();
        let mut book = AddressBook::new(3);
        for n in 0..10u8 {
            let endpoints: Vec<Endpoint> = (0..20u16)
                .map(|p| Endpoint::new(crust_core::Protocol::Tcp, ([10, 0, 0, n], p + 1).into()))
                .collect();
            book.insert(
                &PeerAddr::new(peer(n)).with_endpoints(endpoints),
                t0 + Duration::from_secs(u64::from(n)),
            );
            assert!(book.len() <= 3);
        }
        // The three most recently touched peers remain, each with 8 endpoints.
        let all = book.all();
        assert_eq!(
            all.iter().map(|a| a.peer_id).collect::<Vec<_>>(),
            vec![peer(9), peer(8), peer(7)]
        );
        assert!(
            all.iter()
                .all(|a| a.endpoints.len() == MAX_ENDPOINTS_PER_PEER)
        );
    }

    #[test]
    fn touching_protects_from_eviction() {
        let t0 = Instant::now();
        let mut book = AddressBook::new(2);
        book.insert(
            &PeerAddr::new(peer(1)).with_endpoints([ep("tcp://10.0.0.1:1")]),
            t0,
        );
        book.insert(
            &PeerAddr::new(peer(2)).with_endpoints([ep("tcp://10.0.0.2:1")]),
            t0 + Duration::from_secs(1),
        );
        book.confirm(peer(1), ep("tcp://10.0.0.1:1"), t0 + Duration::from_secs(2));
        book.insert(
            &PeerAddr::new(peer(3)).with_endpoints([ep("tcp://10.0.0.3:1")]),
            t0 + Duration::from_secs(3),
        );
        assert!(book.lookup(peer(1)).is_some());
        assert!(book.lookup(peer(2)).is_none());
        assert!(book.lookup(peer(3)).is_some());
    }

    #[test]
    fn hints_never_displace_what_was_learned_otherwise() {
        let t0 = Instant::now();
        let mut book = AddressBook::new(3);
        book.confirm(peer(1), ep("tcp://10.0.0.1:1"), t0);
        // A hint about a known peer goes after what is known, and does not touch it.
        let lie = PeerAddr::new(peer(1)).with_endpoints([ep("tcp://192.0.2.66:1")]);
        assert!(!book.insert_hint(&lie, t0 + Duration::from_secs(5)));
        assert_eq!(
            book.lookup(peer(1)).expect("known").endpoints,
            vec![ep("tcp://10.0.0.1:1"), ep("tcp://192.0.2.66:1")]
        );
        // A full list of known endpoints takes no hint at all.
        let full: Vec<Endpoint> = (1..=8)
            .map(|p| ep(&format!("tcp://10.0.0.2:{p}")))
            .collect();
        book.insert(&PeerAddr::new(peer(2)).with_endpoints(full.clone()), t0);
        book.insert_hint(
            &PeerAddr::new(peer(2)).with_endpoints([ep("tcp://192.0.2.66:1")]),
            t0,
        );
        assert_eq!(book.lookup(peer(2)).expect("known").endpoints, full);
        // Hints fill the free place, then replace each other, never a peer known otherwise.
        let later = t0 + Duration::from_secs(10);
        for n in 10..20u8 {
            let hint = PeerAddr::new(peer(n)).with_endpoints([ep("tcp://192.0.2.1:1")]);
            book.insert_hint(&hint, later + Duration::from_secs(u64::from(n)));
            assert_eq!(book.len(), 3);
            assert!(book.lookup(peer(1)).is_some() && book.lookup(peer(2)).is_some());
        }
        assert!(book.lookup(peer(19)).is_some());
        // A book full of peers known otherwise drops hints about new peers.
        book.confirm(peer(3), ep("tcp://10.0.0.3:1"), later);
        assert!(!book.insert_hint(
            &PeerAddr::new(peer(30)).with_endpoints([ep("tcp://192.0.2.1:1")]),
            later
        ));
        assert!(book.lookup(peer(30)).is_none());
        // A hinted peer confirmed later is no longer a hint: its endpoint leads.
        let mut small = AddressBook::new(2);
        small.insert_hint(
            &PeerAddr::new(peer(4)).with_endpoints([ep("tcp://192.0.2.4:1")]),
            t0,
        );
        small.confirm(peer(4), ep("tcp://10.0.0.4:1"), t0);
        small.confirm(peer(5), ep("tcp://10.0.0.5:1"), t0);
        assert!(!small.insert_hint(
            &PeerAddr::new(peer(6)).with_endpoints([ep("tcp://192.0.2.6:1")]),
            t0
        ));
        assert_eq!(
            small.lookup(peer(4)).expect("known").endpoints[0],
            ep("tcp://10.0.0.4:1")
        );
    }

    #[test]
    fn empty_records_are_ignored_and_remove_forgets() {
        let t0 = Instant::now();
        let mut book = AddressBook::new(2);
        book.insert(&PeerAddr::new(peer(1)), t0);
        assert_eq!(book.len(), 0);
        book.confirm(peer(1), ep("tcp://10.0.0.1:1"), t0);
        assert!(book.remove(peer(1)));
        assert!(!book.remove(peer(1)));
    }
}
