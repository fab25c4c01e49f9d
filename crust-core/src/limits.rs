//! Limits shared by the crates: how much work one address may have in flight
//! ([`PerIpLimiter`]), how handshake slots are shared fairly between sources with a bounded
//! waiting room ([`HandshakeQueue`]) and how fast something may happen ([`TokenBucket`]).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts work in flight (e.g. incoming handshakes) per remote IP address and refuses more
/// than `limit` at once from one address, so one host cannot take every slot.
///
/// The table only holds addresses with something in flight, so its size is bounded by the
/// caller's overall limit.
///
/// ```
/// let limiter = crust_core::limits::PerIpLimiter::new(2);
/// let ip = "192.0.2.1".parse().unwrap();
/// let first = limiter.admit(ip).expect("1 of 2");
/// let _second = limiter.admit(ip).expect("2 of 2");
/// assert!(limiter.admit(ip).is_none());
/// drop(first);
/// assert!(limiter.admit(ip).is_some());
/// ```
#[derive(Clone, Debug)]
pub struct PerIpLimiter {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    limit: usize,
}

impl PerIpLimiter {
    /// A limiter allowing `limit` (at least 1) at once per address.
    pub fn new(limit: usize) -> Self {
        PerIpLimiter {
            counts: Arc::new(Mutex::new(HashMap::new())),
            limit: limit.max(1),
        }
    }

    /// A slot for one more unit of work from `ip`, released when dropped; `None` when `ip`
    /// already has its limit in flight.
    pub fn admit(&self, ip: IpAddr) -> Option<PerIpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PerIpSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Addresses with work in flight.
    pub fn tracked_addresses(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One unit of work in flight from an address; see [`PerIpLimiter::admit`].
#[derive(Debug)]
pub struct PerIpSlot {
    limiter: PerIpLimiter,
    ip: IpAddr,
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// How a [`HandshakeQueue`] shares handshake slots between sources.
///
/// A *source* is known by two keys: its IP address, and its subnet (an IPv4 address's /24,
/// an IPv6 address's /64; IPv4-mapped IPv6 addresses count as IPv4). Each key may hold only
/// a share of the slots in flight, so one host, or one network that owns many addresses,
/// cannot take them all. Connections beyond a share or beyond the total wait in a bounded
/// queue instead of being dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FairShare {
    /// Handshakes in flight at once, over all sources.
    pub max_in_flight: usize,
    /// Handshakes in flight at once from one IP address.
    pub max_in_flight_per_ip: usize,
    /// Handshakes in flight at once from one subnet (IPv4 /24, IPv6 /64).
    pub max_in_flight_per_subnet: usize,
    /// Connections waiting for a slot, over all sources. When it is full, a newcomer
    /// displaces the newest waiting connection of the address with the most waiting, if
    /// that address has more waiting than the newcomer's; otherwise the newcomer is refused.
    pub max_queued: usize,
    /// Connections waiting for a slot from one IP address; beyond it newcomers from that
    /// address are refused.
    pub max_queued_per_ip: usize,
    /// How long a connection may wait for a slot before it is closed.
    pub max_wait: Duration,
}

impl FairShare {
    /// The default shares for `max_in_flight` slots (at least 1): a quarter of them per IP
    /// address, half per subnet, a queue four times as long as the slots (half of it for one
    /// address), and a wait of at most 5 s.
    ///
    /// ```
    /// let share = crust_core::limits::FairShare::new(256);
    /// assert_eq!((share.max_in_flight_per_ip, share.max_in_flight_per_subnet), (64, 128));
    /// assert_eq!((share.max_queued, share.max_queued_per_ip), (1024, 512));
    /// assert_eq!(share.max_wait, std::time::Duration::from_secs(5));
    /// ```
    pub fn new(max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        FairShare {
            max_in_flight,
            max_in_flight_per_ip: (max_in_flight / 4).max(1),
            max_in_flight_per_subnet: (max_in_flight / 2).max(1),
            max_queued: max_in_flight.saturating_mul(4),
            max_queued_per_ip: max_in_flight.saturating_mul(2),
            max_wait: Duration::from_secs(5),
        }
    }
}

/// The subnet key of `ip` used by [`HandshakeQueue`]: the /24 of an IPv4 address, the /64 of
/// an IPv6 address (an IPv4-mapped IPv6 address counts as its IPv4 address).
///
/// ```
/// use crust_core::limits::subnet_of;
/// let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
/// assert_eq!(subnet_of(ip("192.0.2.77")), ip("192.0.2.0"));
/// assert_eq!(subnet_of(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
/// assert_eq!(subnet_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
/// ```
pub fn subnet_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(v4.to_bits() & !0xff)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
    }
}

