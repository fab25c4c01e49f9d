//! [`BeaconState`]: the beacon protocol as a plain state machine, free of I/O and clocks.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crust_core::limits::TokenBucket;
use crust_core::{Endpoint, PeerCandidate, PeerId, Protocol};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{BeaconConfig, BeaconPacket, MAX_ENDPOINTS};

/// What [`BeaconState::handle_datagram`] made of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Heard {
    /// A peer we did not remember: queued as a candidate (if it announced endpoints).
    New(PeerId),
    /// A remembered peer with new endpoints or a new session (it restarted): queued again.
    Changed(PeerId),
    /// A remembered peer, nothing new: its expiry is pushed back.
    Refreshed(PeerId),
    /// A beacon of a session we already saw at this or a later sequence: ignored.
    Duplicate(PeerId),
    /// Our own beacon (same `PeerId`): ignored.
    Own,
    /// Not a valid beacon: ignored.
    Malformed,
    /// The sender exceeded its rate, or the sender table is full: dropped.
    RateLimited,
    /// A new peer while [`max_peers`](BeaconConfig::max_peers) are remembered: ignored.
    TableFull(PeerId),
}

/// A remembered peer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerRecord {
    /// The peer's (claimed) identity.
    pub peer_id: PeerId,
    /// Its endpoints, unspecified addresses replaced by the beacon's source address.
    pub endpoints: Vec<Endpoint>,
    /// The address its last beacon came from.
    pub from: SocketAddr,
    /// When its last accepted beacon arrived.
    pub last_heard: Instant,
    session: u64,
    sequence: u64,
}

/// The beacon protocol without sockets or clocks, in the style of `quinn-proto`: the
/// caller passes `now` in, feeds datagrams ([`handle_datagram`](Self::handle_datagram))
/// and timeouts ([`handle_timeout`](Self::handle_timeout)), and pulls work out
/// ([`poll_transmit`](Self::poll_transmit), [`poll_timeout`](Self::poll_timeout),
/// [`take_candidates`](Self::take_candidates)).
///
/// - **Announcing.** The first announcement is due at once; then every
///   [`announce_interval`](BeaconConfig::announce_interval) ± 25 % (seeded jitter). A new
///   peer or new endpoints ask for an early announcement (so a newcomer learns of us
///   quickly), never sooner than [`min_announce_gap`](BeaconConfig::min_announce_gap)
///   after the previous one.
/// - **Remembering.** At most [`max_peers`](BeaconConfig::max_peers) peers, each forgotten
///   [`peer_ttl`](BeaconConfig::peer_ttl) after its last beacon. When full, new peers are
///   ignored (remembered peers are not pushed out by a flood of identities).
/// - **Rate limiting.** A token bucket per sender IP ([`sender_rate`](BeaconConfig::sender_rate)
///   per second), at most [`max_senders`](BeaconConfig::max_senders) buckets; idle buckets are
///   swept at most once a second. Work per datagram is bounded by the packet size limit.
/// - **Candidates.** New peers and peers whose endpoints or session changed are queued (one
///   entry per peer, at most `max_peers`) until [`take_candidates`](Self::take_candidates).
///
/// ```
/// use std::time::{Duration, Instant};
/// use crust_beacon::{BeaconConfig, BeaconState, Heard};
/// use crust_core::{Endpoint, PeerId};
/// let start = Instant::now();
/// let config = BeaconConfig::default();
/// let ep: Endpoint = "tcp://192.0.2.1:4000".parse()?;
/// let mut a = BeaconState::with_seed(&config, PeerId::from_bytes([1; 32]), vec![ep], start, 1);
/// let mut b = BeaconState::with_seed(&config, PeerId::from_bytes([2; 32]), vec![], start, 2);
/// let beacon = a.poll_transmit(start).expect("first announcement is due at once");
/// let from = "192.0.2.1:5483".parse()?;
/// assert_eq!(b.handle_datagram(start, from, &beacon), Heard::New(PeerId::from_bytes([1; 32])));
/// assert_eq!(b.take_candidates()[0].endpoints, vec![ep]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BeaconState {
    config: BeaconConfig,
    our_id: PeerId,
    our_endpoints: Vec<Endpoint>,
    session: u64,
    sequence: u64,
    rng: StdRng,
    next_announce: Instant,
    last_announce: Option<Instant>,
    peers: HashMap<PeerId, PeerRecord>,
    senders: HashMap<IpAddr, TokenBucket>,
    last_sender_sweep: Instant,
    pending: VecDeque<PeerCandidate>,
}

