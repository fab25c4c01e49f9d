//! # crust-rudp
//!
//! Crust's reliable-UDP transport: [QUIC](https://www.rfc-editor.org/rfc/rfc9000) via
//! [quinn](https://docs.rs/quinn), authenticated with the same mutual, key-pinned TLS 1.3
//! configuration as every Crust transport ([`crust_core::tls`]), so a node has the same
//! [`PeerId`](crust_core::PeerId) over rUDP as over TCP.
//!
//! [`RudpTransport`] implements [`crust_core::Transport`]; `crust-core` turns the
//! authenticated stream it yields into a message-oriented
//! [`Connection`](crust_core::Connection) with the same framing, limits and close semantics
//! as on TCP.
//!
//! ```
//! use crust_core::{Identity, Transport};
//! use crust_rudp::{RudpConfig, RudpTransport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> crust_core::Result<()> {
//! let server = RudpTransport::new(Identity::generate()?, RudpConfig::default())?;
//! let client = RudpTransport::new(Identity::generate()?, RudpConfig::default())?;
//!
//! let mut listener = server.listen("127.0.0.1:0".parse().unwrap()).await?;
//! let addr = listener.local_endpoint().addr();
//!
//! // Dial insisting on the server's identity; accept concurrently.
//! let (dialled, accepted) = tokio::join!(
//!     client.dial(addr, Some(server.local_peer_id())),
//!     listener.accept(),
//! );
//! let (conn, mut incoming) = (dialled?, accepted?);
//! assert_eq!(incoming.peer_id(), client.local_peer_id());
//!
//! conn.send("hello over QUIC".into()).await?;
//! assert_eq!(&incoming.recv().await?[..], b"hello over QUIC");
//! conn.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Design
//!
//! **One endpoint, one port.** A transport owns one quinn `Endpoint` (one UDP socket) that
//! both listens and dials, so peers we dial see the port we listen on. That is what NAT hole
//! punching needs: `crust-nat` punches with a socket and hands the very same socket over
//! with [`RudpTransport::with_socket`]. With [`RudpTransport::new`], `listen` binds the
//! socket; a dial made before any `listen` uses a client endpoint on an ephemeral port of
//! the right address family (and dials after `listen` use the listening socket).
//!
//! **One bidirectional stream per connection.** After the QUIC handshake (TLS 1.3 with
//! ALPN [`crust_core::wire::ALPN`] = `crust/1`, mutual certificates, key pinning) the
//! dialer opens a single bidirectional stream that carries all of the connection's Crust
//! frames, in both directions. Crust promises that messages arrive in the order sent; on
//! one stream QUIC guarantees exactly that. The alternative, a unidirectional stream per
//! message, would let messages overtake each other (streams are independent) and need
//! sequence numbers and a reorder buffer to restore order, plus a stream-open per message;
//! it would only pay off for independent messages, which Crust's API does not have. The
//! price of one stream is head-of-line blocking after a lost packet, the same as TCP.
//!
//! Measured with `examples/stream_modes.rs` (release build, loopback, 2-core machine, raw
//! quinn without Crust's framing layer):
//!
//! | messages      | one stream   | a uni stream per message | out of order (per-message) |
//! |---------------|--------------|--------------------------|----------------------------|
//! | 20 000 × 64 B | 241 MB/s     | 26 MB/s                  | 2 611                      |
//! | 20 000 × 1 KiB| 778 MB/s     | 153 MB/s                 | 1 693                      |
//! | 1 000 × 64 KiB| 853 MB/s     | 682 MB/s                 | 142                        |
//!
//! So a stream per message is slower for small messages (a stream open and its
//! bookkeeping per message) and does reorder them, even on a loss-free loopback.
//!
//! **Stream-open preamble.** QUIC tells the acceptor about a new stream only when data
//! arrives on it, so the dialer opens the stream by writing the 8-byte Crust preamble
//! ([`crust_core::wire::preamble`]); the acceptor checks it with
//! [`crust_core::wire::negotiate_version`] and answers with its own preamble before it
//! hands the stream to `crust-core`. The dialer does *not* wait for that answer: `dial`
//! returns right after the QUIC handshake and its own preamble, so the preamble costs no
//! round trip, and the acceptor's preamble is checked lazily as the first 8 bytes read from
//! the stream ([`crust_core::wire::PreambleStream`]). A bad one fails that first read with an
//! `io::Error` carrying [`Error::NotCrust`](crust_core::Error::NotCrust) or
//! [`Error::VersionMismatch`](crust_core::Error::VersionMismatch), which `crust-core`
//! reports as [`Error::ConnectionClosed`](crust_core::Error::ConnectionClosed) on receive,
//! and the QUIC connection is closed with a protocol error; likewise a dialer learns only
//! then that the acceptor refused its certificate or version. The ALPN
//! already guarantees both sides speak Crust; the preamble carries the version range like
//! on TCP. The whole handshake (QUIC plus the preamble) is bounded by
//! [`ConnectionConfig::handshake_timeout`](crust_core::ConnectionConfig), after which a
//! dial fails with [`Error::HandshakeTimeout`](crust_core::Error::HandshakeTimeout). A dial
//! with an expected `PeerId` that the peer does not hold fails with
//! [`Error::PeerIdMismatch`](crust_core::Error::PeerIdMismatch) during the TLS handshake.
//!
//! **Listening.** An accept loop runs in its own task; every incoming handshake runs in its
//! own task bounded by the handshake timeout, at most
//! [`RudpConfig::max_concurrent_handshakes`] (64) at a time, of which one IP address gets
//! [`RudpConfig::max_concurrent_handshakes_per_ip`] (16) and one subnet (IPv4 /24, IPv6 /64)
//! [`RudpConfig::max_concurrent_handshakes_per_subnet`] (32). Anyone can make a key and
//! complete QUIC, then never open the Crust stream; such a stalled handshake holds its slot
//! until the handshake timeout (10 s), so without a share one host could hold them all.
//! Attempts beyond a share or the total wait in a bounded queue
//! ([`RudpConfig::max_queued_handshakes`], 256 in all, 128 per address, for at most
//! [`RudpConfig::handshake_queue_timeout`], 5 s), served round-robin across subnets, and are
//! refused when it is full or their wait is over (the fair share is
//! [`crust_core::limits::HandshakeQueue`]). A handshake keeps its slot until its stream is in
//! the accept queue, so an application slow to accept holds back new handshakes.
//! Authenticated streams are delivered through a bounded queue; failed handshakes are
//! logged (`tracing`) and dropped. Dropping
//! the listener stops accepting (new attempts are refused) while dials and established
//! connections carry on.
//!
//! **Closing.** `crust-core` ends a connection gracefully by shutting down the write half.
//! quinn's own shutdown only queues the stream's `FIN`, and a QUIC connection whose handles
//! are all dropped is closed at once, dropping unacknowledged data. So the write half here
//! sends `FIN` and then waits (bounded by the handshake timeout) until the peer has
//! acknowledged all stream data; the QUIC connection handle stays alive in the stream's
//! `keep_alive` until `crust-core` drops the connection. A peer that vanishes is detected by
//! the idle timeout (keep-alives keep live but quiet connections, and their NAT mappings,
//! open); read errors surface as I/O errors, which `crust-core` reports as
//! [`Error::ConnectionClosed`](crust_core::Error::ConnectionClosed).
//!
//! **Hole punching.** [`Transport::punch_stream`](crust_core::Transport::punch_stream)
//! punches from the listening socket: both sides send probe datagrams
//! ([`crust_core::probe`]) that the socket under quinn takes out of QUIC's stream and routes
//! by nonce to the punch waiting for them; the first probe carrying the peer's nonce tells
//! the address the peer's packets really come from, the client connects there (peer
//! pinned), and the server's accept loop hands that connection to the punch instead of the
//! listener. Behind a symmetric NAT the client opens many sockets instead
//! ([`PunchStrategy::BirthdayOpen`](crust_core::PunchStrategy::BirthdayOpen)) while the
//! server probes many ports
//! ([`PunchStrategy::BirthdayProbe`](crust_core::PunchStrategy::BirthdayProbe)). Punching
//! needs a listener on the transport's main socket; every attempt is bounded by its
//! plan's timeout, packet budget and rate.
//!
//! ## Testing
//!
//! Besides `crust-core`'s conformance kit, the crate's tests run a connection over sockets
//! that drop 5 % of their datagrams (seeded, on both sides) and check that every message
//! arrives intact and in order. Such custom sockets plug in through
//! [`RudpTransport::with_abstract_socket`], which takes any [`quinn::AsyncUdpSocket`].
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod config;
mod listener;
mod probe;
mod punch;
mod reset;
mod slot;
mod stream;
mod transport;

pub use config::{
    DEFAULT_HANDSHAKE_QUEUE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE_INTERVAL,
    DEFAULT_MAX_CONCURRENT_HANDSHAKES, DEFAULT_MAX_CONCURRENT_HANDSHAKES_PER_IP,
    DEFAULT_MAX_CONCURRENT_HANDSHAKES_PER_SUBNET, DEFAULT_MAX_QUEUED_HANDSHAKES,
    DEFAULT_MAX_QUEUED_HANDSHAKES_PER_IP, RudpConfig,
};
pub use transport::RudpTransport;

/// The quinn version this crate is built on, for [`RudpTransport::with_abstract_socket`].
pub use quinn;
