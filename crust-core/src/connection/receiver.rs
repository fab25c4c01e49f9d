//! The receiving half of a connection.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::reader::FrameReader;
use super::send_queue::LaneId;
use super::{ConnectionInfo, Shared};
use crate::wire::{Frame, FrameKind};
use crate::{Error, Result};

/// The receiving half of a [`Connection`](crate::Connection).
pub struct MessageReceiver {
    /// `None` once the connection ended, so the read half is released at once.
    pub(super) frames: Option<FrameReader>,
    /// An error met while draining (`recv_many`), reported by the next call.
    pub(super) pending_error: Option<Box<Error>>,
    pub(super) shared: Arc<Shared>,
}

impl MessageReceiver {
    /// Receives the next application message, answering pings and skipping other control
    /// frames on the way.
    ///
    /// Messages the peer sent in chunks are returned whole; pings that arrive while one is
    /// still incomplete are answered at once.
    ///
    /// Errors are final: after an error every call returns [`Error::ConnectionClosed`].
    /// A peer that ends the connection, vanishes mid-message, or whose connection we closed
    /// yields [`Error::ConnectionClosed`]; a peer that announces (or sends the chunks of) a
    /// message over our maximum yields [`Error::MessageTooLarge`], one that breaks the
    /// framing (e.g. an empty chunk) [`Error::MalformedFrame`], and the connection is
    /// closed.
    pub async fn recv(&mut self) -> Result<Bytes> {
        loop {
            let frame = self.recv_frame().await?;
            match frame.kind {
                FrameKind::Message => return Ok(frame.payload),
                FrameKind::Ping => {
                    self.answer_ping(frame.payload);
                }
                other => {
                    tracing::trace!(peer = %self.shared.info.peer_id, kind = ?other, "skipping control frame");
                }
            }
        }
    }

    /// Waits for at least one application message, then appends to `out` every further
    /// message that has already arrived, up to `max` in all; returns how many were added.
    /// The fastest way to receive many small messages. Errors as [`MessageReceiver::recv`];
    /// messages appended before an error are kept in `out`.
    pub async fn recv_many(&mut self, out: &mut Vec<Bytes>, max: usize) -> Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        out.push(self.recv().await?);
        let mut added = 1;
        while added < max {
            match self.try_recv_frame() {
                Ok(Some(frame)) => match frame.kind {
                    FrameKind::Message => {
                        out.push(frame.payload);
                        added += 1;
                    }
                    FrameKind::Ping => self.answer_ping(frame.payload),
                    _ => {}
                },
                Ok(None) => break,
                Err(e) => {
                    // What arrived before the error is returned now, the error next time.
                    self.pending_error = Some(Box::new(e));
                    break;
                }
            }
        }
        Ok(added)
    }

    /// Answers a ping with a pong carrying the same payload on the control lane (so it does
    /// not wait behind our own messages), unless that lane is full (a peer pinging faster
    /// than it reads gets no answer rather than stalling us).
    pub fn answer_ping(&self, payload: Bytes) {
        let _ = self
            .shared
            .queue
            .try_push(LaneId::Control, FrameKind::Pong, payload);
    }

    /// Receives the next frame, for code that handles control messages itself: a whole
    /// application message ([`FrameKind::Message`], reassembled if the peer sent it in
    /// chunks; never a [`FrameKind::MessageChunk`]) or a control frame of any kind. Control
    /// frames that arrive while a chunked message is incomplete are returned at once, so a
    /// ping is seen without waiting for a large message to end. Errors as
    /// [`MessageReceiver::recv`].
    pub async fn recv_frame(&mut self) -> Result<Frame> {
        if let Some(e) = self.pending_error.take() {
            return Err(*e);
        }
        if self.shared.is_closed() {
            // Closed or aborted: nothing more is delivered, not even what is buffered.
            self.fail();
        }
        let Some(frames) = self.frames.as_mut() else {
            return Err(Error::ConnectionClosed);
        };
        // Fast path: a frame already buffered is returned without waiting on anything.
        let next = match frames.decode_buffered() {
            Ok(Some(frame)) => Some(Ok(frame)),
            Err(e) => Some(Err(e)),
            Ok(None) => tokio::select! {
                biased;
                next = std::future::poll_fn(|cx| frames.poll_frame(cx)) => next,
                _ = self.shared.closed.cancelled() => None,
            },
        };
        match next {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(e)) => {
                self.fail();
                tracing::debug!(peer = %self.shared.info.peer_id, error = %e, "connection failed while receiving");
                Err(match e {
                    Error::Io(_) => Error::ConnectionClosed,
                    other => other,
                })
            }
            None if self.shared.is_closed() => {
                self.fail();
                Err(Error::ConnectionClosed)
            }
            None => {
                // The peer ended its stream cleanly: let our writer deliver what is queued
                // and end our side too.
                self.frames = None;
                self.shared.mark_peer_finished();
                Err(Error::ConnectionClosed)
            }
        }
    }

    /// A frame that has already arrived, without waiting: `Ok(None)` when none is buffered.
    /// Lets a reader drain a burst of frames in one go. Errors are final, as for
    /// [`MessageReceiver::recv_frame`].
    pub fn try_recv_frame(&mut self) -> Result<Option<Frame>> {
        if let Some(e) = self.pending_error.take() {
            return Err(*e);
        }
        if self.shared.is_closed() {
            self.fail();
        }
        let Some(frames) = self.frames.as_mut() else {
            return Err(Error::ConnectionClosed);
        };
        match frames.decode_buffered() {
            Ok(frame) => Ok(frame),
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    fn fail(&mut self) {
        self.frames = None;
        self.shared.abort();
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.shared.info
    }
}

impl fmt::Debug for MessageReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageReceiver")
            .field("info", &self.shared.info)
            .finish()
    }
}
