//! Delivery accounting: which messages `send` accepted on a connection were confirmed by
//! the peer, so that none is lost silently when the connection ends.
//!
//! Each side counts the application messages its reader handed to its event queue on a
//! connection and acknowledges that cumulative count to the peer in a `Delivered` control
//! frame ([`DELIVERED_FRAME`], kind 18; `docs/protocol.md`). The sender counts the messages
//! its connection accepted; when the connection ends, the messages beyond the highest count
//! the peer confirmed (messages are in order on a connection, so they are the last ones
//! sent on it) are reported to the application as [`Event::MessagesUnconfirmed`].
//!
//! A graceful end confirms everything without a last round of acknowledgements: a node
//! that ends its side on its own first sends a `Delivered` frame with the *closing* flag
//! (its last acknowledgement on that connection), and a node that ends its side in answer
//! to the peer's clean end (Crust does that once its reader has handed over everything
//! the peer sent) sends none. So when the peer's clean end arrives without a closing
//! frame after we ended our side, the peer has read every message we sent.
//!
//! The rules are plain data with time passed in ([`AckSchedule`], [`unconfirmed`]); the
//! shared per-connection state ([`Delivery`]) and the small calls the connection task
//! makes are the glue.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use crust_core::wire::FrameKind;
use crust_core::{MessageSender, PeerId};

use crate::Event;
use crate::node::{ConnHandle, Node};

/// The frame kind of delivery acknowledgements (reserved for Crust; see `docs/protocol.md`).
pub(crate) const DELIVERED_FRAME: FrameKind = FrameKind::Unknown(18);

/// Acknowledge at once when this many messages arrived since the last acknowledgement.
pub(crate) const ACK_EVERY_MESSAGES: u64 = 256;
/// ... or this many payload bytes.
pub(crate) const ACK_EVERY_BYTES: u64 = 256 * 1024;
/// Otherwise acknowledge this long after the first unacknowledged message.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(25);

/// Length of a `Delivered` payload: the count (u64, big endian) and a flags byte.
pub(crate) const DELIVERED_LEN: usize = 9;
/// Flag: the sender ends its side of the connection; this is its last acknowledgement.
const FLAG_CLOSING: u8 = 1;

/// A decoded `Delivered` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Messages the sender of the frame received on this connection and handed to its
    /// application, counted from the start of the connection.
    pub(crate) count: u64,
    /// The sender of the frame ends its side: no later acknowledgement follows.
    pub(crate) closing: bool,
}

impl Delivered {
    /// The frame's payload.
    pub(crate) fn encode(self) -> Bytes {
        let mut out = BytesMut::with_capacity(DELIVERED_LEN);
        out.put_u64(self.count);
        out.put_u8(if self.closing { FLAG_CLOSING } else { 0 });
        out.freeze()
    }

    /// Parses a payload: exactly [`DELIVERED_LEN`] bytes; flag bits other than the closing
    /// flag are reserved and ignored. `None` for any other length.
    pub(crate) fn decode(payload: &[u8]) -> Option<Delivered> {
        let bytes: &[u8; DELIVERED_LEN] = payload.try_into().ok()?;
        let (count, flags) = bytes.split_at(8);
        let count = u64::from_be_bytes(count.try_into().ok()?);
        Some(Delivered {
            count,
            closing: flags.first().is_some_and(|f| f & FLAG_CLOSING != 0),
        })
    }
}

/// When the reader acknowledges what it handed over. Pure state, time passed in.
#[derive(Clone, Debug, Default)]
pub(crate) struct AckSchedule {
    /// Messages handed to the application, from the start of the connection.
    received: u64,
    /// The count last acknowledged.
    acked: u64,
    /// Payload bytes handed over since the last acknowledgement.
    unacked_bytes: u64,
    /// When the first message not acknowledged yet was handed over.
    first_unacked: Option<Instant>,
}

