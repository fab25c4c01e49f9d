//! `crust-peer`: a small interactive Crust node, for trying Crust by hand and for driving it
//! from scripts (the NAT lab, integration tests).
//!
//! It listens on TCP and reliable UDP (random ports by default), prints its `PeerId` and the
//! endpoints peers can reach it at, dials the endpoints given on the command line (all of
//! them belong to one peer; the first authenticated connection wins, TCP first), and then
//! reads commands from stdin, one per line:
//!
//! | command                          | effect                                                   |
//! |----------------------------------|----------------------------------------------------------|
//! | `connect <endpoint> [<endpoint>…]` | dial one peer at these endpoints (in the background)   |
//! | `send <peer> <text>`             | send the rest of the line as one message                 |
//! | `peers`                          | list the connected peers                                 |
//! | `disconnect <peer>`              | close the connection to a peer gracefully                |
//! | `ban <peer>`                     | disconnect a peer and refuse it for the rest of the run  |
//! | `endpoints`                      | print our endpoints again                                |
//! | `help`                           | list the commands                                        |
//! | `quit` (or end of stdin)         | shut down cleanly and exit 0                             |
//!
//! `<peer>` is a full 64-digit hex `PeerId` or a unique prefix of a connected peer's id;
//! `<endpoint>` is `tcp://IP:PORT` or `rudp://IP:PORT`.
//!
//! Every [`crust::Event`] and every command result is printed on stdout, one line each:
//! readable text by default (`new-peer 1a2b3c4d tcp://127.0.0.1:40000 outbound tcp`,
//! `message 1a2b3c4d "hello"`), or JSON lines with `--json`:
//!
//! ```text
//! {"event":"started","peer_id":"<64 hex>","endpoints":["tcp://…","rudp://…"],"listening":[…]}
//! {"event":"new_peer","peer":"<64 hex>","endpoint":"tcp://…","direction":"outbound","protocol":"tcp"}
//! {"event":"message","peer":"<64 hex>","text":"hello","len":5}
//! {"event":"error","message":"unknown command \"foo\" (try help)"}
//! ```
//!
//! Other JSON events: `listener_started`, `connected`, `lost_peer`, `connect_failed`,
//! `duplicate_connection_closed`, `flood_detected`, `peer_banned`, `sent`, `disconnected`,
//! `peers`, `endpoints`, `help`, `stopped`. Logs (`RUST_LOG`, default `warn`) go to stderr
//! only, so stdout stays a clean event stream.
//!
//! Bootstrap: unless `--no-bootstrap` is given, the node reads a bootstrap config (`--config`,
//! default the platform's `crust/bootstrap.json` if it exists: contacts, ports, cache
//! switches), tries its contacts and the peers cached from earlier runs until one answers,
//! and remembers every peer it dials successfully in its cache (`--cache`, default the
//! platform's `crust/bootstrap-cache.json`).
//!
//! ```text
//! # two peers on one machine
//! crust-peer --loopback                       # prints: endpoint tcp://127.0.0.1:40000 …
//! crust-peer --loopback tcp://127.0.0.1:40000 # connects to the first one
//! ```

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use crust::{Direction, Endpoint, Event, Identity, PeerAddr, PeerId, Service, ServiceConfig};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A Crust peer that prints every event on stdout and takes commands on stdin.
#[derive(Debug, Parser)]
#[command(name = "crust-peer", version, about, long_about = None)]
struct Args {
    /// Endpoints of one peer to connect to at start (e.g. tcp://1.2.3.4:5 rudp://1.2.3.4:6).
    endpoints: Vec<Endpoint>,
    /// TCP listening port (0 = random).
    #[arg(long, default_value_t = 0)]
    tcp_port: u16,
    /// Reliable-UDP listening port (0 = random).
    #[arg(long, default_value_t = 0)]
    rudp_port: u16,
    /// Address to listen on (default 0.0.0.0, or 127.0.0.1 with --loopback).
    #[arg(long)]
    listen_ip: Option<IpAddr>,
    /// Listen on 127.0.0.1 and report loopback endpoints (single-machine use).
    #[arg(long)]
    loopback: bool,
    /// Load the identity from this file, or generate one and save it there
    /// (default: a fresh identity for each run).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Disable TCP.
    #[arg(long)]
    no_tcp: bool,
    /// Disable reliable UDP.
    #[arg(long)]
    no_rudp: bool,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Bootstrap config file (JSON: contacts, ports, cache switches; see crust-bootstrap).
    /// Default: the platform config directory's crust/bootstrap.json, if it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bootstrap cache file of peers reached directly (default: the config's, or the
    /// platform cache directory's crust/bootstrap-cache.json).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Do not bootstrap (no contacts from the config, no cache read or written).
    #[arg(long)]
    no_bootstrap: bool,
}

/// Prints events and command results in the chosen format.
#[derive(Clone, Copy, Debug)]
struct Printer {
    json: bool,
}

