//! Hole punching coordinated by a common peer (DCUtR-like, over the facade's own control
//! frames; see `docs/protocol.md`).
//!
//! - `messages.rs`: the coordination messages (pure codec);
//! - `coordinator.rs`: what a node relaying coordinations for others (R) remembers and
//!   allows (pure);
//! - `plan.rs`: which punches to run given both sides' NATs, and how many a node takes
//!   part in (pure);
//! - `handler.rs`: coordination messages as they arrive (relaying, replies, offers);
//! - `driver.rs`: the async side: asking, relaying, answering, then running the punches
//!   through the transports ([`Transport::punch`](crust_core::Transport::punch)), which do
//!   the packet work on their own listening sockets.

use std::time::Duration;

use crust_core::PeerId;
use crust_core::wire::FrameKind;

mod coordinator;
mod driver;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod handler;
mod messages;
mod plan;

pub(crate) use driver::PunchState;

/// The frame kind of coordination messages (reserved for the facade).
pub(crate) const PUNCH_FRAME: FrameKind = FrameKind::Unknown(17);

/// Why a hole punch did not give a connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PunchFailure {
    /// None of our peers could introduce us (a punch needs a peer connected to both).
    #[error(
        "no connected peer could introduce us to {0} (a hole punch needs a peer connected to both sides)"
    )]
    NoCoordinator(PeerId),
    /// The coordinator or the peer refused.
    #[error("{by} refused the hole punch: {reason}")]
    Refused {
        /// Who refused (the coordinator or the peer).
        by: PeerId,
        /// Why, as a stable name: `target_not_connected`, `coordinator_busy`,
        /// `target_busy`, `already_connected`, `crossed`.
        reason: &'static str,
    },
    /// The coordinator did not answer in time.
    #[error("no answer from {coordinator} to our hole-punch request within {} s", .within.as_secs_f64())]
    CoordinationTimeout {
        /// Whom we asked.
        coordinator: PeerId,
        /// How long we waited.
        within: Duration,
    },
    /// Both sides are behind symmetric NATs: no punch can work (a relay can).
    #[error(
        "both sides are behind symmetric NATs (ours: {ours}, theirs: {theirs}): no hole punch can work"
    )]
    BothSymmetric {
        /// Our NAT class.
        ours: &'static str,
        /// The peer's NAT class.
        theirs: &'static str,
    },
    /// Every punch ran out of time (or failed) without a connection.
    #[error("no path through the NATs within {} s (our NAT: {ours}, theirs: {theirs})", .within.as_secs_f64())]
    NoPath {
        /// Our NAT class.
        ours: &'static str,
        /// The peer's NAT class.
        theirs: &'static str,
        /// How long the punches ran.
        within: Duration,
    },
    /// No punch method fits these NATs with the transports we run (a symmetric NAT can
    /// only be punched over reliable UDP, by the birthday search).
    #[error(
        "no hole-punch method for these NATs with our transports (our NAT: {ours}, theirs: {theirs}; a symmetric NAT needs reliable UDP)"
    )]
    NoMethod {
        /// Our NAT class.
        ours: &'static str,
        /// The peer's NAT class.
        theirs: &'static str,
    },
    /// Too many punches with this peer recently, or at once: try later.
    #[error("too many hole punches with this peer recently, or at once; try again later")]
    Busy,
}

impl PunchFailure {
    /// A stable, short name for scripts: `no_coordinator`, `refused`,
    /// `coordination_timeout`, `both_symmetric`, `no_path`, `no_method`, `busy`.
    pub const fn kind(&self) -> &'static str {
        match self {
            PunchFailure::NoCoordinator(_) => "no_coordinator",
            PunchFailure::Refused { .. } => "refused",
            PunchFailure::CoordinationTimeout { .. } => "coordination_timeout",
            PunchFailure::BothSymmetric { .. } => "both_symmetric",
            PunchFailure::NoPath { .. } => "no_path",
            PunchFailure::NoMethod { .. } => "no_method",
            PunchFailure::Busy => "busy",
        }
    }
}
