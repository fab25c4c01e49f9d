//! Printing events and command results as text or JSON lines.

use std::io::Write as _;
use std::sync::LazyLock;

use crust::{Direction, Endpoint, Event, MappingBehaviour, Reachability};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Cancelled once a write to stdout fails (the reader went away): nobody can see our events
/// any more, so the node shuts down as on `quit`.
static STDOUT_CLOSED: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);

/// Resolves once a write to stdout has failed.
pub(crate) async fn stdout_closed() {
    STDOUT_CLOSED.cancelled().await;
}

/// Prints events and command results in the chosen format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Printer {
    pub(crate) json: bool,
}

impl Printer {
    /// Prints one line: `value` in JSON mode, `text` otherwise.
    /// Never panics: once stdout is closed (`EPIPE`) or fails otherwise, lines are dropped
    /// and [`stdout_closed`] resolves.
    pub(crate) fn emit(&self, value: Value, text: impl FnOnce() -> String) {
        if STDOUT_CLOSED.is_cancelled() {
            return;
        }
        let line = if self.json {
            event_first(value)
        } else {
            text()
        };
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            tracing::info!(error = %e, "stdout is closed; shutting down");
            STDOUT_CLOSED.cancel();
        }
    }

    /// Prints a `message` line straight to stdout: a message may be 16 MiB, and building
    /// the line first would copy it twice more (a JSON value, then the line), memory the
    /// allocator may keep long after.
    fn message(&self, peer: crust::PeerId, payload: &[u8]) {
        if STDOUT_CLOSED.is_cancelled() {
            return;
        }
        let text = String::from_utf8_lossy(payload);
        let out = std::io::stdout().lock();
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
        let written = if self.json {
            // Keys as `event_first` orders them: "event", then the others sorted.
            write!(
                out,
                r#"{{"event":"message","len":{},"peer":"{peer}","text":"#,
                payload.len()
            )
            .and_then(|()| serde_json::to_writer(&mut out, text.as_ref()).map_err(Into::into))
            .and_then(|()| writeln!(out, "}}"))
        } else {
            writeln!(out, "message {} {:?}", peer.short(), text.as_ref())
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            tracing::info!(error = %e, "stdout is closed; shutting down");
            STDOUT_CLOSED.cancel();
        }
    }

    pub(crate) fn warning(&self, message: impl std::fmt::Display) {
        let message = message.to_string();
        tracing::warn!("{message}");
        self.emit(json!({"event": "warning", "message": message}), || {
            format!("warning: {message}")
        });
    }

    pub(crate) fn error(&self, message: impl std::fmt::Display) {
        let message = message.to_string();
        self.emit(json!({"event": "error", "message": message}), || {
            format!("error: {message}")
        });
    }

    pub(crate) fn event(&self, event: &Event) {
        match event {
            Event::ListenerStarted { endpoint } => self.emit(
                json!({"event": "listener_started", "endpoint": endpoint}),
                || format!("listener-started {endpoint}"),
            ),
            Event::NewPeer {
                peer,
                endpoint,
                direction,
                protocol,
                path,
                ..
            } => self.emit(
                json!({
                    "event": "new_peer",
                    "peer": peer,
                    "endpoint": endpoint,
                    "direction": direction_str(*direction),
                    "protocol": protocol.as_str(),
                    "path": path.as_str(),
                    "via": via(*path),
                }),
                || {
                    format!(
                        "new-peer {} {endpoint} {} {protocol} {path}",
                        peer.short(),
                        direction_str(*direction)
                    )
                },
            ),
            Event::ConnectionUpgraded {
                peer,
                endpoint,
                direction,
                protocol,
                path,
                ..
            } => self.emit(
                json!({
                    "event": "connection_upgraded",
                    "peer": peer,
                    "endpoint": endpoint,
                    "direction": direction_str(*direction),
                    "protocol": protocol.as_str(),
                    "path": path.as_str(),
                }),
                || {
                    format!(
                        "upgraded {} {endpoint} {} {protocol} {path}",
                        peer.short(),
                        direction_str(*direction)
                    )
                },
            ),
            Event::LostPeer { peer, reason } => self.emit(
                json!({"event": "lost_peer", "peer": peer, "reason": reason.to_string(), "reason_kind": reason.kind()}),
                || format!("lost-peer {} {:?}", peer.short(), reason.to_string()),
            ),
            Event::MessagesUnconfirmed { peer, count, sent } => self.emit(
                json!({"event": "messages_unconfirmed", "peer": peer, "count": count, "sent": sent}),
                || format!("messages-unconfirmed {} {count} of {sent}", peer.short()),
            ),
            Event::Message { peer, payload } => self.message(*peer, payload),
            Event::ConnectFailed {
                endpoints,
                peer,
                reason,
            } => self.emit(
                json!({"event": "connect_failed", "endpoints": endpoints, "error": reason.to_string(), "reason_kind": reason.kind(), "peer": peer}),
                || format!("connect-failed {} {:?}", join(endpoints), reason.to_string()),
            ),
            Event::DuplicateConnectionClosed { peer, kept } => self.emit(
                json!({
                    "event": "duplicate_connection_closed",
                    "peer": peer,
                    "kept": direction_str(*kept),
                }),
                || {
                    format!(
                        "duplicate-connection-closed {} kept {}",
                        peer.short(),
                        direction_str(*kept)
                    )
                },
            ),
            Event::FloodDetected {
                peer,
                limit,
                banned,
            } => self.emit(
                json!({"event": "flood_detected", "peer": peer, "limit": limit.as_str(), "banned": banned}),
                || format!("flood-detected {} {limit} banned={banned}", peer.short()),
            ),
            Event::PeersLearned { from, peers } => self.emit(
                json!({"event": "peers_learned", "from": from, "peers": peers}),
                || format!("peers-learned {} from {}", peers.len(), from.short()),
            ),
            Event::PeerBanned { peer } => self
                .emit(json!({"event": "peer_banned", "peer": peer}), || {
                    format!("peer-banned {}", peer.short())
                }),
            Event::AddressObserved {
                peer,
                endpoint,
                direction,
            } => self.emit(
                json!({"event": "address_observed", "peer": peer, "endpoint": endpoint, "direction": direction_str(*direction)}),
                || format!("address-observed {} {endpoint} {}", peer.short(), direction_str(*direction)),
            ),
            Event::BootstrapConnected {
                peer,
                endpoint,
                source,
            } => self.emit(
                json!({"event": "bootstrap_connected", "peer": peer, "endpoint": endpoint, "source": source}),
                || format!("bootstrap-connected {} {endpoint} {source}", peer.short()),
            ),
            Event::PortMapped {
                local,
                external,
                method,
            } => self.emit(
                json!({"event": "port_mapped", "local": local, "external": external, "method": method}),
                || format!("port-mapped {local} -> {external} ({method})"),
            ),
            Event::PortMappingLost { external, reason } => self.emit(
                json!({"event": "port_mapping_lost", "external": external, "reason": reason}),
                || format!("port-mapping-lost {external} {reason:?}"),
            ),
            Event::PortMappingUnavailable => self.emit(
                json!({"event": "port_mapping_unavailable"}),
                || "port-mapping-unavailable (no gateway answered)".to_string(),
            ),
            Event::ExternalAddressChanged { old, new } => self.emit(
                json!({"event": "external_address_changed", "old": old, "new": new}),
                || format!("external-address-changed {old} -> {new}"),
            ),
            Event::ReachabilityChanged { reachability } => self.emit(
                reachability_json("reachability_changed", reachability),
                || format!("reachability-changed {}", reachability_text(reachability)),
            ),
            other => self.emit(
                json!({"event": "other", "debug": format!("{other:?}")}),
                || format!("event {other:?}"),
            ),
        }
    }
}

