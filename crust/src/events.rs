//! The event queue between the service and the application, and [`Events`], its receiving
//! end.
//!
//! Two ways in:
//! - [`EventQueue::push_wait`]: what peers cause (messages, accepted connections, losses
//!   seen by readers) waits while the application has `capacity` events, or `byte_capacity`
//!   bytes of message payload, it has not taken.
//!   The waiting reader stops reading, so TCP/QUIC flow control slows the peer down:
//!   backpressure, never loss.
//! - [`EventQueue::push_now`]: what the application's own calls cause (`connect`,
//!   `disconnect`, `ban`) never waits, so a task that drains events can await those calls
//!   without deadlocking. That overshoot is bounded by the calls the application makes.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::Event;

#[derive(Default)]
struct QueueState {
    events: VecDeque<Event>,
    receiver: Option<Waker>,
    /// The receiver was dropped: nobody listens, events are discarded.
    receiver_gone: bool,
}

/// The bounded queue of events for the application.
pub(crate) struct EventQueue {
    state: Mutex<QueueState>,
    /// Events pushed and not yet handed to the application (including those the receiver
    /// already took out of `state` but has not returned yet).
    outstanding: AtomicUsize,
    /// Notified when room for a whole batch appears (see [`EventQueue::taken`]).
    room: Notify,
    capacity: usize,
    /// At this many outstanding events a waiting batch (at most [`MAX_WAITING_BATCH`]
    /// events) fits again.
    resume_at: usize,
    /// Message payload bytes pushed and not yet handed to the application.
    bytes: AtomicUsize,
    /// Most payload bytes waiting for the application before pushers wait (one batch may
    /// always go into an empty queue, whatever its size).
    byte_capacity: usize,
    /// At this many outstanding bytes a waiting batch of up to half the byte capacity fits
    /// again.
    bytes_resume_at: usize,
}

/// Largest batch `push_wait` is given (a reader's batch); larger ones wait for an empty
/// queue.
pub(crate) const MAX_WAITING_BATCH: usize = 64;

/// Message payload bytes after which a reader hands its batch over: a batch holds less
/// than this plus one message.
pub(crate) const MAX_WAITING_BATCH_BYTES: usize = 256 * 1024;

/// The payload bytes an event holds (what the byte bound counts).
pub(crate) fn payload_bytes(event: &Event) -> usize {
    match event {
        Event::Message { payload, .. } => payload.len(),
        _ => 0,
    }
}

impl EventQueue {
    /// A queue letting `capacity` events and `byte_capacity` bytes of message payload wait
    /// for the application before readers wait.
    pub(crate) fn new(capacity: usize, byte_capacity: usize) -> Arc<Self> {
        let byte_capacity = byte_capacity.max(1);
        Arc::new(EventQueue {
            state: Mutex::new(QueueState::default()),
            outstanding: AtomicUsize::new(0),
            room: Notify::new(),
            capacity: capacity.max(1),
            resume_at: capacity.max(1).saturating_sub(MAX_WAITING_BATCH),
            bytes: AtomicUsize::new(0),
            byte_capacity,
            bytes_resume_at: byte_capacity / 2,
        })
    }

