//! Typed, matchable outcomes: why a peer was lost, why a dial or a connect failed, which
//! flood limit a peer broke. Each says what happened in words a user can act on.

use std::fmt;
use std::io;
use std::time::Duration;

use crust_core::{Endpoint, PeerId};

/// The inbound limit a flooding peer broke (see [`RateLimit`](crate::RateLimit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FloodLimit {
    /// Too many messages per second.
    Messages,
    /// Too many bytes per second.
    Bytes,
    /// Too many control frames (frames that carry no application message) per second.
    ControlFrames,
    /// Too many gossip messages (peer records) per minute
    /// ([`GossipConfig::messages_per_minute`](crate::GossipConfig::messages_per_minute)).
    PeerRecords,
}

impl FloodLimit {
    /// `"messages"`, `"bytes"`, `"control_frames"` or `"peer_records"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            FloodLimit::Messages => "messages",
            FloodLimit::Bytes => "bytes",
            FloodLimit::ControlFrames => "control_frames",
            FloodLimit::PeerRecords => "peer_records",
        }
    }
}

impl fmt::Display for FloodLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of transport failure ended a connection or a dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// An operating-system I/O error of this kind (reset, broken pipe, …).
    Io(io::ErrorKind),
    /// The peer sent bytes that are not valid Crust frames.
    MalformedFrame,
    /// The peer announced a message above our maximum size.
    MessageTooLarge,
    /// The TLS or QUIC layer failed.
    Handshake,
    /// Anything else.
    Other,
}

/// A transport failure: its kind, and the underlying error in words.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TransportFailure {
    /// What kind of failure.
    pub kind: TransportErrorKind,
    /// The underlying error, for humans.
    pub detail: String,
}

impl TransportFailure {
    pub(crate) fn from_core(error: &crust_core::Error) -> Self {
        use crust_core::Error as E;
        let kind = match error {
            E::Io(e) => TransportErrorKind::Io(e.kind()),
            E::MalformedFrame(_) => TransportErrorKind::MalformedFrame,
            E::MessageTooLarge { .. } => TransportErrorKind::MessageTooLarge,
            E::Handshake(_) | E::HandshakeTimeout(_) => TransportErrorKind::Handshake,
            _ => TransportErrorKind::Other,
        };
        TransportFailure {
            kind,
            detail: error.to_string(),
        }
    }
}

impl fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Why the connection to a peer ended ([`Event::LostPeer`](crate::Event::LostPeer)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The peer closed the connection (gracefully).
    ClosedByPeer,
    /// We closed it ([`Service::disconnect`](crate::Service::disconnect)).
    Disconnected,
    /// Nothing was heard from the peer for this long although we pinged it: it crashed,
    /// vanished from the network, or a NAT or firewall dropped the path.
    PingTimeout {
        /// How long the peer was silent.
        silent_for: Duration,
    },
    /// The peer was banned (by the application or for flooding).
    Banned,
    /// The peer flooded us beyond this limit and was banned.
    Flood(FloodLimit),
    /// The peer ended the connection announcing a replacement that never arrived.
    SupersededNotReplaced,
    /// The transport failed.
    Transport(TransportFailure),
}

impl LostReason {
    /// A stable, short name for scripts (`crust-peer --json`): `closed_by_peer`,
    /// `disconnected`, `ping_timeout`, `banned`, `flood`, `superseded_not_replaced`,
    /// `transport`.
    pub const fn kind(&self) -> &'static str {
        match self {
            LostReason::ClosedByPeer => "closed_by_peer",
            LostReason::Disconnected => "disconnected",
            LostReason::PingTimeout { .. } => "ping_timeout",
            LostReason::Banned => "banned",
            LostReason::Flood(_) => "flood",
            LostReason::SupersededNotReplaced => "superseded_not_replaced",
            LostReason::Transport(_) => "transport",
        }
    }

    /// The reason for a connection whose reader ended with `error`.
    pub(crate) fn from_read_error(error: &crust_core::Error) -> Self {
        if error.is_closed() {
            LostReason::ClosedByPeer
        } else {
            LostReason::Transport(TransportFailure::from_core(error))
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::ClosedByPeer => f.write_str("closed by the peer"),
            LostReason::Disconnected => f.write_str("disconnected by us"),
            LostReason::PingTimeout { silent_for } => write!(
                f,
                "no answer for {:.1} s (peer crashed or the network path is gone)",
                silent_for.as_secs_f64()
            ),
            LostReason::Banned => f.write_str("banned"),
            LostReason::Flood(limit) => write!(f, "banned for flooding ({limit})"),
            LostReason::SupersededNotReplaced => {
                f.write_str("superseded connection was never replaced")
            }
            LostReason::Transport(failure) => write!(f, "transport error: {failure}"),
        }
    }
}

