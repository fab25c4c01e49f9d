//! The clear-text preamble that opens every Crust stream, and version negotiation.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::{Error, Result};

/// The four magic bytes that open every Crust stream connection.
pub const MAGIC: [u8; 4] = *b"CRST";
/// Length of the preamble in bytes.
pub const PREAMBLE_LEN: usize = 8;
/// The newest protocol version this build speaks.
///
/// Version 2 sends messages larger than the chunk size as
/// [`FrameKind::MessageChunk`](super::FrameKind::MessageChunk) frames.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this build still speaks.
///
/// Version 1 is refused ([`Error::VersionMismatch`]): a version 1 receiver would skip
/// chunk frames as an unknown kind and silently lose the start of every large message.
pub const MIN_PROTOCOL_VERSION: u16 = 2;
/// The QUIC ALPN identifier. It names the protocol family, not a version: versions are
/// negotiated by the preamble on QUIC too, so an incompatible peer gets a typed
/// [`Error::VersionMismatch`] rather than an opaque TLS alert. Unchanged by version 2.
pub const ALPN: &[u8] = b"crust/1";

/// The bit of the preamble's `min_version` field (bytes 6 and 7) that announces
/// [`TransportMode::Tracer`]. Versions use the 15 bits below it.
///
/// It sits in `min_version` so that a build that knows no modes reads a tracer preamble as
/// a minimum version above any maximum and refuses it ([`Error::VersionMismatch`]) instead
/// of starting TLS against a peer that will not.
pub const TRACER_MODE_BIT: u16 = 0x8000;

/// How the frames of a stream connection travel after the preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportMode {
    /// Inside TLS 1.3 (QUIC on rUDP): the normal mode, secret and authenticated.
    Tls,
    /// *Tracer* mode (TCP only, for debugging): after the preamble each side proves its
    /// identity by signing both sides' fresh nonces, then the frames travel in clear text,
    /// exactly as they would inside TLS, so a packet capture shows them. Authenticated, not
    /// secret. See `docs/protocol.md`.
    Tracer,
}

impl TransportMode {
    /// The mode a preamble announces.
    pub const fn of_preamble(preamble: &[u8; PREAMBLE_LEN]) -> TransportMode {
        if u16::from_be_bytes([preamble[6], preamble[7]]) & TRACER_MODE_BIT != 0 {
            TransportMode::Tracer
        } else {
            TransportMode::Tls
        }
    }
}

impl std::fmt::Display for TransportMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportMode::Tls => "tls",
            TransportMode::Tracer => "tracer",
        })
    }
}

/// The preamble bytes for the given supported version range, in [`TransportMode::Tls`].
pub const fn preamble(max_version: u16, min_version: u16) -> [u8; PREAMBLE_LEN] {
    mode_preamble(TransportMode::Tls, max_version, min_version)
}

/// The preamble bytes announcing `mode` and the given supported version range (each
/// version below [`TRACER_MODE_BIT`]).
pub const fn mode_preamble(
    mode: TransportMode,
    max_version: u16,
    min_version: u16,
) -> [u8; PREAMBLE_LEN] {
    let max = max_version.to_be_bytes();
    let flag = match mode {
        TransportMode::Tls => 0,
        TransportMode::Tracer => TRACER_MODE_BIT,
    };
    let min = (min_version | flag).to_be_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], max[0], max[1], min[0], min[1],
    ]
}

/// Checks a peer's preamble against our supported range in [`TransportMode::Tls`] and
/// returns the version both use: the highest version both sides speak. See [`negotiate`].
pub fn negotiate_version(theirs: &[u8; PREAMBLE_LEN], our_max: u16, our_min: u16) -> Result<u16> {
    negotiate(theirs, TransportMode::Tls, our_max, our_min)
}

/// Checks a peer's preamble against our mode and supported range and returns the version
/// both use: the highest version both sides speak.
///
/// Checked in this order: the magic ([`Error::NotCrust`]), the mode
/// ([`Error::ModeMismatch`]: a tracer node and a normal node refuse each other, there is
/// no fallback from one to the other), the versions ([`Error::VersionMismatch`]).
pub fn negotiate(
    theirs: &[u8; PREAMBLE_LEN],
    our_mode: TransportMode,
    our_max: u16,
    our_min: u16,
) -> Result<u16> {
    if theirs[..4] != MAGIC {
        return Err(Error::NotCrust);
    }
    let their_mode = TransportMode::of_preamble(theirs);
    if their_mode != our_mode {
        return Err(Error::ModeMismatch {
            ours: our_mode,
            theirs: their_mode,
        });
    }
    let their_max = u16::from_be_bytes([theirs[4], theirs[5]]);
    let their_min = u16::from_be_bytes([theirs[6], theirs[7]]) & !TRACER_MODE_BIT;
    let chosen = our_max.min(their_max);
    if their_min > their_max || chosen < our_min.max(their_min) {
        return Err(Error::VersionMismatch {
            ours: our_max,
            theirs: their_max,
        });
    }
    Ok(chosen)
}

