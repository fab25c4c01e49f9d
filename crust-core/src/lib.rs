//! # crust-core
//!
//! The shared vocabulary of [Crust](https://github.com/crust-p2p/crust), reliable peer-to-peer
//! connections with NAT traversal:
//!
//! - [`Identity`] and [`PeerId`]: a node's key pair, its self-signed certificate, and the
//!   SHA-256 of its public key that names it;
//! - [`Endpoint`]: a [`Protocol`] plus a socket address (`tcp://203.0.113.7:4321`);
//! - the plug-in traits [`Transport`] (with [`Listener`]), [`Discovery`] and [`NatTraverser`];
//! - [`Connection`]: the authenticated, message-oriented connection every transport yields,
//!   with framing ([`wire`]), size limits, batching, and a priority lane for control frames
//!   that large messages (sent in chunks) never hold up, implemented once, here;
//! - [`tls`]: the rustls configuration (TLS 1.3, mutual authentication, key pinning) that
//!   every transport uses, and an opt-in key log ([`tls::KeyLogWriter`]) with which
//!   Wireshark can decrypt a session;
//! - [`tracer`]: the authentication exchange of tracer mode (frames in clear text on TCP,
//!   for debugging);
//! - [`Error`]: one typed error for all of it;
//! - [`limits`] and [`fs`]: a token bucket, a per-address limiter and atomic file writes,
//!   shared by the crates above;
// The `conformance` module only exists with `test-kit`: link to it only then, so that the docs
// also build with default features (what docs.rs builds).
#![cfg_attr(
    feature = "test-kit",
    doc = "- with the `test-kit` feature, [`conformance`]: the cases every transport must pass."
)]
#![cfg_attr(
    not(feature = "test-kit"),
    doc = "- with the `test-kit` feature, `conformance`: the cases every transport must pass."
)]
//!
//! ```
//! use crust_core::{Endpoint, Identity};
//! let identity = Identity::generate()?;
//! println!("I am {}", identity.peer_id());
//! let ep: Endpoint = "tcp://127.0.0.1:5483".parse()?;
//! assert_eq!(ep.addr().port(), 5483);
//! # Ok::<(), crust_core::Error>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod connection;
mod endpoint;
mod error;
pub mod fs;
mod identity;
pub mod limits;
mod peer_addr;
pub mod probe;
pub mod punch;
pub mod tls;
pub mod tracer;
mod traits;
pub mod wire;

#[cfg(feature = "test-kit")]
pub mod conformance;

pub use connection::{
    BoxedReader, BoxedWriter, Connection, ConnectionConfig, ConnectionInfo, Direction,
    MessageReceiver, MessageSender, SecureStream,
};
pub use endpoint::{Endpoint, Protocol};
pub use error::{Error, Result};
pub use identity::{Identity, PeerId};
pub use peer_addr::PeerAddr;
pub use punch::{ConnectionPath, PunchPlan, PunchRole, PunchStrategy};
pub use traits::{
    Discovery, Listener, NatTraverser, PeerCandidate, PunchRequest, PunchedSocket, Transport,
};

pub use bytes::Bytes;
