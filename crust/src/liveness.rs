//! Ping and liveness of one connection: when to ping, the round-trip time, and when a
//! silent peer counts as dead.
//!
//! Pure state with time passed in. Any frame heard from the peer proves it alive; a ping
//! goes out every `interval` and its pong yields a round-trip sample (smoothed like TCP's
//! SRTT, RFC 6298). A peer from which nothing was heard for `timeout` is dead, so a crashed
//! peer is noticed within `timeout` on every transport, also on QUIC whose own idle timeout
//! is much longer. Time during which we did not read (our application was not taking
//! events) is not held against the peer: the caller reports it with [`Liveness::heard`].

use std::time::{Duration, Instant};

/// What the connection task should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LivenessAction {
    /// Send a ping with this payload (an 8-byte nonce).
    Ping(u64),
    /// Nothing was heard from the peer for this long: it is dead.
    Dead(Duration),
    /// Nothing to do before this instant.
    WaitUntil(Instant),
}

/// Ping schedule and round-trip estimate of one connection.
#[derive(Clone, Debug)]
pub(crate) struct Liveness {
    interval: Duration,
    timeout: Duration,
    last_heard: Instant,
    next_ping: Instant,
    /// The ping in flight: nonce and when it was sent.
    outstanding: Option<(u64, Instant)>,
    next_nonce: u64,
    srtt: Option<Duration>,
}

impl Liveness {
    /// A connection established at `now`, pinged every `interval`, dead after `timeout` of
    /// silence. `seed` varies the nonces between connections.
    pub(crate) fn new(interval: Duration, timeout: Duration, now: Instant, seed: u64) -> Self {
        Liveness {
            interval,
            timeout,
            last_heard: now,
            // The first ping waits an interval: a new connection carries its first messages
            // without extra frames (`Service::ping` measures at once when asked).
            next_ping: now + interval,
            outstanding: None,
            next_nonce: seed,
            srtt: None,
        }
    }

    /// Something (any frame) was heard from the peer at `now`, or we resume reading after
    /// waiting for our application.
    pub(crate) fn heard(&mut self, now: Instant) {
        if now > self.last_heard {
            self.last_heard = now;
        }
    }

    /// A pong with `nonce` arrived at `now`. Returns the round-trip sample when it answers
    /// our outstanding ping (stale or forged pongs are ignored).
    pub(crate) fn on_pong(&mut self, nonce: u64, now: Instant) -> Option<Duration> {
        self.heard(now);
        match self.outstanding {
            Some((expected, sent)) if expected == nonce => {
                self.outstanding = None;
                let sample = now.saturating_duration_since(sent);
                self.srtt = Some(match self.srtt {
                    None => sample,
                    // srtt = 7/8 srtt + 1/8 sample
                    Some(srtt) => (srtt * 7 + sample) / 8,
                });
                Some(sample)
            }
            _ => None,
        }
    }

    /// What to do at `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> LivenessAction {
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= self.timeout {
            return LivenessAction::Dead(silent);
        }
        if now >= self.next_ping {
            let nonce = self.next_nonce;
            // The top bit stays clear: it marks the application's own pings.
            self.next_nonce = self.next_nonce.wrapping_add(1) & (u64::MAX >> 1);
            // A ping still unanswered is replaced: its pong would be ignored.
            self.outstanding = Some((nonce, now));
            self.next_ping = now + self.interval;
            return LivenessAction::Ping(nonce);
        }
        LivenessAction::WaitUntil(self.next_ping.min(self.last_heard + self.timeout))
    }

    /// The smoothed round-trip time, once a pong was received.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.srtt
    }
}

/// Encodes a ping/pong payload.
pub(crate) fn encode_nonce(nonce: u64) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&nonce.to_be_bytes())
}

/// Decodes a ping/pong payload; `None` for anything but 8 bytes.
pub(crate) fn decode_nonce(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(2);
    const TIMEOUT: Duration = Duration::from_secs(6);

    #[test]
    fn pings_every_interval() {
        let t0 = Instant::now();
        let mut l = Liveness::new(INTERVAL, TIMEOUT, t0, 100);
        assert_eq!(l.poll(t0), LivenessAction::WaitUntil(t0 + INTERVAL));
        assert_eq!(l.poll(t0 + INTERVAL), LivenessAction::Ping(100));
        assert_eq!(
            l.poll(t0 + INTERVAL),
            LivenessAction::WaitUntil(t0 + INTERVAL * 2)
        );
        assert_eq!(l.poll(t0 + INTERVAL * 2), LivenessAction::Ping(101));
    }

    #[test]
    fn rtt_from_matching_pongs_only() {
        let t0 = Instant::now();
        let mut l = Liveness::new(INTERVAL, TIMEOUT, t0, 7);
        let t0 = t0 + INTERVAL;
        assert_eq!(l.poll(t0), LivenessAction::Ping(7));
        assert_eq!(l.on_pong(99, t0 + Duration::from_millis(5)), None);
        assert_eq!(l.rtt(), None);
        assert_eq!(
            l.on_pong(7, t0 + Duration::from_millis(40)),
            Some(Duration::from_millis(40))
        );
        assert_eq!(l.rtt(), Some(Duration::from_millis(40)));
        // A duplicate pong is not a second sample.
        assert_eq!(l.on_pong(7, t0 + Duration::from_millis(50)), None);
        let t1 = t0 + INTERVAL;
        assert_eq!(l.poll(t1), LivenessAction::Ping(8));
        l.on_pong(8, t1 + Duration::from_millis(8));
        // 7/8 * 40 + 1/8 * 8 = 36 ms.
        assert_eq!(l.rtt(), Some(Duration::from_millis(36)));
    }

    #[test]
    fn silent_peer_is_dead_after_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(INTERVAL, TIMEOUT, t0, 0);
        let mut now = t0;
        let mut pings = 0;
        loop {
            match l.poll(now) {
                LivenessAction::Ping(_) => pings += 1,
                LivenessAction::WaitUntil(at) => {
                    assert!(at > now);
                    now = at;
                }
                LivenessAction::Dead(silent) => {
                    assert_eq!(silent, TIMEOUT);
                    break;
                }
            }
            assert!(pings < 10, "bounded");
        }
        assert_eq!(now, t0 + TIMEOUT);
        assert_eq!(pings, 2, "pings at 2 and 4 s went unanswered");
    }

    #[test]
    fn traffic_keeps_the_peer_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(INTERVAL, TIMEOUT, t0, 0);
        for s in 1..=20 {
            let now = t0 + Duration::from_secs(s);
            l.heard(now);
            assert!(!matches!(l.poll(now), LivenessAction::Dead(_)));
        }
        // Time going backwards (a stale report) never shortens the deadline.
        l.heard(t0);
        assert!(!matches!(
            l.poll(t0 + Duration::from_secs(25)),
            LivenessAction::Dead(_)
        ));
    }

    proptest::proptest! {
        #[test]
        fn nonce_decoding_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)) {
            let decoded = decode_nonce(&bytes);
            proptest::prop_assert_eq!(decoded.is_some(), bytes.len() == 8);
        }
    }

    #[test]
    fn nonce_codec() {
        assert_eq!(decode_nonce(&encode_nonce(0xdead_beef)), Some(0xdead_beef));
        assert_eq!(decode_nonce(b"short"), None);
        assert_eq!(decode_nonce(&[0; 9]), None);
    }
}
