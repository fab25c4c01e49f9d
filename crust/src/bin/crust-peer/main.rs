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
//! | `connect <peer-id>[@<ep>,<ep>…]` | connect by id: endpoints from the address book (bootstrap cache, beacons, earlier dials), plus any given |
//! | `known`                          | list the address book                                    |
//! | `ping <peer>`                    | measure the round-trip time to a connected peer          |
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
//! `duplicate_connection_closed`, `flood_detected`, `peer_banned`, `address_observed`,
//! `bootstrap_connected`, `sent`, `disconnected`, `peers`, `endpoints`, `known_peers`,
//! `pong`, `help`, `stopped`. Event names and fields are a stable interface: fields are
//! added, never renamed. The full list with every field is in `docs/crust-peer-json.md`. Logs (`RUST_LOG`, default `warn`) go to stderr
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

mod commands;
mod printer;

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use crust::{Endpoint, Identity, Service, ServiceConfig};
use serde_json::json;
use tokio::sync::mpsc;

use crate::commands::{Flow, run_command, spawn_connect};
use crate::printer::Printer;

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
    /// A second, IPv6 address to listen on (default `::` unless --listen-ip or --loopback
    /// is given; e.g. `::1` with --loopback).
    #[arg(long)]
    listen_ipv6: Option<IpAddr>,
    /// Do not listen on IPv6.
    #[arg(long)]
    no_ipv6: bool,
    /// Do not ask the router to map our ports (PCP, NAT-PMP, UPnP IGD); on by default
    /// except with --loopback.
    #[arg(long)]
    no_port_mapping: bool,
    /// Believe an external address once observers in this many distinct networks agree.
    #[arg(long, default_value_t = 2)]
    min_observer_networks: usize,
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

fn config_from(args: &Args) -> anyhow::Result<ServiceConfig> {
    let default_ip = if args.loopback {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    // Dual-stack by default; an explicit address or --loopback means that address only,
    // unless an IPv6 one is named too.
    let default_ipv6 = (args.listen_ip.is_none() && !args.loopback)
        .then_some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let listen_ipv6 = if args.no_ipv6 {
        None
    } else {
        args.listen_ipv6.or(default_ipv6)
    };
    let mut config = ServiceConfig::default()
        .with_listen_ip(args.listen_ip.unwrap_or(default_ip))
        .with_listen_ipv6(listen_ipv6)
        .with_ports(args.tcp_port, args.rudp_port)
        .with_tcp(!args.no_tcp)
        .with_rudp(!args.no_rudp)
        .with_loopback_endpoints(args.loopback)
        .with_min_observer_networks(args.min_observer_networks);
    if !args.loopback && !args.no_port_mapping {
        config = config.with_port_mapping(crust::PortMapConfig::default());
    }
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
    use crate::commands::parse_endpoints;
    use crate::printer::{direction_str, event_first};
    use crust::{Direction, Protocol};

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
