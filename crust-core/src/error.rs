//! The one error type of `crust-core`, shared by every transport.

use std::io;
use std::time::Duration;

use crate::PeerId;

/// Everything that can go wrong while establishing or using a Crust connection.
///
/// Transports built on `crust-core` report their failures with this type so that callers
/// (the `crust` facade, or users mixing crates) can match on one set of variants whatever
/// the transport underneath.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer proved possession of a key whose `PeerId` is not the one we dialled for.
    #[error("peer id mismatch: expected {expected}, peer is {actual}")]
    PeerIdMismatch {
        /// The `PeerId` the dialler asked for.
        expected: PeerId,
        /// The `PeerId` the remote side actually authenticated as.
        actual: PeerId,
    },
    /// A message is larger than the configured maximum; it was neither sent nor buffered.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// Size of the offending message in bytes. When received: as announced by the frame
        /// header, or for a message arriving in chunks the sum of its chunks when it went
        /// over the maximum (a lower bound of its size).
        size: u64,
        /// The configured maximum message size in bytes.
        max: usize,
    },
    /// A frame kind that carries application data was given where a control kind is
    /// required: [`FrameKind::Message`](crate::wire::FrameKind::Message) to
    /// [`MessageSender::send_control`](crate::MessageSender::send_control), or
    /// [`FrameKind::MessageChunk`](crate::wire::FrameKind::MessageChunk), which only the
    /// connection itself writes, to any send method. Nothing was queued; the connection
    /// stays usable.
    #[error(
        "frame kind {0:?} is not a control kind (messages go through send(), chunks are the connection's own)"
    )]
    NotControlKind(crate::wire::FrameKind),
    /// The peer sent bytes that are not a valid Crust frame.
    #[error("malformed frame: {0}")]
    MalformedFrame(&'static str),
    /// The remote side did not start with the Crust preamble: it is not a Crust node.
    #[error("remote is not speaking the crust protocol (bad preamble)")]
    NotCrust,
    /// The remote side speaks Crust, but no protocol version both sides support.
    #[error("unsupported protocol version: we speak {ours}, peer speaks {theirs}")]
    VersionMismatch {
        /// Our protocol version.
        ours: u16,
        /// The version the peer announced.
        theirs: u16,
    },
    /// The remote side speaks Crust, but in the other [`TransportMode`](crate::wire::TransportMode):
    /// a tracer node (frames in clear text) and a normal node (frames inside TLS) refuse
    /// each other; neither falls back to the other's mode.
    #[error("transport mode mismatch: we use {ours} mode, peer uses {theirs} mode")]
    ModeMismatch {
        /// Our mode.
        ours: crate::wire::TransportMode,
        /// The mode the peer's preamble announced.
        theirs: crate::wire::TransportMode,
    },
    /// The peer did not prove that it holds the key of the identity it presented (tracer
    /// mode's signature over both sides' nonces is missing, malformed or wrong: an impostor
    /// or a replayed handshake).
    #[error("peer authentication failed: {0}")]
    Authentication(String),
    /// The handshake (preamble and TLS) did not finish within the configured time.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// The TLS or QUIC handshake failed (bad certificate, impostor, protocol error).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The connection is closed: by us, by the peer, or because the peer vanished.
    #[error("connection closed")]
    ConnectionClosed,
    /// An identity file or key could not be created, read or parsed.
    #[error("identity error: {0}")]
    Identity(String),
    /// Text could not be parsed as an [`Endpoint`](crate::Endpoint) or a [`PeerId`].
    #[error("parse error: {0}")]
    Parse(String),
    /// A transport-specific failure that has no variant of its own.
    #[error("transport error: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The transport cannot do what was asked (say, a hole punch strategy it has no
    /// sockets for).
    #[error("not supported by this transport: {0}")]
    Unsupported(String),
    /// A hole punch found no open path before its deadline.
    #[error("hole punch found no path within {0:?}")]
    PunchTimeout(Duration),
    /// An operating-system level I/O error (bind, connect, read, write).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// True for [`Error::ConnectionClosed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::ConnectionClosed)
    }
}

/// Shorthand for `Result<T, crust_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