impl AckSchedule {
    /// `messages` messages of `bytes` payload bytes were handed to the application at `now`.
    /// Returns the count to acknowledge at once, if a threshold is reached.
    pub(crate) fn delivered(&mut self, messages: u64, bytes: u64, now: Instant) -> Option<u64> {
        if messages == 0 {
            return None;
        }
        self.received += messages;
        self.unacked_bytes = self.unacked_bytes.saturating_add(bytes);
        self.first_unacked.get_or_insert(now);
        let due = self.received - self.acked >= ACK_EVERY_MESSAGES
            || self.unacked_bytes >= ACK_EVERY_BYTES;
        due.then_some(self.received)
    }

    /// The count to acknowledge at `now` if the delay has run out.
    pub(crate) fn poll(&self, now: Instant) -> Option<u64> {
        let first = self.first_unacked?;
        (now >= first + ACK_DELAY).then_some(self.received)
    }

    /// When [`AckSchedule::poll`] next has something to send.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.first_unacked.map(|first| first + ACK_DELAY)
    }

    /// An acknowledgement of `count` was queued.
    pub(crate) fn acknowledged(&mut self, count: u64) {
        self.acked = self.acked.max(count);
        if self.acked >= self.received {
            self.unacked_bytes = 0;
            self.first_unacked = None;
        }
    }

    /// Messages handed over so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }
}

/// How many of the `sent` messages of a connection that ended were not confirmed.
///
/// `acked` is the highest count the peer acknowledged. When the peer ended its side
/// cleanly (`peer_clean_end`) without a closing acknowledgement, after we had ended ours
/// (`we_closed`), its end answered ours: it read everything.
pub(crate) fn unconfirmed(
    sent: u64,
    acked: u64,
    peer_clean_end: bool,
    peer_closing: bool,
    we_closed: bool,
) -> u64 {
    if peer_clean_end && !peer_closing && we_closed {
        0
    } else {
        sent.saturating_sub(acked)
    }
}

/// How our side of a connection ends gracefully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Stop delivering the peer's messages: what arrives after our closing acknowledgement
    /// is discarded (disconnect, shutdown).
    Stop,
    /// Keep delivering until the peer's end (a retired duplicate drains).
    Drain,
}

/// The reader's side, under one lock (taken once per batch).
#[derive(Debug, Default)]
struct Inbound {
    schedule: AckSchedule,
    /// Set once our closing acknowledgement is queued: no acknowledgement follows it.
    closing: Option<Closing>,
}

/// The delivery accounting of one connection, shared by senders, the reader and whoever
/// closes it.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Messages `send` accepted on this connection (counted before queuing, taken back when
    /// queuing failed, so never below what the peer can have seen).
    sent: AtomicU64,
    /// The highest count the peer acknowledged.
    acked: AtomicU64,
    /// The peer's closing acknowledgement arrived.
    peer_closing: AtomicBool,
    /// Our closing acknowledgement went out: a clean end of the peer now answers ours.
    we_closed: AtomicBool,
    /// The connection's end was reported (at most one report per connection).
    reported: AtomicBool,
    inbound: Mutex<Inbound>,
}

