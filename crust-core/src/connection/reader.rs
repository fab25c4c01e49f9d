//! Reading frames from the transport's read half.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::BoxedReader;
use crate::Result;
use crate::wire::{Frame, FrameDecoder};

/// Smallest read buffer; idle connections keep no more than this.
const READ_BUFFER_MIN: usize = 8 * 1024;
/// Largest read chunk a busy connection grows to.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// Reads frames from the byte stream into one buffer that frames are split off without
/// copying. The read size adapts: it doubles while reads fill it (a busy connection makes
/// fewer, larger reads) and falls back to the minimum when traffic is light, so thousands
/// of idle connections hold little memory.
pub(super) struct FrameReader {
    pub(super) reader: BoxedReader,
    pub(super) buf: BytesMut,
    pub(super) decoder: FrameDecoder,
    pub(super) read_size: usize,
    pub(super) eof: bool,
}

impl FrameReader {
    pub(super) fn new(reader: BoxedReader, max_message_size: usize) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_message_size),
            read_size: READ_BUFFER_MIN,
            eof: false,
        }
    }

    /// A frame that is complete in the buffer, if any.
    pub(super) fn decode_buffered(&mut self) -> Result<Option<Frame>> {
        self.decoder.decode(&mut self.buf)
    }

    /// The next frame; `None` at a clean end of stream.
    pub(super) fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame>>> {
        use std::task::Poll;
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
            if self.buf.is_empty() && self.buf.capacity() > 2 * READ_BUFFER_MAX {
                // Drop a large buffer left over from a big message.
                self.buf = BytesMut::new();
            }
            self.buf.reserve(self.read_size);
            let room = self.buf.capacity() - self.buf.len();
            let n = match tokio_util::io::poll_read_buf(
                std::pin::Pin::new(&mut self.reader),
                cx,
                &mut self.buf,
            ) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            };
            if n == 0 {
                self.eof = true;
            } else if n >= room {
                self.read_size = (self.read_size * 2).min(READ_BUFFER_MAX);
            } else if n < READ_BUFFER_MIN / 2 {
                self.read_size = READ_BUFFER_MIN;
            }
        }
    }
}
