//! Port mapping for Crust: make a node's listening ports reachable through the home
//! router with PCP, NAT-PMP or UPnP IGD, as renewed leases.
//!
//! [`PortMapper::start`] takes the local TCP and UDP listening addresses
//! ([`MappingRequest`]s) and returns at once; a background task then
//!
//! 1. **finds the gateway**: a NAT-PMP external-address request to the default gateway
//!    (which PCP servers answer too) and, at the same time, an SSDP multicast search for a
//!    UPnP Internet Gateway Device (v1 or v2) on the interface multicast leaves by;
//! 2. **maps each port** with the first protocol that works, in this order: PCP (one UDP
//!    round trip, `crab_nat`), NAT-PMP (same port, older), UPnP IGD (`igd-next`, HTTP/SOAP).
//!    The external port asked for is the local port; if a UPnP gateway says it is taken
//!    (error 718) other ports are tried, a bounded number of times. A gateway that only
//!    grants permanent leases (725) is asked again with lease 0; invalid arguments (402)
//!    and refusals (606) become typed [`Error`]s;
//! 3. **keeps each mapping as a lease**: renewed at half its lifetime; a failing renewal is
//!    retried with backoff until the lease runs out; a gateway restart (NAT-PMP/PCP epoch
//!    going back, UPnP device at a new address) or a changed external address re-creates
//!    the mappings at once; each change is a [`PortMapEvent`] on a bounded channel;
//! 4. **cleans up**: [`PortMapper::shutdown`] (and, best effort, dropping the mapper)
//!    deletes the mappings from the gateway within a bounded time.
//!
//! No gateway is a normal outcome: it is reported once as [`PortMapEvent::NoGateway`]
//! and the mapper keeps probing quietly with a capped exponential backoff (30 s doubling
//! to 5 min by default). A mapping whose external address is private or reserved (double
//! NAT, carrier-grade NAT, test labs using documentation ranges) is kept by default; see
//! [`PortMapConfig::allow_reserved_external`].
//!
//! The decisions live in a pure state machine (time passed in, no I/O, unit-tested with
//! explicit instants); the tokio task only carries them out. IPv4 only for now: PCP,
//! NAT-PMP and UPnP map IPv4 ports here (IPv6 needs firewall pinholes, not mappings).
//!
//! The [`PortMapper`] is also a [`NatTraverser`](crust_core::NatTraverser) named
//! `"portmap"` whose `external_endpoints` are its current mappings.
//!
//! # Example
//!
//! ```no_run
//! use crust_core::Protocol;
//! use crust_nat::{MappingRequest, PortMapConfig, PortMapEvent, PortMapper};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let requests = vec![
//!     MappingRequest::new(Protocol::Tcp, "0.0.0.0:4000".parse()?),
//!     MappingRequest::new(Protocol::Rudp, "0.0.0.0:4000".parse()?),
//! ];
//! let (mapper, mut events) = PortMapper::start(PortMapConfig::default(), requests);
//! while let Some(event) = events.recv().await {
//!     match event {
//!         PortMapEvent::Mapped(m) => println!("reachable at {}", m.external_endpoint()),
//!         PortMapEvent::NoGateway => break,
//!         other => println!("{other:?}"),
//!     }
//! }
//! println!("current: {:?}", mapper.mappings());
//! mapper.shutdown().await; // removes the mappings from the gateway
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]

mod addr;
mod config;
mod error;
mod gateway;
mod lease;
mod mapper;
mod mapping;

pub use addr::is_reserved_address;
pub use config::{MAX_REQUESTS, PortMapConfig};
pub use error::{Error, Result};
pub use mapper::PortMapper;
pub use mapping::{LostReason, Mapping, MappingMethod, MappingRequest, PortMapEvent};
