//! Relayed connections: when no direct path or hole punch works (symmetric NAT against
//! symmetric NAT, UDP blocked), two nodes talk through a peer both are connected to.
//!
//! The relay (R) joins a *circuit* on its connection to the initiator (A) to one on its
//! connection to the target (B) and passes bytes along with flow control (frame kind 19,
//! `docs/protocol.md`). A and B run TLS 1.3 with pinned `PeerId`s inside the circuit and
//! Crust's framing on top, exactly as over TCP: R sees only ciphertext, and a relay that
//! drops or alters bytes breaks the TLS session (the connection fails, reported), never
//! delivers altered data. To the application a relayed connection is a connection like any
//! other; [`ConnectionPath::Relayed`](crust_core::ConnectionPath::Relayed) names the relay.
//!
//! - `messages.rs`: the relay messages (pure codec);
//! - `circuits.rs`: what a relay carries and allows (pure: limits on circuits per peer and
//!   in total, bytes and time per circuit, the flow-control window);
//! - `stream.rs`: a circuit end as a byte stream;
//! - `driver.rs`: the async side: asking a relay, relaying, accepting, the TLS sessions;
//! - `upgrade.rs`: moving a relayed connection to a path of our own once one works.

use std::time::Duration;

use crust_core::PeerId;
use crust_core::wire::FrameKind;

mod circuits;
mod driver;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod messages;
mod stream;
mod upgrade;

pub(crate) use driver::RelayState;

/// The frame kind of relay messages (reserved for the facade).
pub(crate) const RELAY_FRAME: FrameKind = FrameKind::Unknown(19);

/// What a node does with relays: whether it relays for others (and within which limits),
/// and whether it uses relays itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Relay circuits between peers that ask us to. Default true (within the limits below).
    pub serve: bool,
    /// When a connect by `PeerId` finds no direct path and no hole punch, ask a connected
    /// peer to relay. Default true.
    pub use_relays: bool,
    /// Accept relayed connections from peers. Default true.
    pub accept: bool,
    /// Most circuits relayed at once. Default 64.
    pub max_circuits: usize,
    /// Most circuits relayed at once that start or end at one peer. Default 8.
    pub max_circuits_per_peer: usize,
    /// Most bytes (both directions) one circuit carries; then it is closed. Default 1 GiB.
    pub max_bytes_per_circuit: u64,
    /// Longest a circuit lasts; then it is closed. Default 1 hour.
    pub max_duration: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            serve: true,
            use_relays: true,
            accept: true,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_bytes_per_circuit: 1 << 30,
            max_duration: Duration::from_secs(3600),
        }
    }
}

impl RelayConfig {
    /// Never relays for others, never uses or accepts relayed connections.
    pub fn disabled() -> Self {
        RelayConfig {
            serve: false,
            use_relays: false,
            accept: false,
            ..RelayConfig::default()
        }
    }

    /// This configuration with relaying for others on or off.
    pub fn with_serve(mut self, serve: bool) -> Self {
        self.serve = serve;
        self
    }

    /// This configuration with other limits on the circuits we relay.
    pub fn with_limits(
        mut self,
        max_circuits: usize,
        max_circuits_per_peer: usize,
        max_bytes_per_circuit: u64,
        max_duration: Duration,
    ) -> Self {
        self.max_circuits = max_circuits;
        self.max_circuits_per_peer = max_circuits_per_peer;
        self.max_bytes_per_circuit = max_bytes_per_circuit;
        self.max_duration = max_duration;
        self
    }
}

/// Why a relayed connection could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayFailure {
    /// Relays are off in our configuration.
    #[error("relayed connections are disabled")]
    Disabled,
    /// None of our peers could relay to the target.
    #[error("no connected peer could relay to {0}")]
    NoRelay(PeerId),
    /// The relay (or, through it, the target) refused.
    #[error("{by} refused to relay: {reason}")]
    Refused {
        /// The relay.
        by: PeerId,
        /// Why, as a stable name: `relay_disabled`, `target_not_connected`,
        /// `too_many_circuits`, `too_many_circuits_for_peer`, `target_refused`,
        /// `target_timeout`, `invalid`.
        reason: &'static str,
    },
    /// The relay did not answer in time.
    #[error("no answer from relay {relay} within {} s", .within.as_secs_f64())]
    Timeout {
        /// Whom we asked.
        relay: PeerId,
        /// How long we waited.
        within: Duration,
    },
    /// The end-to-end TLS session through the relay failed (a relay that alters bytes, or
    /// a target that is not who it should be).
    #[error("secure session with {peer} through relay {relay} failed: {error}")]
    Session {
        /// The relay.
        relay: PeerId,
        /// The target.
        peer: PeerId,
        /// The TLS or Crust error, in words.
        error: String,
    },
}

impl RelayFailure {
    /// A stable name for scripts: `disabled`, `no_relay`, `refused`, `timeout`, `session`.
    pub const fn kind(&self) -> &'static str {
        match self {
            RelayFailure::Disabled => "disabled",
            RelayFailure::NoRelay(_) => "no_relay",
            RelayFailure::Refused { .. } => "refused",
            RelayFailure::Timeout { .. } => "timeout",
            RelayFailure::Session { .. } => "session",
        }
    }
}
