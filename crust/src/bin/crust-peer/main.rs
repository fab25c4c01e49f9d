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
//! `<endpoint>` is `tcp://IP:PORT` or `rudp://IP:PORT` with a port other than 0 (the
//! library's `udp://` and `quic://` aliases are refused here, as likely mistakes).
//!
//! Input is checked line by line: a line that is not UTF-8, or longer than 1 MiB (never held
//! in memory whole), is skipped with an `error` event, and reading goes on. Error messages
//! quote at most 64 characters of what was typed.
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
//! Other JSON events: `listener_started`, `connected`, `lost_peer`, `messages_unconfirmed`, `connect_failed`,
//! `duplicate_connection_closed`, `flood_detected`, `peer_banned`, `address_observed`,
//! `bootstrap_connected`, `sent`, `disconnected`, `peers`, `endpoints`, `known_peers`,
//! `pong`, `help`, `warning`, `stopped`, `peers_learned`. Event names and fields are a stable interface: fields are
//! added, never renamed. The full list with every field is in `docs/crust-peer-json.md`. Logs (`RUST_LOG`, default `warn`) go to stderr
//! only, so stdout stays a clean event stream; they are coloured only when stderr is a
//! terminal.
//!
//! Exit codes: 0 after `quit`, the end of stdin, or a closed stdout (nobody reads the events
//! any more: the node shuts down as on `quit`); 1 when the node cannot start (bad identity or
//! config file, ports in use…; the reason on stderr, and as a `fatal` `error` event with
//! `--json`); 2 for bad arguments (clap's usage errors, e.g. `--no-tcp --no-rudp`).
//!
//! Identity (`--identity FILE`): loaded if the file exists, else generated and saved there
//! owner-only. A symlink whose target does not exist is refused (exit 1) rather than
//! replaced by a new key, which would change the `PeerId` silently; a key file that others
//! may access is used, with a `warning` event and log line.
//!
//! LAN beacon: off by default; `--beacon` announces us by UDP broadcast on the shared beacon
//! port (`--beacon-port`, default 5483; 0 picks a free one, shown as `beacon_port` in the
//! `started` line) and connects to the peers it hears. With `--loopback` the beacons go to
//! 127.255.255.255, so several nodes on one machine find each other.
//!
//! Seeing the traffic (debugging only): `--tracer` runs TCP in tracer mode (frames in clear
//! text after an authenticated handshake; only tracer peers connect over TCP; a release build
//! also needs `--allow-tracer-in-release`), `--key-log FILE` appends the TLS secrets of every
//! session for Wireshark. Both print a `warning` event. See "Seeing Crust on the wire" in the
//! README and `tools/wireshark/crust.lua`.
//!
//! Bootstrap: unless `--no-bootstrap` is given, the node reads a bootstrap config (`--config`,
//! which must exist, default the platform's `crust/bootstrap.json` if it exists: contacts,
//! ports, cache switches), tries its contacts and the peers cached from earlier runs until one answers,
//! and remembers every peer it dials successfully in its cache (`--cache`, default the
//! platform's `crust/bootstrap-cache.json`).
//!
//! ```text
//! # two peers on one machine
//! crust-peer --loopback                       # prints: endpoint tcp://127.0.0.1:40000 …
//! crust-peer --loopback tcp://127.0.0.1:40000 # connects to the first one
//! crust-peer --loopback --beacon              # two of these find each other
//! ```

mod allocator;
mod commands;
mod printer;
mod setup;

