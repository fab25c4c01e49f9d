//! The coordinator's bookkeeping (R in the coordination): which requests it relayed and
//! whether it may relay another. Pure: time is passed in.
//!
//! R relays an `Answer`, `Decline` or `Sync` only for a request it forwarded between
//! exactly those two peers, at most once each, and forgets requests after
//! [`RELAY_TTL`]. It relays at most [`MAX_RELAYS_PER_PEER`] requests per initiator per
//! [`RELAY_WINDOW`] and keeps at most [`MAX_PENDING_RELAYS`] in flight in all, so no node
//! can use it to flood a third one.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crust_core::PeerId;

use super::messages::RefuseReason;

/// How long a relayed request stays answerable.
pub(crate) const RELAY_TTL: Duration = Duration::from_secs(15);
/// Requests relayed at most per initiator per [`RELAY_WINDOW`].
pub(crate) const MAX_RELAYS_PER_PEER: usize = 10;
/// The window of [`MAX_RELAYS_PER_PEER`].
pub(crate) const RELAY_WINDOW: Duration = Duration::from_secs(60);
/// Requests in flight at most, all initiators together.
pub(crate) const MAX_PENDING_RELAYS: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Relay {
    target: PeerId,
    created: Instant,
    answered: bool,
}

/// What R knows about the coordinations it relays.
#[derive(Debug, Default)]
pub(crate) struct Coordinator {
    /// By (initiator, request id).
    pending: HashMap<(PeerId, u64), Relay>,
    /// When each initiator's recent requests were relayed.
    recent: HashMap<PeerId, VecDeque<Instant>>,
}

impl Coordinator {
    fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|_, relay| now.duration_since(relay.created) < RELAY_TTL);
        self.recent.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= RELAY_WINDOW)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
    }

    /// `initiator` asks us to introduce it to `target` (whether we are connected to it is
    /// `target_connected`). `Ok` means: forward the offer.
    pub(crate) fn request(
        &mut self,
        initiator: PeerId,
        id: u64,
        target: PeerId,
        target_connected: bool,
        now: Instant,
    ) -> Result<(), RefuseReason> {
        self.expire(now);
        if !target_connected || target == initiator {
            return Err(RefuseReason::TargetNotConnected);
        }
        let recent = self.recent.get(&initiator).map_or(0, VecDeque::len);
        if recent >= MAX_RELAYS_PER_PEER
            || self.pending.len() >= MAX_PENDING_RELAYS
            || self.pending.contains_key(&(initiator, id))
        {
            return Err(RefuseReason::CoordinatorBusy);
        }
        self.recent.entry(initiator).or_default().push_back(now);
        self.pending.insert(
            (initiator, id),
            Relay {
                target,
                created: now,
                answered: false,
            },
        );
        Ok(())
    }

    /// `responder` answers (or declines) `origin`'s request `id`: relay it only if we
    /// forwarded that request to `responder` and it was not answered yet.
    pub(crate) fn answer(
        &mut self,
        responder: PeerId,
        origin: PeerId,
        id: u64,
        now: Instant,
    ) -> bool {
        self.expire(now);
        match self.pending.get_mut(&(origin, id)) {
            Some(relay) if relay.target == responder && !relay.answered => {
                relay.answered = true;
                true
            }
            _ => false,
        }
    }

    /// The responder declined: relay it (like an answer) and forget the request.
    pub(crate) fn decline(
        &mut self,
        responder: PeerId,
        origin: PeerId,
        id: u64,
        now: Instant,
    ) -> bool {
        let ok = self.answer(responder, origin, id, now);
        if ok {
            self.pending.remove(&(origin, id));
        }
        ok
    }

    /// `initiator` says go for request `id` to `target`: relay it only once, after an
    /// answer, then forget the request.
    pub(crate) fn sync(
        &mut self,
        initiator: PeerId,
        id: u64,
        target: PeerId,
        now: Instant,
    ) -> bool {
        self.expire(now);
        match self.pending.get(&(initiator, id)) {
            Some(relay) if relay.target == target && relay.answered => {
                self.pending.remove(&(initiator, id));
                true
            }
            _ => false,
        }
    }

    /// Requests in flight (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32])
    }

    #[test]
    fn a_request_is_answered_once_and_synced_once_by_the_right_peers() {
        let (a, b, c) = (peer(1), peer(2), peer(3));
        let now = Instant::now();
        let mut r = Coordinator::default();
        assert_eq!(r.request(a, 7, b, true, now), Ok(()));
        assert!(!r.sync(a, 7, b, now), "no sync before the answer");
        assert!(!r.answer(c, a, 7, now), "only the target answers");
        assert!(!r.answer(b, a, 8, now), "only the request's id");
        assert!(r.answer(b, a, 7, now));
        assert!(!r.answer(b, a, 7, now), "once");
        assert!(!r.sync(c, 7, b, now), "only the initiator syncs");
        assert!(r.sync(a, 7, b, now));
        assert!(!r.sync(a, 7, b, now), "once");
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn requests_to_strangers_or_ourselves_are_refused() {
        let now = Instant::now();
        let mut r = Coordinator::default();
        assert_eq!(
            r.request(peer(1), 1, peer(2), false, now),
            Err(RefuseReason::TargetNotConnected)
        );
        assert_eq!(
            r.request(peer(1), 1, peer(1), true, now),
            Err(RefuseReason::TargetNotConnected)
        );
    }

    #[test]
    fn one_initiator_gets_a_bounded_number_of_relays_per_window() {
        let now = Instant::now();
        let mut r = Coordinator::default();
        for id in 0..MAX_RELAYS_PER_PEER as u64 {
            assert_eq!(r.request(peer(1), id, peer(2), true, now), Ok(()));
        }
        assert_eq!(
            r.request(peer(1), 99, peer(2), true, now),
            Err(RefuseReason::CoordinatorBusy)
        );
        assert_eq!(
            r.request(peer(3), 1, peer(2), true, now),
            Ok(()),
            "others still served"
        );
        let later = now + RELAY_WINDOW;
        assert_eq!(r.request(peer(1), 100, peer(2), true, later), Ok(()));
    }

    #[test]
    fn requests_in_flight_are_bounded_and_expire() {
        let now = Instant::now();
        let mut r = Coordinator::default();
        for i in 0..MAX_PENDING_RELAYS {
            let initiator = peer((i % 200) as u8 + 10);
            assert_eq!(r.request(initiator, i as u64, peer(2), true, now), Ok(()));
        }
        assert_eq!(
            r.request(peer(250), 1, peer(2), true, now),
            Err(RefuseReason::CoordinatorBusy)
        );
        let later = now + RELAY_TTL;
        assert!(!r.answer(peer(2), peer(10), 0, later), "expired");
        assert_eq!(r.request(peer(250), 1, peer(2), true, later), Ok(()));
    }

    #[test]
    fn a_decline_is_relayed_once_and_ends_the_request() {
        let now = Instant::now();
        let mut r = Coordinator::default();
        assert_eq!(r.request(peer(1), 1, peer(2), true, now), Ok(()));
        assert!(r.decline(peer(2), peer(1), 1, now));
        assert!(!r.decline(peer(2), peer(1), 1, now));
        assert!(!r.sync(peer(1), 1, peer(2), now));
    }
}
