//! What gossip remembers about each connected peer (its budget, what it said about itself,
//! whom it taught us about) and what we send it next. Pure: time is passed in.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crust_core::limits::TokenBucket;
use crust_core::{Endpoint, PeerId, Protocol};

use super::GossipConfig;
use super::messages::{GossipMessage, PeerRecord};
use crate::reason::FloodLimit;

/// Whether gossip may make us dial `endpoint`: a transport we run, a real port and address
/// (not unspecified, multicast, broadcast or link-local), loopback only when loopback
/// endpoints are enabled.
pub(crate) fn usable_endpoint(
    endpoint: &Endpoint,
    protocols: &[Protocol],
    include_loopback: bool,
) -> bool {
    let addr = endpoint.addr();
    let ip = addr.ip();
    let scoped_out = match ip {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    protocols.contains(&endpoint.protocol())
        && addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !scoped_out
        && (include_loopback || !ip.is_loopback())
}

/// A peer record that passed the checks, for the address book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hint {
    pub(crate) peer: PeerId,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) age: Duration,
}

/// What a gossip message asks of us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The peer asks for up to this many records.
    Answer(usize),
    /// Records that passed the checks, and how many did not.
    Learned {
        hints: Vec<Hint>,
        /// Records ignored: stale, about us, or without a usable endpoint.
        ignored: usize,
        /// Records ignored because the peer already taught us its share of peers.
        over_cap: usize,
    },
}

#[derive(Debug)]
struct PeerState {
    budget: TokenBucket,
    /// The endpoints the peer gave for itself, and when.
    own: Option<(Vec<Endpoint>, Instant)>,
    /// The peers it taught us about (at most `max_records_per_source`).
    taught: HashSet<PeerId>,
    /// Where the next push to this peer starts in the list of records we can send: first
    /// hand (connected peers' own records), second hand (records heard by gossip).
    cursor: usize,
    heard_cursor: usize,
}

/// A record heard by gossip, passed on in turn (multi-hop discovery).
#[derive(Debug)]
struct Heard {
    endpoints: Vec<Endpoint>,
    /// When the peer itself last gave these endpoints (the record's age taken off).
    at: Instant,
    /// Who told us (never sent the record back).
    source: PeerId,
}

/// Gossip state of a node: one entry per connected peer that gossips.
#[derive(Debug)]
pub(crate) struct GossipTable {
    us: PeerId,
    config: GossipConfig,
    protocols: Vec<Protocol>,
    include_loopback: bool,
    peers: HashMap<PeerId, PeerState>,
    /// At most [`GossipConfig::max_heard`] records heard by gossip, the oldest dropped first.
    heard: HashMap<PeerId, Heard>,
}

impl GossipTable {
    pub(crate) fn new(
        us: PeerId,
        config: GossipConfig,
        protocols: Vec<Protocol>,
        include_loopback: bool,
    ) -> Self {
        GossipTable {
            us,
            config,
            protocols,
            include_loopback,
            peers: HashMap::new(),
            heard: HashMap::new(),
        }
    }

    fn state(&mut self, peer: PeerId, now: Instant) -> &mut PeerState {
        let config = &self.config;
        self.peers.entry(peer).or_insert_with(|| PeerState {
            budget: TokenBucket::new(
                config.messages_per_minute / 60.0,
                config.burst_messages,
                now,
            ),
            own: None,
            taught: HashSet::new(),
            cursor: 0,
            heard_cursor: 0,
        })
    }

