//! Reassembly of messages that arrive in chunks ([`FrameKind::MessageChunk`]).

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::frame::{FRAME_HEADER_LEN, Frame, FrameKind, read_frame_header, split_frame};
use crate::{Error, Result};

/// Smallest growth of a reassembly buffer (and of a read buffer waiting for a large
/// frame): what a frame's announced length alone can make us reserve.
pub(crate) const GROWTH_STEP: usize = 64 * 1024;

/// A `tokio-util` decoder that yields whole application messages and control frames.
///
/// It decodes frames like [`FrameDecoder`](super::FrameDecoder) and joins the [`FrameKind::MessageChunk`] parts
/// of a large message and its final [`FrameKind::Message`] part into one `Message` frame.
/// Control frames that arrive between the parts are returned at once, so a ping is seen
/// while a large message is still arriving. It never yields a `MessageChunk` frame.
///
/// Bounds and errors:
/// - the sum of a message's parts is checked against the maximum *before* any memory is
///   reserved for the next part; over it, [`Error::MessageTooLarge`] with `size` = the sum
///   so far (a lower bound of what the peer meant to send), so a peer that sends endless
///   chunks is stopped after `max_message_size` bytes;
/// - the reassembly buffer never holds more than the maximum, and parts are copied into it
///   as they arrive, so the read buffer never has to hold a whole chunk;
/// - an empty `MessageChunk` is [`Error::MalformedFrame`] (it would let a peer loop us
///   forever at no cost);
/// - a stream that ends with a message unfinished is [`Error::ConnectionClosed`].
///
/// A message that arrives as one frame is split off the read buffer without copying; a
/// chunked one is copied once, part by part, into a buffer of its own.
#[derive(Debug)]
pub struct MessageDecoder {
    max_message_size: usize,
    /// The parts of the message being reassembled, received so far.
    assembly: Vec<u8>,
    /// A message is being reassembled: its first chunk's header was read.
    assembling: bool,
    /// The part whose header was read and whose payload is still arriving.
    part: Option<PartInProgress>,
}

#[derive(Clone, Copy, Debug)]
struct PartInProgress {
    /// Payload bytes still to come.
    remaining: usize,
    /// This is the final `Message` part.
    last: bool,
}

impl MessageDecoder {
    /// A decoder accepting messages of up to `max_message_size` bytes, however they are
    /// chunked.
    pub fn new(max_message_size: usize) -> Self {
        MessageDecoder {
            max_message_size,
            assembly: Vec::new(),
            assembling: false,
            part: None,
        }
    }

    /// True while a chunked message is partly received.
    pub fn is_reassembling(&self) -> bool {
        self.assembling
    }

    /// The message being reassembled and how many bytes of its current part are still to
    /// come, so a reader may append them straight to it (saving the copy through its read
    /// buffer) and report with [`MessageDecoder::part_filled`]; `None` when no part is
    /// arriving. Spare capacity for the next read is reserved (see [`GROWTH_STEP`]): a
    /// reader fills what is spare, never more than the part's rest. Only valid while the
    /// caller's read buffer is empty: bytes in it come first.
    pub(crate) fn pending_part(&mut self) -> Option<(&mut Vec<u8>, usize)> {
        match self.part {
            Some(part) if part.remaining > 0 => {
                self.make_room(1, part.remaining);
                Some((&mut self.assembly, part.remaining))
            }
            _ => None,
        }
    }

    /// While a message is being reassembled, how many bytes a reader should read into its
    /// read buffer (holding `buffered`) at most: just the rest of the next frame's header,
    /// or of a control frame, so that the parts' payloads are not read into the buffer
    /// (and copied out again) but straight into the message ([`MessageDecoder::pending_part`]).
    /// `None` when no message is being reassembled: read as much as is there.
    pub(crate) fn read_limit(&self, buffered: &[u8]) -> Option<usize> {
        if !self.assembling || self.part.is_some() {
            return None;
        }
        let wanted = match read_frame_header(buffered) {
            None => FRAME_HEADER_LEN,
            Some((_, len)) => {
                FRAME_HEADER_LEN.saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
            }
        };
        Some(wanted.saturating_sub(buffered.len()).max(1))
    }

