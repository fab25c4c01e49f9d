//! Reading frames from the transport's read half.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, BytesMut};
use tokio_util::codec::Decoder;
use tokio_util::io::poll_read_buf;

use super::BoxedReader;
use crate::Result;
use crate::wire::{Frame, MessageDecoder};

/// Smallest read buffer; idle connections keep no more than this.
const READ_BUFFER_MIN: usize = 8 * 1024;
/// Largest read chunk a busy connection grows to.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// Reads frames from the byte stream into one buffer that frames are split off without
/// copying; the parts of a chunked message are reassembled ([`MessageDecoder`]), read
/// straight into the message where possible, and control frames that arrive between them
/// are handed out at once. The read size adapts: it doubles while reads fill it (a busy
/// connection makes fewer, larger reads) and falls back to the minimum when traffic is
/// light, so thousands of idle connections hold little memory.
pub(super) struct FrameReader {
    pub(super) reader: BoxedReader,
    pub(super) buf: BytesMut,
    pub(super) decoder: MessageDecoder,
    pub(super) read_size: usize,
    pub(super) eof: bool,
}

impl FrameReader {
    pub(super) fn new(reader: BoxedReader, max_message_size: usize) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::new(),
            decoder: MessageDecoder::new(max_message_size),
            read_size: READ_BUFFER_MIN,
            eof: false,
        }
    }

    /// A frame that is complete in the buffer, if any.
    pub(super) fn decode_buffered(&mut self) -> Result<Option<Frame>> {
        self.decoder.decode(&mut self.buf)
    }

    /// The next frame; `None` at a clean end of stream.
    pub(super) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            if self.eof {
                return Poll::Ready(match self.decoder.decode_eof(&mut self.buf) {
                    Ok(Some(frame)) => Some(Ok(frame)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                });
            }
            match ready!(self.poll_read(cx)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// One read from the stream, to where the decoder wants the bytes: straight into the
    /// message being reassembled while a chunk's payload is arriving; into the read buffer
    /// up to the end of the next header (or control frame) between two chunks, so that
    /// payloads are not copied through it; otherwise into the read buffer, as much as is
    /// there.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let reader = Pin::new(&mut self.reader);
        if self.buf.is_empty() {
            if let Some((message, remaining)) = self.decoder.pending_part() {
                let n = ready!(poll_read_buf(reader, cx, &mut message.limit(remaining)))?;
                self.decoder.part_filled(n);
                return Poll::Ready(Ok(n));
            }
            if self.buf.capacity() > 2 * READ_BUFFER_MAX {
                // Drop a large buffer left over from a big message.
                self.buf = BytesMut::new();
            }
        }
        if let Some(limit) = self.decoder.read_limit(&self.buf) {
            self.buf.reserve(limit);
            return poll_read_buf(reader, cx, &mut (&mut self.buf).limit(limit));
        }
        self.buf.reserve(self.read_size);
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(poll_read_buf(reader, cx, &mut self.buf))?;
        if n >= room {
            self.read_size = (self.read_size * 2).min(READ_BUFFER_MAX);
        } else if n < READ_BUFFER_MIN / 2 {
            self.read_size = READ_BUFFER_MIN;
        }
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{connection, frame, read_frame};
    use crate::wire::{self, FrameKind};
    use crate::{ConnectionConfig, Error};
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_ping_inside_a_chunked_message_is_answered_before_the_message_ends() {
        let (conn, mut peer) = connection(&ConnectionConfig::default(), 1 << 16);
        let (_sender, mut receiver) = conn.split();
        let mut start = frame(FrameKind::MessageChunk, b"abc");
        start.extend(frame(FrameKind::Ping, b"p1"));
        peer.write_all(&start).await.expect("write");
        // `recv_frame` hands the ping out while the message is half assembled.
        let ping = receiver.recv_frame().await.expect("ping");
        assert_eq!(
            (ping.kind, &ping.payload[..]),
            (FrameKind::Ping, &b"p1"[..])
        );
        // `recv` answers a ping at once, mid-message.
        peer.write_all(&frame(FrameKind::Ping, b"p2"))
            .await
            .expect("write");
        let message = tokio::spawn(async move { receiver.recv().await });
        let pong = read_frame(&mut peer).await;
        assert_eq!(
            (pong.kind, &pong.payload[..]),
            (FrameKind::Pong, &b"p2"[..])
        );
        let mut end = frame(FrameKind::MessageChunk, b"def");
        end.extend(frame(FrameKind::Message, b"g"));
        peer.write_all(&end).await.expect("write");
        let message = message.await.expect("task").expect("message");
        assert_eq!(&message[..], b"abcdefg");
    }

    #[tokio::test]
    async fn a_peer_that_ends_inside_a_chunked_message_is_connection_closed() {
        let (conn, mut peer) = connection(&ConnectionConfig::default(), 1 << 16);
        let (_sender, mut receiver) = conn.split();
        peer.write_all(&frame(FrameKind::MessageChunk, b"abc"))
            .await
            .expect("write");
        peer.shutdown().await.expect("end");
        let err = receiver.recv().await.expect_err("partial message");
        assert!(matches!(err, Error::ConnectionClosed), "{err:?}");
    }

    #[tokio::test]
    async fn chunked_messages_survive_tiny_reads() {
        // A 7-byte pipe: every read is partial, so most of each chunk is read straight
        // into the message being reassembled.
        let (conn, mut peer) = connection(&ConnectionConfig::default(), 7);
        let (_sender, mut receiver) = conn.split();
        let message: Bytes = (0..5000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let mut bytes = Vec::new();
        for (i, part) in wire::message_frames(message.clone(), 300).enumerate() {
            bytes.extend(frame(FrameKind::Ping, &[i as u8]));
            bytes.extend(frame(part.kind, &part.payload));
        }
        bytes.extend(frame(FrameKind::Message, b"next"));
        let writer = tokio::spawn(async move {
            peer.write_all(&bytes).await.expect("write");
            peer
        });
        for i in 0..17u8 {
            let ping = receiver.recv_frame().await.expect("ping");
            assert_eq!((ping.kind, &ping.payload[..]), (FrameKind::Ping, &[i][..]));
        }
        assert_eq!(receiver.recv().await.expect("message"), message);
        assert_eq!(&receiver.recv().await.expect("next")[..], b"next");
        drop(writer.await.expect("writer"));
    }
}
