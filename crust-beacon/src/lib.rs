//! Zero-configuration LAN discovery for Crust: every node broadcasts a small UDP *beacon*
//! on a shared port (default [`DEFAULT_PORT`], 5483) saying who it is and where it
//! listens; every node hears the others' beacons and offers them as
//! [`PeerCandidate`](crust_core::PeerCandidate)s.
//!
//! The crate has three layers, in the style of `quinn-proto` / `quinn`:
//!
//! - [`BeaconPacket`]: the wire format (below), pure code with typed decode errors.
//! - [`BeaconState`]: the protocol as a state machine without I/O or clock
//!   (`handle_datagram(now, …)`, `poll_transmit(now)`, `poll_timeout()`): announcing with
//!   jitter at a bounded rate, a bounded table of recently heard peers with expiry, our own
//!   beacons ignored, a token bucket per sender address.
//! - [`Beacon`] (tokio glue: the socket, bound with `SO_REUSEADDR` + `SO_REUSEPORT` +
//!   `SO_BROADCAST` so several nodes on one host share the port, and a driver task) and
//!   [`BeaconDiscovery`], the [`Discovery`](crust_core::Discovery) source named `"beacon"`.
//!
//! Beacons are not authenticated: a beacon only *claims* a `PeerId`; the TLS handshake of
//! the dial that follows proves it.
//!
//! # Wire format (version 1)
//!
//! All integers big-endian; at most [`MAX_PACKET_LEN`] (512) bytes, in practice ≤ 374.
//!
//! ```text
//! magic "CRBN" (4) | version 1 (1) | PeerId (32) | session (8) | sequence (8) | count n (1)
//! then n ≤ 16 endpoints: protocol (1: 1 = tcp, 2 = rudp) | family (1: 4 or 6)
//!                        | address (4 or 16) | port (2)
//! ```
//!
//! The *session* is random per running beacon (a new one means the sender restarted), the
//! *sequence* counts its announcements (older or repeated ones are ignored). An
//! unspecified endpoint address (`0.0.0.0`) stands for the beacon's source address.
//! Nothing may follow the last endpoint. See [`packet`] for the details.
//!
//! # Example
//!
//! ```no_run
//! use crust_beacon::{BeaconConfig, BeaconDiscovery};
//! use crust_core::{Discovery, Endpoint, PeerId};
//! # async fn run(our_id: PeerId) -> Result<(), Box<dyn std::error::Error>> {
//! let listening: Endpoint = "tcp://0.0.0.0:4000".parse()?;
//! let mut discovery =
//!     BeaconDiscovery::bind(BeaconConfig::default(), our_id, vec![listening]).await?;
//! println!("beacon on port {}", discovery.beacon().beacon_acceptor_port());
//! while let Some(candidates) = discovery.next_candidates().await {
//!     for candidate in candidates {
//!         println!("heard {:?} at {:?}", candidate.peer_id, candidate.endpoints);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]

mod beacon;
mod config;
mod error;
pub mod packet;
mod state;

pub use beacon::{Beacon, BeaconDiscovery, BeaconHandle};
pub use config::{BeaconConfig, DEFAULT_PORT};
pub use error::{Error, Result};
pub use packet::{BeaconPacket, MAGIC, MAX_ENDPOINTS, MAX_PACKET_LEN, VERSION};
pub use state::{BeaconState, Heard, PeerRecord};