/// Sends our preamble and reads and checks the peer's. Both sides call this right after the
/// stream is connected; neither waits for the other before sending, so it costs no extra
/// round trip beyond the one TLS needs anyway.
pub async fn exchange_preamble<S>(stream: &mut S) -> Result<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(&preamble(PROTOCOL_VERSION, MIN_PROTOCOL_VERSION))
        .await?;
    stream.flush().await?;
    let mut theirs = [0u8; PREAMBLE_LEN];
    match stream.read_exact(&mut theirs).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Error::NotCrust),
        Err(e) => return Err(e.into()),
    }
    negotiate_version(&theirs, PROTOCOL_VERSION, MIN_PROTOCOL_VERSION)
}

/// Wraps a failure of the peer's preamble (or an I/O error before it was complete) in an
/// `io::Error`, so it can travel through readers such as TLS; [`preamble_error`] gets it back.
fn preamble_io_error(error: Error) -> io::Error {
    let kind = match &error {
        Error::Io(e) => e.kind(),
        Error::NotCrust => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, error)
}

/// The typed Crust error carried by an `io::Error` that a [`PreambleStream`] raised (bad or
/// missing peer preamble, or an I/O failure before it was complete), possibly after it passed
/// through a TLS stream. Any other `io::Error` is handed back unchanged.
pub fn preamble_error(error: io::Error) -> std::result::Result<Error, io::Error> {
    if !error.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Err(error);
    }
    let kind = error.kind();
    match error.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(crust)) => Ok(*crust),
        Some(Err(other)) => Err(io::Error::new(kind, other)),
        None => Err(io::Error::from(kind)),
    }
}

/// A byte stream on which the Crust preamble exchange is *pipelined*: the first bytes read
/// from it must be the peer's preamble, which is consumed and checked
/// ([`negotiate_version`]) before any byte is handed to the reader; and, if asked, our own
/// preamble goes out in front of the first bytes written (in the same write), so the
/// handshake that follows (TLS) starts without waiting for the peer's preamble.
///
/// A bad preamble, a stream that ends before 8 bytes, or an I/O error before the preamble
/// was complete fails the read with an `io::Error` carrying [`Error::NotCrust`],
/// [`Error::VersionMismatch`] or [`Error::Io`]; [`preamble_error`] recovers it. Later reads
/// fail the same way. After the preamble the wrapper only forwards.
#[derive(Debug)]
pub struct PreambleStream<S> {
    inner: S,
    ours: [u8; PREAMBLE_LEN],
    /// Bytes of `ours` already written (`PREAMBLE_LEN`: nothing left to send).
    sent: usize,
    theirs: [u8; PREAMBLE_LEN],
    /// Bytes of `theirs` received so far.
    received: usize,
    /// The negotiated version, once the peer's preamble was accepted.
    version: Option<u16>,
}

impl<S> PreambleStream<S> {
    /// Sends our preamble before the first written byte and checks the peer's on read.
    pub fn new(inner: S) -> Self {
        PreambleStream {
            inner,
            ours: preamble(PROTOCOL_VERSION, MIN_PROTOCOL_VERSION),
            sent: 0,
            theirs: [0; PREAMBLE_LEN],
            received: 0,
            version: None,
        }
    }

    /// Only checks the peer's preamble on read (ours was sent already, or is sent elsewhere).
    pub fn check_only(inner: S) -> Self {
        PreambleStream {
            sent: PREAMBLE_LEN,
            ..PreambleStream::new(inner)
        }
    }

