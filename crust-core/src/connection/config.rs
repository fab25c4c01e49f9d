//! What a transport hands over (the authenticated stream and facts about it) and the
//! limits of a connection.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::wire;
use crate::{Endpoint, PeerId, Protocol};

/// The read half of an authenticated byte stream.
pub type BoxedReader = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The write half of an authenticated byte stream. `poll_shutdown` must end the stream
/// gracefully (TLS `close_notify`, QUIC stream `FIN`) after delivering what was written.
pub type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialled the peer.
    Outbound,
    /// The peer dialled us and our listener accepted.
    Inbound,
}

impl Direction {
    /// `"outbound"` or `"inbound"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Facts about an established connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The authenticated identity of the peer.
    pub peer_id: PeerId,
    /// Our local socket address.
    pub local_addr: SocketAddr,
    /// The peer's socket address as we see it.
    pub remote_addr: SocketAddr,
    /// The transport protocol.
    pub protocol: Protocol,
    /// Who dialled (on a punched connection: `Outbound` for the side that took the
    /// client role of the handshake).
    pub direction: Direction,
    /// How the connection was made (a dial, a mapped port, a hole punch).
    pub path: crate::ConnectionPath,
}

impl ConnectionInfo {
    /// The peer's address as an [`Endpoint`].
    pub fn remote_endpoint(&self) -> Endpoint {
        Endpoint::new(self.protocol, self.remote_addr)
    }
}

/// Limits and queue sizes of a connection. Every transport config embeds one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Largest message accepted for sending or receiving, in bytes.
    /// Default [`wire::DEFAULT_MAX_MESSAGE_SIZE`] (16 MiB).
    pub max_message_size: usize,
    /// Bytes (frame headers included) of application messages that may wait to be written
    /// before `send()` waits (backpressure). A single message larger than this is still
    /// accepted into an empty queue. Default 1 MiB.
    pub send_buffer_bytes: usize,
    /// Bytes (frame headers included) of control frames that may wait to be written before
    /// [`MessageSender::send_control`](crate::MessageSender::send_control) waits and
    /// [`MessageSender::try_send_control`](crate::MessageSender::try_send_control) refuses.
    /// Control frames have their own queue, written before application messages, so this
    /// is separate from [`ConnectionConfig::send_buffer_bytes`]. A single frame larger than
    /// this is still accepted into an empty queue. Default 256 KiB.
    pub control_buffer_bytes: usize,
    /// Messages larger than this are sent as chunks of this many bytes, so that control
    /// frames can pass a large message at chunk boundaries: a control frame waits for at
    /// most about one chunk. Smaller chunks shorten that wait on slow links at a small cost
    /// in throughput. The receiver accepts any chunking. Default
    /// [`wire::DEFAULT_MESSAGE_CHUNK_SIZE`] (64 KiB).
    pub message_chunk_bytes: usize,
    /// Time allowed for the whole handshake (preamble, TLS or QUIC), and for a graceful
    /// close. Default 10 s.
    pub handshake_timeout: std::time::Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_message_size: wire::DEFAULT_MAX_MESSAGE_SIZE,
            send_buffer_bytes: 1024 * 1024,
            control_buffer_bytes: 256 * 1024,
            message_chunk_bytes: wire::DEFAULT_MESSAGE_CHUNK_SIZE,
            handshake_timeout: std::time::Duration::from_secs(10),
        }
    }
}

impl ConnectionConfig {
    /// Sets [`ConnectionConfig::max_message_size`].
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`ConnectionConfig::send_buffer_bytes`] (at least 1).
    pub fn with_send_buffer_bytes(mut self, bytes: usize) -> Self {
        self.send_buffer_bytes = bytes.max(1);
        self
    }

    /// Sets [`ConnectionConfig::control_buffer_bytes`] (at least 1).
    pub fn with_control_buffer_bytes(mut self, bytes: usize) -> Self {
        self.control_buffer_bytes = bytes.max(1);
        self
    }

    /// Sets [`ConnectionConfig::message_chunk_bytes`] (at least 1).
    pub fn with_message_chunk_bytes(mut self, bytes: usize) -> Self {
        self.message_chunk_bytes = bytes.max(1);
        self
    }

    /// Sets [`ConnectionConfig::handshake_timeout`].
    pub fn with_handshake_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

/// What a transport hands to `crust-core` once it has authenticated a peer: the two halves
/// of the byte stream and whatever must stay alive while they are used.
pub struct SecureStream {
    /// Facts about the connection; `peer_id` must be the authenticated one.
    pub info: ConnectionInfo,
    /// Read half.
    pub reader: BoxedReader,
    /// Write half.
    pub writer: BoxedWriter,
    /// Kept alive until both halves of the connection are gone (e.g. a QUIC connection handle).
    pub keep_alive: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for SecureStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureStream")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}
