//! The commands read from stdin.

use std::sync::Arc;

use crust::{Endpoint, PeerAddr, PeerId, Service};
use serde_json::{Value, json};

use crate::printer::{Printer, direction_str, join, reachability_json, reachability_text, via};

pub(crate) const HELP: &[(&str, &str)] = &[
    (
        "connect <endpoint> [<endpoint>...]",
        "connect to one peer at these endpoints",
    ),
    (
        "connect <peer-id>[@<endpoint>,...]",
        "connect to a peer by id (address book), optionally adding endpoints",
    ),
    (
        "known",
        "list the address book (peers and where to reach them)",
    ),
    (
        "ping <peer>",
        "measure the round-trip time to a connected peer",
    ),
    ("nat", "how we can be reached: NAT type, external endpoints"),
    ("relays", "how many circuits we relay for other peers now"),
    ("send <peer> <text>", "send the rest of the line to a peer"),
    ("peers", "list connected peers"),
    ("disconnect <peer>", "close the connection to a peer"),
    ("ban <peer>", "disconnect a peer and refuse it from now on"),
    ("endpoints", "print our endpoints"),
    ("help", "this list"),
    ("quit", "shut down and exit (also: end of input)"),
];

/// Resolves a full `PeerId` or a unique prefix of a connected peer's id.
pub(crate) fn resolve_peer(service: &Service, text: &str) -> Result<PeerId, String> {
    if text.len() == 64 {
        return text.parse().map_err(|e| format!("bad peer id: {e}"));
    }
    let prefix = text.to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) || prefix.len() > 64 {
        return Err(format!(
            "bad peer id {:?}: expected hex digits",
            shorten(text, ECHO_CHARS)
        ));
    }
    let matches: Vec<PeerId> = service
        .peers()
        .into_iter()
        .map(|info| info.peer_id)
        .filter(|id| id.to_string().starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no connected peer matches {:?}",
            shorten(text, ECHO_CHARS)
        )),
        _ => Err(format!(
            "{:?} is ambiguous: {} connected peers match",
            shorten(text, ECHO_CHARS),
            matches.len()
        )),
    }
}

/// How much of a piece of input an error message quotes, in characters.
pub(crate) const ECHO_CHARS: usize = 64;

/// `text` cut to at most `max` characters (on a char boundary), with "…" when cut, so that
/// an error never echoes a huge input line.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses an endpoint to dial: `tcp://IP:PORT` or `rudp://IP:PORT`. Stricter than
/// [`Endpoint`]'s `FromStr`, which also takes `udp://` and `quic://` as aliases of `rudp://`
/// (kept in the library for configs written that way): on the command line a `udp://`
/// target is more likely a mistake than a wish for QUIC. Port 0 cannot be dialled.
pub(crate) fn parse_dial_target(text: &str) -> Result<Endpoint, String> {
    let shown = shorten(text, ECHO_CHARS);
    let expected = "expected tcp://IP:PORT or rudp://IP:PORT";
    let Some((scheme, _)) = text.split_once("://") else {
        return Err(format!("bad endpoint {shown:?}: {expected}"));
    };
    if !scheme.eq_ignore_ascii_case("tcp") && !scheme.eq_ignore_ascii_case("rudp") {
        let scheme = shorten(scheme, 16);
        return Err(format!(
            "bad endpoint {shown:?}: unknown scheme {scheme:?} ({expected})"
        ));
    }
    let endpoint = text.parse::<Endpoint>().map_err(|e| {
        if shown.len() < text.len() {
            format!("bad endpoint {shown:?}: {expected}")
        } else {
            format!("bad endpoint {shown:?}: {e}")
        }
    })?;
    if endpoint.addr().port() == 0 {
        return Err(format!("bad endpoint {shown:?}: port 0 cannot be dialled"));
    }
    Ok(endpoint)
}

pub(crate) fn parse_endpoints<'a>(
    words: impl Iterator<Item = &'a str>,
) -> Result<Vec<Endpoint>, String> {
    let endpoints = words
        .map(parse_dial_target)
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err("connect needs at least one endpoint (e.g. tcp://1.2.3.4:5000)".into());
    }
    Ok(endpoints)
}

/// What `connect` was asked to dial.
#[derive(Debug)]
pub(crate) enum ConnectTarget {
    /// `connect <peer-id>[@<endpoint>,…]`.
    Peer(PeerAddr),
    /// `connect <endpoint> [<endpoint>…]`.
    Endpoints(Vec<Endpoint>),
}