impl Delivery {
    fn inbound(&self) -> std::sync::MutexGuard<'_, Inbound> {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `n` messages about to be queued. They stay counted only if
    /// [`Counted::keep`] is called (queued, or perhaps queued); dropping the guard takes
    /// them back (not queued, or the caller gave up waiting).
    pub(crate) fn count(&self, n: u64) -> Counted<'_> {
        self.sent.fetch_add(n, Ordering::AcqRel);
        Counted { delivery: self, n }
    }

    /// Takes back `n` messages counted and kept that were certainly not queued.
    pub(crate) fn uncount(&self, n: u64) {
        self.sent.fetch_sub(n, Ordering::AcqRel);
    }

    /// Messages accepted so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// True when `payload` is a `Delivered` frame that confirms messages not confirmed yet
    /// (and no more than we sent): an acknowledgement our own sending earned, which the
    /// flood meter does not count as control work (a bulk transfer at full speed earns
    /// thousands per second). Repeated or bogus ones are control work like any other.
    pub(crate) fn advances(&self, payload: &[u8]) -> bool {
        Delivered::decode(payload).is_some_and(|delivered| {
            delivered.count > self.acked.load(Ordering::Acquire) && delivered.count <= self.sent()
        })
    }

    /// A `Delivered` frame from the peer. A count above what we sent breaks the protocol:
    /// it is ignored (logged), so it can never confirm a message we did not send.
    pub(crate) fn on_frame(&self, peer: PeerId, payload: &[u8]) {
        let Some(delivered) = Delivered::decode(payload) else {
            tracing::debug!(%peer, len = payload.len(), "ignoring a malformed delivery acknowledgement");
            return;
        };
        let sent = self.sent();
        if delivered.count > sent {
            tracing::warn!(%peer, count = delivered.count, sent, "peer acknowledges more messages than we sent; ignored");
            return;
        }
        self.acked.fetch_max(delivered.count, Ordering::AcqRel);
        if delivered.closing {
            self.peer_closing.store(true, Ordering::Release);
        }
    }

    /// True once our side stopped delivering the peer's messages ([`Closing::Stop`]).
    pub(crate) fn discards(&self) -> bool {
        self.inbound().closing == Some(Closing::Stop)
    }

    /// The reader handed `messages` messages of `bytes` bytes to the application at `now`
    /// (`handed_over` false when they may have been dropped: the service is shutting
    /// down). Sends an acknowledgement when one is due, never waiting; returns when the
    /// next one is due.
    pub(crate) fn delivered(
        &self,
        sender: &MessageSender,
        messages: u64,
        bytes: u64,
        handed_over: bool,
        now: Instant,
    ) -> Option<Instant> {
        let mut inbound = self.inbound();
        if inbound.closing.is_some() || messages == 0 {
            return None;
        }
        if !handed_over {
            // Dropped messages must not be confirmed, not even by a clean end of ours that
            // answers the peer's: close with the count before them.
            drop(inbound);
            self.close(sender, Closing::Stop);
            return None;
        }
        if let Some(count) = inbound.schedule.delivered(messages, bytes, now) {
            send_ack(sender, &mut inbound.schedule, count);
        }
        inbound.schedule.deadline()
    }

    /// Sends the acknowledgement whose delay ran out; returns when to call again.
    pub(crate) fn poll(&self, sender: &MessageSender, now: Instant) -> Option<Instant> {
        let mut inbound = self.inbound();
        if inbound.closing.is_some() {
            return None;
        }
        if let Some(count) = inbound.schedule.poll(now) {
            send_ack(sender, &mut inbound.schedule, count);
        }
        // A full control lane leaves the acknowledgement due: retried at the next batch,
        // or after another delay.
        inbound
            .schedule
            .deadline()
            .map(|at| at.max(now + ACK_DELAY / 4))
    }

    /// Queues our closing acknowledgement (once): the count of messages handed over, and
    /// from now on no acknowledgement follows. Returns false when it could not be queued
    /// (full control lane, connection closed): the caller must then abort rather than end
    /// cleanly. Call before ending our side.
    pub(crate) fn close(&self, sender: &MessageSender, how: Closing) -> bool {
        let mut inbound = self.inbound();
        if inbound.closing.is_some() {
            return true;
        }
        inbound.closing = Some(how);
        let frame = Delivered {
            count: inbound.schedule.received(),
            closing: true,
        };
        if sender.try_send_frame(DELIVERED_FRAME, frame.encode()) {
            self.we_closed.store(true, Ordering::Release);
            return true;
        }
        if sender.peer_finished() {
            // The peer ended first (our queue closed on its end): our end answers its own,
            // after everything it sent was handed over.
            return true;
        }
        sender.abort();
        false
    }

    /// Messages of this connection to report as unconfirmed now that it ended, once:
    /// `None` when all were confirmed or the end was already reported.
    pub(crate) fn take_report(&self, peer_clean_end: bool) -> Option<(u64, u64)> {
        if self.reported.swap(true, Ordering::AcqRel) {
            return None;
        }
        let sent = self.sent();
        let count = unconfirmed(
            sent,
            self.acked.load(Ordering::Acquire),
            peer_clean_end,
            self.peer_closing.load(Ordering::Acquire),
            self.we_closed.load(Ordering::Acquire),
        );
        (count > 0).then_some((count, sent))
    }
}

