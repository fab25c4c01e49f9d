//! Gossip: connected peers exchange bounded, rate-limited peer records (a `PeerId`, up to
//! [`MAX_ENDPOINTS_PER_RECORD`] endpoints and an age) over the facade's control frame kind 4
//! (`PeerExchange`, `docs/protocol.md`), so that a node that knows one peer comes to know
//! many ("multi-hop discovery").
//!
//! What a node sends: its own record first, then records of the peers it is connected to
//! (as they described themselves to it), then records it heard by gossip (at most
//! [`GossipConfig::max_heard`] kept, never sent back to their source, dropped once older
//! than [`GossipConfig::max_age`]), a window of each at a time in turn. What a node accepts:
//! records checked before use (no endpoint outside the scopes we dial, see
//! [`usable_endpoint`](table::usable_endpoint); never our own id; not older than
//! [`GossipConfig::max_age`]; at most [`GossipConfig::max_records_per_source`] peers
//! learned from one source), which enter the address book as *hints*: they never displace
//! endpoints learned otherwise or confirmed by a connection, and dialling one expects the
//! record's `PeerId`, which the TLS handshake must prove. A peer that sends gossip faster
//! than [`GossipConfig::messages_per_minute`] allows is cut off
//! ([`FloodLimit::PeerRecords`](crate::FloodLimit::PeerRecords)).
//!
//! - `messages.rs`: the gossip messages (pure codec);
//! - `table.rs`: what we know from each connected peer, its budget, and what we send it
//!   next (pure, time passed in);
//! - `driver.rs`: the async side: the periodic push, answers, the address book.

use std::time::Duration;

use crust_core::wire::FrameKind;

mod driver;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod messages;
mod table;

pub(crate) use driver::GossipState;

/// The frame kind of gossip messages: [`FrameKind::PeerExchange`], owned by the built-in
/// gossip while it is enabled (plug-ins may claim it only when gossip is off).
pub(crate) const GOSSIP_FRAME: FrameKind = FrameKind::PeerExchange;

/// Most records in one gossip message (a decoder refuses more).
pub const MAX_RECORDS_PER_MESSAGE: usize = 32;

/// Most endpoints in one peer record (a decoder refuses more).
pub const MAX_ENDPOINTS_PER_RECORD: usize = 4;

/// How a node takes part in gossip (peer exchange).
///
/// On by default: discovery is what a peer-to-peer node wants, and the cost is small (one
/// message of at most [`GossipConfig::records_per_message`] records per peer per
/// [`GossipConfig::interval`], and one answer when a peer connects). Turn it off for a node
/// that must not tell its peers about each other (then plug-ins may claim the frame kind).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct GossipConfig {
    /// Exchange peer records at all. Default `true`.
    pub enabled: bool,
    /// How often we push records to each connected peer (a new peer gets a push at once).
    /// Default 30 s.
    pub interval: Duration,
    /// Records per message we send (at most [`MAX_RECORDS_PER_MESSAGE`]). Default 16.
    pub records_per_message: usize,
    /// Gossip messages one peer may send us per minute on average. Default 20 (an honest
    /// peer sends 2 at the default interval, plus one when it connects and one answer per
    /// request).
    pub messages_per_minute: f64,
    /// Gossip messages one peer may send at once. Default 10.
    pub burst_messages: f64,
    /// Most distinct peers one connected peer may teach us (further ones are ignored until
    /// it reconnects). Default 256.
    pub max_records_per_source: usize,
    /// Records older than this are ignored. Default 10 minutes.
    pub max_age: Duration,
    /// Records heard by gossip kept to pass on to other peers (multi-hop discovery), the
    /// oldest dropped first. Default 1024.
    pub max_heard: usize,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            enabled: true,
            interval: Duration::from_secs(30),
            records_per_message: 16,
            messages_per_minute: 20.0,
            burst_messages: 10.0,
            max_records_per_source: 256,
            max_age: Duration::from_secs(600),
            max_heard: 1024,
        }
    }
}

impl GossipConfig {
    /// No gossip: we neither send nor accept peer records.
    pub fn disabled() -> Self {
        GossipConfig {
            enabled: false,
            ..GossipConfig::default()
        }
    }

    /// This configuration pushing every `interval` (at least 100 ms). The budget of
    /// messages accepted per peer is raised to at least twice that push rate (plus the
    /// push on connecting and an answer), so that peers with the same configuration
    /// never exceed it.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(100));
        let pushes_per_minute = 60.0 / self.interval.as_secs_f64();
        self.messages_per_minute = self.messages_per_minute.max(2.0 * pushes_per_minute + 4.0);
        self.burst_messages = self.burst_messages.max(pushes_per_minute.min(60.0));
        self
    }

    /// This configuration sending `records` per message (1 to [`MAX_RECORDS_PER_MESSAGE`]).
    pub fn with_records_per_message(mut self, records: usize) -> Self {
        self.records_per_message = records.clamp(1, MAX_RECORDS_PER_MESSAGE);
        self
    }

    /// This configuration accepting `per_minute` gossip messages per peer on average, with
    /// a burst of `burst`.
    pub fn with_message_budget(mut self, per_minute: f64, burst: f64) -> Self {
        self.messages_per_minute = per_minute;
        self.burst_messages = burst;
        self
    }

    /// This configuration keeping at most `max` records heard by gossip to pass on.
    pub fn with_max_heard(mut self, max: usize) -> Self {
        self.max_heard = max;
        self
    }

    /// This configuration learning at most `max` peers from one source.
    pub fn with_max_records_per_source(mut self, max: usize) -> Self {
        self.max_records_per_source = max;
        self
    }
}
