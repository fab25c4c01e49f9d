//! The Crust tour: five nodes in one process, on loopback.
//!
//! ```text
//! cargo run --release -p crust --example demo
//! ```
//!
//! - alice, bob and carol speak TCP and reliable UDP; eve has TCP disabled.
//! - The four honest nodes connect in a full mesh (each dials the ones after it, using their
//!   `our_endpoints()`): TCP wins between the first three, eve is reached over reliable UDP.
//! - Every honest node greets every other one; each greeting must arrive exactly once
//!   (a "bye" sent after it on the same ordered connection proves nothing else is in flight).
//! - mallory dials carol, whose rate limit is low (200 messages/s, burst 100, ban), and
//!   floods 5000 messages: carol reports `FloodDetected` and `PeerBanned`, and refuses
//!   mallory afterwards in both directions.
//! - dave and frank are given no endpoint at all: their LAN beacons (UDP broadcast on a
//!   shared port) find each other, they connect and dave greets frank.
//! - grace and heidi know only alice. grace connects to heidi by `PeerId` alone: alice
//!   introduces them and they open a direct connection by hole punching (what crosses
//!   home routers; on loopback there is no NAT to cross, but every step runs), and grace
//!   greets heidi.
//! - ivan and judy know only alice and do not punch (as behind two symmetric NATs): ivan
//!   connects to judy by `PeerId` through alice as a relay, TLS end to end inside the
//!   circuit, and greets judy.
//!
//! Everything is driven by events and every wait is bounded, so the demo never hangs. It
//! prints a summary table and exits with 0 only if every check passed. `RUST_LOG=debug`
//! shows the library's logs on stderr.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crust::{Error, Event, FloodAction, PeerId, Protocol, RateLimit, Service, ServiceConfig};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(30);
const FLOOD: usize = 5000;

const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;
const EVE: usize = 3;
const MALLORY: usize = 4;
const NAMES: [&str; 5] = ["alice", "bob", "carol", "eve", "mallory"];
const HONEST: [usize; 4] = [ALICE, BOB, CAROL, EVE];

/// What the demo saw a node report.
#[derive(Default)]
struct Seen {
    /// `NewPeer` events: peer -> protocols (one entry per event).
    new_peers: HashMap<PeerId, Vec<Protocol>>,
    /// Greetings received, by sender.
    greetings: HashMap<PeerId, usize>,
    /// "bye" markers received, by sender.
    byes: HashMap<PeerId, usize>,
    /// All messages received.
    messages: usize,
    /// `FloodDetected` events: (peer, banned).
    floods: Vec<(PeerId, bool)>,
    banned: Vec<PeerId>,
    /// `LostPeer` events, by peer.
    lost: HashMap<PeerId, usize>,
}

struct Demo {
    nodes: Vec<Arc<Service>>,
    ids: Vec<PeerId>,
    seen: Vec<Seen>,
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
    checks: Vec<(String, bool)>,
}

impl Demo {
    fn name_of(&self, peer: PeerId) -> String {
        match self.ids.iter().position(|id| *id == peer) {
            Some(i) => NAMES[i].to_string(),
            None => peer.short(),
        }
    }

    fn record(&mut self, node: usize, event: Event) {
        let seen = &mut self.seen[node];
        match event {
            Event::NewPeer { peer, protocol, .. } => {
                seen.new_peers.entry(peer).or_default().push(protocol);
            }
            Event::Message { peer, payload } => {
                seen.messages += 1;
                if payload.starts_with(b"hello ") {
                    *seen.greetings.entry(peer).or_default() += 1;
                } else if payload.as_ref() == b"bye" {
                    *seen.byes.entry(peer).or_default() += 1;
                }
            }
            Event::FloodDetected {
                peer,
                limit,
                banned,
            } => {
                println!(
                    "  {:<7} flood detected from {} (limit: {limit}, banned: {banned})",
                    NAMES[node],
                    self.name_of(peer)
                );
                self.seen[node].floods.push((peer, banned));
            }
            Event::PeerBanned { peer } => {
                println!("  {:<7} banned {}", NAMES[node], self.name_of(peer));
                self.seen[node].banned.push(peer);
            }
            Event::LostPeer { peer, .. } => {
                *seen.lost.entry(peer).or_default() += 1;
            }
            _ => {}
        }
    }