/// Why one dial to one endpoint failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialFailure {
    /// Nothing answered in time.
    #[error("no answer within {} s (peer offline, firewall or NAT?)", .within.as_secs_f64())]
    NoAnswer {
        /// How long we waited.
        within: Duration,
    },
    /// The host answered that nothing listens there.
    #[error("connection refused (nothing listens there)")]
    Refused,
    /// No route to the host or network.
    #[error("network or host unreachable")]
    Unreachable,
    /// A different node answered.
    #[error("a different peer answered: expected {expected}, got {actual}")]
    WrongPeer {
        /// Whom we dialled for.
        expected: PeerId,
        /// Who answered.
        actual: PeerId,
    },
    /// Whatever answered does not speak Crust.
    #[error("the remote does not speak the crust protocol")]
    NotCrust,
    /// The remote speaks another version of Crust.
    #[error("incompatible crust protocol version: we speak {ours}, the peer {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// The remote speaks Crust in the other transport mode: a tracer node (TCP frames in
    /// clear text) and a normal node refuse each other.
    #[error("transport mode mismatch: we use {ours} mode, the peer {theirs} mode")]
    ModeMismatch {
        /// Our mode.
        ours: crust_core::wire::TransportMode,
        /// Theirs.
        theirs: crust_core::wire::TransportMode,
    },
    /// The TLS or QUIC handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The remote closed the connection during the handshake.
    #[error("the remote closed the connection during the handshake")]
    Closed,
    /// Another transport failure.
    #[error("{0}")]
    Transport(TransportFailure),
}

impl DialFailure {
    pub(crate) fn from_core(error: &crust_core::Error) -> Self {
        use crust_core::Error as E;
        match error {
            E::HandshakeTimeout(within) => DialFailure::NoAnswer { within: *within },
            E::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => DialFailure::Refused,
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    DialFailure::Unreachable
                }
                _ => DialFailure::Transport(TransportFailure::from_core(error)),
            },
            E::PeerIdMismatch { expected, actual } => DialFailure::WrongPeer {
                expected: *expected,
                actual: *actual,
            },
            E::NotCrust => DialFailure::NotCrust,
            E::VersionMismatch { ours, theirs } => DialFailure::VersionMismatch {
                ours: *ours,
                theirs: *theirs,
            },
            E::ModeMismatch { ours, theirs } => DialFailure::ModeMismatch {
                ours: *ours,
                theirs: *theirs,
            },
            E::Handshake(detail) => DialFailure::Handshake(detail.clone()),
            E::ConnectionClosed => DialFailure::Closed,
            _ => DialFailure::Transport(TransportFailure::from_core(error)),
        }
    }
}

/// Why a connect (by endpoints, [`PeerAddr`](crate::PeerAddr) or `PeerId`) failed, as
/// carried by [`Event::ConnectFailed`](crate::Event::ConnectFailed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// Every attempt failed; each endpoint with its failure.
    #[error("{}", summarize(.0))]
    Attempts(Vec<(Endpoint, DialFailure)>),
    /// No attempt succeeded within the connect timeout.
    #[error("no answer within {} s (peer offline, firewall or NAT?)", .0.as_secs_f64())]
    TimedOut(Duration),
    /// The peer is banned.
    #[error("the peer is banned")]
    Banned,
    /// Our peer limit is reached.
    #[error("peer limit of {0} reached")]
    PeerLimit(usize),
    /// The endpoints led to ourselves.
    #[error("refusing to connect to ourselves")]
    SelfConnect,
    /// Nothing to dial: no endpoint of an enabled transport.
    #[error("no endpoint to dial")]
    NoUsableEndpoint,
    /// Connect by `PeerId`: the address book does not know where the peer is.
    #[error("no known address for peer {0}")]
    UnknownPeer(PeerId),
    /// The service is shutting down.
    #[error("service is shut down")]
    Shutdown,
    /// A hole punch was tried and failed.
    #[error("hole punch: {0}")]
    Punch(crate::PunchFailure),
    /// No relay could connect us (after a failed hole punch, when one was tried).
    #[error("relay: {relay}")]
    Relay {
        /// Why no relay could connect us.
        relay: crate::RelayFailure,
        /// Why the hole punch before failed, if one was tried.
        punch: Option<Box<crate::PunchFailure>>,
    },
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

