//! The queue between the senders and the writer task: two lanes of frames, application
//! messages and control frames, each bounded in bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::ConnectionConfig;
use crate::wire::{self, FrameKind};
use crate::{Error, Result};

/// Payloads at least this large are queued as their own buffer instead of being copied.
const DIRECT_WRITE_BYTES: usize = 16 * 1024;
/// A coalescing buffer larger than this is not kept for reuse after a burst.
const SPARE_BUFFER_LIMIT: usize = 256 * 1024;

/// The two lanes of a [`SendQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LaneId {
    /// Application messages, written in order, large ones in chunks.
    Data,
    /// Control frames, written before the data lane at every frame boundary.
    Control,
}

/// Something the writer writes, in lane order.
#[derive(Debug)]
pub(super) enum Part {
    /// Encoded bytes, written as they are. In the data lane these are always whole frames,
    /// so the writer may put control frames between two of them.
    Encoded(Bytes),
    /// An application message large enough to be written without copying; the writer
    /// frames it, in chunks when it is larger than the chunk size.
    Message(Bytes),
}

/// The frames waiting in one lane, in order: `parts`, then `tail`.
#[derive(Debug, Default)]
pub(super) struct Lane {
    pub(super) parts: VecDeque<Part>,
    /// Small frames, encoded back to back after `parts`.
    pub(super) tail: BytesMut,
    /// Bytes queued, frame headers included; checked against the lane's limit.
    bytes: usize,
}

impl Lane {
    /// Moves the coalesced tail into `parts`, so what follows comes after it.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let sealed = self.tail.split().freeze();
            self.parts.push_back(Part::Encoded(sealed));
        }
    }

    /// Empties a lane the writer has written, keeping a modest tail buffer for reuse.
    pub(super) fn recycle(&mut self) {
        self.parts.clear();
        self.bytes = 0;
        if self.tail.capacity() <= SPARE_BUFFER_LIMIT {
            self.tail.clear();
        } else {
            self.tail = BytesMut::new();
        }
    }
}

/// What the writer should do next; see [`SendQueue::next_work`].
#[derive(Debug)]
pub(super) enum Work {
    /// The control lane was moved into the writer's control spare: write it.
    Control,
    /// The data lane was moved into the writer's data spare: write it.
    Data,
    /// Nothing is queued: wait for [`SendQueue::writer_wake`].
    Park,
    /// Nothing is queued and our direction should end.
    Finish,
}

/// The frames waiting for the writer task, shared by every sender.
///
/// Senders encode straight into a lane's `tail` under a short lock, so a small message
/// costs a lock and a copy, not a channel hop; the writer takes a whole lane at once and
/// writes it with few calls. Large payloads are queued as their own `Bytes` and written
/// without copying.
///
/// Control frames have a lane of their own with its own byte limit, and the writer looks at
/// it before every data frame it writes (a coalesced run of small messages is sealed every
/// chunk size, and large messages are written in chunks), so a control frame never waits
/// for more than about one chunk of data.
pub(super) struct SendQueue {
    state: Mutex<SendState>,
    /// Mirrors "the control lane holds frames", so the writer can look between two data
    /// frames without taking the lock.
    control_pending: AtomicBool,
    /// Wakes the writer when it is parked and something was queued or requested.
    pub(super) writer_wake: Notify,
    /// Wakes senders waiting for room in the data lane (and on close).
    data_space: Notify,
    /// Wakes senders waiting for room in the control lane (and on close).
    control_space: Notify,
    /// Cancelled once our direction is asked to end, however that happens: the drain that
    /// follows is bounded in time, so a peer that stops reading cannot pin the connection.
    pub(super) finishing: CancellationToken,
    data_limit: usize,
    control_limit: usize,
    /// Largest payload accepted, application message or control frame.
    pub(super) max_message_size: usize,
    /// Messages larger than this are written in chunks of this size.
    pub(super) chunk_size: usize,
}

#[derive(Default)]
struct SendState {
    data: Lane,
    control: Lane,
    /// No more frames are accepted: finishing, aborted or failed.
    closed: bool,
    /// End our direction once everything queued is written.
    finish_requested: bool,
    /// Answered once our direction has ended.
    finish_waiters: Vec<oneshot::Sender<()>>,
    /// The writer is parked waiting for `writer_wake`.
    writer_parked: bool,
    /// The writer task has ended; nothing queued now will ever be written.
    writer_done: bool,
}

impl SendState {
    fn lane(&mut self, lane: LaneId) -> &mut Lane {
        match lane {
            LaneId::Data => &mut self.data,
            LaneId::Control => &mut self.control,
        }
    }
}