    /// `peer` is gone: everything about it is forgotten (its records are no longer sent).
    pub(crate) fn disconnected(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    /// Forgets every peer not in `connected` (a message read just as its peer was removed
    /// may have left state behind).
    pub(crate) fn retain_connected(&mut self, connected: &HashSet<PeerId>) {
        self.peers.retain(|peer, _| connected.contains(peer));
    }

    /// Peers with state (for tests and bounds).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    /// A message from the connected peer `from` at `now`: what to do, or the limit it broke.
    pub(crate) fn on_message(
        &mut self,
        from: PeerId,
        message: GossipMessage,
        now: Instant,
    ) -> Result<Outcome, FloodLimit> {
        let (us, max_age, cap, records_per_message) = (
            self.us,
            self.config.max_age,
            self.config.max_records_per_source,
            self.config.records_per_message,
        );
        let protocols = self.protocols.clone();
        let include_loopback = self.include_loopback;
        let state = self.state(from, now);
        if !state.budget.try_take(now, 1.0) {
            return Err(FloodLimit::PeerRecords);
        }
        let records = match message {
            GossipMessage::Request { want } => {
                return Ok(Outcome::Answer(usize::from(want).min(records_per_message)));
            }
            GossipMessage::Records(records) => records,
        };
        let mut hints: Vec<Hint> = Vec::new();
        let (mut ignored, mut over_cap) = (0, 0);
        for record in records {
            let endpoints: Vec<Endpoint> = record
                .endpoints
                .into_iter()
                .filter(|ep| usable_endpoint(ep, &protocols, include_loopback))
                .collect();
            let repeated = hints.iter().any(|h| h.peer == record.peer);
            if record.peer == us || record.age > max_age || endpoints.is_empty() || repeated {
                ignored += 1;
                continue;
            }
            if record.peer == from {
                state.own = Some((
                    endpoints.clone(),
                    now.checked_sub(record.age).unwrap_or(now),
                ));
            } else if !state.taught.contains(&record.peer) {
                if state.taught.len() >= cap {
                    over_cap += 1;
                    continue;
                }
                state.taught.insert(record.peer);
            }
            hints.push(Hint {
                peer: record.peer,
                endpoints,
                age: record.age,
            });
        }
        for hint in &hints {
            if hint.peer != from {
                let at = now.checked_sub(hint.age).unwrap_or(now);
                self.remember(hint.peer, &hint.endpoints, at, from);
            }
        }
        Ok(Outcome::Learned {
            hints,
            ignored,
            over_cap,
        })
    }

    /// Keeps a record heard by gossip to pass on (the newest per peer), within the bound.
    fn remember(&mut self, peer: PeerId, endpoints: &[Endpoint], at: Instant, source: PeerId) {
        if let Some(known) = self.heard.get(&peer) {
            if known.at >= at {
                return;
            }
        } else if self.heard.len() >= self.config.max_heard {
            let oldest = self
                .heard
                .iter()
                .min_by_key(|(id, heard)| (heard.at, **id))
                .map(|(id, _)| *id);
            match oldest {
                Some(oldest) if self.heard[&oldest].at < at => {
                    self.heard.remove(&oldest);
                }
                _ => return,
            }
        }
        self.heard.insert(
            peer,
            Heard {
                endpoints: endpoints.to_vec(),
                at,
                source,
            },
        );
    }

    /// Records heard by gossip that we keep to pass on.
    #[cfg(test)]
    pub(crate) fn heard_len(&self) -> usize {
        self.heard.len()
    }

    /// The records to send `to` at `now`, at most `max`: our own first (when we have
    /// endpoints), then the next window of the other connected peers' own records (in
    /// `PeerId` order, so that successive pushes go round all of them), then, while there
    /// is room, the next window of records heard by gossip (not about `to`, not from `to`,
    /// not about a connected peer whose own record we have, not stale).
    pub(crate) fn select(
        &mut self,
        to: PeerId,
        own: &[Endpoint],
        now: Instant,
        max: usize,
    ) -> Vec<PeerRecord> {
        let max = max.min(self.config.records_per_message);
        let mut records = Vec::with_capacity(max);
        if !own.is_empty() && max > 0 {
            records.push(PeerRecord {
                peer: self.us,
                age: Duration::ZERO,
                endpoints: own
                    .iter()
                    .take(super::MAX_ENDPOINTS_PER_RECORD)
                    .copied()
                    .collect(),
            });
        }
        let max_age = self.config.max_age;
        let mut others: Vec<(PeerId, &Vec<Endpoint>, Duration)> = self
            .peers
            .iter()
            .filter(|(peer, _)| **peer != to)
            .filter_map(|(peer, state)| {
                let (endpoints, heard) = state.own.as_ref()?;
                let age = now.saturating_duration_since(*heard);
                (age <= max_age).then_some((*peer, endpoints, age))
            })
            .collect();
        others.sort_by_key(|(peer, _, _)| *peer);
        let room = max.saturating_sub(records.len());
        let total = others.len();
        let start = self.peers.get(&to).map_or(0, |s| s.cursor) % total.max(1);
        for i in 0..room.min(total) {
            let (peer, endpoints, age) = &others[(start + i) % total];
            records.push(PeerRecord {
                peer: *peer,
                age: *age,
                endpoints: (*endpoints).clone(),
            });
        }
        let sent = room.min(total);
        let first_hand: HashSet<PeerId> = others.iter().map(|(peer, _, _)| *peer).collect();
        let mut second: Vec<(PeerId, &Heard, Duration)> = self
            .heard
            .iter()
            .filter(|(peer, heard)| {
                **peer != to && heard.source != to && !first_hand.contains(*peer)
            })
            .filter_map(|(peer, heard)| {
                let age = now.saturating_duration_since(heard.at);
                (age <= max_age).then_some((*peer, heard, age))
            })
            .collect();
        second.sort_by_key(|(peer, _, _)| *peer);
        let room2 = max.saturating_sub(records.len());
        let total2 = second.len();
        let start2 = self.peers.get(&to).map_or(0, |s| s.heard_cursor) % total2.max(1);
        let mut extra = Vec::with_capacity(room2.min(total2));
        for i in 0..room2.min(total2) {
            let (peer, heard, age) = &second[(start2 + i) % total2];
            extra.push(PeerRecord {
                peer: *peer,
                age: *age,
                endpoints: heard.endpoints.clone(),
            });
        }
        records.extend(extra);
        let sent2 = room2.min(total2);
        if let Some(state) = self.peers.get_mut(&to) {
            state.cursor = (start + sent) % total.max(1);
            state.heard_cursor = (start2 + sent2) % total2.max(1);
        }
        records
    }

    /// Starts tracking `peer` (connected at `now`), so pushes to it go round the others.
    pub(crate) fn connected(&mut self, peer: PeerId, now: Instant) {
        self.state(peer, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn ep(s: &str) -> Endpoint {
        s.parse().expect("endpoint")
    }

    fn table(config: GossipConfig, include_loopback: bool) -> GossipTable {
        GossipTable::new(
            peer(0),
            config,
            vec![Protocol::Tcp, Protocol::Rudp],
            include_loopback,
        )
    }

    fn record(n: u8, endpoint: &str) -> PeerRecord {
        PeerRecord {
            peer: peer(n),
            age: Duration::from_secs(1),
            endpoints: vec![ep(endpoint)],
        }
    }

    fn learned(outcome: Outcome) -> (Vec<Hint>, usize, usize) {
        match outcome {
            Outcome::Learned {
                hints,
                ignored,
                over_cap,
            } => (hints, ignored, over_cap),
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn scopes_we_do_not_dial_are_filtered() {
        let protocols = [Protocol::Tcp];
        for (endpoint, loopback, usable) in [
            ("tcp://192.0.2.1:80", false, true),
            ("tcp://[2001:db8::1]:80", false, true),
            ("tcp://127.0.0.1:80", false, false),
            ("tcp://127.0.0.1:80", true, true),
            ("tcp://[::1]:80", false, false),
            ("tcp://192.0.2.1:0", true, false),
            ("tcp://0.0.0.0:80", true, false),
            ("tcp://[::]:80", true, false),
            ("tcp://224.0.0.1:80", true, false),
            ("tcp://255.255.255.255:80", true, false),
            ("tcp://169.254.1.1:80", true, false),
            ("tcp://[fe80::1]:80", true, false),
            ("tcp://[ff02::1]:80", true, false),
            ("rudp://192.0.2.1:80", true, false),
        ] {
            assert_eq!(
                usable_endpoint(&ep(endpoint), &protocols, loopback),
                usable,
                "{endpoint} (loopback {loopback})"
            );
        }
    }

    #[test]
    fn records_are_checked_before_use() {
        let t0 = Instant::now();
        let mut table = table(GossipConfig::default(), false);
        let mut stale = record(5, "tcp://192.0.2.5:1");
        stale.age = Duration::from_secs(3600);
        let mut mixed = record(6, "tcp://127.0.0.1:1");
        mixed.endpoints.push(ep("tcp://192.0.2.6:1"));
        let message = GossipMessage::Records(vec![
            record(0, "tcp://192.0.2.9:1"), // about us
            record(2, "tcp://127.0.0.1:1"), // loopback only
            stale,
            mixed,
            record(7, "tcp://192.0.2.7:1"),
            record(7, "tcp://192.0.2.8:1"), // repeated in one message
        ]);
        let (hints, ignored, over_cap) =
            learned(table.on_message(peer(1), message, t0).expect("in budget"));
        assert_eq!((ignored, over_cap), (4, 0));
        assert_eq!(
            hints.iter().map(|h| h.peer).collect::<Vec<_>>(),
            vec![peer(6), peer(7)]
        );
        assert_eq!(hints[0].endpoints, vec![ep("tcp://192.0.2.6:1")]);
    }

    #[test]
    fn a_source_teaches_at_most_its_share() {
        let t0 = Instant::now();
        let config = GossipConfig::default().with_max_records_per_source(3);
        let mut table = table(config, false);
        let first: Vec<PeerRecord> = (10..15).map(|n| record(n, "tcp://192.0.2.1:1")).collect();
        let (hints, _, over_cap) = learned(
            table
                .on_message(peer(1), GossipMessage::Records(first), t0)
                .expect("in budget"),
        );
        assert_eq!((hints.len(), over_cap), (3, 2));
        // The peers already taught may be refreshed; its own record never counts.
        let again = vec![
            record(10, "tcp://192.0.2.2:1"),
            record(1, "tcp://192.0.2.3:1"),
            record(20, "tcp://192.0.2.4:1"),
        ];
        let (hints, _, over_cap) = learned(
            table
                .on_message(peer(1), GossipMessage::Records(again), t0)
                .expect("in budget"),
        );
        assert_eq!(
            hints.iter().map(|h| h.peer).collect::<Vec<_>>(),
            vec![peer(10), peer(1)]
        );
        assert_eq!(over_cap, 1);
        // Another source has its own share.
        let other = vec![record(20, "tcp://192.0.2.4:1")];
        let (hints, _, _) = learned(
            table
                .on_message(peer(2), GossipMessage::Records(other), t0)
                .expect("in budget"),
        );
        assert_eq!(hints.len(), 1);
        // A reconnecting source starts over (its old state is gone).
        table.disconnected(peer(1));
        assert_eq!(table.len(), 1);
        table.retain_connected(&HashSet::new());
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_flood_breaks_the_budget_and_time_refills_it() {
        let t0 = Instant::now();
        let config = GossipConfig::default().with_message_budget(60.0, 3.0);
        let mut table = table(config, false);
        let request = GossipMessage::Request { want: 200 };
        for _ in 0..3 {
            assert_eq!(
                table.on_message(peer(1), request.clone(), t0),
                Ok(Outcome::Answer(16))
            );
        }
        assert_eq!(
            table.on_message(peer(1), request.clone(), t0),
            Err(FloodLimit::PeerRecords)
        );
        // One message per second comes back.
        assert!(
            table
                .on_message(peer(1), request, t0 + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn heard_records_are_passed_on_bounded_and_never_back() {
        let t0 = Instant::now();
        let mut config = GossipConfig::default().with_records_per_message(4);
        config.max_heard = 3;
        let mut table = table(config, false);
        // Peer 1 tells us about 10..14 (aged 5 s); peer 2 is connected and says nothing.
        let told: Vec<PeerRecord> = (10..15)
            .map(|n| PeerRecord {
                age: Duration::from_secs(5),
                ..record(n, "tcp://192.0.2.1:1")
            })
            .collect();
        table
            .on_message(peer(1), GossipMessage::Records(told), t0)
            .expect("in budget");
        assert_eq!(table.heard_len(), 3, "bounded");
        table.connected(peer(2), t0);
        let t1 = t0 + Duration::from_secs(1);
        let records = table.select(peer(2), &[], t1, 16);
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.age == Duration::from_secs(6)));
        // Never back to the source.
        assert!(table.select(peer(1), &[], t1, 16).is_empty());
        // A newer record from elsewhere replaces the oldest; an older one is not kept.
        let newer = PeerRecord {
            age: Duration::ZERO,
            ..record(20, "tcp://192.0.2.2:1")
        };
        table
            .on_message(peer(3), GossipMessage::Records(vec![newer]), t1)
            .expect("in budget");
        assert_eq!(table.heard_len(), 3);
        let records = table.select(peer(2), &[], t1, 16);
        assert!(records.iter().any(|r| r.peer == peer(20)));
        // Stale heard records are not passed on.
        assert!(
            table
                .select(peer(2), &[], t0 + Duration::from_secs(3600), 16)
                .is_empty()
        );
    }

    #[test]
    fn pushes_go_round_the_connected_peers() {
        let t0 = Instant::now();
        let config = GossipConfig::default().with_records_per_message(3);
        let mut table = table(config, false);
        for n in 1..=5 {
            let own = GossipMessage::Records(vec![record(n, &format!("tcp://192.0.2.{n}:1"))]);
            table.on_message(peer(n), own, t0).expect("in budget");
        }
        let ours = [ep("tcp://192.0.2.100:1")];
        let t1 = t0 + Duration::from_secs(2);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let records = table.select(peer(1), &ours, t1, 16);
            assert_eq!(records.len(), 3);
            assert_eq!(records[0].peer, peer(0), "our own record first");
            assert_eq!(records[0].age, Duration::ZERO);
            assert!(records[1..].iter().all(|r| r.peer != peer(1)));
            assert!(
                records[1..].iter().all(|r| r.age == Duration::from_secs(3)),
                "heard 1 s before t0, sent 2 s after"
            );
            seen.extend(records[1..].iter().map(|r| r.peer));
        }
        // Six slots over four other peers: every one of them was sent.
        for n in 2..=5 {
            assert!(seen.contains(&peer(n)), "peer {n} sent");
        }
        // Records of a peer that left are no longer sent; stale ones neither.
        table.disconnected(peer(2));
        let records = table.select(peer(1), &[], t1, 16);
        assert!(records.iter().all(|r| r.peer != peer(2)));
        assert_eq!(records.len(), 3);
        let late = t0 + Duration::from_secs(3600);
        assert!(table.select(peer(1), &[], late, 16).is_empty());
        // Nothing asked, nothing sent.
        assert!(table.select(peer(1), &ours, t1, 0).is_empty());
    }
}