impl ConnectFailure {
    /// A stable, short name for scripts: `attempts`, `timed_out`, `banned`, `peer_limit`,
    /// `self_connect`, `no_usable_endpoint`, `unknown_peer`, `punch`, `shutdown`, `other`.
    pub const fn kind(&self) -> &'static str {
        match self {
            ConnectFailure::Attempts(_) => "attempts",
            ConnectFailure::TimedOut(_) => "timed_out",
            ConnectFailure::Banned => "banned",
            ConnectFailure::PeerLimit(_) => "peer_limit",
            ConnectFailure::SelfConnect => "self_connect",
            ConnectFailure::NoUsableEndpoint => "no_usable_endpoint",
            ConnectFailure::UnknownPeer(_) => "unknown_peer",
            ConnectFailure::Shutdown => "shutdown",
            ConnectFailure::Punch(_) => "punch",
            ConnectFailure::Relay { .. } => "relay",
            ConnectFailure::Other(_) => "other",
        }
    }
}

impl From<&crate::Error> for ConnectFailure {
    fn from(error: &crate::Error) -> Self {
        use crate::Error as E;
        match error {
            E::ConnectFailed(attempts) => ConnectFailure::Attempts(attempts.clone()),
            E::ConnectTimeout(within) => ConnectFailure::TimedOut(*within),
            E::Banned(_) => ConnectFailure::Banned,
            E::TooManyPeers(max) => ConnectFailure::PeerLimit(*max),
            E::SelfConnect => ConnectFailure::SelfConnect,
            E::NoUsableEndpoint(_) => ConnectFailure::NoUsableEndpoint,
            E::UnknownPeer(peer) => ConnectFailure::UnknownPeer(*peer),
            E::Shutdown => ConnectFailure::Shutdown,
            E::PunchFailed(failure) => ConnectFailure::Punch(failure.clone()),
            E::RelayFailed { relay, punch } => ConnectFailure::Relay {
                relay: relay.clone(),
                punch: punch.clone(),
            },
            other => ConnectFailure::Other(other.to_string()),
        }
    }
}

pub(crate) fn summarize(attempts: &[(Endpoint, DialFailure)]) -> String {
    if attempts.is_empty() {
        return "no attempt was made".into();
    }
    attempts
        .iter()
        .map(|(endpoint, failure)| format!("{endpoint}: {failure}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_dial_says_what_to_check() {
        let failure = DialFailure::from_core(&crust_core::Error::HandshakeTimeout(
            Duration::from_secs(10),
        ));
        assert_eq!(
            failure.to_string(),
            "no answer within 10 s (peer offline, firewall or NAT?)"
        );
        let refused = DialFailure::from_core(&crust_core::Error::Io(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(refused, DialFailure::Refused);
    }

    #[test]
    fn lost_reasons_have_stable_kinds() {
        assert_eq!(
            LostReason::from_read_error(&crust_core::Error::ConnectionClosed),
            LostReason::ClosedByPeer
        );
        let malformed = LostReason::from_read_error(&crust_core::Error::MalformedFrame("x"));
        assert!(matches!(
            malformed,
            LostReason::Transport(TransportFailure {
                kind: TransportErrorKind::MalformedFrame,
                ..
            })
        ));
        assert_eq!(malformed.kind(), "transport");
        assert_eq!(
            LostReason::Flood(FloodLimit::Bytes).to_string(),
            "banned for flooding (bytes)"
        );
    }
}