impl BeaconState {
    /// A state announcing `endpoints` as `our_id`, with a random session and jitter.
    pub fn new(
        config: &BeaconConfig,
        our_id: PeerId,
        endpoints: Vec<Endpoint>,
        now: Instant,
    ) -> Self {
        Self::with_seed(config, our_id, endpoints, now, rand::random())
    }

    /// Like [`new`](Self::new), with the session and jitter derived from `seed`
    /// (reproducible tests).
    pub fn with_seed(
        config: &BeaconConfig,
        our_id: PeerId,
        endpoints: Vec<Endpoint>,
        now: Instant,
        seed: u64,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let session = rng.random();
        let mut state = BeaconState {
            config: config.clone(),
            our_id,
            our_endpoints: Vec::new(),
            session,
            sequence: 0,
            rng,
            next_announce: now,
            last_announce: None,
            peers: HashMap::new(),
            senders: HashMap::new(),
            last_sender_sweep: now,
            pending: VecDeque::new(),
        };
        state.our_endpoints = sanitize(endpoints);
        state
    }

    /// Our `PeerId`.
    pub fn our_id(&self) -> PeerId {
        self.our_id
    }

    /// The endpoints we announce.
    pub fn our_endpoints(&self) -> &[Endpoint] {
        &self.our_endpoints
    }

    /// Replaces the endpoints we announce (at most [`MAX_ENDPOINTS`] are kept) and asks for
    /// an early announcement when they changed.
    pub fn set_endpoints(&mut self, now: Instant, endpoints: Vec<Endpoint>) {
        let endpoints = sanitize(endpoints);
        if endpoints != self.our_endpoints {
            self.our_endpoints = endpoints;
            self.announce_soon(now);
        }
    }