    /// Records that `n` bytes (at most what [`MessageDecoder::pending_part`] allowed) were
    /// appended to the message directly.
    pub(crate) fn part_filled(&mut self, n: usize) {
        if let Some(part) = self.part.as_mut() {
            part.remaining = part.remaining.saturating_sub(n);
        }
    }

    /// Makes spare room for `n` bytes (at least one) of the current part, of which
    /// `remaining` are still to come. Memory follows the bytes that actually arrive: the
    /// buffer grows by what it holds (at least [`GROWTH_STEP`]), so it at most doubles and
    /// each byte is copied O(1) times, and never beyond the end of the current part (whose
    /// total the caller checked against the maximum). A peer that announces 16 MiB and
    /// sends 5 bytes costs us 64 KiB, not 16 MiB.
    fn make_room(&mut self, n: usize, remaining: usize) {
        let spare = self.assembly.capacity() - self.assembly.len();
        if spare >= n.max(1) {
            return;
        }
        let step = self.assembly.len().max(GROWTH_STEP).max(n).min(remaining);
        self.assembly.reserve_exact(step);
    }
}

impl Decoder for MessageDecoder {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        loop {
            if let Some(mut part) = self.part {
                let n = part.remaining.min(src.len());
                self.make_room(n, part.remaining);
                self.assembly.extend_from_slice(&src[..n]);
                src.advance(n);
                part.remaining -= n;
                self.part = Some(part);
                if part.remaining > 0 {
                    return Ok(None);
                }
                let last = part.last;
                self.part = None;
                if last {
                    self.assembling = false;
                    let payload = Bytes::from(std::mem::take(&mut self.assembly));
                    return Ok(Some(Frame {
                        kind: FrameKind::Message,
                        payload,
                    }));
                }
                continue;
            }
            let Some((kind, len)) = read_frame_header(src) else {
                return Ok(None);
            };
            let is_part = match kind {
                FrameKind::MessageChunk => true,
                FrameKind::Message => self.assembling,
                _ => false,
            };
            if !is_part {
                // A whole message or a control frame: split off without copying.
                return split_frame(src, kind, len, self.max_message_size);
            }
            let size = self.assembly.len() as u64 + u64::from(len);
            if size > self.max_message_size as u64 {
                return Err(Error::MessageTooLarge {
                    size,
                    max: self.max_message_size,
                });
            }
            if kind == FrameKind::MessageChunk && len == 0 {
                return Err(Error::MalformedFrame("empty message chunk"));
            }
            // `size` is within the maximum, so `len` fits a usize.
            let len = usize::try_from(len).map_err(|_| Error::MalformedFrame("chunk length"))?;
            src.advance(FRAME_HEADER_LEN);
            self.assembling = true;
            self.part = Some(PartInProgress {
                remaining: len,
                last: kind == FrameKind::Message,
            });
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.assembling => Ok(None),
            None => Err(Error::ConnectionClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{message_frames, put_frame_header};
    use proptest::prelude::*;

    fn put(buf: &mut BytesMut, kind: FrameKind, payload: &[u8]) {
        put_frame_header(buf, kind, payload.len()).expect("header");
        buf.extend_from_slice(payload);
    }

    fn drain(dec: &mut MessageDecoder, buf: &mut BytesMut) -> Result<Vec<Frame>> {
        let mut out = Vec::new();
        while let Some(frame) = dec.decode(buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn control_frames_between_chunks_come_out_first() {
        let mut buf = BytesMut::new();
        put(&mut buf, FrameKind::MessageChunk, b"hel");
        put(&mut buf, FrameKind::Ping, b"p");
        put(&mut buf, FrameKind::MessageChunk, b"lo ");
        put(&mut buf, FrameKind::Unknown(200), b"future");
        put(&mut buf, FrameKind::Message, b"world");
        put(&mut buf, FrameKind::Message, b"next");
        let mut dec = MessageDecoder::new(100);
        let out = drain(&mut dec, &mut buf).expect("valid");
        let got: Vec<(FrameKind, &[u8])> = out.iter().map(|f| (f.kind, &f.payload[..])).collect();
        assert_eq!(
            got,
            [
                (FrameKind::Ping, &b"p"[..]),
                (FrameKind::Unknown(200), b"future"),
                (FrameKind::Message, b"hello world"),
                (FrameKind::Message, b"next"),
            ]
        );
        assert!(!dec.is_reassembling());
        assert_eq!(
            dec.assembly.capacity(),
            0,
            "the finished message took the buffer"
        );
    }

    #[test]
    fn a_single_frame_message_is_not_copied() {
        let mut buf = BytesMut::new();
        put(&mut buf, FrameKind::Message, &[7; 1000]);
        let start = buf.as_ptr() as usize;
        let frame = MessageDecoder::new(1000)
            .decode(&mut buf)
            .expect("ok")
            .expect("frame");
        assert_eq!(frame.payload.len(), 1000);
        assert_eq!(frame.payload.as_ptr() as usize, start + FRAME_HEADER_LEN);
    }

    #[test]
    fn the_sum_of_chunks_is_checked_before_reserving() {
        let mut dec = MessageDecoder::new(100);
        let mut buf = BytesMut::new();
        put(&mut buf, FrameKind::MessageChunk, &[1; 60]);
        assert!(drain(&mut dec, &mut buf).expect("within").is_empty());
        let assembly_cap = dec.assembly.capacity();
        assert!(assembly_cap <= 100);
        // Only the header of a second 60-byte chunk: 120 > 100 is refused at once.
        let mut buf = BytesMut::new();
        put_frame_header(&mut buf, FrameKind::MessageChunk, 60).expect("header");
        let read_cap = buf.capacity();
        let err = dec.decode(&mut buf).expect_err("over the maximum");
        assert!(
            matches!(
                err,
                Error::MessageTooLarge {
                    size: 120,
                    max: 100
                }
            ),
            "{err:?}"
        );
        assert_eq!(dec.assembly.capacity(), assembly_cap, "nothing reserved");
        assert_eq!(buf.capacity(), read_cap, "nothing reserved");
        // A 4 GiB chunk header is refused the same way.
        let mut dec = MessageDecoder::new(100);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 7][..]);
        let err = dec.decode(&mut buf).expect_err("4 GiB");
        assert!(
            matches!(
                err,
                Error::MessageTooLarge {
                    size: 0xffff_ffff,
                    max: 100
                }
            ),
            "{err:?}"
        );
        assert_eq!(dec.assembly.capacity(), 0);
    }

    /// Issue #12, item 3: an announced length costs memory only as its bytes arrive.
    #[test]
    fn memory_follows_the_bytes_that_arrive_not_the_announced_length() {
        const MAX: usize = 16 << 20;
        // A whole-message frame announcing 16 MiB, then 5 bytes.
        let mut dec = MessageDecoder::new(MAX);
        let mut buf = BytesMut::new();
        put_frame_header(&mut buf, FrameKind::Message, MAX - 1).expect("header");
        buf.extend_from_slice(b"hello");
        assert_eq!(dec.decode(&mut buf).expect("partial"), None);
        assert!(buf.capacity() <= 2 * GROWTH_STEP, "{}", buf.capacity());
        // A chunk announcing 16 MiB, then 5 bytes.
        let mut dec = MessageDecoder::new(MAX);
        let mut buf = BytesMut::new();
        put_frame_header(&mut buf, FrameKind::MessageChunk, MAX - 1).expect("header");
        buf.extend_from_slice(b"hello");
        assert_eq!(dec.decode(&mut buf).expect("partial"), None);
        assert!(
            dec.assembly.capacity() <= GROWTH_STEP,
            "{}",
            dec.assembly.capacity()
        );
        // As the chunk's bytes trickle in, the buffer stays within twice what arrived.
        let mut received = 5;
        for _ in 0..200 {
            buf.extend_from_slice(&[7u8; 10_000]);
            received += 10_000;
            assert_eq!(dec.decode(&mut buf).expect("partial"), None);
            assert_eq!(dec.assembly.len(), received);
            assert!(
                dec.assembly.capacity() <= (2 * received).max(GROWTH_STEP),
                "{} bytes held in {}",
                received,
                dec.assembly.capacity()
            );
        }
        // Read straight into the message: never more spare room than the part's rest.
        let (message, rest) = dec.pending_part().expect("part pending");
        assert_eq!(rest, MAX - 1 - received);
        assert!(message.capacity() - message.len() <= rest);
    }

    #[test]
    fn a_finished_chunked_message_holds_no_spare_capacity() {
        let message: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        for part in message_frames(Bytes::from(message.clone()), 70_000) {
            put(&mut buf, part.kind, &part.payload);
        }
        let mut dec = MessageDecoder::new(1 << 20);
        let frames = drain(&mut dec, &mut buf).expect("valid");
        assert_eq!(frames.len(), 1);
        assert_eq!(&frames[0].payload[..], &message[..]);
        assert_eq!(dec.assembly.capacity(), 0, "the message took its buffer");
    }

    #[test]
    fn endless_chunks_end_in_message_too_large() {
        let max = 10_000;
        let mut dec = MessageDecoder::new(max);
        let mut sent = 0usize;
        let err = loop {
            let mut buf = BytesMut::new();
            put(&mut buf, FrameKind::MessageChunk, &[3; 7]);
            sent += 7;
            assert!(sent <= max + 7, "must stop once over the maximum");
            match drain(&mut dec, &mut buf) {
                Ok(frames) => assert!(frames.is_empty()),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, Error::MessageTooLarge { size, max: 10_000 } if size > 10_000),
            "{err:?}"
        );
        assert!(dec.assembly.capacity() <= max);
    }

    #[test]
    fn malformed_sequences_are_typed_errors() {
        // An empty chunk (a free infinite loop otherwise).
        let mut buf = BytesMut::new();
        put(&mut buf, FrameKind::MessageChunk, b"");
        let err = MessageDecoder::new(100)
            .decode(&mut buf)
            .expect_err("empty");
        assert!(matches!(err, Error::MalformedFrame(_)), "{err:?}");
        // The stream ends between two parts, or inside one.
        for cut in [0, 2] {
            let mut buf = BytesMut::new();
            put(&mut buf, FrameKind::MessageChunk, b"abc");
            put(&mut buf, FrameKind::Ping, b"p");
            let mut tail = BytesMut::new();
            put(&mut tail, FrameKind::Message, b"xyz");
            buf.extend_from_slice(&tail[..cut]);
            let mut dec = MessageDecoder::new(100);
            let ping = dec.decode_eof(&mut buf).expect("ping").expect("frame");
            assert_eq!(ping.kind, FrameKind::Ping);
            assert!(matches!(
                dec.decode_eof(&mut buf),
                Err(Error::ConnectionClosed)
            ));
        }
        // A clean end between messages is no error.
        assert!(
            MessageDecoder::new(100)
                .decode_eof(&mut BytesMut::new())
                .expect("clean")
                .is_none()
        );
    }

    #[test]
    fn an_empty_final_part_ends_the_message() {
        let mut buf = BytesMut::new();
        put(&mut buf, FrameKind::MessageChunk, b"all of it");
        put(&mut buf, FrameKind::Message, b"");
        let out = drain(&mut MessageDecoder::new(100), &mut buf).expect("valid");
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].payload[..], b"all of it");
    }