/// What [`HandshakeQueue::arrive`] decided for a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// A slot is taken for it: start its handshake now, and call
    /// [`HandshakeQueue::release`] when the handshake is over.
    Start(T),
    /// It waits for a slot; [`HandshakeQueue::pop_ready`] hands it out later.
    Queued,
    /// It waits for a slot, and took the place of this older waiting connection (from the
    /// address with the most waiting): close that one.
    Displaced(T),
    /// No room for it in the queue: close it.
    Refused(T),
}

struct Waiting<T> {
    ip: IpAddr,
    since: Instant,
    item: T,
}

/// Shares handshake slots fairly between sources and keeps the connections that wait for
/// one in a bounded queue; see [`FairShare`] for the limits.
///
/// Waiting connections are served round-robin across subnets, and within a subnet oldest
/// first among those whose address is under its share, so a heavy source cannot starve the
/// others. There is no clock and no I/O inside: every call that depends on time takes `now`,
/// and the caller starts handshakes, closes connections and reports finished handshakes
/// ([`HandshakeQueue::release`]). `T` is whatever the caller keeps for a connection (a
/// socket, a QUIC `Incoming`).
///
/// Memory is bounded by the limits: at most `max_queued` waiting connections, and the tables
/// only hold addresses and subnets with something in flight or waiting.
///
/// ```
/// use std::time::Instant;
/// use crust_core::limits::{Admission, FairShare, HandshakeQueue};
/// let mut share = FairShare::new(4);
/// share.max_in_flight_per_ip = 1;
/// let mut queue = HandshakeQueue::new(share);
/// let (a, b) = ("192.0.2.1".parse().unwrap(), "198.51.100.1".parse().unwrap());
/// let now = Instant::now();
/// assert_eq!(queue.arrive(a, "a1", now), Admission::Start("a1"));
/// assert_eq!(queue.arrive(a, "a2", now), Admission::Queued, "a has its share");
/// assert_eq!(queue.arrive(b, "b1", now), Admission::Start("b1"), "b is not held up by a");
/// assert_eq!(queue.pop_ready(), None);
/// queue.release(a);
/// assert_eq!(queue.pop_ready(), Some((a, "a2")));
/// ```
pub struct HandshakeQueue<T> {
    share: FairShare,
    in_flight: usize,
    in_flight_per_ip: HashMap<IpAddr, usize>,
    in_flight_per_subnet: HashMap<IpAddr, usize>,
    /// Waiting connections per subnet, oldest first.
    waiting: HashMap<IpAddr, VecDeque<Waiting<T>>>,
    /// Subnets with waiting connections, in round-robin order.
    turns: VecDeque<IpAddr>,
    queued: usize,
    queued_per_ip: HashMap<IpAddr, usize>,
}

impl<T> std::fmt::Debug for HandshakeQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeQueue")
            .field("share", &self.share)
            .field("in_flight", &self.in_flight)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

fn increment(map: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    *map.entry(key).or_insert(0) += 1;
}

fn decrement(map: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    if let Some(count) = map.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            map.remove(&key);
        }
    }
}

