//! The Crust wire format: the clear-text preamble and the frames that follow the handshake.
//!
//! See `docs/protocol.md` for the normative description. In short:
//!
//! ```text
//! preamble (both sides, clear text, 8 bytes):  "CRST" | max_version: u16 BE | min_version: u16 BE
//! frame (inside TLS / the QUIC stream):         length: u32 BE | kind: u8 | payload (length bytes)
//! ```
//!
//! `length` counts only the payload, so the configured maximum message size bounds it
//! directly; it is checked against the maximum *before* any buffer is reserved.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::codec::Decoder;

use crate::{Error, Result};

/// The four magic bytes that open every Crust stream connection.
pub const MAGIC: [u8; 4] = *b"CRST";
/// Length of the preamble in bytes.
pub const PREAMBLE_LEN: usize = 8;
/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Length of a frame header: 4 bytes payload length, 1 byte kind.
pub const FRAME_HEADER_LEN: usize = 5;
/// The QUIC ALPN identifier, which plays the preamble's role on QUIC connections.
pub const ALPN: &[u8] = b"crust/1";
/// Default maximum message (frame payload) size: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The preamble bytes for the given supported version range.
pub const fn preamble(max_version: u16, min_version: u16) -> [u8; PREAMBLE_LEN] {
    let max = max_version.to_be_bytes();
    let min = min_version.to_be_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], max[0], max[1], min[0], min[1],
    ]
}

/// Checks a peer's preamble against our supported range and returns the version both use:
/// the highest version both sides speak.
pub fn negotiate_version(theirs: &[u8; PREAMBLE_LEN], our_max: u16, our_min: u16) -> Result<u16> {
    if theirs[..4] != MAGIC {
        return Err(Error::NotCrust);
    }
    let their_max = u16::from_be_bytes([theirs[4], theirs[5]]);
    let their_min = u16::from_be_bytes([theirs[6], theirs[7]]);
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

/// What a frame carries. Receivers skip frames of kinds they do not know, so new control
/// messages can be introduced without breaking older peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// An application message (what `send()` sends and `recv()` returns).
    Message,
    /// Liveness probe; the receiver answers with [`FrameKind::Pong`] carrying the same payload.
    Ping,
    /// Answer to a [`FrameKind::Ping`].
    Pong,
    /// Control: the address at which the sender observes the receiver (for NAT traversal).
    ObservedAddress,
    /// Control: peer exchange (gossip of known peers' endpoints).
    PeerExchange,
    /// Control: connection information relayed through a common peer (hole-punch rendezvous).
    ConnectionInfoRelay,
    /// Control: the sender is about to end this connection because another connection to
    /// the same peer replaces it (duplicate resolution); the receiver should expect the
    /// successor instead of reporting the peer lost.
    Superseded,
    /// A kind this build does not know.
    Unknown(u8),
}

impl FrameKind {
    /// The kind's byte on the wire.
    pub const fn to_byte(self) -> u8 {
        match self {
            FrameKind::Message => 0,
            FrameKind::Ping => 1,
            FrameKind::Pong => 2,
            FrameKind::ObservedAddress => 3,
            FrameKind::PeerExchange => 4,
            FrameKind::ConnectionInfoRelay => 5,
            FrameKind::Superseded => 6,
            FrameKind::Unknown(b) => b,
        }
    }

