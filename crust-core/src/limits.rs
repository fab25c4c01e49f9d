//! Admission limits shared by the transports.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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

#[cfg(test)]
mod tests {
    use super::*;

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