    /// Processes events until `done` holds; false if it did not within [`TIMEOUT`].
    async fn wait_until(&mut self, what: &str, done: impl Fn(&Demo) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((node, event))) => self.record(node, event),
                Ok(None) => break,
                Err(_) => {
                    println!("  timed out after {TIMEOUT:?} waiting for: {what}");
                    return false;
                }
            }
        }
        done(self)
    }

    /// Takes every event already queued, without waiting.
    fn drain(&mut self) {
        while let Ok((node, event)) = self.rx.try_recv() {
            self.record(node, event);
        }
    }

    fn check(&mut self, what: impl Into<String>, ok: bool) -> bool {
        let what = what.into();
        println!("  [{}] {what}", if ok { " ok " } else { "FAIL" });
        self.checks.push((what, ok));
        ok
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let started = Instant::now();
    match run().await {
        Ok(true) => {
            println!("\nall checks passed in {:.2?}", started.elapsed());
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nSOME CHECKS FAILED ({:.2?})", started.elapsed());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Error> {
    println!("== starting 5 nodes on loopback");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let config = match i {
            EVE => ServiceConfig::loopback().with_tcp(false),
            CAROL => ServiceConfig::loopback()
                .with_rate_limit(RateLimit::messages(200.0, 100.0), FloodAction::Ban),
            _ => ServiceConfig::loopback(),
        };
        let (service, mut events) = Service::new(config)?;
        service.start_listening().await?;
        let endpoints: Vec<String> = service
            .our_endpoints()
            .iter()
            .map(|e| e.to_string())
            .collect();
        println!(
            "  {name:<7} {}  {}",
            service.peer_id().short(),
            endpoints.join(" ")
        );
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if tx.send((i, event)).is_err() {
                    break;
                }
            }
        });
        nodes.push(Arc::new(service));
    }
    drop(tx);
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.peer_id()).collect();
    let mut demo = Demo {
        nodes,
        ids,
        seen: (0..NAMES.len()).map(|_| Seen::default()).collect(),
        rx,
        checks: Vec::new(),
    };

    mesh(&mut demo).await;
    greetings(&mut demo).await;
    flood(&mut demo).await;
    if let Err(e) = lan_discovery(&mut demo).await {
        demo.check(format!("LAN discovery: {e}"), false);
    }
    if let Err(e) = introduced(&mut demo, Route::Punch).await {
        demo.check(format!("hole punch: {e}"), false);
    }
    if let Err(e) = introduced(&mut demo, Route::Relay).await {
        demo.check(format!("relay: {e}"), false);
    }

    demo.drain();
    summary(&demo);
    let all_ok = demo.checks.iter().all(|(_, ok)| *ok);

    let shutdowns = demo.nodes.iter().map(|n| n.shutdown());
    if tokio::time::timeout(TIMEOUT, futures::future::join_all(shutdowns))
        .await
        .is_err()
    {
        println!("  shutdown took longer than {TIMEOUT:?}");
        return Ok(false);
    }
    Ok(all_ok)
}

