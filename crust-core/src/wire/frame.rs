//! Frames: the header, the kinds, and a decoder that checks sizes before reserving memory.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::{Error, Result};

/// Length of a frame header: 4 bytes payload length, 1 byte kind.
pub const FRAME_HEADER_LEN: usize = 5;
/// Default maximum message (frame payload) size: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

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
