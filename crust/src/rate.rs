//! Per-connection flood detection: two token buckets (messages and bytes), free of I/O so it
//! is tested deterministically with explicit instants.

use std::time::Instant;

use crust_core::limits::TokenBucket;

use crate::config::RateLimit;

/// Which limit a peer broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Messages,
    Bytes,
}

/// Inbound rate meter of one connection.
#[derive(Clone, Debug)]
pub(crate) struct RateMeter {
    messages: TokenBucket,
    bytes: TokenBucket,
    /// Both limits are infinite: nothing to meter (and no clock to read).
    unlimited: bool,
}

impl RateMeter {
    pub(crate) fn new(limit: &RateLimit, now: Instant) -> Self {
        let messages = TokenBucket::new(limit.messages_per_sec, limit.burst_messages, now);
        let bytes = TokenBucket::new(limit.bytes_per_sec, limit.burst_bytes, now);
        RateMeter {
            unlimited: messages.is_unlimited() && bytes.is_unlimited(),
            messages,
            bytes,
        }
    }

    /// Accounts one received message of `len` bytes now.
    pub(crate) fn on_message(&mut self, len: usize) -> Result<(), Exceeded> {
        if self.unlimited {
            return Ok(());
        }
        self.on_message_at(Instant::now(), len)
    }

    /// Accounts one received message of `len` bytes at `now`.
    pub(crate) fn on_message_at(&mut self, now: Instant, len: usize) -> Result<(), Exceeded> {
        let messages_ok = self.messages.try_take(now, 1.0);
        let bytes_ok = self.bytes.try_take(now, len as f64);
        match (messages_ok, bytes_ok) {
            (false, _) => Err(Exceeded::Messages),
            (_, false) => Err(Exceeded::Bytes),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::messages(10.0, 5.0), t0);
        for _ in 0..5 {
            assert_eq!(meter.on_message_at(t0, 1), Ok(()));
        }
        assert_eq!(meter.on_message_at(t0, 1), Err(Exceeded::Messages));
        // After one second, ten more tokens (capped at the burst of five) are back.
        let t1 = t0 + Duration::from_secs(1);
        let mut meter = RateMeter::new(&RateLimit::messages(10.0, 5.0), t0);
        for _ in 0..5 {
            assert_eq!(meter.on_message_at(t0, 1), Ok(()));
        }
        for _ in 0..5 {
            assert_eq!(meter.on_message_at(t1, 1), Ok(()));
        }
        assert_eq!(meter.on_message_at(t1, 1), Err(Exceeded::Messages));
    }

    #[test]
    fn steady_peer_within_limits_is_never_flagged() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::messages(100.0, 10.0), t0);
        for i in 1..=10_000u64 {
            // One message every 20 ms: 50 per second, half the limit.
            let now = t0 + Duration::from_millis(20 * i);
            assert_eq!(meter.on_message_at(now, 100), Ok(()), "message {i}");
        }
    }

    #[test]
    fn byte_limit() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::bytes(1000.0, 1000.0), t0);
        assert_eq!(meter.on_message_at(t0, 600), Ok(()));
        assert_eq!(meter.on_message_at(t0, 600), Err(Exceeded::Bytes));
    }

    #[test]
    fn default_limits_allow_bulk_transfer() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::default(), t0);
        // 1 GiB in 1 MiB messages within one second is within the default burst + rate.
        let mut exceeded = false;
        for i in 0..512u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 1000);
            exceeded |= meter.on_message_at(now, 1 << 20).is_err();
        }
        assert!(!exceeded);
    }
}
