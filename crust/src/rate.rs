//! Per-connection flood detection: token buckets for application messages, their bytes,
//! and control frames, free of I/O so it is tested deterministically with explicit
//! instants. See [`RateLimit`] for what is limited by default and why.

use std::time::Instant;

use crust_core::limits::TokenBucket;
use crust_core::wire::FrameKind;

use crate::config::RateLimit;
use crate::reason::FloodLimit;

/// Inbound rate meter of one connection.
#[derive(Clone, Debug)]
pub(crate) struct RateMeter {
    messages: TokenBucket,
    bytes: TokenBucket,
    control: TokenBucket,
    /// Neither application limit is set: messages need no metering (and no clock read,
    /// the default: see [`RateLimit`]).
    messages_unlimited: bool,
}

impl RateMeter {
    pub(crate) fn new(limit: &RateLimit, now: Instant) -> Self {
        let messages = TokenBucket::new(limit.messages_per_sec, limit.burst_messages, now);
        let bytes = TokenBucket::new(limit.bytes_per_sec, limit.burst_bytes, now);
        let control = TokenBucket::new(
            limit.control_frames_per_sec,
            limit.burst_control_frames,
            now,
        );
        RateMeter {
            messages_unlimited: messages.is_unlimited() && bytes.is_unlimited(),
            messages,
            bytes,
            control,
        }
    }

    /// Accounts one received frame (a whole message, or a control frame) now.
    pub(crate) fn on_frame(&mut self, kind: FrameKind, len: usize) -> Result<(), FloodLimit> {
        let unlimited = if kind.is_control() {
            self.control.is_unlimited()
        } else {
            self.messages_unlimited
        };
        if unlimited {
            return Ok(());
        }
        self.on_frame_at(Instant::now(), kind, len)
    }

    /// Accounts one received frame of `len` bytes at `now`: an application message counts
    /// against the message and byte limits, anything else against the control limit.
    pub(crate) fn on_frame_at(
        &mut self,
        now: Instant,
        kind: FrameKind,
        len: usize,
    ) -> Result<(), FloodLimit> {
        if kind.is_control() {
            return if self.control.try_take(now, 1.0) {
                Ok(())
            } else {
                Err(FloodLimit::ControlFrames)
            };
        }
        let messages_ok = self.messages.try_take(now, 1.0);
        let bytes_ok = self.bytes.try_take(now, len as f64);
        match (messages_ok, bytes_ok) {
            (false, _) => Err(FloodLimit::Messages),
            (_, false) => Err(FloodLimit::Bytes),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MESSAGE: FrameKind = FrameKind::Message;
    const PING: FrameKind = FrameKind::Ping;

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::messages(10.0, 5.0), t0);
        for _ in 0..5 {
            assert_eq!(meter.on_frame_at(t0, MESSAGE, 1), Ok(()));
        }
        assert_eq!(meter.on_frame_at(t0, MESSAGE, 1), Err(FloodLimit::Messages));
        // After one second, ten more tokens (capped at the burst of five) are back.
        let t1 = t0 + Duration::from_secs(1);
        let mut meter = RateMeter::new(&RateLimit::messages(10.0, 5.0), t0);
        for _ in 0..5 {
            assert_eq!(meter.on_frame_at(t0, MESSAGE, 1), Ok(()));
        }
        for _ in 0..5 {
            assert_eq!(meter.on_frame_at(t1, MESSAGE, 1), Ok(()));
        }
        assert_eq!(meter.on_frame_at(t1, MESSAGE, 1), Err(FloodLimit::Messages));
    }

    #[test]
    fn steady_peer_within_limits_is_never_flagged() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::messages(100.0, 10.0), t0);
        for i in 1..=10_000u64 {
            // One message every 20 ms: 50 per second, half the limit.
            let now = t0 + Duration::from_millis(20 * i);
            assert_eq!(meter.on_frame_at(now, MESSAGE, 100), Ok(()), "message {i}");
        }
    }

    #[test]
    fn byte_limit() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::bytes(1000.0, 1000.0), t0);
        assert_eq!(meter.on_frame_at(t0, MESSAGE, 600), Ok(()));
        assert_eq!(meter.on_frame_at(t0, MESSAGE, 600), Err(FloodLimit::Bytes));
    }

    /// Issue #12, item 7: with the old defaults (256 MiB/s, 512 MiB burst) this transfer
    /// was a flood after about 0.7 s and the sender was banned.
    #[test]
    fn default_limits_never_flag_a_bulk_transfer_at_full_speed() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::default(), t0);
        // 16 GiB at 1 GiB/s in 1 MiB messages, with the pings of a live connection.
        for i in 0..16 * 1024u64 {
            let now = t0 + Duration::from_micros(i * 1000);
            assert_eq!(
                meter.on_frame_at(now, MESSAGE, 1 << 20),
                Ok(()),
                "message {i}"
            );
            if i % 2000 == 0 {
                assert_eq!(meter.on_frame_at(now, PING, 8), Ok(()));
            }
        }
        // And a million tiny messages within a second.
        let t1 = t0 + Duration::from_secs(20);
        for i in 0..1_000_000u64 {
            let now = t1 + Duration::from_nanos(i * 1000);
            assert_eq!(meter.on_frame_at(now, MESSAGE, 1), Ok(()));
        }
    }

    #[test]
    fn control_frames_have_their_own_budget() {
        let t0 = Instant::now();
        let limit = RateLimit::default().with_control_frames(100.0, 1000.0);
        let mut meter = RateMeter::new(&limit, t0);
        // Application messages do not use the control budget ...
        for _ in 0..100_000 {
            assert_eq!(meter.on_frame_at(t0, MESSAGE, 10), Ok(()));
        }
        // ... control frames do: the burst, then the sustained rate.
        for _ in 0..1000 {
            assert_eq!(meter.on_frame_at(t0, FrameKind::Unknown(40), 10), Ok(()));
        }
        assert_eq!(
            meter.on_frame_at(t0, PING, 8),
            Err(FloodLimit::ControlFrames)
        );
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..100 {
            assert_eq!(meter.on_frame_at(t1, PING, 8), Ok(()));
        }
        assert_eq!(
            meter.on_frame_at(t1, PING, 8),
            Err(FloodLimit::ControlFrames)
        );
    }

    #[test]
    fn an_honest_peers_control_traffic_is_far_below_the_default() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::default(), t0);
        // An hour of pings every 2 s, with a busy second of 500 control frames (a hole
        // punch and plug-in traffic) every minute.
        for second in 0..3600u64 {
            let now = t0 + Duration::from_secs(second);
            if second % 2 == 0 {
                assert_eq!(meter.on_frame_at(now, PING, 8), Ok(()));
            }
            if second % 60 == 0 {
                for _ in 0..500 {
                    assert_eq!(meter.on_frame_at(now, FrameKind::Unknown(17), 100), Ok(()));
                }
            }
        }
    }

    #[test]
    fn unlimited_never_flags() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(&RateLimit::unlimited(), t0);
        for _ in 0..100_000 {
            assert_eq!(meter.on_frame_at(t0, PING, 8), Ok(()));
            assert_eq!(meter.on_frame_at(t0, MESSAGE, usize::MAX), Ok(()));
        }
    }
}