/// Messages counted as sent by [`Delivery::count`], taken back unless kept.
#[derive(Debug)]
pub(crate) struct Counted<'a> {
    delivery: &'a Delivery,
    n: u64,
}

impl Counted<'_> {
    /// The messages were queued (or may have been): they stay counted.
    pub(crate) fn keep(mut self) {
        self.n = 0;
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.delivery.sent.fetch_sub(self.n, Ordering::AcqRel);
        }
    }
}

/// Queues an acknowledgement of `count` without waiting; a full lane leaves it due.
fn send_ack(sender: &MessageSender, schedule: &mut AckSchedule, count: u64) {
    let frame = Delivered {
        count,
        closing: false,
    };
    if sender.try_send_frame(DELIVERED_FRAME, frame.encode()) {
        schedule.acknowledged(count);
    }
}

impl Node {
    /// Reports the messages of an ended connection the peer did not confirm, if any (once
    /// per connection). Called before the peer's `LostPeer`, where there is one.
    pub(crate) fn report_unconfirmed(&self, handle: &ConnHandle, peer_clean_end: bool) {
        let Some((count, sent)) = handle.delivery.take_report(peer_clean_end) else {
            return;
        };
        let peer = handle.sender.info().peer_id;
        tracing::info!(%peer, count, sent, "messages not confirmed by the peer");
        self.emit_now(Event::MessagesUnconfirmed { peer, count, sent });
    }