    /// Feeds one received datagram from `from` and says what it was.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Heard {
        let packet = match BeaconPacket::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                // Rate-limit malformed floods too, so they cannot flood the log.
                if self.admit(now, from.ip()) {
                    tracing::debug!(from = %from, error = %e, "ignoring malformed beacon");
                }
                return Heard::Malformed;
            }
        };
        if packet.peer_id == self.our_id {
            return Heard::Own;
        }
        if !self.admit(now, from.ip()) {
            tracing::trace!(from = %from, "beacon rate-limited");
            return Heard::RateLimited;
        }
        let peer = packet.peer_id;
        let endpoints = resolve(packet.endpoints, from);
        let heard = match self.peers.get_mut(&peer) {
            Some(rec) => {
                if rec.session == packet.session && packet.sequence <= rec.sequence {
                    return Heard::Duplicate(peer);
                }
                let changed = rec.session != packet.session || rec.endpoints != endpoints;
                rec.session = packet.session;
                rec.sequence = packet.sequence;
                rec.last_heard = now;
                rec.from = from;
                rec.endpoints = endpoints;
                if changed {
                    Heard::Changed(peer)
                } else {
                    Heard::Refreshed(peer)
                }
            }
            None => {
                if self.peers.len() >= self.config.max_peers {
                    self.expire(now);
                }
                if self.peers.len() >= self.config.max_peers {
                    tracing::debug!(peer = %peer, from = %from, "beacon peer table full; ignoring new peer");
                    return Heard::TableFull(peer);
                }
                self.peers.insert(
                    peer,
                    PeerRecord {
                        peer_id: peer,
                        endpoints,
                        from,
                        last_heard: now,
                        session: packet.session,
                        sequence: packet.sequence,
                    },
                );
                // Let the newcomer hear of us without waiting a whole interval.
                self.announce_soon(now);
                Heard::New(peer)
            }
        };
        if matches!(heard, Heard::New(_) | Heard::Changed(_)) {
            if let Some(rec) = self.peers.get(&peer) {
                tracing::debug!(peer = %peer, from = %from, endpoints = ?rec.endpoints, "beacon peer heard");
                if !rec.endpoints.is_empty() {
                    let candidate = PeerCandidate::new(Some(peer), rec.endpoints.clone());
                    self.queue(candidate);
                }
            }
        }
        heard
    }

    /// The next announcement, if one is due at `now`; schedules the one after.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if now < self.next_announce {
            return None;
        }
        let packet = BeaconPacket::new(
            self.our_id,
            self.our_endpoints.clone(),
            self.session,
            self.sequence,
        );
        self.sequence = self.sequence.wrapping_add(1);
        self.last_announce = Some(now);
        let jitter = self.rng.random_range(0.75..=1.25);
        let gap = self
            .config
            .announce_interval
            .mul_f64(jitter)
            .max(self.config.min_announce_gap)
            .max(Duration::from_millis(1));
        self.next_announce = now + gap;
        match packet.encode() {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                // Unreachable: endpoints are sanitized on the way in.
                tracing::warn!(error = %e, "cannot encode our beacon");
                None
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) (and [`poll_transmit`](Self::poll_transmit))
    /// should next be called: the next announcement or the next peer expiry.
    pub fn poll_timeout(&self) -> Instant {
        self.peers
            .values()
            .map(|p| p.last_heard + self.config.peer_ttl)
            .fold(self.next_announce, Instant::min)
    }

    /// Forgets peers not heard for [`peer_ttl`](BeaconConfig::peer_ttl) and sweeps idle
    /// rate-limit buckets.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.sweep_senders(now);
    }

    /// Takes the queued candidates (new or changed peers, oldest first).
    pub fn take_candidates(&mut self) -> Vec<PeerCandidate> {
        self.pending.drain(..).collect()
    }

    /// Whether candidates are queued.
    pub fn has_candidates(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The peers remembered now.
    pub fn peers(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values()
    }

    /// How many peers are remembered.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// How many sender addresses the rate limiter tracks.
    pub fn sender_count(&self) -> usize {
        self.senders.len()
    }

    fn announce_soon(&mut self, now: Instant) {
        let earliest = match self.last_announce {
            Some(last) => (last + self.config.min_announce_gap).max(now),
            None => now,
        };
        self.next_announce = self.next_announce.min(earliest);
    }

    fn queue(&mut self, candidate: PeerCandidate) {
        self.pending.retain(|c| c.peer_id != candidate.peer_id);
        self.pending.push_back(candidate);
        while self.pending.len() > self.config.max_peers.max(1) {
            self.pending.pop_front();
        }
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.config.peer_ttl;
        self.peers.retain(|id, p| {
            let keep = now < p.last_heard + ttl;
            if !keep {
                tracing::debug!(peer = %id, "beacon peer expired");
            }
            keep
        });
    }

    /// Forgets the buckets that are full again: a new one would be the same.
    fn sweep_senders(&mut self, now: Instant) {
        self.senders.retain(|_, bucket| !bucket.is_full(now));
        self.last_sender_sweep = now;
    }

    /// Takes a token from `ip`'s bucket; false when it has none (or no bucket fits).
    fn admit(&mut self, now: Instant, ip: IpAddr) -> bool {
        if !self.senders.contains_key(&ip) {
            if self.senders.len() >= self.config.max_senders
                && now.saturating_duration_since(self.last_sender_sweep) >= Duration::from_secs(1)
            {
                self.sweep_senders(now);
            }
            if self.senders.len() >= self.config.max_senders {
                return false;
            }
            // A burst of one second's worth, refilled at `sender_rate` per second.
            let rate = f64::from(self.config.sender_rate.max(1));
            self.senders.insert(ip, TokenBucket::new(rate, rate, now));
        }
        self.senders
            .get_mut(&ip)
            .is_some_and(|bucket| bucket.try_take(now, 1.0))
    }
}

/// Keeps the endpoints a beacon can carry: known protocols, at most [`MAX_ENDPOINTS`].
fn sanitize(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.retain(|e| matches!(e.protocol(), Protocol::Tcp | Protocol::Rudp));
    if endpoints.len() > MAX_ENDPOINTS {
        tracing::warn!(
            count = endpoints.len(),
            max = MAX_ENDPOINTS,
            "too many endpoints for a beacon; announcing the first ones"
        );
        endpoints.truncate(MAX_ENDPOINTS);
    }
    endpoints
}

