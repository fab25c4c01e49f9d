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

mod control;
mod frame;
mod preamble;

pub use control::{decode_observed_address, encode_observed_address};
pub use frame::{
    DEFAULT_MAX_MESSAGE_SIZE, FRAME_HEADER_LEN, Frame, FrameDecoder, FrameKind, put_frame_header,
};
pub use preamble::{
    ALPN, MAGIC, MIN_PROTOCOL_VERSION, PREAMBLE_LEN, PROTOCOL_VERSION, PreambleStream,
    exchange_preamble, negotiate_version, preamble, preamble_error,
};
