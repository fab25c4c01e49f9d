//! Limits shared by the crates: how much work one address may have in flight
//! ([`PerIpLimiter`]) and how fast something may happen ([`TokenBucket`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