/// Replaces unspecified addresses by the beacon's source address.
fn resolve(endpoints: Vec<Endpoint>, from: SocketAddr) -> Vec<Endpoint> {
    endpoints
        .into_iter()
        .map(|e| {
            if e.addr().ip().is_unspecified() {
                Endpoint::new(e.protocol(), SocketAddr::new(from.ip(), e.addr().port()))
            } else {
                e
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn ep(s: &str) -> Endpoint {
        s.parse().expect("endpoint")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn config() -> BeaconConfig {
        BeaconConfig::default()
            .with_announce_interval(Duration::from_secs(4))
            .with_min_announce_gap(Duration::from_secs(1))
            .with_peer_ttl(Duration::from_secs(10))
    }

    fn beacon(peer: u8, eps: Vec<Endpoint>, session: u64, seq: u64) -> Vec<u8> {
        BeaconPacket::new(id(peer), eps, session, seq)
            .encode()
            .expect("encode")
    }

    #[test]
    fn announces_at_once_then_jittered_within_bounds() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![ep("tcp://10.0.0.1:1")], t0, 7);
        let first = s.poll_transmit(t0).expect("first announcement at once");
        let packet = BeaconPacket::decode(&first).expect("decode");
        assert_eq!(packet.peer_id, id(1));
        assert_eq!(packet.sequence, 0);
        assert!(s.poll_transmit(t0).is_none(), "not twice at once");
        let mut t = t0;
        for seq in 1..50u64 {
            let next = s.poll_timeout();
            let gap = next - t;
            assert!(
                gap >= Duration::from_secs(3) && gap <= Duration::from_secs(5),
                "{gap:?}"
            );
            assert!(s.poll_transmit(next - Duration::from_millis(1)).is_none());
            let bytes = s.poll_transmit(next).expect("due");
            assert_eq!(BeaconPacket::decode(&bytes).expect("decode").sequence, seq);
            t = next;
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        let t0 = Instant::now();
        let schedule = |seed| {
            let mut s = BeaconState::with_seed(&config(), id(1), vec![], t0, seed);
            let mut out = Vec::new();
            for _ in 0..10 {
                let due = s.poll_timeout();
                s.poll_transmit(due).expect("due");
                out.push(due);
            }
            out
        };
        assert_eq!(schedule(3), schedule(3));
    }

    #[test]
    fn hears_new_peer_and_yields_candidate_once() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![], t0, 1);
        let eps = vec![ep("tcp://10.0.0.2:4000"), ep("rudp://10.0.0.2:4001")];
        let from = addr("10.0.0.2:5483");
        assert_eq!(
            s.handle_datagram(t0, from, &beacon(2, eps.clone(), 9, 0)),
            Heard::New(id(2))
        );
        assert_eq!(
            s.handle_datagram(
                t0 + Duration::from_secs(1),
                from,
                &beacon(2, eps.clone(), 9, 1)
            ),
            Heard::Refreshed(id(2))
        );
        let c = s.take_candidates();
        assert_eq!(c, vec![PeerCandidate::new(Some(id(2)), eps)]);
        assert!(s.take_candidates().is_empty());
        assert_eq!(s.peer_count(), 1);
    }

    #[test]
    fn ignores_own_beacons_and_duplicates() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![ep("tcp://10.0.0.1:1")], t0, 1);
        let own = s.poll_transmit(t0).expect("due");
        assert_eq!(
            s.handle_datagram(t0, addr("10.0.0.1:5483"), &own),
            Heard::Own
        );
        let from = addr("10.0.0.2:5483");
        let b = beacon(2, vec![ep("tcp://10.0.0.2:1")], 5, 3);
        assert_eq!(s.handle_datagram(t0, from, &b), Heard::New(id(2)));
        assert_eq!(s.handle_datagram(t0, from, &b), Heard::Duplicate(id(2)));
        let older = beacon(2, vec![ep("tcp://10.0.0.2:1")], 5, 2);
        assert_eq!(s.handle_datagram(t0, from, &older), Heard::Duplicate(id(2)));
        assert_eq!(s.handle_datagram(t0, from, b"junk"), Heard::Malformed);
        assert_eq!(s.take_candidates().len(), 1);
        assert_eq!(s.peer_count(), 1);
    }

    #[test]
    fn changed_endpoints_or_session_yield_again() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![], t0, 1);
        let from = addr("10.0.0.2:5483");
        s.handle_datagram(t0, from, &beacon(2, vec![ep("tcp://10.0.0.2:1")], 5, 0));
        s.take_candidates();
        assert_eq!(
            s.handle_datagram(t0, from, &beacon(2, vec![ep("tcp://10.0.0.2:2")], 5, 1)),
            Heard::Changed(id(2))
        );
        assert_eq!(
            s.take_candidates()[0].endpoints,
            vec![ep("tcp://10.0.0.2:2")]
        );
        // Restart: new session, sequence from 0 again.
        assert_eq!(
            s.handle_datagram(t0, from, &beacon(2, vec![ep("tcp://10.0.0.2:2")], 6, 0)),
            Heard::Changed(id(2))
        );
        assert_eq!(s.take_candidates().len(), 1);
    }

    #[test]
    fn unspecified_address_means_source_address() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![], t0, 1);
        let b = beacon(
            2,
            vec![ep("tcp://0.0.0.0:4000"), ep("rudp://192.0.2.9:4001")],
            1,
            0,
        );
        s.handle_datagram(t0, addr("10.0.0.2:5483"), &b);
        assert_eq!(
            s.take_candidates()[0].endpoints,
            vec![ep("tcp://10.0.0.2:4000"), ep("rudp://192.0.2.9:4001")]
        );
    }

    #[test]
    fn peer_without_endpoints_is_remembered_not_offered() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![], t0, 1);
        assert_eq!(
            s.handle_datagram(t0, addr("10.0.0.2:5483"), &beacon(2, vec![], 1, 0)),
            Heard::New(id(2))
        );
        assert!(!s.has_candidates());
        assert_eq!(s.peer_count(), 1);
    }

    #[test]
    fn peers_expire_after_ttl() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![], t0, 1);
        let from = addr("10.0.0.2:5483");
        s.handle_datagram(t0, from, &beacon(2, vec![ep("tcp://10.0.0.2:1")], 1, 0));
        let t1 = t0 + Duration::from_secs(5);
        s.handle_datagram(t1, from, &beacon(2, vec![ep("tcp://10.0.0.2:1")], 1, 1));
        s.take_candidates();
        let expiry = t1 + Duration::from_secs(10);
        // Drain announcements so the next timeout is the expiry.
        while s.poll_timeout() < expiry {
            let due = s.poll_timeout();
            s.handle_timeout(due);
            s.poll_transmit(due);
            assert_eq!(s.peer_count(), 1);
        }
        s.handle_timeout(expiry - Duration::from_millis(1));
        assert_eq!(s.peer_count(), 1);
        s.handle_timeout(expiry);
        assert_eq!(s.peer_count(), 0);
        // Heard again after expiry: new again.
        assert_eq!(
            s.handle_datagram(expiry, from, &beacon(2, vec![ep("tcp://10.0.0.2:1")], 1, 2)),
            Heard::New(id(2))
        );
    }

    #[test]
    fn new_peer_triggers_an_early_but_rate_limited_announcement() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![], t0, 1);
        s.poll_transmit(t0).expect("first");
        let regular = s.poll_timeout();
        let t = t0 + Duration::from_millis(100);
        s.handle_datagram(t, addr("10.0.0.2:5483"), &beacon(2, vec![], 1, 0));
        assert_eq!(
            s.poll_timeout(),
            t0 + Duration::from_secs(1),
            "min gap after last"
        );
        assert!(s.poll_timeout() < regular);
        // Many new peers cannot make announcements more frequent than the min gap.
        let mut sent = vec![];
        for i in 0..200u32 {
            let now = t0 + Duration::from_millis(100) * i;
            let peer = u8::try_from(3 + i % 250).expect("u8");
            let from = SocketAddr::new(IpAddr::from([10, 1, 0, peer]), 5483);
            s.handle_datagram(now, from, &beacon(peer, vec![], 1, u64::from(i)));
            if s.poll_transmit(now).is_some() {
                sent.push(now);
            }
        }
        for pair in sent.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_secs(1));
        }
        assert!(sent.len() <= 20);
    }

    #[test]
    fn set_endpoints_announces_early_and_caps_count() {
        let t0 = Instant::now();
        let mut s = BeaconState::with_seed(&config(), id(1), vec![], t0, 1);
        s.poll_transmit(t0).expect("first");
        let eps = vec![ep("tcp://10.0.0.1:1"); 40];
        s.set_endpoints(t0 + Duration::from_secs(2), eps);
        assert_eq!(s.our_endpoints().len(), MAX_ENDPOINTS);
        let due = s.poll_timeout();
        assert_eq!(due, t0 + Duration::from_secs(2));
        let bytes = s.poll_transmit(due).expect("due");
        assert_eq!(
            BeaconPacket::decode(&bytes)
                .expect("decode")
                .endpoints
                .len(),
            MAX_ENDPOINTS
        );
    }

    #[test]
    fn a_flood_from_one_sender_is_rate_limited() {
        let t0 = Instant::now();
        let cfg = config().with_sender_rate(10);
        let mut s = BeaconState::with_seed(&cfg, id(1), vec![], t0, 1);
        let from = addr("10.0.0.66:5483");
        let mut accepted = 0;
        // 10 000 distinct identities in one second from one address.
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(100) * i;
            let mut raw = [0u8; 32];
            raw[..4].copy_from_slice(&i.to_be_bytes());
            let b = BeaconPacket::new(PeerId::from_bytes(raw), vec![], 0, 0)
                .encode()
                .expect("encode");
            if matches!(s.handle_datagram(now, from, &b), Heard::New(_)) {
                accepted += 1;
            }
        }
        // The burst plus one second of refill.
        assert!((10..=21).contains(&accepted), "{accepted}");
        assert_eq!(s.peer_count(), accepted);
        assert_eq!(s.sender_count(), 1);
    }

    #[test]
    fn spoofed_senders_and_identities_stay_bounded() {
        let t0 = Instant::now();
        let cfg = config().with_max_peers(8).with_max_senders(16);
        let mut s = BeaconState::with_seed(&cfg, id(1), vec![], t0, 1);
        let legit = addr("10.0.0.2:5483");
        s.handle_datagram(t0, legit, &beacon(2, vec![ep("tcp://10.0.0.2:1")], 1, 0));
        for i in 0..5_000u32 {
            let now = t0 + Duration::from_millis(1) * i;
            let from = SocketAddr::new(
                IpAddr::from(i.wrapping_add(0x0a01_0000).to_be_bytes()),
                5483,
            );
            let mut raw = [0xee; 32];
            raw[..4].copy_from_slice(&i.to_be_bytes());
            let b = BeaconPacket::new(PeerId::from_bytes(raw), vec![ep("tcp://10.9.9.9:1")], 0, 0)
                .encode()
                .expect("encode");
            s.handle_datagram(now, from, &b);
            assert!(s.peer_count() <= 8);
            assert!(s.sender_count() <= 16);
        }
        assert!(s.take_candidates().len() <= 8);
        // The legitimate peer was never pushed out.
        assert!(s.peers().any(|p| p.peer_id == id(2)));
    }

    #[test]
    fn rate_recovers_after_idle() {
        let t0 = Instant::now();
        let cfg = config().with_sender_rate(2);
        let mut s = BeaconState::with_seed(&cfg, id(1), vec![], t0, 1);
        let from = addr("10.0.0.2:5483");
        let eps = vec![ep("tcp://10.0.0.2:1")];
        assert_eq!(
            s.handle_datagram(t0, from, &beacon(2, eps.clone(), 1, 0)),
            Heard::New(id(2))
        );
        assert_eq!(
            s.handle_datagram(t0, from, &beacon(2, eps.clone(), 1, 1)),
            Heard::Refreshed(id(2))
        );
        assert_eq!(
            s.handle_datagram(t0, from, &beacon(2, eps.clone(), 1, 2)),
            Heard::RateLimited
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            s.handle_datagram(later, from, &beacon(2, eps, 1, 3)),
            Heard::Refreshed(id(2))
        );
    }

    #[test]
    fn full_table_ignores_new_peers_until_expiry() {
        let t0 = Instant::now();
        let cfg = config().with_max_peers(2);
        let mut s = BeaconState::with_seed(&cfg, id(1), vec![], t0, 1);
        for n in 2..=3u8 {
            let from = SocketAddr::new(IpAddr::from([10, 0, 0, n]), 5483);
            assert_eq!(
                s.handle_datagram(t0, from, &beacon(n, vec![], 1, 0)),
                Heard::New(id(n))
            );
        }
        let from = addr("10.0.0.4:5483");
        assert_eq!(
            s.handle_datagram(t0, from, &beacon(4, vec![], 1, 0)),
            Heard::TableFull(id(4))
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            s.handle_datagram(later, from, &beacon(4, vec![], 1, 1)),
            Heard::New(id(4))
        );
        assert_eq!(s.peer_count(), 1);
    }
}
