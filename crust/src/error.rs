//! Errors of the `crust` facade.

use crust_core::{Endpoint, PeerId, Protocol};

/// Everything the [`Service`](crate::Service) API can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A transport-level failure (handshake, I/O, limits).
    #[error(transparent)]
    Core(#[from] crust_core::Error),
    /// No connection to this peer exists.
    #[error("not connected to peer {0}")]
    NotConnected(PeerId),
    /// The peer is banned for this session.
    #[error("peer {0} is banned")]
    Banned(PeerId),
    /// `connect()` was given no endpoint this service can dial.
    #[error("no endpoint to dial (enabled transports: {0:?})")]
    NoUsableEndpoint(Vec<Protocol>),
    /// Every connection attempt failed; each endpoint with its error.
    #[error("all connection attempts failed: {}", summarize(.0))]
    ConnectFailed(Vec<(Endpoint, crust_core::Error)>),
    /// `connect()` did not succeed within the configured connect timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// We would exceed the configured maximum number of peers.
    #[error("peer limit of {0} reached")]
    TooManyPeers(usize),
    /// The dialled node turned out to be ourselves.
    #[error("refusing to connect to ourselves")]
    SelfConnect,
    /// `start_listening()` was called twice, or with every transport disabled.
    #[error("listening: {0}")]
    Listen(String),
    /// The service has been shut down.
    #[error("service is shut down")]
    Shutdown,
}

fn summarize(attempts: &[(Endpoint, crust_core::Error)]) -> String {
    attempts
        .iter()
        .map(|(ep, e)| format!("{ep}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Shorthand for `Result<T, crust::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
