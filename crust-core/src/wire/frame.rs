//! Frames: the header, the kinds, how a large message is cut into chunks, and a decoder
//! that checks sizes before reserving memory.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::{Error, Result};

/// Length of a frame header: 4 bytes payload length, 1 byte kind.
pub const FRAME_HEADER_LEN: usize = 5;
/// Default maximum message (frame payload) size: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Default size of the chunks a large message is sent in (see [`message_frames`]): 64 KiB.
///
/// A control frame queued while a large message is being written waits for at most one
/// chunk in the sender's queue: 64 KiB is about 0.5 ms at 1 Gbit/s and 5 ms at
/// 100 Mbit/s. A chunk costs a 5-byte header (under 0.01 %) and fills four whole 16 KiB
/// TLS records; the receiver reads its payload straight into the reassembled message.
/// Larger chunks (256 KiB) measured no faster on loopback.
pub const DEFAULT_MESSAGE_CHUNK_SIZE: usize = 64 * 1024;

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
    /// A part of an application message that is not its last: more follows.
    ///
    /// A message larger than the sender's chunk size travels as consecutive `MessageChunk`
    /// frames followed by one [`FrameKind::Message`] frame with the last part (see
    /// [`message_frames`]). Control frames may come between the parts; no other message may.
    /// A chunk is never empty. Receivers reassemble the message, so `recv()` and
    /// `recv_frame()` never return this kind.
    MessageChunk,
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
            FrameKind::MessageChunk => 7,
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
            7 => FrameKind::MessageChunk,
            other => FrameKind::Unknown(other),
        }
    }

    /// True for every kind except the two that carry application data
    /// ([`FrameKind::Message`] and [`FrameKind::MessageChunk`]). Control frames, unknown
    /// kinds included, travel on a connection's priority lane and may pass a large message.
    pub const fn is_control(self) -> bool {
        !matches!(self, FrameKind::Message | FrameKind::MessageChunk)
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

/// The frames that carry an application message of `payload`: one [`FrameKind::Message`]
/// frame when it is at most `chunk_size` bytes (at least 1), otherwise
/// [`FrameKind::MessageChunk`] frames of `chunk_size` bytes and a final `Message` frame
/// with the rest (1 to `chunk_size` bytes). The parts share `payload`'s memory.
///
/// ```
/// use crust_core::wire::{FrameKind, message_frames};
/// let kinds: Vec<_> = message_frames(bytes::Bytes::from(vec![0u8; 10]), 4)
///     .map(|frame| (frame.kind, frame.payload.len()))
///     .collect();
/// assert_eq!(
///     kinds,
///     [(FrameKind::MessageChunk, 4), (FrameKind::MessageChunk, 4), (FrameKind::Message, 2)]
/// );
/// ```
pub fn message_frames(payload: Bytes, chunk_size: usize) -> MessageFrames {
    MessageFrames {
        rest: Some(payload),
        chunk_size: chunk_size.max(1),
    }
}

/// The frames of one message, in order; see [`message_frames`].
#[derive(Clone, Debug)]
pub struct MessageFrames {
    rest: Option<Bytes>,
    chunk_size: usize,
}

impl Iterator for MessageFrames {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        let rest = self.rest.as_mut()?;
        if rest.len() > self.chunk_size {
            return Some(Frame {
                kind: FrameKind::MessageChunk,
                payload: rest.split_to(self.chunk_size),
            });
        }
        self.rest.take().map(|payload| Frame {
            kind: FrameKind::Message,
            payload,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self
            .rest
            .as_ref()
            .map_or(0, |rest| rest.len().div_ceil(self.chunk_size).max(1));
        (n, Some(n))
    }
}

impl ExactSizeIterator for MessageFrames {}

/// The header of a frame with a payload of `len` bytes; [`Error::MessageTooLarge`] when
/// `len` does not fit the 32-bit length field.
pub(crate) fn frame_header(kind: FrameKind, len: usize) -> Result<[u8; FRAME_HEADER_LEN]> {
    let len32 = u32::try_from(len).map_err(|_| Error::MessageTooLarge {
        size: len as u64,
        max: u32::MAX as usize,
    })?;
    let [a, b, c, d] = len32.to_be_bytes();
    Ok([a, b, c, d, kind.to_byte()])
}

/// The kind and payload length of the frame whose header starts `src`, once 5 bytes are
/// there.
#[inline]
pub(crate) fn read_frame_header(src: &[u8]) -> Option<(FrameKind, u32)> {
    match src {
        [a, b, c, d, kind, ..] => Some((
            FrameKind::from_byte(*kind),
            u32::from_be_bytes([*a, *b, *c, *d]),
        )),
        _ => None,
    }
}

/// Splits the frame whose header ([`read_frame_header`]) starts `src` off the buffer
/// without copying, once it is complete; checks `len` against `max` before reserving room
/// for it.
#[inline]
pub(crate) fn split_frame(
    src: &mut BytesMut,
    kind: FrameKind,
    len: u32,
    max: usize,
) -> Result<Option<Frame>> {
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max {
        return Err(Error::MessageTooLarge {
            size: u64::from(len),
            max,
        });
    }
    let total = FRAME_HEADER_LEN + len_usize;
    if src.len() < total {
        // Room for what may come next, growing with what already arrived (at most doubling,
        // at least one growth step), never the whole announced length at once: a 5-byte
        // header announcing 16 MiB must not cost 16 MiB.
        let step = src
            .len()
            .max(super::reassembly::GROWTH_STEP)
            .min(total - src.len());
        src.reserve(step);
        return Ok(None);
    }
    src.advance(FRAME_HEADER_LEN);
    let payload = src.split_to(len_usize).freeze();
    Ok(Some(Frame { kind, payload }))
}

/// Appends a frame header for a payload of `len` bytes to `dst`.
pub fn put_frame_header(dst: &mut BytesMut, kind: FrameKind, len: usize) -> Result<()> {
    dst.put_slice(&frame_header(kind, len)?);
    Ok(())
}

/// A `tokio-util` decoder for single Crust frames with a maximum payload size. It hands
/// out [`FrameKind::MessageChunk`] frames as they are; [`MessageDecoder`](super::MessageDecoder)
/// reassembles them into messages.
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
        let Some((kind, len)) = read_frame_header(src) else {
            return Ok(None);
        };
        split_frame(src, kind, len, self.max_message_size)
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
        fn message_frames_cut_at_the_chunk_size_and_join_back(
            len in 0usize..5000,
            chunk in 1usize..1500,
        ) {
            let payload: Bytes = (0..len).map(|i| i as u8).collect::<Vec<u8>>().into();
            let frames = message_frames(payload.clone(), chunk);
            let count = frames.len();
            let frames: Vec<Frame> = frames.collect();
            prop_assert_eq!(frames.len(), count);
            let (last, parts) = frames.split_last().expect("at least one frame");
            prop_assert_eq!(last.kind, FrameKind::Message);
            prop_assert!(last.payload.len() <= chunk);
            prop_assert!(parts.is_empty() || !last.payload.is_empty());
            for part in parts {
                prop_assert_eq!(part.kind, FrameKind::MessageChunk);
                prop_assert_eq!(part.payload.len(), chunk);
            }
            let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.to_vec()).collect();
            prop_assert_eq!(&joined[..], &payload[..]);
        }
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