/// The honest nodes connect in a full mesh; each dials the ones after it.
async fn mesh(demo: &mut Demo) {
    println!("\n== full mesh among alice, bob, carol and eve");
    let mut dials = Vec::new();
    for (n, &a) in HONEST.iter().enumerate() {
        for &b in &HONEST[n + 1..] {
            let dialer = demo.nodes[a].clone();
            let endpoints = demo.nodes[b].our_endpoints();
            let expected = demo.ids[b];
            dials.push(async move {
                let result =
                    tokio::time::timeout(TIMEOUT, dialer.connect(&endpoints, Some(expected))).await;
                (a, b, result)
            });
        }
    }
    for (a, b, result) in futures::future::join_all(dials).await {
        let ok = match result {
            Ok(Ok(peer)) => peer == demo.ids[b],
            Ok(Err(e)) => {
                println!("  {} -> {}: {e}", NAMES[a], NAMES[b]);
                false
            }
            Err(_) => false,
        };
        demo.check(format!("{} connected to {}", NAMES[a], NAMES[b]), ok);
    }
    let ids = demo.ids.clone();
    let everyone_sees_everyone = move |d: &Demo| {
        HONEST.iter().all(|&a| {
            HONEST
                .iter()
                .filter(|&&b| b != a)
                .all(|&b| d.seen[a].new_peers.contains_key(&ids[b]))
        })
    };
    let ok = demo
        .wait_until(
            "NewPeer on both sides of every pair",
            everyone_sees_everyone,
        )
        .await;
    demo.check("every honest node reported NewPeer for the 3 others", ok);

    let mut protocols_ok = true;
    for &a in &HONEST {
        for &b in HONEST.iter().filter(|&&b| b != a) {
            let want = if a == EVE || b == EVE {
                Protocol::Rudp
            } else {
                Protocol::Tcp
            };
            let got = demo.seen[a]
                .new_peers
                .get(&demo.ids[b])
                .cloned()
                .unwrap_or_default();
            if got != [want] {
                println!(
                    "  {} sees {} via {got:?}, expected [{want:?}]",
                    NAMES[a], NAMES[b]
                );
                protocols_ok = false;
            }
        }
    }
    demo.check(
        "alice/bob/carol connected over TCP, eve over rUDP only (exactly one NewPeer per pair)",
        protocols_ok,
    );
}

/// Every honest node greets every other, then sends "bye" on the same ordered connection.
async fn greetings(demo: &mut Demo) {
    println!("\n== greetings");
    let mut send_errors = 0;
    for &a in &HONEST {
        for &b in HONEST.iter().filter(|&&b| b != a) {
            let text = format!("hello {} from {}", NAMES[b], NAMES[a]);
            for payload in [text, "bye".to_string()] {
                if let Err(e) = demo.nodes[a].send(demo.ids[b], payload.into()).await {
                    println!("  {} -> {}: {e}", NAMES[a], NAMES[b]);
                    send_errors += 1;
                }
            }
        }
    }
    demo.check("12 greetings sent", send_errors == 0);
    let ids = demo.ids.clone();
    let all_byes = move |d: &Demo| {
        HONEST.iter().all(|&a| {
            HONEST
                .iter()
                .filter(|&&b| b != a)
                .all(|&b| d.seen[a].byes.get(&ids[b]).copied().unwrap_or(0) >= 1)
        })
    };
    let ok = demo.wait_until("every bye", all_byes).await;
    let mut exactly_once = ok;
    for &a in &HONEST {
        for &b in HONEST.iter().filter(|&&b| b != a) {
            let g = demo.seen[a]
                .greetings
                .get(&demo.ids[b])
                .copied()
                .unwrap_or(0);
            let y = demo.seen[a].byes.get(&demo.ids[b]).copied().unwrap_or(0);
            if (g, y) != (1, 1) {
                println!(
                    "  {} got {g} greetings and {y} byes from {}",
                    NAMES[a], NAMES[b]
                );
                exactly_once = false;
            }
        }
    }
    demo.check("every greeting arrived exactly once", exactly_once);
}