use std::io::{BufRead, IsTerminal as _, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use crust::{Endpoint, Service};
use serde_json::json;
use tokio::sync::mpsc;

use crate::commands::{Flow, parse_dial_target, run_command, spawn_connect};
use crate::printer::{Printer, stdout_closed};
use crate::setup::config_from;

/// The longest line read from stdin, in bytes (1 MiB); a longer line is skipped (reported as
/// an `error`) without being held in memory.
const MAX_LINE: usize = 1 << 20;

/// Lines read ahead of the command loop (each at most [`MAX_LINE`] bytes).
const LINES_AHEAD: usize = 4;

/// A Crust peer that prints every event on stdout and takes commands on stdin.
#[derive(Debug, Parser)]
#[command(name = "crust-peer", version, about, long_about = None)]
struct Args {
    /// Endpoints of one peer to connect to at start (e.g. tcp://1.2.3.4:5 rudp://1.2.3.4:6).
    #[arg(value_parser = parse_dial_target)]
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
    /// Load the identity from this file, or generate one and save it there (owner-only)
    /// if it does not exist (default: a fresh identity for each run). A symlink whose
    /// target does not exist is refused, not replaced by a new key; a file others may
    /// read is used with a warning.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Disable TCP (not together with --no-rudp).
    #[arg(long, conflicts_with = "no_rudp")]
    no_tcp: bool,
    /// Disable reliable UDP.
    #[arg(long)]
    no_rudp: bool,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Bootstrap config file (JSON: contacts, ports, cache switches; see crust-bootstrap);
    /// it must exist. Default: the platform config directory's crust/bootstrap.json, if it
    /// exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bootstrap cache file of peers reached directly (default: the config's, or the
    /// platform cache directory's crust/bootstrap-cache.json).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Do not bootstrap (no contacts from the config, no cache read or written; not
    /// together with --config or --cache).
    #[arg(long, conflicts_with_all = ["config", "cache"])]
    no_bootstrap: bool,
    /// Find peers on the local network by UDP broadcast beacons and connect to them (off by
    /// default). With --loopback the beacons go to 127.255.255.255.
    #[arg(long, overrides_with = "no_beacon")]
    beacon: bool,
    /// No LAN beacon (the default).
    #[arg(long, overrides_with = "beacon")]
    no_beacon: bool,
    /// The UDP port the beacons share (0 = a free port, printed in the `started` line, for
    /// other nodes to use).
    #[arg(long, default_value_t = crust::beacon::DEFAULT_PORT)]
    beacon_port: u16,
    /// Tracer mode for TCP (debugging): frames travel UNENCRYPTED after an authenticated
    /// handshake, so Wireshark with tools/wireshark/crust.lua shows them. Only tracer peers
    /// can connect over TCP. A release build also needs --allow-tracer-in-release.
    #[arg(long)]
    tracer: bool,
    /// Let a release build run --tracer.
    #[arg(long, requires = "tracer")]
    allow_tracer_in_release: bool,
    /// Append the TLS secrets of every session (TCP and QUIC) to FILE, for Wireshark's
    /// tls.keylog_file. Anyone holding FILE and a capture can read the traffic: debugging
    /// only.
    #[arg(long, value_name = "FILE")]
    key_log: Option<PathBuf>,
    /// Never relay for others, never use or accept relayed connections.
    #[arg(long)]
    no_relay: bool,
    /// Do not relay circuits for other peers (still use relays ourselves).
    #[arg(long)]
    no_relay_service: bool,
    /// Most circuits relayed for other peers at once (at most a eighth of them, at least
    /// one, per peer).
    #[arg(long, default_value_t = 64)]
    relay_max_circuits: usize,
    /// Do not hole-punch when connecting by peer id (a relay is still tried).
    #[arg(long)]
    no_hole_punching: bool,
    /// Do not exchange peer records with connected peers (gossip): we neither tell peers
    /// about each other nor learn peers from them.
    #[arg(long)]
    no_gossip: bool,
    /// Seconds between gossip pushes to each connected peer.
    #[arg(long, default_value_t = 30)]
    gossip_interval: u64,
}

/// One line of stdin, as [`read_line_bounded`] found it.
#[derive(Debug, PartialEq)]
enum Input {
    /// A line (without its `\n` or `\r\n`).
    Line(String),
    /// A line longer than the bound, skipped.
    TooLong,
    /// A line that is not UTF-8, skipped.
    NotUtf8,
}

/// Reads one line of at most `max` bytes from `reader` into `buf` (`None` at end of input).
/// A longer line is read to its end but not kept: `buf` never holds more than `max` bytes.
fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<Input>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            if !read_any {
                return Ok(None);
            }
            break;
        }
        read_any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                *buf = Vec::new();
            } else {
                // Grow by doubling, but never past `max`.
                let needed = buf.len() + part.len();
                if buf.capacity() < needed {
                    buf.reserve_exact(needed.max(2 * buf.capacity()).min(max) - buf.len());
                }
                buf.extend_from_slice(part);
            }
        }
        let used = newline.map_or(chunk.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            break;
        }
    }
    if too_long {
        return Ok(Some(Input::TooLong));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(match std::str::from_utf8(buf) {
        Ok(line) => Input::Line(line.to_owned()),
        Err(_) => Input::NotUtf8,
    }))
}