    /// One item of a generated stream: a message, or a control frame that the sender slips
    /// in before part `after_part` of the next message.
    #[derive(Clone, Debug)]
    enum Item {
        Message(Vec<u8>),
        Control { kind: u8, after_part: usize },
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2000).prop_map(Item::Message),
            (1u8..=6, 0usize..8).prop_map(|(kind, after_part)| Item::Control { kind, after_part }),
        ]
    }

    /// The wire bytes of `items` sent with chunks of `chunk` bytes, and the frames a
    /// receiver must hand out. Each control frame goes between the parts of the message
    /// after it (or before its last part when that message has fewer parts).
    fn encode_items(items: &[Item], chunk: usize) -> (BytesMut, Vec<(FrameKind, Vec<u8>)>) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        let mut pending: Vec<(usize, FrameKind)> = Vec::new();
        let control = |wire: &mut BytesMut, kind: FrameKind| {
            let payload = [kind.to_byte(); 3];
            put(wire, kind, &payload);
            (kind, payload.to_vec())
        };
        for item in items {
            match item {
                Item::Control { kind, after_part } => {
                    pending.push((*after_part, FrameKind::from_byte(*kind)));
                }
                Item::Message(msg) => {
                    let parts: Vec<Frame> =
                        message_frames(Bytes::from(msg.clone()), chunk).collect();
                    for (i, part) in parts.iter().enumerate() {
                        let last = i + 1 == parts.len();
                        for (at, kind) in &pending {
                            if *at == i || (last && *at > i) {
                                expected.push(control(&mut wire, *kind));
                            }
                        }
                        put(&mut wire, part.kind, &part.payload);
                    }
                    pending.clear();
                    expected.push((FrameKind::Message, msg.clone()));
                }
            }
        }
        for (_, kind) in pending {
            expected.push(control(&mut wire, kind));
        }
        (wire, expected)
    }

    proptest! {
        #[test]
        fn chunked_messages_survive_any_chunk_size_and_read_boundaries(
            items in proptest::collection::vec(item(), 1..12),
            chunk in 1usize..700,
            read in 1usize..300,
        ) {
            let (wire, expected) = encode_items(&items, chunk);
            // Decode, fed in `read`-sized pieces.
            let mut dec = MessageDecoder::new(2000);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(read) {
                buf.extend_from_slice(piece);
                for frame in drain(&mut dec, &mut buf).expect("valid") {
                    prop_assert_ne!(frame.kind, FrameKind::MessageChunk);
                    got.push((frame.kind, frame.payload.to_vec()));
                }
            }
            prop_assert!(dec.decode_eof(&mut buf).expect("clean end").is_none());
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn a_reader_following_the_read_hints_gets_the_same_frames(
            items in proptest::collection::vec(item(), 1..12),
            chunk in 1usize..700,
            read in 1usize..300,
        ) {
            // Reads at most `read` bytes at a time, to where the decoder asks: straight into
            // the message while a part is pending, else into the buffer within the limit.
            let (wire, expected) = encode_items(&items, chunk);
            let mut rest = &wire[..];
            let mut dec = MessageDecoder::new(2000);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            loop {
                for frame in drain(&mut dec, &mut buf).expect("valid") {
                    got.push((frame.kind, frame.payload.to_vec()));
                }
                if rest.is_empty() {
                    break;
                }
                let pending = if buf.is_empty() { dec.pending_part() } else { None };
                if let Some((message, remaining)) = pending {
                    let n = remaining.min(read).min(rest.len());
                    message.extend_from_slice(&rest[..n]);
                    dec.part_filled(n);
                    rest = &rest[n..];
                    continue;
                }
                let limit = dec.read_limit(&buf).unwrap_or(usize::MAX);
                prop_assert!(limit > 0);
                let n = limit.min(read).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            prop_assert!(dec.decode_eof(&mut buf).expect("clean end").is_none());
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn garbage_never_panics_nor_overallocates(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut dec = MessageDecoder::new(64);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
            prop_assert!(dec.assembly.capacity() <= 64);
            prop_assert!(buf.capacity() <= 256 + 64 + FRAME_HEADER_LEN);
        }
    }
}