/// mallory floods carol, gets banned, and is refused afterwards.
async fn flood(demo: &mut Demo) {
    println!("\n== mallory floods carol ({FLOOD} messages; carol allows 200/s, burst 100)");
    let (mallory, carol) = (demo.nodes[MALLORY].clone(), demo.nodes[CAROL].clone());
    let (mallory_id, carol_id) = (demo.ids[MALLORY], demo.ids[CAROL]);
    let connected = tokio::time::timeout(
        TIMEOUT,
        mallory.connect(&carol.our_endpoints(), Some(carol_id)),
    )
    .await;
    if !demo.check("mallory connected to carol", matches!(connected, Ok(Ok(_)))) {
        return;
    }
    let flooder = mallory.clone();
    let pump = tokio::spawn(async move {
        let mut sent = 0;
        for i in 0..FLOOD {
            if flooder
                .send(carol_id, format!("spam {i}").into())
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    let banned = demo
        .wait_until(
            "carol: FloodDetected + PeerBanned for mallory; mallory loses carol",
            |d| {
                d.seen[CAROL].floods.contains(&(mallory_id, true))
                    && d.seen[CAROL].banned.contains(&mallory_id)
                    && d.seen[MALLORY].lost.contains_key(&carol_id)
            },
        )
        .await;
    demo.check(
        "carol reported FloodDetected and PeerBanned; mallory was disconnected",
        banned,
    );
    match tokio::time::timeout(TIMEOUT, pump).await {
        Ok(Ok(sent)) => {
            println!("  mallory queued {sent} of {FLOOD} messages before the connection died")
        }
        _ => println!("  mallory's sender did not finish"),
    }
    demo.drain();
    let from_mallory = demo.seen[CAROL].messages.saturating_sub(6);
    println!("  carol delivered {from_mallory} of mallory's messages before banning it");
    demo.check(
        "carol banned mallory before taking all its messages",
        from_mallory < FLOOD,
    );

    // carol refuses to dial mallory ...
    let outbound = tokio::time::timeout(
        TIMEOUT,
        carol.connect(&mallory.our_endpoints(), Some(mallory_id)),
    )
    .await;
    demo.check(
        "carol refuses to connect to mallory (Error::Banned)",
        matches!(outbound, Ok(Err(Error::Banned(p))) if p == mallory_id),
    );
    // ... and refuses mallory's new connection: the TLS handshake completes, then carol
    // aborts it without ever reporting mallory as a peer.
    let lost_before = demo.seen[MALLORY].lost.get(&carol_id).copied().unwrap_or(0);
    let again = tokio::time::timeout(
        TIMEOUT,
        mallory.connect(&carol.our_endpoints(), Some(carol_id)),
    )
    .await;
    let refused = match again {
        Ok(Err(e)) => {
            println!("  mallory's reconnect failed: {e}");
            true
        }
        Ok(Ok(_)) => {
            println!("  mallory's reconnect: handshake completed, then carol dropped it");
            demo.wait_until("mallory loses carol again", |d| {
                d.seen[MALLORY].lost.get(&carol_id).copied().unwrap_or(0) > lost_before
            })
            .await
        }
        Err(_) => false,
    };
    demo.drain();
    let carol_new_peer_mallory = demo.seen[CAROL]
        .new_peers
        .get(&mallory_id)
        .map_or(0, Vec::len);
    demo.check(
        "carol refuses mallory's reconnect (never a second NewPeer, not connected)",
        refused
            && carol_new_peer_mallory == 1
            && !carol.is_connected(mallory_id)
            && carol.is_banned(mallory_id),
    );
}

/// Two more nodes, dave and frank, are given no endpoint at all: their LAN beacons find
/// each other (on loopback: the broadcast address 127.255.255.255 on a shared port) and
/// they connect and talk.
async fn lan_discovery(demo: &mut Demo) -> Result<(), Error> {
    println!("\n== LAN discovery: dave and frank know nobody; their beacons find each other");
    let beacon = |port: u16| {
        crust::BeaconConfig::default()
            .with_port(port)
            .with_broadcast_addrs(vec![std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                127, 255, 255, 255,
            ))])
            .with_announce_interval(Duration::from_millis(200))
            .with_min_announce_gap(Duration::from_millis(20))
    };
    let (dave, mut dave_events) = Service::new(ServiceConfig::loopback().with_beacon(beacon(0)))?;
    dave.start_listening().await?;
    let port = dave.beacon_acceptor_port().unwrap_or(0);
    let (frank, mut frank_events) =
        Service::new(ServiceConfig::loopback().with_beacon(beacon(port)))?;
    frank.start_listening().await?;
    println!("  beacons share UDP port {port}");
    let frank_id = frank.peer_id();
    let found = tokio::time::timeout(TIMEOUT, async {
        while let Some(event) = dave_events.recv().await {
            if let Event::NewPeer { peer, endpoint, .. } = event {
                if peer == frank_id {
                    return Some(endpoint);
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    if let Some(endpoint) = found {
        println!("  dave connected to frank at {endpoint}, found by beacon");
    }
    demo.check("dave finds frank by beacon and connects", found.is_some());
    let sent = dave.send(frank_id, "hello, neighbour".into()).await.is_ok();
    let dave_id = dave.peer_id();
    let heard = tokio::time::timeout(TIMEOUT, async {
        while let Some(event) = frank_events.recv().await {
            if let Event::Message { peer, payload } = event {
                return peer == dave_id && payload == "hello, neighbour";
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    demo.check("frank hears dave's greeting", sent && heard);
    dave.shutdown().await;
    frank.shutdown().await;
    Ok(())
}

/// How two nodes that know only alice get connected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// alice introduces them and they punch a direct connection.
    Punch,
    /// They do not punch (as if no hole could be punched): alice relays.
    Relay,
}

/// Two nodes know only alice; the first connects to the second by `PeerId` alone, alice
/// introducing them (hole punch) or relaying between them.
async fn introduced(demo: &mut Demo, route: Route) -> Result<(), Error> {
    // No gossip for these two: alice would tell each where the other listens, and they
    // would simply dial (what gossip is for, but not what this step shows).
    let quiet = ServiceConfig::loopback().with_gossip(crust::GossipConfig::disabled());
    let ((a_name, b_name), how, config) = match route {
        Route::Punch => (("grace", "heidi"), "a hole punch", quiet),
        Route::Relay => (
            ("ivan", "judy"),
            "alice as a relay",
            quiet.with_hole_punching(false),
        ),
    };
    println!("\n== {a_name} and {b_name} know only alice: {how}");
    let (a, _a_events) = Service::new(config.clone())?;
    let (b, mut b_events) = Service::new(config)?;
    let alice = demo.nodes[ALICE].clone();
    for node in [&a, &b] {
        node.start_listening().await?;
        node.connect(&alice.our_endpoints(), Some(alice.peer_id()))
            .await?;
    }
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    // alice can introduce them (or relay) once she has registered both.
    demo.wait_until("alice to register both", |d| {
        let seen = &d.seen[ALICE].new_peers;
        seen.contains_key(&a_id) && seen.contains_key(&b_id)
    })
    .await;
    let started = Instant::now();
    let connected = a.connect_peer(b_id).await;
    let path = a.peer_info(b_id).map(|info| info.connection.path);
    if let (Ok(_), Some(path)) = (&connected, path) {
        println!(
            "  {a_name} reached {b_name} by {path} in {} ms (no address given)",
            started.elapsed().as_millis()
        );
    }
    let expected = match (route, path) {
        (
            Route::Punch,
            Some(crust::ConnectionPath::PunchedTcp | crust::ConnectionPath::PunchedUdp),
        ) => true,
        (Route::Relay, Some(crust::ConnectionPath::Relayed { via })) => via == alice.peer_id(),
        _ => false,
    };
    demo.check(
        format!("{a_name} reaches {b_name} by PeerId through {how}"),
        connected.is_ok() && expected,
    );
    let greeting = format!("hello from {a_name}");
    let sent = a.send(b_id, greeting.clone().into()).await.is_ok();
    let heard = tokio::time::timeout(TIMEOUT, async {
        while let Some(event) = b_events.recv().await {
            if let Event::Message { peer, payload } = event {
                return peer == a_id && payload == greeting.as_bytes();
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    demo.check(format!("{b_name} hears {a_name}'s greeting"), sent && heard);
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

fn summary(demo: &Demo) {
    println!("\n== summary");
    println!(
        "{:<8} {:<9} {:<50} {:>4} {:>5} {:>10} {:>8}",
        "node", "peer id", "endpoints", "tcp", "rudp", "greetings", "msgs rx"
    );
    for (i, node) in demo.nodes.iter().enumerate() {
        let mut by_protocol: BTreeMap<Protocol, usize> = BTreeMap::new();
        for info in node.peers() {
            *by_protocol.entry(info.protocol).or_default() += 1;
        }
        let endpoints: Vec<String> = node.our_endpoints().iter().map(|e| e.to_string()).collect();
        let greetings: usize = demo.seen[i].greetings.values().sum();
        println!(
            "{:<8} {:<9} {:<50} {:>4} {:>5} {:>10} {:>8}",
            NAMES[i],
            demo.ids[i].short(),
            endpoints.join(" "),
            by_protocol.get(&Protocol::Tcp).copied().unwrap_or(0),
            by_protocol.get(&Protocol::Rudp).copied().unwrap_or(0),
            greetings,
            demo.seen[i].messages,
        );
    }
    let failed = demo.checks.iter().filter(|(_, ok)| !ok).count();
    println!(
        "checks: {} passed, {failed} failed",
        demo.checks.len() - failed
    );
}