impl<T> HandshakeQueue<T> {
    /// An empty queue with these limits (each at least 1).
    pub fn new(share: FairShare) -> Self {
        let share = FairShare {
            max_in_flight: share.max_in_flight.max(1),
            max_in_flight_per_ip: share.max_in_flight_per_ip.max(1),
            max_in_flight_per_subnet: share.max_in_flight_per_subnet.max(1),
            max_queued: share.max_queued.max(1),
            max_queued_per_ip: share.max_queued_per_ip.max(1),
            max_wait: share.max_wait,
        };
        HandshakeQueue {
            share,
            in_flight: 0,
            in_flight_per_ip: HashMap::new(),
            in_flight_per_subnet: HashMap::new(),
            waiting: HashMap::new(),
            turns: VecDeque::new(),
            queued: 0,
            queued_per_ip: HashMap::new(),
        }
    }

    /// The limits in force.
    pub fn share(&self) -> &FairShare {
        &self.share
    }

    /// Handshakes in flight (slots taken and not yet released).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Handshakes in flight from `ip`.
    pub fn in_flight_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.in_flight_per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Connections waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Connections from `ip` waiting for a slot.
    pub fn queued_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.queued_per_ip.get(&ip).copied().unwrap_or(0)
    }

    fn has_room(&self, ip: IpAddr, subnet: IpAddr) -> bool {
        self.in_flight < self.share.max_in_flight
            && self.in_flight_per_subnet.get(&subnet).copied().unwrap_or(0)
                < self.share.max_in_flight_per_subnet
            && self.in_flight_per_ip.get(&ip).copied().unwrap_or(0)
                < self.share.max_in_flight_per_ip
    }

    fn take_slot(&mut self, ip: IpAddr, subnet: IpAddr) {
        self.in_flight += 1;
        increment(&mut self.in_flight_per_ip, ip);
        increment(&mut self.in_flight_per_subnet, subnet);
    }

    /// A new connection from `ip` arrives at `now`: start it at once when `ip`, its subnet
    /// and the total are under their shares, otherwise queue it (see [`Admission`]).
    pub fn arrive(&mut self, ip: IpAddr, item: T, now: Instant) -> Admission<T> {
        let ip = ip.to_canonical();
        let subnet = subnet_of(ip);
        // Whatever waits is blocked by its own shares or the total (the caller serves the
        // queue after every change), so a newcomer with room overtakes nobody it should not.
        if self.has_room(ip, subnet) {
            self.take_slot(ip, subnet);
            return Admission::Start(item);
        }
        let mine = self.queued_from(ip);
        if mine >= self.share.max_queued_per_ip {
            return Admission::Refused(item);
        }
        let mut displaced = None;
        if self.queued >= self.share.max_queued {
            let heaviest = self
                .queued_per_ip
                .iter()
                .max_by_key(|(_, count)| **count)
                .map(|(ip, count)| (*ip, *count));
            match heaviest {
                Some((victim, count)) if count > mine => displaced = self.remove_newest(victim),
                _ => return Admission::Refused(item),
            }
        }
        self.waiting.entry(subnet).or_default().push_back(Waiting {
            ip,
            since: now,
            item,
        });
        if !self.turns.contains(&subnet) {
            self.turns.push_back(subnet);
        }
        self.queued += 1;
        increment(&mut self.queued_per_ip, ip);
        match displaced {
            Some(item) => Admission::Displaced(item),
            None => Admission::Queued,
        }
    }

    fn remove_newest(&mut self, ip: IpAddr) -> Option<T> {
        let subnet = subnet_of(ip);
        let queue = self.waiting.get_mut(&subnet)?;
        let at = queue.iter().rposition(|w| w.ip == ip)?;
        let removed = queue.remove(at)?;
        self.forget_waiting(subnet, ip);
        Some(removed.item)
    }

    /// Bookkeeping after a waiting connection of `ip` in `subnet` left the queue.
    fn forget_waiting(&mut self, subnet: IpAddr, ip: IpAddr) {
        self.queued = self.queued.saturating_sub(1);
        decrement(&mut self.queued_per_ip, ip);
        if self.waiting.get(&subnet).is_some_and(VecDeque::is_empty) {
            self.waiting.remove(&subnet);
            self.turns.retain(|s| *s != subnet);
        }
    }

    /// The next waiting connection that may start now, with its address, its slot taken;
    /// `None` when none may. Call it until `None` after every [`release`](Self::release)
    /// and [`arrive`](Self::arrive) that queued.
    pub fn pop_ready(&mut self) -> Option<(IpAddr, T)> {
        if self.in_flight >= self.share.max_in_flight {
            return None;
        }
        for turn in 0..self.turns.len() {
            let subnet = self.turns[turn];
            if self.in_flight_per_subnet.get(&subnet).copied().unwrap_or(0)
                >= self.share.max_in_flight_per_subnet
            {
                continue;
            }
            let Some(queue) = self.waiting.get_mut(&subnet) else {
                continue;
            };
            let per_ip = &self.in_flight_per_ip;
            let cap = self.share.max_in_flight_per_ip;
            let Some(at) = queue
                .iter()
                .position(|w| per_ip.get(&w.ip).copied().unwrap_or(0) < cap)
            else {
                continue;
            };
            let Some(chosen) = queue.remove(at) else {
                continue;
            };
            // This subnet had its turn: to the back of the line.
            self.turns.remove(turn);
            self.turns.push_back(subnet);
            self.forget_waiting(subnet, chosen.ip);
            self.take_slot(chosen.ip, subnet);
            return Some((chosen.ip, chosen.item));
        }
        None
    }

    /// A handshake from `ip` that [`arrive`](Self::arrive) or [`pop_ready`](Self::pop_ready)
    /// started is over (whatever its outcome): its slot is free again.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if !self.in_flight_per_ip.contains_key(&ip) {
            return;
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        decrement(&mut self.in_flight_per_ip, ip);
        decrement(&mut self.in_flight_per_subnet, subnet_of(ip));
    }

    /// Removes and returns the connections that have waited [`FairShare::max_wait`] or
    /// longer at `now`, for the caller to close.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let max_wait = self.share.max_wait;
        let mut expired = Vec::new();
        let mut emptied = Vec::new();
        for (subnet, queue) in &mut self.waiting {
            while queue
                .front()
                .is_some_and(|w| now.saturating_duration_since(w.since) >= max_wait)
            {
                if let Some(w) = queue.pop_front() {
                    self.queued = self.queued.saturating_sub(1);
                    decrement(&mut self.queued_per_ip, w.ip);
                    expired.push(w.item);
                }
            }
            if queue.is_empty() {
                emptied.push(*subnet);
            }
        }
        for subnet in emptied {
            self.waiting.remove(&subnet);
            self.turns.retain(|s| *s != subnet);
        }
        expired
    }

    /// When the oldest waiting connection reaches its maximum wait, for the caller's timer;
    /// `None` when nothing waits.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.waiting
            .values()
            .filter_map(|queue| queue.front())
            .filter_map(|w| w.since.checked_add(self.share.max_wait))
            .min()
    }
}