impl Printer {
    /// Prints one line: `value` in JSON mode, `text` otherwise.
    fn emit(&self, value: Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{}", event_first(value));
        } else {
            println!("{}", text());
        }
    }

    fn error(&self, message: impl std::fmt::Display) {
        let message = message.to_string();
        self.emit(json!({"event": "error", "message": message}), || {
            format!("error: {message}")
        });
    }

    fn event(&self, event: &Event) {
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
            } => self.emit(
                json!({
                    "event": "new_peer",
                    "peer": peer,
                    "endpoint": endpoint,
                    "direction": direction_str(*direction),
                    "protocol": protocol.as_str(),
                }),
                || {
                    format!(
                        "new-peer {} {endpoint} {} {protocol}",
                        peer.short(),
                        direction_str(*direction)
                    )
                },
            ),
            Event::LostPeer { peer, reason } => self.emit(
                json!({"event": "lost_peer", "peer": peer, "reason": reason.to_string(), "reason_kind": reason.kind()}),
                || format!("lost-peer {} {:?}", peer.short(), reason.to_string()),
            ),
            Event::Message { peer, payload } => {
                let text = String::from_utf8_lossy(payload);
                self.emit(
                    json!({"event": "message", "peer": peer, "text": text, "len": payload.len()}),
                    || format!("message {} {text:?}", peer.short()),
                )
            }
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
            other => self.emit(
                json!({"event": "other", "debug": format!("{other:?}")}),
                || format!("event {other:?}"),
            ),
        }
    }
}

