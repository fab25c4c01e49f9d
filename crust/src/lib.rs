//! # crust
//!
//! Reliable peer-to-peer connections with NAT traversal, for server-less, decentralised
//! programs. A [`Service`] listens on TCP (TLS 1.3) and reliable UDP (QUIC), connects to
//! peers TCP-first with a reliable-UDP fallback, keeps at most one connection between any
//! two nodes, and hands everything up as [`Event`]s. Every connection is encrypted and
//! mutually authenticated: a peer is its key ([`PeerId`]).
//!
//! The facade composes the sibling crates (`crust-tcp`, `crust-rudp`) as
//! `Box<dyn Transport>`; [`Service::with_transports`] takes your own stack instead.
//!
//! ```
//! use crust::{Event, Service, ServiceConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), crust::Error> {
//! let (alice, mut alice_events) = Service::new(ServiceConfig::loopback())?;
//! let (bob, mut bob_events) = Service::new(ServiceConfig::loopback())?;
//! alice.start_listening().await?;
//! bob.start_listening().await?;
//!
//! alice.connect(&bob.our_endpoints(), Some(bob.peer_id())).await?;
//! alice.send(bob.peer_id(), "hello".into()).await?;
//! loop {
//!     match bob_events.recv().await {
//!         Some(Event::Message { payload, .. }) => { assert_eq!(payload, "hello"); break }
//!         Some(_) => continue,
//!         None => unreachable!("bob is alive"),
//!     }
//! }
//! # let _ = &mut alice_events;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod address_book;
mod codec;
mod config;
mod conn_task;
mod control;
mod delivery;
mod dial;
mod discovery_driver;
mod endpoints;
mod error;
mod event;
mod events;
mod filtering;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gossip;
mod listen;
mod liveness;
mod node;
mod observed;
mod plugins;
mod probe_driver;
mod punch;
mod rate;
mod reachability;
mod reason;
mod registry;
mod relay;
mod service;

pub use address_book::MAX_ENDPOINTS_PER_PEER;
pub use config::{FloodAction, RateLimit, ServiceConfig};
pub use control::{ControlChannel, ControlMessage, FIRST_PLUGIN_KIND, MAX_CONTROL_PAYLOAD};
pub use discovery_driver::DISCOVERY_CONCURRENCY;
pub use error::{Error, Result};
pub use event::Event;
pub use events::Events;
pub use gossip::{GossipConfig, MAX_ENDPOINTS_PER_RECORD, MAX_RECORDS_PER_MESSAGE};
pub use punch::PunchFailure;
pub use reachability::{FilteringBehaviour, MappingBehaviour, NatType, Reachability};
pub use reason::{
    ConnectFailure, DialFailure, FloodLimit, LostReason, TransportErrorKind, TransportFailure,
};
pub use relay::{RelayConfig, RelayFailure};
pub use service::{PeerInfo, Service};

pub use bytes::Bytes;
pub use crust_beacon::{self as beacon, BeaconConfig};
pub use crust_bootstrap::{self as bootstrap, BootstrapConfig, Contact};
pub use crust_core::{
    ConnectionConfig, ConnectionInfo, ConnectionPath, Direction, Discovery, Endpoint, Identity,
    PeerAddr, PeerCandidate, PeerId, Protocol, wire,
};
pub use crust_nat::{self as nat, PortMapConfig};
