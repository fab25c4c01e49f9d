//! The halves handed to `crust-core`: a QUIC send stream whose graceful shutdown waits
//! until the peer has acknowledged everything written, and the dialler's receive stream,
//! which checks the acceptor's preamble lazily.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crust_core::wire::{self, PreambleStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type StoppedFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    Result<Option<quinn::VarInt>, quinn::StoppedError>,
                    tokio::time::error::Elapsed,
                >,
            > + Send,
    >,
>;

/// A [`quinn::SendStream`] whose `poll_shutdown` sends `FIN` and then waits (at most
/// `linger`) until the peer has acknowledged all stream data. Dropped without a shutdown
/// (an aborted connection), it resets the stream, so the peer sees an error rather than a
/// clean end.
///
/// quinn's own `poll_shutdown` only queues the `FIN`; if the connection is dropped right
/// after, it is closed at once and data still in flight is lost. Waiting for the
/// acknowledgement makes `Connection::close()` in `crust-core` deliver what was queued.
pub(crate) struct QuicWriter {
    send: quinn::SendStream,
    linger: Duration,
    stopped: Option<StoppedFuture>,
}

impl QuicWriter {
    pub(crate) fn new(send: quinn::SendStream, linger: Duration) -> Self {
        QuicWriter {
            send,
            linger,
            stopped: None,
        }
    }
}

/// Application error code of a stream reset because the connection was aborted.
const RESET_ABORTED: u32 = 1;

impl Drop for QuicWriter {
    fn drop(&mut self) {
        // Dropped without a graceful shutdown: the connection was aborted (or writing
        // failed). quinn would finish the stream on drop, making the abort look like a clean
        // end to the peer; reset it instead, dropping whatever is still buffered.
        if self.stopped.is_none() {
            let _ = self.send.reset(RESET_ABORTED.into());
        }
    }
}

impl fmt::Debug for QuicWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicWriter")
            .field("stream", &self.send.id())
            .field("shutting_down", &self.stopped.is_some())
            .finish()
    }
}

impl AsyncWrite for QuicWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn transmits written data without an explicit flush.
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.stopped.is_none() {
            // Errors only if the stream was already finished or reset: harmless.
            let _ = this.send.finish();
            this.stopped = Some(Box::pin(tokio::time::timeout(
                this.linger,
                this.send.stopped(),
            )));
        }
        let Some(stopped) = this.stopped.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let outcome = ready!(stopped.as_mut().poll(cx));
        let stream = this.send.id();
        Poll::Ready(match outcome {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(code))) => {
                tracing::debug!(?stream, %code, "peer stopped reading before our FIN was acknowledged");
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("peer stopped the stream with code {code}"),
                ))
            }
            Ok(Err(e)) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            Err(_) => {
                tracing::debug!(?stream, linger = ?this.linger, "peer did not acknowledge our FIN in time");
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer did not acknowledge the end of the stream in time",
                ))
            }
        })
    }
}

/// The dialler's read half: the acceptor's preamble is not awaited during `dial` but checked
/// as the first 8 bytes read (pipelining saves a round trip). A bad preamble fails the read
/// with an `io::Error` carrying [`crust_core::Error::NotCrust`] or
/// [`crust_core::Error::VersionMismatch`] (which `crust-core` reports as
/// `ConnectionClosed`) and closes the QUIC connection with a protocol error.
pub(crate) struct DialReader {
    recv: PreambleStream<quinn::RecvStream>,
    /// Held only until the preamble is checked, to close the connection if it is bad.
    conn: Option<quinn::Connection>,
    close_code: u32,
}

impl DialReader {
    pub(crate) fn new(recv: quinn::RecvStream, conn: quinn::Connection, close_code: u32) -> Self {
        DialReader {
            recv: PreambleStream::check_only(recv),
            conn: Some(conn),
            close_code,
        }
    }
}

impl fmt::Debug for DialReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialReader")
            .field("stream", &self.recv.get_ref().id())
            .field("version", &self.recv.version())
            .finish()
    }
}

impl AsyncRead for DialReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let outcome = ready!(Pin::new(&mut this.recv).poll_read(cx, buf));
        if this.conn.is_some() {
            match outcome {
                Err(e) => {
                    // A preamble refusal (not a plain I/O error): tell the peer why we leave.
                    let e = match wire::preamble_error(e) {
                        Ok(crust_core::Error::Io(io)) => io,
                        Ok(refused) => {
                            if let Some(conn) = this.conn.take() {
                                conn.close(this.close_code.into(), b"bad preamble");
                            }
                            tracing::debug!(error = %refused, "acceptor's preamble refused");
                            io::Error::new(io::ErrorKind::InvalidData, refused)
                        }
                        Err(e) => e,
                    };
                    return Poll::Ready(Err(e));
                }
                Ok(()) => {
                    if this.recv.version().is_some() {
                        this.conn = None;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Poll::Ready(outcome)
    }
}