    /// Message payload bytes waiting for the application.
    #[cfg(test)]
    pub(crate) fn bytes_waiting(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues events at once, whatever the room (see the module docs).
    pub(crate) fn push_now(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut state = self.lock();
        self.append(&mut state, events);
    }

    /// Queues events once there is room for them (or the queue is empty), or drops them
    /// when `stop` is cancelled first. Returns whether it had to wait.
    pub(crate) async fn push_wait(&self, events: Vec<Event>, stop: &CancellationToken) -> bool {
        if events.is_empty() {
            return false;
        }
        let n = events.len();
        let bytes: usize = events.iter().map(payload_bytes).sum();
        let mut waited = false;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.lock();
                let outstanding = self.outstanding.load(Ordering::Acquire);
                let waiting_bytes = self.bytes.load(Ordering::Acquire);
                let fits = outstanding + n <= self.capacity
                    && waiting_bytes.saturating_add(bytes) <= self.byte_capacity;
                if outstanding == 0 || fits || state.receiver_gone {
                    self.append(&mut state, events);
                    return waited;
                }
            }
            waited = true;
            tokio::select! {
                _ = &mut room => {}
                _ = stop.cancelled() => return waited,
            }
        }
    }

    fn append(&self, state: &mut QueueState, events: Vec<Event>) {
        if state.receiver_gone {
            return;
        }
        self.outstanding.fetch_add(events.len(), Ordering::AcqRel);
        let bytes: usize = events.iter().map(payload_bytes).sum();
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        state.events.extend(events);
        if let Some(waker) = state.receiver.take() {
            waker.wake();
        }
    }

    /// One event, holding `bytes` of payload, was handed to the application. Waiting
    /// pushers are woken when the count falls below capacity (a single event fits), to
    /// where any batch fits again, and to zero: every descent passes those values one by
    /// one, so no waiter is missed, and none is woken per event. Likewise when the bytes
    /// fall to half the byte capacity (where any batch of up to half fits; a larger one,
    /// a single big message, goes in at the latest when the queue is empty).
    fn taken(&self, bytes: usize) {
        let before = self.outstanding.fetch_sub(1, Ordering::AcqRel);
        let after = before.saturating_sub(1);
        let mut wake = before >= self.capacity || after == self.resume_at || after == 0;
        if bytes > 0 {
            let before = self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            let after = before.saturating_sub(bytes);
            wake |= before > self.bytes_resume_at && after <= self.bytes_resume_at;
        }
        if wake {
            self.room.notify_waiters();
        }
    }
}

/// The stream of [`Event`]s of a [`Service`](crate::Service). Bounded: while the
/// application does not take events, readers wait (and TCP/QUIC flow control slows the
/// peers down); nothing is dropped while the service runs (once `shutdown()` has begun,
/// events that find no room are discarded). Events caused by the application's own calls
/// (`connect`, `disconnect`, `ban`) never wait, so awaiting those calls in the task that
/// drains this stream cannot deadlock.
pub struct Events {
    queue: Arc<EventQueue>,
    /// Taken out of the queue under one lock, handed out one by one.
    pending: VecDeque<Event>,
    /// Completes when `shutdown()` has finished: the stream then ends after what is queued.
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    stopped_seen: bool,
}

impl Events {
    pub(crate) fn new(queue: Arc<EventQueue>, stopped: CancellationToken) -> Self {
        Events {
            queue,
            pending: VecDeque::new(),
            stopped: Box::pin(stopped.cancelled_owned()),
            stopped_seen: false,
        }
    }

