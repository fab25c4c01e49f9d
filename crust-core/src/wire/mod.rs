//! The Crust wire format (protocol version 2): the clear-text preamble and the frames that
//! follow the handshake.
//!
//! See `docs/protocol.md` for the normative description. In short:
//!
//! ```text
//! preamble (both sides, clear text, 8 bytes):  "CRST" | max_version: u16 BE | mode bit + min_version: u16 BE
//! frame (inside TLS / the QUIC stream):         length: u32 BE | kind: u8 | payload (length bytes)
//! ```
//!
//! `length` counts only the payload, so the configured maximum message size bounds it
//! directly; it is checked against the maximum *before* any buffer is reserved.
//!
//! In [`TransportMode::Tracer`] (TCP, for debugging; see [`crate::tracer`]) the frames travel
//! in clear text after an authentication exchange, so a packet dissector can show them.
//!
//! A message larger than the sender's chunk size ([`DEFAULT_MESSAGE_CHUNK_SIZE`], 64 KiB)
//! travels as [`FrameKind::MessageChunk`] frames ending with a [`FrameKind::Message`] frame
//! ([`message_frames`]), so control frames can pass it at chunk boundaries;
//! [`MessageDecoder`] puts it back together within the same maximum.
//!
//! Layout: `preamble` (magic, versions, the pipelined [`PreambleStream`]), `frame` (kinds,
//! header, chunking, [`FrameDecoder`]), `reassembly` ([`MessageDecoder`]) and `control`
//! (payload codecs of control frames).

mod control;
mod frame;
mod preamble;
mod reassembly;

pub use control::{decode_observed_address, encode_observed_address};
pub(crate) use frame::frame_header;
pub use frame::{
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MESSAGE_CHUNK_SIZE, FRAME_HEADER_LEN, Frame, FrameDecoder,
    FrameKind, MessageFrames, message_frames, put_frame_header,
};
pub use preamble::{
    ALPN, MAGIC, MIN_PROTOCOL_VERSION, PREAMBLE_LEN, PROTOCOL_VERSION, PreambleStream,
    TRACER_MODE_BIT, TransportMode, exchange_preamble, mode_preamble, negotiate, negotiate_version,
    preamble, preamble_error,
};
pub use reassembly::MessageDecoder;
