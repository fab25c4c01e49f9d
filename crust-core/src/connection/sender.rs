//! The sending half of a connection.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::send_queue::LaneId;
use super::{ConnectionInfo, Shared};
use crate::wire::FrameKind;
use crate::{Error, Result};

/// The sending half of a [`Connection`](crate::Connection). Cheap to clone. When the last
/// sender is dropped, our direction of the connection ends gracefully after everything
/// queued is written.
///
/// Two queues feed the connection: application messages (in order, bounded by
/// [`ConnectionConfig::send_buffer_bytes`](crate::ConnectionConfig::send_buffer_bytes)) and
/// control frames (in order, bounded by
/// [`ConnectionConfig::control_buffer_bytes`](crate::ConnectionConfig::control_buffer_bytes)).
/// Control frames are written first at every frame boundary, and large messages are
/// written in chunks, so a control frame never waits behind a large message. It may
/// therefore arrive before messages queued earlier, but never after a message queued
/// later.
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
        self.check_size(&message)?;
        self.shared
            .queue
            .push(
                LaneId::Data,
                FrameKind::Message,
                std::slice::from_ref(&message),
            )
            .await
    }

    /// Queues several application messages, in order, taking the send buffer's lock once
    /// per burst instead of once per message: the fastest way to send many small messages.
    ///
    /// Every size is checked first: if any message exceeds the maximum, nothing is queued
    /// and [`Error::MessageTooLarge`] is returned. Otherwise waits while the buffer is full,
    /// like [`MessageSender::send`]; on [`Error::ConnectionClosed`] an unknown prefix of the
    /// messages may have been queued.
    pub async fn send_many(&self, messages: &[Bytes]) -> Result<()> {
        for message in messages {
            self.check_size(message)?;
        }
        self.shared
            .queue
            .push(LaneId::Data, FrameKind::Message, messages)
            .await
    }

    /// Queues a control frame (any kind but [`FrameKind::Message`] and
    /// [`FrameKind::MessageChunk`], unknown kinds included, e.g. a plug-in's own) on the
    /// priority lane: it is written before any application message still queued and, when
    /// a large message is being written, at its next chunk boundary. Control frames keep
    /// their order among themselves, not relative to messages.
    ///
    /// Waits only while the control queue is full (its own limit,
    /// [`ConnectionConfig::control_buffer_bytes`](crate::ConnectionConfig::control_buffer_bytes)),
    /// never for application messages. Fails with [`Error::NotControlKind`] for a data
    /// kind, [`Error::MessageTooLarge`] over the maximum message size or the 4 GiB one
    /// frame can carry (control frames are never chunked; nothing queued, the connection
    /// stays usable), and [`Error::ConnectionClosed`] once closed.
    ///
    /// ```no_run
    /// # async fn demo(conn: crust_core::Connection) -> crust_core::Result<()> {
    /// use crust_core::wire::FrameKind;
    /// conn.sender()
    ///     .send_control(FrameKind::Ping, bytes::Bytes::from_static(b"t0"))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_control(&self, kind: FrameKind, payload: Bytes) -> Result<()> {
        if !kind.is_control() {
            return Err(Error::NotControlKind(kind));
        }
        self.check_control_size(&payload)?;
        self.shared
            .queue
            .push(LaneId::Control, kind, std::slice::from_ref(&payload))
            .await
    }

    /// Queues a control frame like [`MessageSender::send_control`] only if the control
    /// queue has room right now; returns whether it did. Never waits: for replies and
    /// announcements that must not hold up the caller (answering pings, observed
    /// addresses). Data kinds, oversized payloads and a closed connection give `false`.
    pub fn try_send_control(&self, kind: FrameKind, payload: Bytes) -> bool {
        kind.is_control()
            && self.check_control_size(&payload).is_ok()
            && matches!(
                self.shared.queue.try_push(LaneId::Control, kind, payload),
                Ok(None)
            )
    }

    /// Queues a frame of any kind a caller may send: [`FrameKind::Message`] like
    /// [`MessageSender::send`], control kinds like [`MessageSender::send_control`] (on the
    /// priority lane). [`FrameKind::MessageChunk`] is refused with
    /// [`Error::NotControlKind`]: the connection writes chunks itself.
    pub async fn send_frame(&self, kind: FrameKind, payload: Bytes) -> Result<()> {
        match kind {
            FrameKind::Message => self.send(payload).await,
            _ => self.send_control(kind, payload).await,
        }
    }

    /// Queues an application message only if that is possible right now, without waiting:
    /// `Ok(None)` when queued, `Ok(Some(message))` (handed back, so the caller can wait with
    /// [`MessageSender::send`], which reports why) when the buffer is full or the connection
    /// is closed. Fails only with [`Error::MessageTooLarge`].
    pub fn try_send(&self, message: Bytes) -> Result<Option<Bytes>> {
        self.check_size(&message)?;
        self.shared
            .queue
            .try_push(LaneId::Data, FrameKind::Message, message)
    }

    /// Queues a frame only if its queue has room right now; returns whether it did.
    /// [`FrameKind::Message`] goes to the message queue like [`MessageSender::try_send`],
    /// control kinds to the priority lane like [`MessageSender::try_send_control`];
    /// [`FrameKind::MessageChunk`] is never queued.
    pub fn try_send_frame(&self, kind: FrameKind, payload: Bytes) -> bool {
        match kind {
            FrameKind::Message => matches!(self.try_send(payload), Ok(None)),
            _ => self.try_send_control(kind, payload),
        }
    }

    /// Refuses a message over the maximum message size.
    fn check_size(&self, payload: &Bytes) -> Result<()> {
        Self::check_len(payload, self.shared.queue.max_message_size)
    }

    /// Refuses a control payload over the maximum message size, or over what one frame
    /// can carry (control frames are never chunked).
    fn check_control_size(&self, payload: &Bytes) -> Result<()> {
        let one_frame = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
        Self::check_len(payload, self.shared.queue.max_message_size.min(one_frame))
    }

    fn check_len(payload: &Bytes, max: usize) -> Result<()> {
        if payload.len() > max {
            return Err(Error::MessageTooLarge {
                size: payload.len() as u64,
                max,
            });
        }
        Ok(())
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

    /// True once the peer ended its stream cleanly (TLS `close_notify`, QUIC `FIN`) and the
    /// receiver has read everything it sent before; false after an abort or an error.
    pub fn peer_finished(&self) -> bool {
        self.shared.peer_finished.is_cancelled()
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{connection, frames_of};
    use crate::wire::FrameKind;
    use crate::{ConnectionConfig, Error};
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn data_kinds_are_refused_on_the_control_lane() {
        let config = ConnectionConfig::default().with_max_message_size(100);
        let (conn, mut peer) = connection(&config, 1 << 16);
        let sender = conn.sender();
        for kind in [FrameKind::Message, FrameKind::MessageChunk] {
            let err = sender
                .send_control(kind, Bytes::from_static(b"x"))
                .await
                .expect_err("data kind");
            assert!(
                matches!(err, Error::NotControlKind(k) if k == kind),
                "{err:?}"
            );
            assert!(!sender.try_send_control(kind, Bytes::from_static(b"x")));
        }
        let err = sender
            .send_frame(FrameKind::MessageChunk, Bytes::from_static(b"x"))
            .await
            .expect_err("chunks are the connection's own");
        assert!(
            matches!(err, Error::NotControlKind(FrameKind::MessageChunk)),
            "{err:?}"
        );
        assert!(!sender.try_send_frame(FrameKind::MessageChunk, Bytes::from_static(b"x")));
        let err = sender
            .send_control(FrameKind::Ping, Bytes::from(vec![0u8; 101]))
            .await
            .expect_err("oversized");
        assert!(
            matches!(
                err,
                Error::MessageTooLarge {
                    size: 101,
                    max: 100
                }
            ),
            "{err:?}"
        );
        assert!(!sender.try_send_control(FrameKind::Ping, Bytes::from(vec![0u8; 101])));
        // Nothing was queued, and the connection is still usable.
        sender
            .send_frame(FrameKind::Message, Bytes::from_static(b"ok"))
            .await
            .expect("message");
        assert!(sender.try_send_frame(FrameKind::Superseded, Bytes::new()));
        conn.close().await;
        let mut bytes = Vec::new();
        peer.read_to_end(&mut bytes).await.expect("read");
        let mut kinds: Vec<FrameKind> = frames_of(&bytes).iter().map(|f| f.kind).collect();
        kinds.sort_by_key(|k| k.to_byte());
        assert_eq!(kinds, [FrameKind::Message, FrameKind::Superseded]);
    }
}