    /// Ends our side of a connection gracefully: our closing acknowledgement, everything
    /// queued written, then the peer's end awaited (its reader keeps reading, so that a
    /// clean end of the peer confirms what we sent), all bounded by the close timeout;
    /// aborted otherwise.
    pub(crate) async fn close_gracefully(handle: &ConnHandle, how: Closing, timeout: Duration) {
        if !handle.delivery.close(&handle.sender, how) {
            return;
        }
        handle.sender.finish().await;
        if tokio::time::timeout(timeout, handle.sender.closed())
            .await
            .is_err()
        {
            handle.sender.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acknowledgements that confirm new messages are earned (not flood-metered); repeated,
    /// stale or inflated ones are not.
    #[test]
    fn only_acknowledgements_that_confirm_new_messages_are_earned() {
        let delivery = Delivery::default();
        let ack = |count| {
            Delivered {
                count,
                closing: false,
            }
            .encode()
        };
        delivery.count(10).keep();
        assert!(delivery.advances(&ack(4)));
        delivery.on_frame(PeerId::from_bytes([1; 32]), &ack(4));
        assert!(!delivery.advances(&ack(4)), "repeated");
        assert!(!delivery.advances(&ack(3)), "stale");
        assert!(!delivery.advances(&ack(11)), "more than we sent");
        assert!(!delivery.advances(b"garbage"));
        assert!(delivery.advances(&ack(10)));
    }

    #[test]
    fn the_payload_round_trips_and_other_lengths_are_refused() {
        for frame in [
            Delivered {
                count: 0,
                closing: false,
            },
            Delivered {
                count: u64::MAX,
                closing: true,
            },
            Delivered {
                count: 0x0102_0304_0506_0708,
                closing: false,
            },
        ] {
            let bytes = frame.encode();
            assert_eq!(bytes.len(), DELIVERED_LEN);
            assert_eq!(Delivered::decode(&bytes), Some(frame));
        }
        assert_eq!(
            &Delivered {
                count: 0x0102_0304_0506_0708,
                closing: true
            }
            .encode()[..],
            &[1, 2, 3, 4, 5, 6, 7, 8, 1]
        );
        assert_eq!(Delivered::decode(&[0; 8]), None);
        assert_eq!(Delivered::decode(&[0; 10]), None);
        assert_eq!(Delivered::decode(&[]), None);
        // Reserved flag bits are ignored.
        assert_eq!(
            Delivered::decode(&[0, 0, 0, 0, 0, 0, 0, 5, 0xFE]),
            Some(Delivered {
                count: 5,
                closing: false
            })
        );
    }

    #[test]
    fn acknowledges_after_many_messages_many_bytes_or_a_short_delay() {
        let t0 = Instant::now();
        let mut s = AckSchedule::default();
        assert_eq!(s.deadline(), None);
        assert_eq!(s.delivered(0, 0, t0), None);
        assert_eq!(s.deadline(), None, "nothing handed over, nothing due");
        // A few small messages: only the delay makes them due.
        assert_eq!(s.delivered(3, 30, t0), None);
        assert_eq!(s.deadline(), Some(t0 + ACK_DELAY));
        assert_eq!(s.poll(t0 + ACK_DELAY / 2), None);
        // The deadline stays at the first unacknowledged message.
        assert_eq!(s.delivered(2, 20, t0 + ACK_DELAY / 2), None);
        assert_eq!(s.poll(t0 + ACK_DELAY), Some(5));
        s.acknowledged(5);
        assert_eq!(s.deadline(), None);
        assert_eq!(s.poll(t0 + ACK_DELAY * 10), None);
        // Many messages: due at once.
        assert_eq!(
            s.delivered(ACK_EVERY_MESSAGES, 64, t0),
            Some(5 + ACK_EVERY_MESSAGES)
        );
        s.acknowledged(5 + ACK_EVERY_MESSAGES);
        // Many bytes: due at once, even for one message.
        assert_eq!(
            s.delivered(1, ACK_EVERY_BYTES, t0),
            Some(6 + ACK_EVERY_MESSAGES)
        );
        // Not acknowledged (full control lane): still due at the next chance.
        assert_eq!(s.poll(t0 + ACK_DELAY), Some(6 + ACK_EVERY_MESSAGES));
        assert_eq!(s.delivered(1, 1, t0), Some(7 + ACK_EVERY_MESSAGES));
        assert_eq!(s.received(), 7 + ACK_EVERY_MESSAGES);
        // An older count acknowledged late does not clear what came after it.
        s.acknowledged(6 + ACK_EVERY_MESSAGES);
        assert!(s.deadline().is_some());
        s.acknowledged(7 + ACK_EVERY_MESSAGES);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn unconfirmed_is_what_was_not_acknowledged_unless_the_peer_answered_our_end() {
        // Aborted, failed, timed out: acknowledgements only.
        assert_eq!(unconfirmed(10, 4, false, false, false), 6);
        assert_eq!(unconfirmed(10, 4, false, false, true), 6);
        assert_eq!(unconfirmed(10, 10, false, false, false), 0);
        // The peer ended first, on its own (it sent its closing acknowledgement).
        assert_eq!(unconfirmed(10, 4, true, true, false), 6);
        assert_eq!(unconfirmed(10, 4, true, true, true), 6);
        // The peer's clean end without a closing acknowledgement, but we had not ended
        // ours: nothing says it read everything.
        assert_eq!(unconfirmed(10, 4, true, false, false), 6);
        // It answered our end: it read everything we sent.
        assert_eq!(unconfirmed(10, 4, true, false, true), 0);
        assert_eq!(unconfirmed(0, 0, false, false, false), 0);
    }
}
