//! The crate's error type.

use std::net::SocketAddr;

/// Errors of `crust-beacon`: malformed beacon packets and socket failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The packet ended before a complete field (`needed` more bytes were expected at
    /// offset `at`).
    #[error("beacon packet too short: {needed} more bytes needed at offset {at}")]
    TooShort {
        /// Offset of the field that did not fit.
        at: usize,
        /// How many more bytes the field needed.
        needed: usize,
    },
    /// The packet is larger than [`MAX_PACKET_LEN`](crate::MAX_PACKET_LEN).
    #[error("beacon packet of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// The packet's length.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The packet does not start with [`MAGIC`](crate::MAGIC) (it is not a Crust beacon).
    #[error("not a crust beacon (bad magic bytes)")]
    BadMagic,
    /// The packet's format version is not one this crate understands.
    #[error("unknown beacon version {0}")]
    UnknownVersion(u8),
    /// The packet announces (or the caller tried to encode) more endpoints than
    /// [`MAX_ENDPOINTS`](crate::MAX_ENDPOINTS).
    #[error("beacon carries {count} endpoints, more than the maximum of {max}")]
    TooManyEndpoints {
        /// The number of endpoints.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// An endpoint's protocol byte is unknown (decoding), or the protocol has no beacon
    /// encoding (encoding).
    #[error("unknown endpoint protocol {0}")]
    UnknownProtocol(u8),
    /// An endpoint's address-family byte is neither 4 (IPv4) nor 6 (IPv6).
    #[error("unknown address family {0}")]
    UnknownAddressFamily(u8),
    /// Bytes follow the last endpoint.
    #[error("{0} trailing bytes after the beacon")]
    TrailingBytes(usize),
    /// Creating, configuring or binding the beacon socket failed.
    #[error("cannot bind the beacon socket to {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another socket operation failed.
    #[error("beacon socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