    /// The kind of a wire byte.
    pub const fn from_byte(b: u8) -> Self {
        match b {
            0 => FrameKind::Message,
            1 => FrameKind::Ping,
            2 => FrameKind::Pong,
            3 => FrameKind::ObservedAddress,
            4 => FrameKind::PeerExchange,
            5 => FrameKind::ConnectionInfoRelay,
            6 => FrameKind::Superseded,
            other => FrameKind::Unknown(other),
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload.
    pub payload: Bytes,
}

/// Encodes the payload of an [`FrameKind::ObservedAddress`] frame: the address at which the
/// sender sees the receiver. `4 | ipv4 (4 bytes) | port (2)` or `6 | ipv6 (16) | port (2)`,
/// big endian.
pub fn encode_observed_address(addr: std::net::SocketAddr) -> Bytes {
    let mut out = BytesMut::with_capacity(19);
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(addr.port());
    out.freeze()
}

/// Decodes an [`FrameKind::ObservedAddress`] payload; anything else than exactly one
/// well-formed address is [`Error::MalformedFrame`].
pub fn decode_observed_address(payload: &[u8]) -> Result<std::net::SocketAddr> {
    let bad = || Error::MalformedFrame("bad observed-address payload");
    let (&family, rest) = payload.split_first().ok_or_else(bad)?;
    let ip_len = match family {
        4 => 4,
        6 => 16,
        _ => return Err(bad()),
    };
    if rest.len() != ip_len + 2 {
        return Err(bad());
    }
    let (ip, port) = rest.split_at(ip_len);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip = if family == 4 {
        let octets: [u8; 4] = ip.try_into().map_err(|_| bad())?;
        std::net::IpAddr::from(octets)
    } else {
        let octets: [u8; 16] = ip.try_into().map_err(|_| bad())?;
        std::net::IpAddr::from(octets)
    };
    Ok(std::net::SocketAddr::new(ip, port))
}

/// Appends a frame header for a payload of `len` bytes to `dst`.
pub fn put_frame_header(dst: &mut BytesMut, kind: FrameKind, len: usize) -> Result<()> {
    let len32 = u32::try_from(len).map_err(|_| Error::MessageTooLarge {
        size: len as u64,
        max: u32::MAX as usize,
    })?;
    dst.reserve(FRAME_HEADER_LEN);
    dst.put_u32(len32);
    dst.put_u8(kind.to_byte());
    Ok(())
}

/// A `tokio-util` decoder for Crust frames with a maximum payload size.
///
/// An announced length above the maximum is refused with [`Error::MessageTooLarge`] before
/// any memory is reserved for it; a stream that ends inside a frame yields
/// [`Error::ConnectionClosed`].
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    max_message_size: usize,
}

impl FrameDecoder {
    /// A decoder accepting payloads of up to `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        FrameDecoder { max_message_size }
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let kind = FrameKind::from_byte(src[4]);
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize > self.max_message_size {
            return Err(Error::MessageTooLarge {
                size: u64::from(len),
                max: self.max_message_size,
            });
        }
        let total = FRAME_HEADER_LEN + len_usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let payload = src.split_to(len_usize).freeze();
        Ok(Some(Frame { kind, payload }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(Error::ConnectionClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(kind: FrameKind, payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        put_frame_header(&mut buf, kind, payload.len()).expect("header");
        buf.extend_from_slice(payload);
        buf
    }

    #[test]
    fn preamble_negotiation() {
        let ours = preamble(PROTOCOL_VERSION, MIN_PROTOCOL_VERSION);
        assert_eq!(negotiate_version(&ours, 1, 1).expect("same"), 1);
        // A newer peer that still speaks 1 talks 1 with us.
        assert_eq!(negotiate_version(&preamble(3, 1), 1, 1).expect("newer"), 1);
        // A peer that dropped version 1 is refused with a typed error.
        assert!(matches!(
            negotiate_version(&preamble(3, 2), 1, 1),
            Err(Error::VersionMismatch { ours: 1, theirs: 3 })
        ));
        assert!(matches!(
            negotiate_version(b"GET / HT", 1, 1),
            Err(Error::NotCrust)
        ));
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
            let mut theirs = preamble(3, 1).to_vec();
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
                matches!(read, Err(Error::VersionMismatch { ours: 1, theirs: 7 })),
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

    #[test]
    fn four_gib_header_is_refused_without_allocating() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0][..]);
        let cap_before = buf.capacity();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_MESSAGE_SIZE);
        let err = dec.decode(&mut buf).expect_err("must refuse");
        assert!(
            matches!(
                err,
                Error::MessageTooLarge {
                    size: 0xffff_ffff,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            buf.capacity(),
            cap_before,
            "no allocation for the announced size"
        );
    }

    #[test]
    fn partial_frame_at_eof_is_connection_closed() {
        let mut buf = encode(FrameKind::Message, b"hello");
        buf.truncate(7);
        let mut dec = FrameDecoder::new(1024);
        assert!(dec.decode(&mut buf).expect("partial ok").is_none());
        assert!(matches!(
            dec.decode_eof(&mut buf),
            Err(Error::ConnectionClosed)
        ));
        assert!(
            dec.decode_eof(&mut BytesMut::new())
                .expect("clean eof")
                .is_none()
        );
    }

    #[test]
    fn observed_addresses_round_trip_and_garbage_is_refused() {
        for text in ["203.0.113.7:4321", "[2001:db8::1]:65535", "0.0.0.0:0"] {
            let addr: std::net::SocketAddr = text.parse().expect("addr");
            let payload = encode_observed_address(addr);
            assert_eq!(decode_observed_address(&payload).expect("decode"), addr);
        }
        for bad in [
            &b""[..],
            b"\x04\x01\x02\x03",
            b"\x05\x01\x02\x03\x04\x00\x01",
            b"\x04\x01\x02\x03\x04\x00\x01\xff",
        ] {
            assert!(matches!(
                decode_observed_address(bad),
                Err(Error::MalformedFrame(_))
            ));
        }
    }

    #[test]
    fn unknown_kinds_survive_decoding() {
        let mut buf = encode(FrameKind::Unknown(200), b"future");
        let frame = FrameDecoder::new(64)
            .decode(&mut buf)
            .expect("ok")
            .expect("frame");
        assert_eq!(frame.kind, FrameKind::Unknown(200));
        assert_eq!(&frame.payload[..], b"future");
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
            kinds in proptest::collection::vec(any::<u8>(), 20),
            chunk in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            for (p, k) in payloads.iter().zip(&kinds) {
                wire.extend_from_slice(&encode(FrameKind::from_byte(*k), p));
            }
            let mut dec = FrameDecoder::new(300);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(frame) = dec.decode(&mut buf).expect("valid") {
                    out.push(frame);
                }
            }
            prop_assert_eq!(out.len(), payloads.len());
            for ((frame, p), k) in out.iter().zip(&payloads).zip(&kinds) {
                prop_assert_eq!(&frame.payload[..], &p[..]);
                prop_assert_eq!(frame.kind.to_byte(), *k);
            }
        }

        #[test]
        fn garbage_never_panics_nor_overallocates(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut dec = FrameDecoder::new(1024);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
            prop_assert!(buf.capacity() <= 1024 + 64 + FRAME_HEADER_LEN);
        }
    }
}