    /// The next event; `None` once the service is shut down and every event was taken.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.queue.taken(payload_bytes(&event));
                return Poll::Ready(Some(event));
            }
            if !self.stopped_seen && self.stopped.as_mut().poll(cx).is_ready() {
                self.stopped_seen = true;
            }
            let mut state = self.queue.lock();
            if !state.events.is_empty() {
                std::mem::swap(&mut self.pending, &mut state.events);
                continue;
            }
            if self.stopped_seen {
                return Poll::Ready(None);
            }
            state.receiver = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.receiver_gone = true;
        state.events.clear();
        drop(state);
        // Nobody will take events any more: release every waiting reader.
        self.queue.outstanding.store(0, Ordering::Release);
        self.queue.bytes.store(0, Ordering::Release);
        self.queue.room.notify_waiters();
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_event(cx)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_core::PeerId;

    fn banned(n: u8) -> Event {
        Event::PeerBanned {
            peer: PeerId::from_bytes([n; 32]),
        }
    }

    #[tokio::test]
    async fn waits_for_room_and_never_loses() {
        let queue = EventQueue::new(2, usize::MAX);
        let stopped = CancellationToken::new();
        let mut events = Events::new(queue.clone(), stopped.clone());
        let stop = CancellationToken::new();
        assert!(!queue.push_wait(vec![banned(1), banned(2)], &stop).await);
        // Full: a third waits until one is taken.
        let pusher = {
            let queue = queue.clone();
            let stop = stop.clone();
            tokio::spawn(async move { queue.push_wait(vec![banned(3)], &stop).await })
        };
        // On this current-thread runtime the pusher runs until it waits for room.
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished(), "a full queue makes it wait");
        assert_eq!(events.recv().await, Some(banned(1)));
        assert!(pusher.await.expect("pusher"), "it had to wait");
        assert_eq!(events.recv().await, Some(banned(2)));
        assert_eq!(events.recv().await, Some(banned(3)));
    }

    /// A batch that does not fit while the queue is below capacity is woken once enough
    /// room appears (a regression: it used to wait for a wake-up that only came when the
    /// queue had been full).
    #[tokio::test]
    async fn a_waiting_batch_is_woken_when_it_fits() {
        let queue = EventQueue::new(100, usize::MAX);
        let mut events = Events::new(queue.clone(), CancellationToken::new());
        let stop = CancellationToken::new();
        queue.push_now((0..90).map(|n| banned(n as u8)).collect());
        let pusher = {
            let queue = queue.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let batch = (0..MAX_WAITING_BATCH).map(|_| banned(200)).collect();
                queue.push_wait(batch, &stop).await
            })
        };
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished(), "90 + 64 > 100: it waits");
        for _ in 0..90 {
            events.recv().await.expect("event");
        }
        let waited = tokio::time::timeout(std::time::Duration::from_secs(60), pusher)
            .await
            .expect("the batch is let in")
            .expect("pusher");
        assert!(waited);
        for _ in 0..MAX_WAITING_BATCH {
            assert_eq!(events.recv().await, Some(banned(200)));
        }
    }

    fn message(len: usize) -> Event {
        Event::Message {
            peer: PeerId::from_bytes([9; 32]),
            payload: bytes::Bytes::from(vec![0u8; len]),
        }
    }

    /// Issue #12, item 3: the queue is bounded in bytes too, so fast peers and a slow
    /// application cannot pile up gigabytes; one big message always fits an empty queue.
    #[tokio::test]
    async fn payload_bytes_are_bounded_and_a_big_message_fits_an_empty_queue() {
        let queue = EventQueue::new(100, 1000);
        let mut events = Events::new(queue.clone(), CancellationToken::new());
        let stop = CancellationToken::new();
        assert!(
            !queue.push_wait(vec![message(5000)], &stop).await,
            "empty: fits"
        );
        assert_eq!(queue.bytes_waiting(), 5000);
        let pusher = {
            let queue = queue.clone();
            let stop = stop.clone();
            tokio::spawn(async move { queue.push_wait(vec![message(10)], &stop).await })
        };
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished(), "over the byte bound: it waits");
        assert_eq!(events.recv().await, Some(message(5000)));
        assert!(
            pusher.await.expect("pusher"),
            "let in once the bytes were taken"
        );
        assert_eq!(queue.bytes_waiting(), 10);
        assert_eq!(events.recv().await, Some(message(10)));
        assert_eq!(queue.bytes_waiting(), 0);
    }

    #[tokio::test]
    async fn a_batch_waiting_for_bytes_is_woken_at_half_the_bound() {
        let queue = EventQueue::new(100, 1000);
        let mut events = Events::new(queue.clone(), CancellationToken::new());
        let stop = CancellationToken::new();
        queue.push_now(vec![message(300), message(300), message(300)]);
        let pusher = {
            let queue = queue.clone();
            let stop = stop.clone();
            tokio::spawn(async move { queue.push_wait(vec![message(300)], &stop).await })
        };
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished(), "900 + 300 > 1000: it waits");
        events.recv().await.expect("first");
        events.recv().await.expect("second");
        let waited = tokio::time::timeout(std::time::Duration::from_secs(60), pusher)
            .await
            .expect("woken at half the byte bound")
            .expect("pusher");
        assert!(waited);
        assert_eq!(queue.bytes_waiting(), 600);
    }

    #[tokio::test]
    async fn push_now_ignores_the_bound() {
        let queue = EventQueue::new(1, usize::MAX);
        let stopped = CancellationToken::new();
        let mut events = Events::new(queue.clone(), stopped.clone());
        for n in 0..10 {
            queue.push_now(vec![banned(n)]);
        }
        for n in 0..10 {
            assert_eq!(events.recv().await, Some(banned(n)));
        }
        stopped.cancel();
        assert_eq!(events.recv().await, None);
    }

    #[tokio::test]
    async fn dropped_receiver_releases_waiters() {
        let queue = EventQueue::new(1, usize::MAX);
        let events = Events::new(queue.clone(), CancellationToken::new());
        let stop = CancellationToken::new();
        queue.push_now(vec![banned(1), banned(2)]);
        let pusher = {
            let queue = queue.clone();
            let stop = stop.clone();
            tokio::spawn(async move { queue.push_wait(vec![banned(3)], &stop).await })
        };
        drop(events);
        pusher.await.expect("released");
    }
}