    /// The version both sides use, once the peer's preamble has been read and accepted.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PreambleStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.version.is_none() {
            if this.received == PREAMBLE_LEN {
                let version =
                    negotiate_version(&this.theirs, PROTOCOL_VERSION, MIN_PROTOCOL_VERSION)
                        .map_err(preamble_io_error)?;
                this.version = Some(version);
                break;
            }
            // Read straight into the caller's buffer (one read for preamble and payload when
            // both arrived), then move the preamble bytes out of it.
            let before = buf.filled().len();
            if buf.remaining() < PREAMBLE_LEN - this.received {
                let mut small = ReadBuf::new(&mut this.theirs[this.received..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))
                    .map_err(|e| preamble_io_error(Error::Io(e)))?;
                let n = small.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(preamble_io_error(Error::NotCrust)));
                }
                this.received += n;
                continue;
            }
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))
                .map_err(|e| preamble_io_error(Error::Io(e)))?;
            let after = buf.filled().len();
            if after == before {
                return Poll::Ready(Err(preamble_io_error(Error::NotCrust)));
            }
            let take = (PREAMBLE_LEN - this.received).min(after - before);
            let filled = buf.filled_mut();
            this.theirs[this.received..this.received + take]
                .copy_from_slice(&filled[before..before + take]);
            filled.copy_within(before + take..after, before);
            buf.set_filled(after - take);
            this.received += take;
            if this.received == PREAMBLE_LEN {
                let version =
                    match negotiate_version(&this.theirs, PROTOCOL_VERSION, MIN_PROTOCOL_VERSION) {
                        Ok(version) => version,
                        Err(e) => {
                            // Hand out nothing from a stream that is not acceptable.
                            buf.set_filled(before);
                            return Poll::Ready(Err(preamble_io_error(e)));
                        }
                    };
                this.version = Some(version);
                if buf.filled().len() > before {
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> PreambleStream<S> {
    /// Writes what is left of our preamble on its own.
    fn poll_send_preamble(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < PREAMBLE_LEN {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.ours[self.sent..]))
                .map_err(|e| preamble_io_error(Error::Io(e)))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PreambleStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        while this.sent < PREAMBLE_LEN {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // Our preamble and the first payload in one write (one segment).
            let pending = PREAMBLE_LEN - this.sent;
            let parts = [
                io::IoSlice::new(&this.ours[this.sent..]),
                io::IoSlice::new(buf),
            ];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &parts))
                .map_err(|e| preamble_io_error(Error::Io(e)))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            if n > pending {
                this.sent = PREAMBLE_LEN;
                return Poll::Ready(Ok(n - pending));
            }
            this.sent += n;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.sent < PREAMBLE_LEN {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_preamble(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_preamble(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_negotiation() {
        // The rules, for a node that speaks version 1 only.
        assert_eq!(negotiate_version(&preamble(1, 1), 1, 1).expect("same"), 1);
        // A newer peer that still speaks 1 talks 1 with us.
        assert_eq!(negotiate_version(&preamble(3, 1), 1, 1).expect("newer"), 1);
        // A peer that dropped version 1 is refused with a typed error.
        assert!(matches!(
            negotiate_version(&preamble(3, 2), 1, 1),
            Err(Error::VersionMismatch { ours: 1, theirs: 3 })
        ));
        // This build speaks 2 with itself and with newer peers that still speak 2 ...
        let (max, min) = (PROTOCOL_VERSION, MIN_PROTOCOL_VERSION);
        let ours = preamble(max, min);
        assert_eq!((max, min), (2, 2));
        assert_eq!(negotiate_version(&ours, max, min).expect("same"), 2);
        assert_eq!(
            negotiate_version(&preamble(5, 2), max, min).expect("newer"),
            2
        );
        // ... and refuses a version 1 peer, which would drop chunks as an unknown kind.
        assert!(matches!(
            negotiate_version(&preamble(1, 1), max, min),
            Err(Error::VersionMismatch { ours: 2, theirs: 1 })
        ));
        assert!(matches!(
            negotiate_version(b"GET / HT", 1, 1),
            Err(Error::NotCrust)
        ));
    }

    #[test]
    fn modes_refuse_each_other() {
        let (max, min) = (PROTOCOL_VERSION, MIN_PROTOCOL_VERSION);
        let tracer = mode_preamble(TransportMode::Tracer, max, min);
        assert_eq!(&tracer[..6], &preamble(max, min)[..6]);
        assert_eq!(tracer[6..], [0x80, 0x02]);
        assert_eq!(TransportMode::of_preamble(&tracer), TransportMode::Tracer);
        assert_eq!(
            TransportMode::of_preamble(&preamble(max, min)),
            TransportMode::Tls
        );
        assert_eq!(
            negotiate(&tracer, TransportMode::Tracer, max, min).expect("tracer with tracer"),
            2
        );
        assert!(matches!(
            negotiate(&tracer, TransportMode::Tls, max, min),
            Err(Error::ModeMismatch {
                ours: TransportMode::Tls,
                theirs: TransportMode::Tracer
            })
        ));
        assert!(matches!(
            negotiate(&preamble(max, min), TransportMode::Tracer, max, min),
            Err(Error::ModeMismatch {
                ours: TransportMode::Tracer,
                theirs: TransportMode::Tls
            })
        ));
        // The mode is checked before the versions, and the magic before the mode.
        assert!(matches!(
            negotiate(
                &mode_preamble(TransportMode::Tracer, 9, 9),
                TransportMode::Tls,
                max,
                min
            ),
            Err(Error::ModeMismatch { .. })
        ));
        assert!(matches!(
            negotiate(b"GET / HT", TransportMode::Tracer, max, min),
            Err(Error::NotCrust)
        ));
        // A build that knows no modes reads the tracer bit as a minimum version above any
        // maximum, and refuses.
        let their_min = u16::from_be_bytes([tracer[6], tracer[7]]);
        assert!(their_min > max);
    }

    /// Drives a `PreambleStream` over an in-memory pipe whose peer sends `peer_bytes` in
    /// `chunk`-sized writes; returns what the wrapper's reader got (or its typed error) and
    /// what the peer received.
    async fn pipelined(peer_bytes: Vec<u8>, chunk: usize) -> (Result<Vec<u8>>, Vec<u8>) {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = PreambleStream::new(near);
        let peer = tokio::spawn(async move {
            for part in peer_bytes.chunks(chunk) {
                far.write_all(part).await.expect("peer write");
                far.flush().await.expect("peer flush");
                tokio::task::yield_now().await;
            }
            let mut got = vec![0u8; PREAMBLE_LEN + 5];
            far.read_exact(&mut got).await.expect("peer read");
            got
        });
        // Our first write carries the preamble in front of it, before any read.
        stream.write_all(b"hello").await.expect("write");
        stream.flush().await.expect("flush");
        let mut read = Vec::new();
        let outcome = match stream.read_to_end(&mut read).await {
            Ok(_) => Ok(read),
            Err(e) => Err(preamble_error(e).unwrap_or_else(Error::Io)),
        };
        (outcome, peer.await.expect("peer"))
    }

    #[tokio::test]
    async fn pipelined_preamble_is_sent_first_and_checked_before_data() {
        let mut expected_sent = preamble(PROTOCOL_VERSION, MIN_PROTOCOL_VERSION).to_vec();
        expected_sent.extend_from_slice(b"hello");
        for chunk in [1, 3, 8, 64] {
            let mut theirs = preamble(3, 2).to_vec();
            theirs.extend_from_slice(b"payload after the preamble");
            let (read, sent) = pipelined(theirs, chunk).await;
            assert_eq!(
                read.expect("accepted"),
                b"payload after the preamble",
                "chunk {chunk}"
            );
            assert_eq!(sent, expected_sent);
        }
    }

    #[tokio::test]
    async fn pipelined_preamble_refusals_are_typed() {
        for chunk in [1, 8, 64] {
            let (read, _) = pipelined(b"HTTP/1.1 400 Bad Request".to_vec(), chunk).await;
            assert!(matches!(read, Err(Error::NotCrust)), "{read:?}");
            let (read, _) = pipelined(preamble(7, 5).to_vec(), chunk).await;
            assert!(
                matches!(
                    read,
                    Err(Error::VersionMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: 7
                    })
                ),
                "{read:?}"
            );
            // A version 1 peer is refused.
            let (read, _) = pipelined(preamble(1, 1).to_vec(), chunk).await;
            assert!(
                matches!(read, Err(Error::VersionMismatch { ours: 2, theirs: 1 })),
                "{read:?}"
            );
            // A tracer node's preamble is refused by a normal stream.
            let tracer = mode_preamble(
                TransportMode::Tracer,
                PROTOCOL_VERSION,
                MIN_PROTOCOL_VERSION,
            );
            let (read, _) = pipelined(tracer.to_vec(), chunk).await;
            assert!(
                matches!(
                    read,
                    Err(Error::ModeMismatch {
                        ours: TransportMode::Tls,
                        theirs: TransportMode::Tracer
                    })
                ),
                "{read:?}"
            );
            // The stream ends inside the preamble.
            let (read, _) = pipelined(b"CRS".to_vec(), chunk).await;
            assert!(matches!(read, Err(Error::NotCrust)), "{read:?}");
        }
        // Other I/O errors are handed back unchanged.
        let plain = io::Error::other("plain");
        assert_eq!(
            preamble_error(plain).expect_err("not ours").to_string(),
            "plain"
        );
    }
}