/// Serializes a JSON object with its `"event"` key first, for readers skimming the stream.
pub(crate) fn event_first(mut value: Value) -> String {
    let event = value.as_object_mut().and_then(|o| o.remove("event"));
    match event {
        Some(event) => {
            let rest = value.to_string();
            match rest.strip_prefix('{') {
                Some("}") | None => format!("{{\"event\":{event}}}"),
                Some(rest) => format!("{{\"event\":{event},{rest}"),
            }
        }
        None => value.to_string(),
    }
}

/// The relay of a relayed connection (`via` in JSON), else `None`.
pub(crate) fn via(path: crust::ConnectionPath) -> Option<crust::PeerId> {
    match path {
        crust::ConnectionPath::Relayed { via } => Some(via),
        _ => None,
    }
}

pub(crate) fn direction_str(direction: Direction) -> &'static str {
    match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

pub(crate) fn join(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The JSON form of a [`Reachability`] (`nat` command, `reachability_changed` event).
pub(crate) fn reachability_json(event: &str, r: &Reachability) -> Value {
    json!({
        "event": event,
        "nat_type": r.nat_type.as_str(),
        "nat_class": r.nat_class(),
        "filtering": r.filtering.as_str(),
        "mapping": match r.mapping {
            MappingBehaviour::EndpointIndependent => "endpoint_independent",
            MappingBehaviour::EndpointDependent => "endpoint_dependent",
            _ => "unknown",
        },
        "port_preserved": r.port_preserved,
        "port_delta": r.port_delta,
        "external": r.external,
        "public_ips": r.public_ips,
        "observer_networks": r.observer_networks,
    })
}

/// One-line text form of a [`Reachability`].
pub(crate) fn reachability_text(r: &Reachability) -> String {
    let external: Vec<String> = r.external.iter().map(|e| e.to_string()).collect();
    format!(
        "{} ({}) external=[{}] port_preserved={:?} observer_networks={}",
        r.nat_type,
        r.nat_class(),
        external.join(" "),
        r.port_preserved,
        r.observer_networks
    )
}