/// Parses the arguments of `connect`; endpoints are checked by [`parse_dial_target`].
pub(crate) fn parse_connect(rest: &str) -> Result<ConnectTarget, String> {
    if let Some((id, endpoints)) = rest.split_once('@') {
        let id = id.trim();
        let peer: PeerId = id
            .parse()
            .map_err(|_| format!("bad peer id {:?}", shorten(id, ECHO_CHARS)))?;
        let endpoints = endpoints
            .split(',')
            .map(|e| parse_dial_target(e.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(ConnectTarget::Peer(
            PeerAddr::new(peer).with_endpoints(endpoints),
        ));
    }
    if let Ok(peer) = rest.parse::<PeerId>() {
        return Ok(ConnectTarget::Peer(PeerAddr::new(peer)));
    }
    parse_endpoints(rest.split_whitespace()).map(ConnectTarget::Endpoints)
}

/// Connects to a peer by id (and any endpoints given) in the background and reports the
/// outcome.
pub(crate) fn spawn_connect_to(service: &Arc<Service>, printer: Printer, addr: PeerAddr) {
    let service = service.clone();
    tokio::spawn(async move {
        let endpoints = addr.endpoints.clone();
        match service.connect_to(addr.clone()).await {
            Ok(peer) => {
                let path = service.peer_info(peer).map(|info| info.connection.path);
                let via = path.and_then(via);
                let path = path.map(|path| path.as_str());
                printer.emit(
                    json!({"event": "connected", "peer": peer, "endpoints": endpoints, "path": path, "via": via}),
                    || format!("connected {peer} ({})", path.unwrap_or("gone again")),
                )
            }
            Err(e) => {
                let reason = crust::ConnectFailure::from(&e);
                let (punch, relay) = match &e {
                    crust::Error::PunchFailed(failure) => (Some(failure.kind()), None),
                    crust::Error::RelayFailed { relay, punch } => {
                        (punch.as_ref().map(|p| p.kind()), Some(relay.kind()))
                    }
                    _ => (None, None),
                };
                printer.emit(
                    json!({"event": "error", "message": format!("connect {}: {e}", addr.peer_id), "command": "connect", "reason_kind": reason.kind(), "punch_failure": punch, "relay_failure": relay}),
                    || format!("error: connect {}: {e}", addr.peer_id),
                )
            }
        }
    });
}

/// Dials `endpoints` in the background and reports the outcome.
pub(crate) fn spawn_connect(service: &Arc<Service>, printer: Printer, endpoints: Vec<Endpoint>) {
    let service = service.clone();
    tokio::spawn(async move {
        match service.connect(&endpoints, None).await {
            Ok(peer) => printer.emit(
                json!({"event": "connected", "peer": peer, "endpoints": endpoints}),
                || format!("connected {peer}"),
            ),
            Err(e) => printer.emit(
                json!({"event": "error", "message": format!("connect {}: {e}", join(&endpoints)), "command": "connect"}),
                || format!("error: connect {}: {e}", join(&endpoints)),
            ),
        }
    });
}

pub(crate) fn print_endpoints(service: &Service, printer: Printer) {
    let endpoints = service.our_endpoints();
    printer.emit(
        json!({"event": "endpoints", "endpoints": endpoints, "listening": service.listening_endpoints(), "addr": service.our_addr().to_string()}),
        || {
            if endpoints.is_empty() {
                "endpoints (none reachable; try --loopback)".to_string()
            } else {
                endpoints
                    .iter()
                    .map(|ep| format!("endpoint {ep}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        },
    );
}

/// What the command loop should do next.
pub(crate) enum Flow {
    Continue,
    Quit,
}

pub(crate) async fn run_command(service: &Arc<Service>, printer: Printer, line: &str) -> Flow {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Flow::Continue;
    }
    let (command, rest) = match line.split_once(char::is_whitespace) {
        Some((command, rest)) => (command, rest.trim()),
        None => (line, ""),
    };
    let mut words = rest.split_whitespace();
    match command {
        "quit" | "exit" => return Flow::Quit,
        "help" => printer.emit(
            json!({"event": "help", "commands": HELP.iter().map(|(c, _)| *c).collect::<Vec<_>>()}),
            || {
                HELP.iter()
                    .map(|(c, d)| format!("  {c:<36} {d}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        ),
        "endpoints" => print_endpoints(service, printer),
        "connect" => match parse_connect(rest) {
            Ok(ConnectTarget::Peer(addr)) => spawn_connect_to(service, printer, addr),
            Ok(ConnectTarget::Endpoints(endpoints)) => spawn_connect(service, printer, endpoints),
            Err(e) => printer.error(e),
        },
        "known" => {
            let known = service.known_peers();
            let list: Vec<Value> = known
                .iter()
                .map(|addr| json!({"peer": addr.peer_id, "endpoints": addr.endpoints}))
                .collect();
            printer.emit(json!({"event": "known_peers", "peers": list}), || {
                let mut out = format!("known {}", known.len());
                for addr in &known {
                    out.push_str(&format!("\n  {addr}"));
                }
                out
            });
        }
        "send" => {
            let Some((peer_text, text)) = rest.split_once(char::is_whitespace) else {
                printer.error("usage: send <peer> <text>");
                return Flow::Continue;
            };
            let text = text.trim_start();
            match resolve_peer(service, peer_text) {
                Ok(peer) => match service.send(peer, text.to_owned().into()).await {
                    Ok(()) => printer.emit(
                        json!({"event": "sent", "peer": peer, "len": text.len()}),
                        || format!("sent {} {} bytes", peer.short(), text.len()),
                    ),
                    Err(e) => printer.error(format!("send: {e}")),
                },
                Err(e) => printer.error(format!("send: {e}")),
            }
        }
        "peers" => {
            let mut peers = service.peers();
            peers.sort_by_key(|info| info.peer_id);
            let list: Vec<Value> = peers
                .iter()
                .map(|info| {
                    let rtt = service
                        .peer_info(info.peer_id)
                        .and_then(|p| p.rtt)
                        .map(|rtt| rtt.as_secs_f64() * 1000.0);
                    json!({
                        "peer": info.peer_id,
                        "endpoint": info.remote_endpoint(),
                        "protocol": info.protocol.as_str(),
                        "direction": direction_str(info.direction),
                        "path": info.path.as_str(),
                        "via": via(info.path),
                        "rtt_ms": rtt,
                    })
                })
                .collect();
            printer.emit(json!({"event": "peers", "peers": list}), || {
                let mut out = format!("peers {}", peers.len());
                for info in &peers {
                    out.push_str(&format!(
                        "\n  {} {} {} {} {}",
                        info.peer_id,
                        info.remote_endpoint(),
                        info.protocol,
                        direction_str(info.direction),
                        info.path
                    ));
                }
                out
            });
        }
        "relays" => {
            let circuits = service.relayed_circuits();
            printer.emit(json!({"event": "relays", "circuits": circuits}), || {
                format!("relays {circuits} circuits")
            });
        }
        "nat" => {
            let reachability = service.reachability();
            printer.emit(reachability_json("nat", &reachability), || {
                format!("nat {}", reachability_text(&reachability))
            });
        }
        "ping" => {
            let (Some(peer_text), None) = (words.next(), words.next()) else {
                printer.error("usage: ping <peer>");
                return Flow::Continue;
            };
            match resolve_peer(service, peer_text) {
                Ok(peer) => {
                    let service = service.clone();
                    tokio::spawn(async move {
                        match service.ping(peer).await {
                            Ok(rtt) => {
                                let ms = rtt.as_secs_f64() * 1000.0;
                                printer.emit(
                                    json!({"event": "pong", "peer": peer, "rtt_ms": ms}),
                                    || format!("pong {} {ms:.3} ms", peer.short()),
                                )
                            }
                            Err(e) => printer.error(format!("ping: {e}")),
                        }
                    });
                }
                Err(e) => printer.error(format!("ping: {e}")),
            }
        }
        "disconnect" | "ban" => {
            let (Some(peer_text), None) = (words.next(), words.next()) else {
                printer.error(format!("usage: {command} <peer>"));
                return Flow::Continue;
            };
            match resolve_peer(service, peer_text) {
                Ok(peer) if command == "ban" => {
                    service.ban([peer]).await;
                    printer.emit(json!({"event": "ban_done", "peer": peer}), || {
                        format!("ban-done {}", peer.short())
                    });
                }
                Ok(peer) => {
                    let was_connected = service.disconnect(peer).await;
                    printer.emit(
                        json!({"event": "disconnected", "peer": peer, "was_connected": was_connected}),
                        || {
                            if was_connected {
                                format!("disconnected {}", peer.short())
                            } else {
                                format!("disconnected {} (was not connected)", peer.short())
                            }
                        },
                    );
                }
                Err(e) => printer.error(format!("{command}: {e}")),
            }
        }
        other => printer.error(format!(
            "unknown command {:?} (try help)",
            shorten(other, ECHO_CHARS)
        )),
    }
    Flow::Continue
}
