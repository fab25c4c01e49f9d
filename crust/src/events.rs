//! The event queue between the service and the application, and [`Events`], its receiving
//! end.
//!
//! Two ways in:
//! - [`EventQueue::push_wait`]: what peers cause (messages, accepted connections, losses
//!   seen by readers) waits while the application has `capacity` events it has not taken.
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
}

/// Largest batch `push_wait` is given (a reader's batch); larger ones wait for an empty
/// queue.
pub(crate) const MAX_WAITING_BATCH: usize = 64;

impl EventQueue {
    /// A queue letting `capacity` events wait for the application before readers wait.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(EventQueue {
            state: Mutex::new(QueueState::default()),
            outstanding: AtomicUsize::new(0),
            room: Notify::new(),
            capacity: capacity.max(1),
            resume_at: capacity.max(1).saturating_sub(MAX_WAITING_BATCH),
        })
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
        let mut waited = false;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.lock();
                let outstanding = self.outstanding.load(Ordering::Acquire);
                if outstanding == 0 || outstanding + n <= self.capacity || state.receiver_gone {
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
        state.events.extend(events);
        if let Some(waker) = state.receiver.take() {
            waker.wake();
        }
    }

    /// One event was handed to the application. Waiting pushers are woken when the count
    /// falls below capacity (a single event fits), to where any batch fits again, and to
    /// zero: every descent passes those values one by one, so no waiter is missed, and
    /// none is woken per event.
    fn taken(&self) {
        let before = self.outstanding.fetch_sub(1, Ordering::AcqRel);
        let after = before.saturating_sub(1);
        if before >= self.capacity || after == self.resume_at || after == 0 {
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
                self.queue.taken();
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
        let queue = EventQueue::new(2);
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
        let queue = EventQueue::new(100);
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

    #[tokio::test]
    async fn push_now_ignores_the_bound() {
        let queue = EventQueue::new(1);
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
        let queue = EventQueue::new(1);
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
