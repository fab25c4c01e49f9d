//! The queue of encoded frames between the senders and the writer task.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::wire::{self, FrameKind};
use crate::{Error, Result};

/// Payloads at least this large are queued as their own buffer instead of being copied.
const DIRECT_WRITE_BYTES: usize = 16 * 1024;

/// The encoded frames waiting for the writer task, shared by every sender.
///
/// Senders encode straight into `tail` under a short lock, so a small message costs a
/// lock and a copy, not a channel hop; the writer takes everything queued at once and
/// writes it with as few calls as possible. Large payloads are queued as their own `Bytes`
/// and written without copying.
pub(super) struct SendQueue {
    pub(super) state: Mutex<SendState>,
    /// Wakes the writer when it is parked and something was queued or requested.
    pub(super) writer_wake: Notify,
    /// Wakes senders waiting for buffer space (and on close).
    pub(super) space: Notify,
    /// Cancelled once our direction is asked to end, however that happens: the drain that
    /// follows is bounded in time, so a peer that stops reading cannot pin the connection.
    pub(super) finishing: CancellationToken,
    pub(super) limit: usize,
    pub(super) max_message_size: usize,
}

#[derive(Default)]
pub(super) struct SendState {
    /// Complete buffers in order, before `tail`.
    pub(super) chunks: VecDeque<Bytes>,
    /// Small frames coalesced after `chunks`.
    pub(super) tail: BytesMut,
    pub(super) queued_bytes: usize,
    /// No more frames are accepted: finishing, aborted or failed.
    pub(super) closed: bool,
    /// End our direction once everything queued is written.
    pub(super) finish_requested: bool,
    /// Answered once our direction has ended.
    pub(super) finish_waiters: Vec<oneshot::Sender<()>>,
    /// The writer is parked waiting for `writer_wake`.
    pub(super) writer_parked: bool,
    /// The writer task has ended; nothing queued now will ever be written.
    pub(super) writer_done: bool,
}

impl SendQueue {
    pub(super) fn lock(&self) -> MutexGuard<'_, SendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock and wakes the writer if it is parked waiting for work.
    pub(super) fn unlock_and_wake_writer(&self, mut state: MutexGuard<'_, SendState>) {
        let wake = std::mem::take(&mut state.writer_parked);
        drop(state);
        if wake {
            self.writer_wake.notify_one();
        }
    }

    /// Queues frames of one kind in order under as few locks as possible, waiting whenever
    /// the buffer is over its limit. Sizes were checked by the caller.
    pub(super) async fn push(&self, kind: FrameKind, frames: &[Bytes]) -> Result<()> {
        let mut next = 0;
        while next < frames.len() {
            // The lock is held only inside this block, never across an await.
            let wait = {
                let mut state = self.lock();
                if state.closed {
                    return Err(Error::ConnectionClosed);
                }
                let queued_before = state.queued_bytes;
                while let Some(payload) = frames.get(next) {
                    let frame_len = wire::FRAME_HEADER_LEN + payload.len();
                    if state.queued_bytes > 0 && state.queued_bytes + frame_len > self.limit {
                        break;
                    }
                    Self::encode(&mut state, kind, payload)?;
                    state.queued_bytes += frame_len;
                    next += 1;
                }
                let wait = (next < frames.len()).then(|| {
                    let mut space = Box::pin(self.space.notified());
                    space.as_mut().enable();
                    space
                });
                if state.queued_bytes != queued_before {
                    self.unlock_and_wake_writer(state);
                }
                wait
            };
            if let Some(space) = wait {
                space.await;
            }
        }
        Ok(())
    }

    /// Queues a frame only if it fits right now (used for automatic replies, which must
    /// never make the reader wait).
    pub(super) fn try_push(&self, kind: FrameKind, payload: Bytes) -> bool {
        matches!(self.try_push_or_return(kind, payload), Ok(None))
    }

    /// Queues a frame if it can be queued right now: `Ok(None)` when queued,
    /// `Ok(Some(payload))` (handed back) when the buffer is full or the queue is closed.
    pub(super) fn try_push_or_return(
        &self,
        kind: FrameKind,
        payload: Bytes,
    ) -> Result<Option<Bytes>> {
        let frame_len = wire::FRAME_HEADER_LEN + payload.len();
        let mut state = self.lock();
        if state.closed || (state.queued_bytes > 0 && state.queued_bytes + frame_len > self.limit) {
            return Ok(Some(payload));
        }
        Self::encode(&mut state, kind, &payload)?;
        state.queued_bytes += frame_len;
        self.unlock_and_wake_writer(state);
        Ok(None)
    }

    pub(super) fn encode(state: &mut SendState, kind: FrameKind, payload: &Bytes) -> Result<()> {
        wire::put_frame_header(&mut state.tail, kind, payload.len())?;
        if payload.len() >= DIRECT_WRITE_BYTES {
            let head = state.tail.split().freeze();
            state.chunks.push_back(head);
            state.chunks.push_back(payload.clone());
        } else {
            state.tail.put_slice(payload);
        }
        Ok(())
    }

    /// Stops accepting frames and asks the writer to end our direction after what is queued.
    pub(super) fn request_finish(&self, ack: Option<oneshot::Sender<()>>) {
        let mut state = self.lock();
        state.closed = true;
        state.finish_requested = true;
        if let Some(ack) = ack {
            if !state.writer_done {
                state.finish_waiters.push(ack);
            }
            // else: dropping the ack answers the caller at once.
        }
        self.unlock_and_wake_writer(state);
        self.finishing.cancel();
        self.space.notify_waiters();
    }

    /// Refuses further frames at once (abort, failure).
    pub(super) fn close_now(&self) {
        self.lock().closed = true;
        self.space.notify_waiters();
    }
}