/// A token bucket: it holds up to `capacity` tokens, starts full, and refills continuously at
/// `rate` tokens per second. Taking tokens that are not there fails and takes none.
///
/// There is no clock inside: every call takes the current [`Instant`], so the limiter is tested
/// deterministically with instants made by hand. An instant earlier than one already seen
/// counts as no time passing. An infinite `capacity` makes the bucket unlimited: every take
/// succeeds. A negative or NaN `rate` or `capacity` counts as zero.
///
/// ```
/// use std::time::{Duration, Instant};
/// use crust_core::limits::TokenBucket;
/// let start = Instant::now();
/// // 10 tokens per second, bursts of at most 2.
/// let mut bucket = TokenBucket::new(10.0, 2.0, start);
/// assert!(bucket.try_take(start, 1.0));
/// assert!(bucket.try_take(start, 1.0));
/// assert!(!bucket.try_take(start, 1.0), "empty");
/// assert!(bucket.try_take(start + Duration::from_millis(100), 1.0), "one token back");
/// ```
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens the bucket holds.
    capacity: f64,
    /// Tokens held at `updated`.
    tokens: f64,
    /// The latest instant the bucket was refilled to.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled at `rate` tokens per second, as of `now`.
    pub fn new(rate: f64, capacity: f64, now: Instant) -> Self {
        // `f64::max` returns the other operand when one is NaN.
        let capacity = capacity.max(0.0);
        TokenBucket {
            rate: rate.max(0.0),
            capacity,
            tokens: capacity,
            updated: now,
        }
    }

    /// Tokens added per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Most tokens the bucket holds (the burst).
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// Whether the capacity is infinite, so that every take succeeds.
    pub fn is_unlimited(&self) -> bool {
        self.capacity == f64::INFINITY
    }

    /// Tokens available at `now`.
    pub fn available(&self, now: Instant) -> f64 {
        if self.is_unlimited() {
            return f64::INFINITY;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        if elapsed > 0.0 {
            // An infinite rate gives an infinite sum, capped below; `0 * inf` (NaN) is avoided.
            (self.tokens + elapsed * self.rate).min(self.capacity)
        } else {
            self.tokens
        }
    }

    /// Whether the bucket is full at `now`: it has been idle long enough that keeping it
    /// is the same as starting a new one (a table of buckets can drop it).
    pub fn is_full(&self, now: Instant) -> bool {
        self.available(now) >= self.capacity
    }

    /// Takes `amount` tokens at `now` if that many are available; otherwise takes none and
    /// returns `false`.
    pub fn try_take(&mut self, now: Instant, amount: f64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.tokens = self.available(now);
        self.updated = self.updated.max(now);
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_starts_full_and_a_burst_empties_it() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        assert!(bucket.is_full(t0));
        for _ in 0..5 {
            assert!(bucket.try_take(t0, 1.0));
        }
        assert!(!bucket.try_take(t0, 1.0));
        assert!(!bucket.is_full(t0));
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_capacity() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        assert!(bucket.try_take(t0, 5.0));
        assert!((bucket.available(t0 + ms(200)) - 2.0).abs() < 1e-9);
        assert!((bucket.available(t0 + ms(10_000)) - 5.0).abs() < 1e-9);
        assert!(bucket.is_full(t0 + ms(500)));
        // Ten seconds idle still give only one burst.
        let later = t0 + ms(10_000);
        assert!(bucket.try_take(later, 5.0));
        assert!(!bucket.try_take(later, 1.0));
    }

    #[test]
    fn a_failed_take_takes_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1.0, 10.0, t0);
        assert!(
            !bucket.try_take(t0, 11.0),
            "more than the capacity never fits"
        );
        assert!(bucket.try_take(t0, 10.0), "the failed take left the tokens");
    }

    #[test]
    fn time_going_backwards_adds_nothing_and_counts_no_time_twice() {
        let t0 = Instant::now();
        let t1 = t0 + ms(1000);
        let mut bucket = TokenBucket::new(1.0, 1.0, t0);
        assert!(bucket.try_take(t1, 1.0));
        assert!(
            !bucket.try_take(t0, 1.0),
            "an earlier instant adds no token"
        );
        assert!(!bucket.try_take(t1, 1.0), "t0..t1 was already counted");
        assert!(bucket.try_take(t1 + ms(1000), 1.0));
    }

    #[test]
    fn infinite_capacity_is_unlimited() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(f64::INFINITY, f64::INFINITY, t0);
        assert!(bucket.is_unlimited());
        for _ in 0..1000 {
            assert!(bucket.try_take(t0, 1e12));
        }
        assert!(bucket.is_full(t0));
    }

    #[test]
    fn infinite_rate_refills_after_any_time_and_never_makes_nan() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(f64::INFINITY, 3.0, t0);
        assert!(!bucket.is_unlimited());
        assert!(bucket.try_take(t0, 3.0));
        assert!(!bucket.try_take(t0, 1.0), "no time passed");
        assert_eq!(bucket.available(t0 + Duration::from_nanos(1)), 3.0);
    }

    #[test]
    fn negative_or_nan_settings_count_as_zero() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(f64::NAN, -4.0, t0);
        assert_eq!((bucket.rate(), bucket.capacity()), (0.0, 0.0));
        assert!(!bucket.try_take(t0 + ms(1000), 1.0));
        assert!(bucket.try_take(t0 + ms(1000), 0.0));
    }

    proptest! {
        /// Whatever the timing of the takes, no more is taken than the burst plus what the
        /// rate added in the meantime.
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 0.0f64..1000.0,
            capacity in 0.0f64..100.0,
            takes in proptest::collection::vec((0u64..2000, 0.0f64..20.0), 1..200),
        ) {
            let t0 = Instant::now();
            let mut bucket = TokenBucket::new(rate, capacity, t0);
            let mut now = t0;
            let mut taken = 0.0;
            for (gap_ms, amount) in takes {
                now += ms(gap_ms);
                if bucket.try_take(now, amount) {
                    taken += amount;
                }
                let allowed = capacity + rate * now.duration_since(t0).as_secs_f64();
                prop_assert!(taken <= allowed + 1e-6, "took {taken}, allowed {allowed}");
                prop_assert!(bucket.available(now) >= -1e-9);
            }
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn share(total: usize, per_ip: usize, per_subnet: usize) -> FairShare {
        let mut share = FairShare::new(total);
        share.max_in_flight_per_ip = per_ip;
        share.max_in_flight_per_subnet = per_subnet;
        share.max_queued = 1000;
        share.max_queued_per_ip = 1000;
        share
    }

    #[test]
    fn an_honest_burst_from_one_address_queues_and_is_all_served_in_order() {
        let t0 = Instant::now();
        let mut queue = HandshakeQueue::new(FairShare::new(16));
        let nat = ip("198.51.100.7");
        let mut started = Vec::new();
        for n in 0..20 {
            match queue.arrive(nat, n, t0) {
                Admission::Start(n) => started.push(n),
                Admission::Queued => {}
                other => panic!("burst connection {n}: {other:?}"),
            }
        }
        assert_eq!(
            started,
            vec![0, 1, 2, 3],
            "a quarter of 16 slots per address"
        );
        assert_eq!(queue.queued(), 16);
        while queue.in_flight() > 0 {
            queue.release(nat);
            while let Some((from, n)) = queue.pop_ready() {
                assert_eq!(from, nat);
                started.push(n);
            }
        }
        assert_eq!(
            started,
            (0..20).collect::<Vec<_>>(),
            "all served, oldest first"
        );
        assert_eq!((queue.queued(), queue.in_flight()), (0, 0));
        assert!(queue.waiting.is_empty() && queue.turns.is_empty());
        assert!(queue.in_flight_per_ip.is_empty() && queue.in_flight_per_subnet.is_empty());
    }

    #[test]
    fn a_source_at_its_share_does_not_hold_up_others_even_in_its_subnet() {
        let t0 = Instant::now();
        let mut queue = HandshakeQueue::new(share(8, 2, 3));
        let attacker = ip("10.0.0.1");
        for n in 0..5 {
            let _ = queue.arrive(attacker, n, t0);
        }
        assert_eq!(queue.in_flight_from(attacker), 2);
        assert_eq!(queue.queued_from(attacker), 3);
        // Same /24, another address: its own share, within the subnet's.
        assert_eq!(queue.arrive(ip("10.0.0.2"), 10, t0), Admission::Start(10));
        // The subnet's share is used up; a third address there waits, another subnet does not.
        assert_eq!(queue.arrive(ip("10.0.0.3"), 11, t0), Admission::Queued);
        assert_eq!(queue.arrive(ip("10.0.1.3"), 12, t0), Admission::Start(12));
        assert_eq!(queue.pop_ready(), None);
        // A slot of the subnet frees: the oldest waiting connection whose address is under
        // its share goes, not the attacker's older ones.
        queue.release(ip("10.0.0.2"));
        assert_eq!(queue.pop_ready(), Some((ip("10.0.0.3"), 11)));
        assert_eq!(queue.pop_ready(), None);
    }

    #[test]
    fn ipv6_sources_are_shared_by_address_and_by_64() {
        let t0 = Instant::now();
        let mut queue = HandshakeQueue::new(share(8, 1, 2));
        assert_eq!(queue.arrive(ip("2001:db8::1"), 1, t0), Admission::Start(1));
        assert_eq!(queue.arrive(ip("2001:db8::1"), 2, t0), Admission::Queued);
        assert_eq!(queue.arrive(ip("2001:db8::2"), 3, t0), Admission::Start(3));
        assert_eq!(
            queue.arrive(ip("2001:db8::3"), 4, t0),
            Admission::Queued,
            "/64 full"
        );
        assert_eq!(
            queue.arrive(ip("2001:db8:0:1::3"), 5, t0),
            Admission::Start(5)
        );
        // IPv4-mapped addresses count as the IPv4 address.
        assert_eq!(queue.arrive(ip("192.0.2.1"), 6, t0), Admission::Start(6));
        assert_eq!(
            queue.arrive(ip("::ffff:192.0.2.1"), 7, t0),
            Admission::Queued
        );
        queue.release(ip("::ffff:192.0.2.1"));
        assert_eq!(queue.pop_ready(), Some((ip("192.0.2.1"), 7)));
    }

    #[test]
    fn freed_slots_go_round_robin_across_subnets() {
        let t0 = Instant::now();
        let mut queue = HandshakeQueue::new(share(2, 2, 2));
        let heavy = ip("10.0.0.1");
        let light = ip("10.9.0.1");
        assert_eq!(queue.arrive(heavy, 0, t0), Admission::Start(0));
        assert_eq!(queue.arrive(heavy, 1, t0), Admission::Start(1));
        for n in 2..10 {
            assert_eq!(queue.arrive(heavy, n, t0), Admission::Queued);
        }
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(queue.arrive(light, 100, t1), Admission::Queued);
        assert_eq!(queue.arrive(light, 101, t1), Admission::Queued);
        let mut served = Vec::new();
        let mut running = vec![heavy, heavy];
        for _ in 0..6 {
            queue.release(running.remove(0));
            let (from, n) = queue.pop_ready().expect("a slot is free");
            running.push(from);
            served.push(n);
        }
        assert_eq!(
            served,
            vec![2, 100, 3, 101, 4, 5],
            "alternating while both wait"
        );
    }

    #[test]
    fn a_full_queue_displaces_the_heaviest_source_not_the_newcomer() {
        let t0 = Instant::now();
        let mut share = share(1, 1, 1);
        share.max_queued = 4;
        share.max_queued_per_ip = 3;
        let mut queue = HandshakeQueue::new(share);
        let (a, b, c) = (ip("10.0.0.1"), ip("10.1.0.1"), ip("10.2.0.1"));
        assert_eq!(queue.arrive(a, 0, t0), Admission::Start(0));
        for n in 1..4 {
            assert_eq!(queue.arrive(a, n, t0), Admission::Queued);
        }
        assert_eq!(
            queue.arrive(a, 4, t0),
            Admission::Refused(4),
            "a's own queue is full"
        );
        assert_eq!(queue.arrive(b, 10, t0), Admission::Queued);
        // The queue is full (4): a newcomer pushes out a's newest while a has more waiting.
        assert_eq!(queue.arrive(b, 11, t0), Admission::Displaced(3));
        assert_eq!((queue.queued_from(a), queue.queued_from(b)), (2, 2));
        assert_eq!(
            queue.arrive(b, 12, t0),
            Admission::Refused(12),
            "b is as heavy as a"
        );
        match queue.arrive(c, 20, t0) {
            Admission::Displaced(n) => assert!(n == 2 || n == 11, "displaced {n}"),
            other => panic!("a source with nothing waiting gets in: {other:?}"),
        }
        assert_eq!(queue.queued(), 4);
    }

    #[test]
    fn waiting_connections_expire_after_the_maximum_wait() {
        let t0 = Instant::now();
        let mut share = share(1, 1, 1);
        share.max_wait = Duration::from_secs(5);
        let mut queue = HandshakeQueue::new(share);
        let (a, b) = (ip("10.0.0.1"), ip("10.1.0.1"));
        assert_eq!(queue.next_expiry(), None);
        assert_eq!(queue.arrive(a, 0, t0), Admission::Start(0));
        assert_eq!(queue.arrive(a, 1, t0), Admission::Queued);
        assert_eq!(queue.arrive(b, 2, t0 + ms(2000)), Admission::Queued);
        assert_eq!(queue.next_expiry(), Some(t0 + ms(5000)));
        assert!(queue.expire(t0 + ms(4999)).is_empty());
        assert_eq!(queue.expire(t0 + ms(5000)), vec![1]);
        assert_eq!(queue.next_expiry(), Some(t0 + ms(7000)));
        assert_eq!(queue.expire(t0 + ms(60_000)), vec![2]);
        assert_eq!((queue.queued(), queue.next_expiry()), (0, None));
        assert!(queue.turns.is_empty());
        // A release for an address with nothing in flight changes nothing.
        queue.release(b);
        assert_eq!(queue.in_flight(), 1);
        queue.release(a);
        assert_eq!(queue.in_flight(), 0);
    }

    proptest! {
        /// Whatever arrives, finishes and expires, the shares and queue bounds hold and every
        /// connection is in exactly one place: started, waiting, or handed back to close.
        #[test]
        fn handshake_queue_keeps_its_bounds_and_loses_nothing(
            ops in proptest::collection::vec((0u8..4, 0u8..6, 0u64..3000), 1..300),
        ) {
            let t0 = Instant::now();
            let mut share = share(6, 2, 3);
            share.max_queued = 8;
            share.max_queued_per_ip = 5;
            let mut queue = HandshakeQueue::new(share.clone());
            let addrs = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", "2001:db8::1", "2001:db8::2"];
            let mut now = t0;
            let mut running: Vec<(IpAddr, u32)> = Vec::new();
            let (mut next, mut closed, mut finished) = (0u32, 0usize, 0usize);
            for (op, who, gap) in ops {
                now += ms(gap);
                let from = ip(addrs[usize::from(who)]);
                match op {
                    0 | 1 => {
                        next += 1;
                        match queue.arrive(from, next, now) {
                            Admission::Start(n) => running.push((from, n)),
                            Admission::Queued => {}
                            Admission::Displaced(_) | Admission::Refused(_) => closed += 1,
                        }
                    }
                    2 => {
                        if !running.is_empty() {
                            let (from, _) = running.remove(usize::from(who) % running.len());
                            queue.release(from);
                            finished += 1;
                        }
                    }
                    _ => closed += queue.expire(now).len(),
                }
                while let Some((from, n)) = queue.pop_ready() {
                    running.push((from, n));
                }
                prop_assert_eq!(queue.in_flight(), running.len());
                prop_assert!(running.len() <= share.max_in_flight);
                for a in addrs {
                    let a = ip(a);
                    let mine = running.iter().filter(|(f, _)| *f == a).count();
                    prop_assert!(mine <= share.max_in_flight_per_ip);
                    prop_assert!(queue.queued_from(a) <= share.max_queued_per_ip);
                    let subnet = running.iter().filter(|(f, _)| subnet_of(*f) == subnet_of(a)).count();
                    prop_assert!(subnet <= share.max_in_flight_per_subnet);
                }
                prop_assert!(queue.queued() <= share.max_queued);
                let waiting: usize = queue.waiting.values().map(VecDeque::len).sum();
                prop_assert_eq!(waiting, queue.queued());
                prop_assert_eq!(running.len() + waiting + closed + finished, next as usize);
            }
        }
    }

    #[test]
    fn addresses_are_limited_independently_and_forgotten_when_idle() {
        let limiter = PerIpLimiter::new(1);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let slot_a = limiter.admit(a).expect("a");
        assert!(limiter.admit(a).is_none());
        let slot_b = limiter.admit(b).expect("b is independent");
        assert_eq!(limiter.tracked_addresses(), 2);
        drop((slot_a, slot_b));
        assert_eq!(limiter.tracked_addresses(), 0);
    }
}
