//! # crust-bootstrap
//!
//! How a [Crust](https://github.com/crust-p2p/crust) node finds its first peers:
//!
//! - [`BootstrapConfig`]: a **user-edited JSON file** (default [`default_config_path`]) of
//!   hard-coded [`Contact`]s, listening ports and switches. A missing file means the defaults;
//!   a broken one is a typed [`Error`] naming the file, line and column.
//! - [`BootstrapCache`]: a **library-owned JSON file** (default [`default_cache_path`]) of the
//!   peers we reached *directly*, most recent first, de-duplicated by [`PeerId`], bounded
//!   (default 200), written atomically, and recovered when corrupt (moved aside, never an error
//!   that stops the node: see [`LoadOutcome`]). Its policy is the I/O-free [`PeerCache`].
//! - [`BootstrapDiscovery`]: both as a [`Discovery`] source that re-offers the list with
//!   exponential [`Backoff`] and jitter until told of a direct connection.
//!
//! ```
//! use crust_bootstrap::{BootstrapConfig, BootstrapDiscovery, LoadOutcome};
//! use crust_core::{Discovery, PeerId};
//!
//! let dir = tempfile::tempdir()?;
//! let config_path = dir.path().join("bootstrap.json");
//! std::fs::write(&config_path, r#"{ "contacts": [ { "endpoints": ["tcp://192.0.2.1:5483"] } ] }"#)?;
//! let config = BootstrapConfig::load(&config_path)?
//!     .with_cache_path(dir.path().join("bootstrap-cache.json"));
//!
//! let mut bootstrap = BootstrapDiscovery::from_config(&config);
//! assert_eq!(bootstrap.cache_load_outcome(), Some(&LoadOutcome::Missing));
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! let round = rt.block_on(bootstrap.next_candidates()).expect("one contact");
//! assert_eq!(round[0].endpoints[0].to_string(), "tcp://192.0.2.1:5483");
//!
//! // We dialled it and it answered as this peer: remember it for the next session.
//! let peer = PeerId::from_bytes([7; 32]);
//! bootstrap.direct_connection(peer, round[0].endpoints[0]);
//! assert!(bootstrap.is_bootstrapped());
//!
//! let next_session = BootstrapDiscovery::from_config(&config);
//! assert_eq!(next_session.candidates()[0].peer_id, Some(peer));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`PeerId`]: crust_core::PeerId
//! [`Discovery`]: crust_core::Discovery
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod backoff;
mod cache;
mod config;
mod discovery;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use backoff::{Backoff, BackoffConfig};
pub use cache::{
    BootstrapCache, CacheEntry, DEFAULT_MAX_CACHE_ENTRIES, LoadOutcome, MAX_ENDPOINTS_PER_PEER,
    PeerCache, default_cache_path,
};
pub use config::{BootstrapConfig, Contact, default_config_path};
pub use discovery::BootstrapDiscovery;
pub use error::{Error, Result};
