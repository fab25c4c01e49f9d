//! The sending half of a connection.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{ConnectionInfo, Shared};
use crate::wire::FrameKind;
use crate::{Error, Result};

/// The sending half of a [`Connection`](crate::Connection). Cheap to clone. When the last sender is dropped,
/// our direction of the connection ends gracefully after everything queued is written.
pub struct MessageSender {
    pub(super) shared: Arc<Shared>,
}

impl Clone for MessageSender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        MessageSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for MessageSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.queue.request_finish(None);
        }
    }
}

impl MessageSender {
    /// Queues an application message.
    ///
    /// Fails with [`Error::MessageTooLarge`] (nothing is sent, the connection stays usable)
    /// when the message exceeds the configured maximum, and with [`Error::ConnectionClosed`]
    /// once the connection is closed. `Ok` means the message is queued for writing; like
    /// TCP, it is not an acknowledgement of delivery.
    pub async fn send(&self, message: Bytes) -> Result<()> {
        self.send_frame(FrameKind::Message, message).await
    }

    /// Queues several application messages, in order, taking the send buffer's lock once
    /// per burst instead of once per message: the fastest way to send many small messages.
    ///
    /// Every size is checked first: if any message exceeds the maximum, nothing is queued
    /// and [`Error::MessageTooLarge`] is returned. Otherwise waits while the buffer is full,
    /// like [`MessageSender::send`]; on [`Error::ConnectionClosed`] an unknown prefix of the
    /// messages may have been queued.
    pub async fn send_many(&self, messages: &[Bytes]) -> Result<()> {
        let max = self.shared.queue.max_message_size;
        if let Some(big) = messages.iter().find(|m| m.len() > max) {
            return Err(Error::MessageTooLarge {
                size: big.len() as u64,
                max,
            });
        }
        self.shared.queue.push(FrameKind::Message, messages).await
    }

    /// Queues a frame of any kind (control messages are sent this way).
    pub async fn send_frame(&self, kind: FrameKind, payload: Bytes) -> Result<()> {
        let max = self.shared.queue.max_message_size;
        if payload.len() > max {
            return Err(Error::MessageTooLarge {
                size: payload.len() as u64,
                max,
            });
        }
        self.shared
            .queue
            .push(kind, std::slice::from_ref(&payload))
            .await
    }

    /// Queues an application message only if that is possible right now, without waiting:
    /// `Ok(None)` when queued, `Ok(Some(message))` (handed back, so the caller can wait with
    /// [`MessageSender::send`], which reports why) when the buffer is full or the connection
    /// is closed. Fails only with [`Error::MessageTooLarge`].
    pub fn try_send(&self, message: Bytes) -> Result<Option<Bytes>> {
        let max = self.shared.queue.max_message_size;
        if message.len() > max {
            return Err(Error::MessageTooLarge {
                size: message.len() as u64,
                max,
            });
        }
        self.shared
            .queue
            .try_push_or_return(FrameKind::Message, message)
    }

    /// Queues a frame only if the send buffer has room right now; returns whether it did.
    /// For replies that must never make the caller wait (e.g. answering pings).
    pub fn try_send_frame(&self, kind: FrameKind, payload: Bytes) -> bool {
        payload.len() <= self.shared.queue.max_message_size
            && self.shared.queue.try_push(kind, payload)
    }

    /// Writes everything queued before this call and ends our sending direction gracefully
    /// (TLS `close_notify`, QUIC `FIN`), while the receiver keeps delivering what the peer
    /// still sends until it ends its side too. Later sends fail with
    /// [`Error::ConnectionClosed`]. If the queue cannot be written within the handshake
    /// timeout (the peer stopped reading), the connection is aborted.
    pub async fn finish(&self) {
        let (ack_tx, ack_rx) = oneshot::channel();
        self.shared.queue.request_finish(Some(ack_tx));
        if tokio::time::timeout(self.shared.close_timeout, ack_rx)
            .await
            .is_err()
        {
            tracing::debug!(peer = %self.shared.info.peer_id, "graceful finish timed out; aborting");
            self.abort();
        }
    }

    /// Writes everything queued before this call, ends the stream gracefully (TLS
    /// `close_notify`, QUIC `FIN`) and closes the connection in both directions: later sends
    /// fail with [`Error::ConnectionClosed`] and a pending `recv()` returns it. Bounded like
    /// [`MessageSender::finish`].
    pub async fn close(&self) {
        self.finish().await;
        self.shared.mark_closed();
    }

    /// Closes the connection at once, dropping whatever is still queued.
    pub fn abort(&self) {
        self.shared.abort();
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Completes when the connection is closed, for any reason.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.shared.info
    }
}

impl fmt::Debug for MessageSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSender")
            .field("info", &self.shared.info)
            .finish()
    }
}