/// Reads stdin on a plain thread (a blocking read cannot be cancelled, and must not keep the
/// runtime from shutting down); `None` on the channel means end of input.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Input>> {
    let (tx, rx) = mpsc::channel(LINES_AHEAD);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            let line = match read_line_bounded(&mut stdin, &mut buf, MAX_LINE) {
                Ok(Some(line)) => Ok(line),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

async fn run(args: Args, printer: Printer) -> anyhow::Result<()> {
    let config = config_from(&args, printer)?;
    let (service, mut events) = Service::new(config).context("creating the service")?;
    let service = Arc::new(service);
    let listening = service
        .start_listening()
        .await
        .context("starting the listeners")?;
    let endpoints = service.our_endpoints();
    let beacon_port = service.beacon_acceptor_port();
    printer.emit(
        json!({
            "event": "started",
            "peer_id": service.peer_id(),
            "endpoints": endpoints,
            "listening": listening,
            "beacon_port": beacon_port,
            "tracer": args.tracer,
        }),
        || {
            let mut out = format!("started {}", service.peer_id());
            for ep in &endpoints {
                out.push_str(&format!("\nendpoint {ep}"));
            }
            if endpoints.is_empty() {
                out.push_str("\nendpoints (none reachable; try --loopback)");
            }
            if let Some(port) = beacon_port {
                out.push_str(&format!("\nbeacon-port {port}"));
            }
            if args.tracer {
                out.push_str("\ntracer-mode on");
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
    let mut line_number = 0u64;
    loop {
        let input = tokio::select! {
            input = lines.recv() => input,
            // Nobody reads our events any more: shut down as on `quit`.
            () = stdout_closed() => break,
        };
        line_number += 1;
        match input {
            Some(Ok(Input::Line(line))) => {
                if let Flow::Quit = run_command(&service, printer, &line).await {
                    break;
                }
            }
            Some(Ok(Input::NotUtf8)) => {
                printer.error(format!("stdin line {line_number} is not UTF-8; ignored"));
            }
            Some(Ok(Input::TooLong)) => printer.error(format!(
                "stdin line {line_number} is longer than {MAX_LINE} bytes; ignored"
            )),
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

fn main() -> std::process::ExitCode {
    allocator::return_large_buffers_to_the_os();
    run_main()
}

#[tokio::main]
async fn run_main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
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
            // Not eprintln!: a closed stderr must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "crust-peer: {e:#}");
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
    fn dial_targets_are_tcp_or_rudp_with_a_port() {
        use crate::commands::parse_dial_target;
        assert!(parse_dial_target("tcp://127.0.0.1:5").is_ok());
        assert!(parse_dial_target("RUDP://[::1]:5").is_ok());
        for (text, says) in [
            ("udp://127.0.0.1:5", "unknown scheme"),
            ("quic://127.0.0.1:5", "unknown scheme"),
            ("tcp://127.0.0.1:0", "port 0"),
            ("127.0.0.1:5", "expected tcp://"),
            ("tcp://nonsense", "bad socket address"),
        ] {
            let e = parse_dial_target(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
        let long = format!("tcp://{}", "1".repeat(10_000));
        let e = parse_dial_target(&long).expect_err("long");
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn shorten_cuts_on_a_char_boundary() {
        use crate::commands::shorten;
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "abc…");
        assert_eq!(shorten("ééé", 2), "éé…");
        assert_eq!(shorten("", 0), "");
    }

    #[test]
    fn lines_are_bounded_and_checked() {
        let mut input: &[u8] = b"one\r\ntoo long\n\xff\nlast";
        let mut buf = Vec::new();
        let mut next = || read_line_bounded(&mut input, &mut buf, 5).expect("read");
        assert_eq!(next(), Some(Input::Line("one".into())));
        assert_eq!(next(), Some(Input::TooLong));
        assert_eq!(next(), Some(Input::NotUtf8));
        assert_eq!(next(), Some(Input::Line("last".into())));
        assert_eq!(next(), None);
        // Lines arriving in small chunks: the buffer never grows past the bound.
        let input = [vec![b'x'; 10], b"\n".to_vec(), vec![b'y'; 100]].concat();
        let mut reader = std::io::BufReader::with_capacity(3, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf, 10).expect("read"),
            Some(Input::Line("x".repeat(10)))
        );
        assert!(buf.capacity() <= 10, "{}", buf.capacity());
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf, 10).expect("read"),
            Some(Input::TooLong)
        );
        assert!(buf.capacity() <= 10, "{}", buf.capacity());
    }

    #[test]
    fn flags_that_contradict_each_other_are_refused() {
        for args in [
            &["crust-peer", "--no-tcp", "--no-rudp"][..],
            &["crust-peer", "--no-bootstrap", "--config", "c.json"],
            &["crust-peer", "--no-bootstrap", "--cache", "c.json"],
        ] {
            let e = Args::try_parse_from(args).expect_err("conflict");
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}"
            );
        }
        let args = Args::try_parse_from(["crust-peer", "--beacon", "--no-beacon"]).expect("ok");
        assert!(!args.beacon && args.no_beacon, "the last one wins");
        let args = Args::try_parse_from(["crust-peer"]).expect("ok");
        assert!(!args.beacon, "off by default");
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