impl SendQueue {
    pub(super) fn new(config: &ConnectionConfig) -> Self {
        SendQueue {
            state: Mutex::new(SendState::default()),
            control_pending: AtomicBool::new(false),
            writer_wake: Notify::new(),
            data_space: Notify::new(),
            control_space: Notify::new(),
            finishing: CancellationToken::new(),
            data_limit: config.send_buffer_bytes.max(1),
            control_limit: config.control_buffer_bytes.max(1),
            max_message_size: config.max_message_size,
            // Every frame length must fit the header's 32 bits.
            chunk_size: config.message_chunk_bytes.clamp(1, u32::MAX as usize),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock and wakes the writer if it is parked waiting for work.
    fn unlock_and_wake_writer(&self, mut state: MutexGuard<'_, SendState>) {
        let wake = std::mem::take(&mut state.writer_parked);
        drop(state);
        if wake {
            self.writer_wake.notify_one();
        }
    }

    fn limit(&self, lane: LaneId) -> usize {
        match lane {
            LaneId::Data => self.data_limit,
            LaneId::Control => self.control_limit,
        }
    }

    fn space(&self, lane: LaneId) -> &Notify {
        match lane {
            LaneId::Data => &self.data_space,
            LaneId::Control => &self.control_space,
        }
    }

    /// Queues frames of one kind in order in `lane` under as few locks as possible, waiting
    /// whenever the lane is over its limit (a frame larger than the limit is accepted into
    /// an empty lane). Sizes and kinds were checked by the caller: application messages go
    /// to the data lane, control kinds to the control lane.
    pub(super) async fn push(&self, lane: LaneId, kind: FrameKind, frames: &[Bytes]) -> Result<()> {
        let limit = self.limit(lane);
        let mut next = 0;
        while next < frames.len() {
            // The lock is held only inside this block, never across an await.
            let wait = {
                let mut state = self.lock();
                if state.closed {
                    return Err(Error::ConnectionClosed);
                }
                let first = next;
                while let Some(payload) = frames.get(next) {
                    let queued = state.lane(lane).bytes;
                    if queued > 0 && queued + wire::FRAME_HEADER_LEN + payload.len() > limit {
                        break;
                    }
                    self.encode(&mut state, lane, kind, payload)?;
                    next += 1;
                }
                let wait = (next < frames.len()).then(|| {
                    let mut space = Box::pin(self.space(lane).notified());
                    space.as_mut().enable();
                    space
                });
                if next != first {
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

    /// Queues a frame if it can be queued right now: `Ok(None)` when queued,
    /// `Ok(Some(payload))` (handed back) when the lane is full or the queue is closed.
    pub(super) fn try_push(
        &self,
        lane: LaneId,
        kind: FrameKind,
        payload: Bytes,
    ) -> Result<Option<Bytes>> {
        let frame_len = wire::FRAME_HEADER_LEN + payload.len();
        let mut state = self.lock();
        let queued = state.lane(lane).bytes;
        if state.closed || (queued > 0 && queued + frame_len > self.limit(lane)) {
            return Ok(Some(payload));
        }
        self.encode(&mut state, lane, kind, &payload)?;
        self.unlock_and_wake_writer(state);
        Ok(None)
    }

    fn encode(
        &self,
        state: &mut SendState,
        lane_id: LaneId,
        kind: FrameKind,
        payload: &Bytes,
    ) -> Result<()> {
        let lane = state.lane(lane_id);
        match lane_id {
            LaneId::Data
                if payload.len() >= DIRECT_WRITE_BYTES || payload.len() > self.chunk_size =>
            {
                lane.seal();
                lane.parts.push_back(Part::Message(payload.clone()));
            }
            LaneId::Data => {
                let frame_len = wire::FRAME_HEADER_LEN + payload.len();
                if lane.tail.len() + frame_len > self.chunk_size {
                    // Coalesce at most a chunk: the writer lets control frames pass
                    // between sealed runs. The next run gets room for a whole chunk at
                    // once (a busy connection), so it never grows by copying.
                    lane.seal();
                    lane.tail.reserve(self.chunk_size.min(SPARE_BUFFER_LIMIT));
                }
                lane.tail.reserve(frame_len);
                wire::put_frame_header(&mut lane.tail, kind, payload.len())?;
                lane.tail.put_slice(payload);
            }
            LaneId::Control => {
                wire::put_frame_header(&mut lane.tail, kind, payload.len())?;
                if payload.len() >= DIRECT_WRITE_BYTES {
                    lane.seal();
                    lane.parts.push_back(Part::Encoded(payload.clone()));
                } else {
                    lane.tail.put_slice(payload);
                }
                self.control_pending.store(true, Ordering::Release);
            }
        }
        lane.bytes += wire::FRAME_HEADER_LEN + payload.len();
        Ok(())
    }

    /// True when control frames wait; a hint read without the lock.
    pub(super) fn control_pending(&self) -> bool {
        self.control_pending.load(Ordering::Acquire)
    }

    /// The writer's next step. Control frames come first; a lane that is to be written is
    /// swapped with the writer's empty spare of the same lane (`data`, `control`), so the
    /// lane's buffers are reused.
    pub(super) fn next_work(&self, data: &mut Lane, control: &mut Lane) -> Work {
        let mut state = self.lock();
        let work = if state.control.bytes > 0 {
            std::mem::swap(&mut state.control, control);
            self.control_pending.store(false, Ordering::Release);
            Work::Control
        } else if state.data.bytes > 0 {
            std::mem::swap(&mut state.data, data);
            Work::Data
        } else if state.finish_requested {
            return Work::Finish;
        } else {
            state.writer_parked = true;
            return Work::Park;
        };
        drop(state);
        // Room again for senders waiting on a full lane.
        match work {
            Work::Control => self.control_space.notify_waiters(),
            _ => self.data_space.notify_waiters(),
        }
        work
    }

    /// Moves the control lane into the writer's empty `spare` if it holds frames; used
    /// between two data frames. Returns whether it did.
    pub(super) fn take_control(&self, spare: &mut Lane) -> bool {
        let mut state = self.lock();
        self.control_pending.store(false, Ordering::Release);
        if state.control.bytes == 0 {
            return false;
        }
        std::mem::swap(&mut state.control, spare);
        drop(state);
        self.control_space.notify_waiters();
        true
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
        self.notify_all_space();
    }

    /// Refuses further frames at once (abort, failure).
    pub(super) fn close_now(&self) {
        self.lock().closed = true;
        self.notify_all_space();
    }

    fn notify_all_space(&self) {
        self.data_space.notify_waiters();
        self.control_space.notify_waiters();
    }

    /// Records that the writer has ended and hands back the `finish()` callers to answer.
    pub(super) fn writer_done(&self) -> Vec<oneshot::Sender<()>> {
        let mut state = self.lock();
        state.writer_done = true;
        std::mem::take(&mut state.finish_waiters)
    }
}