/// Serializes a JSON object with its `"event"` key first, for readers skimming the stream.
fn event_first(mut value: Value) -> String {
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

fn direction_str(direction: Direction) -> &'static str {
    match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

fn join(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

const HELP: &[(&str, &str)] = &[
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
    ("send <peer> <text>", "send the rest of the line to a peer"),
    ("peers", "list connected peers"),
    ("disconnect <peer>", "close the connection to a peer"),
    ("ban <peer>", "disconnect a peer and refuse it from now on"),
    ("endpoints", "print our endpoints"),
    ("help", "this list"),
    ("quit", "shut down and exit (also: end of input)"),
];

/// Resolves a full `PeerId` or a unique prefix of a connected peer's id.
fn resolve_peer(service: &Service, text: &str) -> Result<PeerId, String> {
    if text.len() == 64 {
        return text.parse().map_err(|e| format!("bad peer id: {e}"));
    }
    let prefix = text.to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) || prefix.len() > 64 {
        return Err(format!("bad peer id {text:?}: expected hex digits"));
    }
    let matches: Vec<PeerId> = service
        .peers()
        .into_iter()
        .map(|info| info.peer_id)
        .filter(|id| id.to_string().starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no connected peer matches {text:?}")),
        _ => Err(format!(
            "{text:?} is ambiguous: {} connected peers match",
            matches.len()
        )),
    }
}

fn parse_endpoints<'a>(words: impl Iterator<Item = &'a str>) -> Result<Vec<Endpoint>, String> {
    let endpoints = words
        .map(|w| {
            w.parse::<Endpoint>()
                .map_err(|e| format!("bad endpoint {w:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err("connect needs at least one endpoint (e.g. tcp://1.2.3.4:5000)".into());
    }
    Ok(endpoints)
}

/// Connects to a peer by id (and any endpoints given) in the background and reports the
/// outcome.
fn spawn_connect_to(service: &Arc<Service>, printer: Printer, addr: PeerAddr) {
    let service = service.clone();
    tokio::spawn(async move {
        let endpoints = addr.endpoints.clone();
        match service.connect_to(addr.clone()).await {
            Ok(peer) => printer.emit(
                json!({"event": "connected", "peer": peer, "endpoints": endpoints}),
                || format!("connected {peer}"),
            ),
            Err(e) => printer.emit(
                json!({"event": "error", "message": format!("connect {}: {e}", addr.peer_id), "command": "connect"}),
                || format!("error: connect {}: {e}", addr.peer_id),
            ),
        }
    });
}

/// Dials `endpoints` in the background and reports the outcome.
fn spawn_connect(service: &Arc<Service>, printer: Printer, endpoints: Vec<Endpoint>) {
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

fn print_endpoints(service: &Service, printer: Printer) {
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
enum Flow {
    Continue,
    Quit,
}

async fn run_command(service: &Arc<Service>, printer: Printer, line: &str) -> Flow {
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
        "connect" => match rest.parse::<PeerAddr>() {
            Ok(addr) => spawn_connect_to(service, printer, addr),
            Err(_) => match parse_endpoints(words) {
                Ok(endpoints) => spawn_connect(service, printer, endpoints),
                Err(e) => printer.error(e),
            },
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
                        "rtt_ms": rtt,
                    })
                })
                .collect();
            printer.emit(json!({"event": "peers", "peers": list}), || {
                let mut out = format!("peers {}", peers.len());
                for info in &peers {
                    out.push_str(&format!(
                        "\n  {} {} {} {}",
                        info.peer_id,
                        info.remote_endpoint(),
                        info.protocol,
                        direction_str(info.direction)
                    ));
                }
                out
            });
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
        other => printer.error(format!("unknown command {other:?} (try help)")),
    }
    Flow::Continue
}

fn config_from(args: &Args) -> anyhow::Result<ServiceConfig> {
    let default_ip = if args.loopback {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let mut config = ServiceConfig::default()
        .with_listen_ip(args.listen_ip.unwrap_or(default_ip))
        .with_ports(args.tcp_port, args.rudp_port)
        .with_tcp(!args.no_tcp)
        .with_rudp(!args.no_rudp)
        .with_loopback_endpoints(args.loopback);
    if let Some(path) = &args.identity {
        let identity = Identity::load_or_generate(path)
            .with_context(|| format!("identity file {}", path.display()))?;
        config = config.with_identity(identity);
    }
    if !args.no_bootstrap {
        let config_path = args
            .config
            .clone()
            .or_else(crust::bootstrap::default_config_path);
        let mut bootstrap = match &config_path {
            Some(path) => crust::BootstrapConfig::load(path)
                .with_context(|| format!("bootstrap config {}", path.display()))?,
            None => crust::BootstrapConfig::default(),
        };
        if let Some(cache) = &args.cache {
            bootstrap = bootstrap.with_cache_path(cache);
        }
        // Explicit port flags win over the config file's.
        let (tcp_port, rudp_port) = (config.tcp_port, config.rudp_port);
        config = config.with_bootstrap(bootstrap);
        if args.tcp_port != 0 {
            config.tcp_port = tcp_port;
        }
        if args.rudp_port != 0 {
            config.rudp_port = rudp_port;
        }
    }
    Ok(config)
}

/// Reads stdin on a plain thread (a blocking read cannot be cancelled, and must not keep the
/// runtime from shutting down); `None` on the channel means end of input.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

async fn run(args: Args, printer: Printer) -> anyhow::Result<()> {
    if args.no_tcp && args.no_rudp {
        anyhow::bail!("--no-tcp and --no-rudp together leave no transport");
    }
    let config = config_from(&args)?;
    let (service, mut events) = Service::new(config).context("creating the service")?;
    let service = Arc::new(service);
    let listening = service
        .start_listening()
        .await
        .context("starting the listeners")?;
    let endpoints = service.our_endpoints();
    printer.emit(
        json!({
            "event": "started",
            "peer_id": service.peer_id(),
            "endpoints": endpoints,
            "listening": listening,
        }),
        || {
            let mut out = format!("started {}", service.peer_id());
            for ep in &endpoints {
                out.push_str(&format!("\nendpoint {ep}"));
            }
            if endpoints.is_empty() {
                out.push_str("\nendpoints (none reachable; try --loopback)");
            }
            out
        },
    );

    let printer_task = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            printer.event(&event);
        }
    });

    if !args.endpoints.is_empty() {
        spawn_connect(&service, printer, args.endpoints.clone());
    }

    let mut lines = stdin_lines();
    loop {
        match lines.recv().await {
            Some(Ok(line)) => {
                if let Flow::Quit = run_command(&service, printer, &line).await {
                    break;
                }
            }
            Some(Err(e)) => {
                printer.error(format!("reading stdin: {e}"));
                break;
            }
            None => break,
        }
    }

    service.shutdown().await;
    // Background connects end with `Shutdown` once the service is shut down; give the
    // printer a moment to write what is still queued, then stop it.
    drop(service);
    let _ = tokio::time::timeout(Duration::from_millis(500), printer_task).await;
    printer.emit(json!({"event": "stopped"}), || "stopped".to_string());
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let printer = Printer { json: args.json };
    match run(args, printer).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if printer.json {
                printer.emit(
                    json!({"event": "error", "message": format!("{e:#}"), "fatal": true}),
                    String::new,
                );
            }
            eprintln!("crust-peer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust::Protocol;

    #[test]
    fn endpoints_parse() {
        let eps = parse_endpoints("tcp://127.0.0.1:5 rudp://127.0.0.1:6".split_whitespace());
        assert_eq!(eps.map(|v| v.len()), Ok(2));
        assert!(parse_endpoints("".split_whitespace()).is_err());
        assert!(parse_endpoints("nonsense".split_whitespace()).is_err());
    }

    #[test]
    fn args_parse() {
        let args =
            Args::try_parse_from(["crust-peer", "--json", "--loopback", "tcp://127.0.0.1:5"]);
        let args = args.expect("valid arguments");
        assert!(args.json && args.loopback);
        assert_eq!(args.endpoints.len(), 1);
        assert!(Args::try_parse_from(["crust-peer", "not-an-endpoint"]).is_err());
    }

    #[test]
    fn event_key_first() {
        assert_eq!(
            event_first(json!({"z": 1, "event": "x"})),
            r#"{"event":"x","z":1}"#
        );
        assert_eq!(
            event_first(json!({"event": "stopped"})),
            r#"{"event":"stopped"}"#
        );
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::Tcp.as_str(), "tcp");
        assert_eq!(direction_str(Direction::Inbound), "inbound");
    }
}
