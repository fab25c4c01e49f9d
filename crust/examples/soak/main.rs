//! `cargo xtask soak`: churn and soak on loopback, in one process.
//!
//! Many `Service`s (TCP and reliable UDP) join and leave at random while they send
//! sequence-numbered messages of varied sizes (some large enough to be chunked) to each
//! other, driven by a seeded RNG. Nodes leave gracefully (`shutdown()`) or abruptly (the
//! `Service` dropped: every connection aborted, like a crash); connections are also
//! disconnected and peers banned at random. A node dials only nodes that joined before it,
//! once each (by endpoint, TCP first; by its reliable-UDP endpoint only; or by `PeerId`
//! through the address book), so every (sender, receiver) pair has at most one connection
//! and sequence numbers are per connection lifetime.
//!
//! At the end (every node stopped) it checks, per pair: the receiver got the messages in
//! order and exactly once, and every message `send` accepted that did not arrive is
//! covered by a `MessagesUnconfirmed` report to its sender (unless the sender itself died
//! abruptly: then nobody is left to tell). It also checks that open file descriptors and
//! tokio tasks are back to their level before the first node started, and resident memory
//! within [`RSS_TOLERANCE_KIB`] of it. Prints a table, writes JSON (`--json PATH`), and
//! exits non-zero on any failure.
//!
//! Options: `--seconds N` or `--minutes N` (default 60 s), `--nodes M` (most nodes alive
//! at once, default 16), `--seed S` (default 1), `--json PATH`.

mod ledger;
mod resources;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crust::{Bytes, Event, Events, PeerAddr, PeerId, Protocol, Service, ServiceConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use ledger::Ledger;
use resources::Sample;

/// Resident memory may end this much above where it started. The allocator keeps freed
/// pages for reuse (glibc's per-thread arenas, with two runtime workers and the blocking
/// pool; this program does not tune it the way `crust-peer` does), and the first large
/// messages grow the buffers it keeps: 5-minute runs on a 2-core machine ended 37 to
/// 65 MiB above their start, with RSS flat while churning. A leak grows with the run's
/// length instead, which [`RSS_TREND_SLACK_KIB`] checks.
const RSS_TOLERANCE_KIB: u64 = 96 * 1024;
/// Memory must also be flat while nodes churn: in runs long enough to have 9 samples (one
/// every 10 s), the highest RSS of the last third may exceed the highest of the middle
/// third by at most 10 % plus this much. A leak grows with the run; the allocator's
/// retention levels off after the first minute.
const RSS_TREND_SLACK_KIB: u64 = 8 * 1024;
/// How long, after everything stopped, tasks and descriptors may take to be released
/// (listeners' and endpoints' background tasks end asynchronously).
const SETTLE: Duration = Duration::from_secs(15);
/// A crashed node's event stream is read until it is quiet this long.
const CRASH_DRAIN_IDLE: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Opts {
    duration: Duration,
    nodes: usize,
    seed: u64,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Opts> {
    let mut opts = Opts {
        duration: Duration::from_secs(60),
        nodes: 16,
        seed: 1,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => opts.duration = Duration::from_secs_f64(value()?.parse()?),
            "--minutes" => opts.duration = Duration::from_secs_f64(value()?.parse::<f64>()? * 60.0),
            "--nodes" => opts.nodes = value()?.parse()?,
            "--seed" => opts.seed = value()?.parse()?,
            "--json" => opts.json = Some(value()?.into()),
            other => {
                bail!("unknown option {other} (--seconds, --minutes, --nodes, --seed, --json)")
            }
        }
    }
    if opts.nodes < 3 {
        bail!("--nodes must be at least 3");
    }
    Ok(opts)
}

/// What happened, for the report.
#[derive(Debug, Default)]
struct Counters {
    joins: u64,
    graceful_leaves: u64,
    crashes: u64,
    disconnects: u64,
    bans: u64,
    connects: HashMap<&'static str, u64>,
    connect_failures: u64,
    new_peer_events: u64,
    lost_peer_events: u64,
    send_errors: u64,
    bytes_accepted: u64,
}

/// State every task of the soak shares.
#[derive(Debug, Default)]
struct Shared {
    ledger: Mutex<Ledger>,
    /// Node index of every `PeerId` that ever joined.
    ids: Mutex<HashMap<PeerId, usize>>,
    counters: Mutex<Counters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn index_of(&self, peer: PeerId) -> Option<usize> {
        lock(&self.ids).get(&peer).copied()
    }
}

/// A node taking part in the soak.
struct Node {
    index: usize,
    service: Service,
    stop_sending: CancellationToken,
    sender: tokio::task::JoinHandle<()>,
    events: tokio::task::JoinHandle<()>,
    crashed: CancellationToken,
    connects: JoinSet<()>,
}

impl Node {
    /// Stops the sending task (at a message boundary) and the connects in flight.
    async fn quiesce(&mut self) {
        self.stop_sending.cancel();
        let _ = (&mut self.sender).await;
        self.connects.abort_all();
        while self.connects.join_next().await.is_some() {}
    }
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ok = runtime.block_on(run(opts))?;
    drop(runtime);
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(opts: Opts) -> Result<bool> {
    let start = Sample::now();
    let mut peak = start;
    let mut rss_series = vec![(0.0, start.rss_kib)];
    let began = Instant::now();
    let shared = Arc::new(Shared::default());
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut nodes: Vec<Node> = Vec::new();
    let mut crashed: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut next_index = 0;
    eprintln!(
        "soak: {:.0} s, up to {} nodes, seed {}",
        opts.duration.as_secs_f64(),
        opts.nodes,
        opts.seed
    );
    let mut last_sample = Instant::now();
    while began.elapsed() < opts.duration {
        let pause = Duration::from_millis(rng.random_range(50..300));
        tokio::time::sleep(pause).await;
        peak = peak.max(Sample::now());
        if last_sample.elapsed() >= Duration::from_secs(10) {
            last_sample = Instant::now();
            let now = Sample::now();
            rss_series.push((began.elapsed().as_secs_f64(), now.rss_kib));
            let s = lock(&shared.ledger).summary();
            eprintln!(
                "soak: {:>4.0} s  nodes {:>2}  accepted {:>8}  received {:>8}  reported {:>6}  rss {:>6} KiB  fds {:>4}  tasks {:>5}",
                began.elapsed().as_secs_f64(),
                nodes.len(),
                s.accepted,
                s.received,
                s.reported,
                now.rss_kib,
                now.fds,
                now.tasks
            );
        }
        let want_join = nodes.len() < opts.nodes / 2 + 1;
        match rng.random_range(0..100) {
            _ if want_join => {}
            0..30 if nodes.len() < opts.nodes => {}
            30..42 if nodes.len() > 2 => {
                let mut node = nodes.swap_remove(rng.random_range(0..nodes.len()));
                node.quiesce().await;
                node.service.shutdown().await;
                let _ = node.events.await;
                lock(&shared.counters).graceful_leaves += 1;
                continue;
            }
            42..52 if nodes.len() > 2 => {
                let mut node = nodes.swap_remove(rng.random_range(0..nodes.len()));
                node.quiesce().await;
                lock(&shared.ledger).sender_crashed(node.index);
                node.crashed.cancel();
                // The last handle goes: every connection is aborted, nothing is flushed.
                let Node {
                    service, events, ..
                } = node;
                drop(service);
                crashed.push(events);
                lock(&shared.counters).crashes += 1;
                continue;
            }
            52..70 => {
                if let Some((node, peer)) = random_link(&nodes, &mut rng) {
                    node.service.disconnect(peer).await;
                    lock(&shared.counters).disconnects += 1;
                }
                continue;
            }
            70..74 => {
                if let Some((node, peer)) = random_link(&nodes, &mut rng) {
                    node.service.ban([peer]).await;
                    lock(&shared.counters).bans += 1;
                }
                continue;
            }
            _ => continue,
        }
        // Join a new node, which dials up to three older ones.
        let node = join(next_index, &shared, &nodes, &mut rng).await?;
        next_index += 1;
        nodes.push(node);
    }
    eprintln!("soak: churn over; stopping every node");
    for node in &mut nodes {
        node.quiesce().await;
    }
    futures::future::join_all(nodes.iter().map(|n| n.service.shutdown())).await;
    for node in nodes.drain(..) {
        let _ = node.events.await;
    }
    for events in crashed.drain(..) {
        let _ = events.await;
    }
    peak = peak.max(Sample::now());
    // Background tasks of listeners and endpoints end asynchronously: wait, bounded.
    let settle_began = Instant::now();
    let mut end = Sample::now();
    while settle_began.elapsed() < SETTLE && (end.tasks > start.tasks || end.fds > start.fds) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        end = Sample::now();
    }
    rss_series.push((began.elapsed().as_secs_f64(), end.rss_kib));
    Ok(report(
        &opts,
        &shared,
        start,
        peak,
        end,
        &rss_series,
        began.elapsed(),
    ))
}

/// Starts node `index`, its event reader and its sender, and dials up to three older nodes
/// in the background.
async fn join(
    index: usize,
    shared: &Arc<Shared>,
    nodes: &[Node],
    rng: &mut StdRng,
) -> Result<Node> {
    let (service, events) = Service::new(ServiceConfig::loopback())?;
    service.start_listening().await?;
    lock(&shared.ids).insert(service.peer_id(), index);
    lock(&shared.counters).joins += 1;
    let crashed = CancellationToken::new();
    let events = tokio::spawn(event_loop(index, events, shared.clone(), crashed.clone()));
    let stop_sending = CancellationToken::new();
    let sender = tokio::spawn(send_loop(
        index,
        service.clone(),
        shared.clone(),
        StdRng::seed_from_u64(rng.random()),
        stop_sending.clone(),
    ));
    let mut connects = JoinSet::new();
    let dials = rng.random_range(1..=3).min(nodes.len());
    let mut picked: Vec<usize> = Vec::new();
    while picked.len() < dials {
        let i = rng.random_range(0..nodes.len());
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    for i in picked {
        let target = &nodes[i].service;
        let id = target.peer_id();
        let endpoints = target.our_endpoints();
        let how = rng.random_range(0..4);
        let service = service.clone();
        let shared = shared.clone();
        connects.spawn(async move {
            let (kind, outcome) = match how {
                0 | 1 => ("tcp_first", service.connect(&endpoints, Some(id)).await),
                2 => {
                    let rudp: Vec<_> = endpoints
                        .into_iter()
                        .filter(|e| e.protocol() == Protocol::Rudp)
                        .collect();
                    ("rudp_only", service.connect(&rudp, Some(id)).await)
                }
                _ => {
                    service.add_address(PeerAddr::new(id).with_endpoints(endpoints));
                    ("by_peer_id", service.connect_peer(id).await)
                }
            };
            let mut counters = lock(&shared.counters);
            match outcome {
                Ok(_) => *counters.connects.entry(kind).or_default() += 1,
                Err(_) => counters.connect_failures += 1,
            }
        });
    }
    Ok(Node {
        index,
        service,
        stop_sending,
        sender,
        events,
        crashed,
        connects,
    })
}

/// A random node and one of its connected peers.
fn random_link<'a>(nodes: &'a [Node], rng: &mut StdRng) -> Option<(&'a Node, PeerId)> {
    let node = nodes.get(rng.random_range(0..nodes.len().max(1)))?;
    let peers = node.service.peers();
    let peer = peers.get(rng.random_range(0..peers.len().max(1)))?.peer_id;
    Some((node, peer))
}

/// A message size: mostly small, some medium, a few large enough to be sent in chunks.
fn message_len(rng: &mut StdRng) -> usize {
    match rng.random_range(0..1000) {
        0..5 => rng.random_range(128 * 1024..=1024 * 1024),
        5..100 => rng.random_range(1024..64 * 1024),
        _ => rng.random_range(ledger::HEADER_LEN..1024),
    }
}

/// Sends bursts to random connected peers until stopped (always between two sends, so the
/// ledger knows exactly what `send` accepted).
async fn send_loop(
    index: usize,
    service: Service,
    shared: Arc<Shared>,
    mut rng: StdRng,
    stop: CancellationToken,
) {
    let mut next_seq: HashMap<usize, u64> = HashMap::new();
    loop {
        let pause = Duration::from_millis(rng.random_range(1..15));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let peers = service.peers();
        let Some(info) = peers.get(rng.random_range(0..peers.len().max(1))) else {
            continue;
        };
        let peer = info.peer_id;
        let Some(to) = shared.index_of(peer) else {
            continue;
        };
        let seq = next_seq.entry(to).or_default();
        let burst = rng.random_range(1..=8u64);
        let messages: Vec<Bytes> = (0..burst)
            .map(|i| Bytes::from(ledger::encode(index, to, *seq + i, message_len(&mut rng))))
            .collect();
        let bytes: u64 = messages.iter().map(|m| m.len() as u64).sum();
        let accepted = if rng.random_range(0..5) == 0 {
            // On `ConnectionClosed` an unknown prefix was queued: count all (Crust does
            // too, so its report covers them).
            match service.send_many(peer, &messages).await {
                Ok(()) => burst,
                Err(crust::Error::Core(e)) if e.is_closed() => burst,
                Err(_) => 0,
            }
        } else {
            let mut n = 0;
            for message in messages {
                if service.send(peer, message).await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        };
        *seq += accepted;
        lock(&shared.ledger).accepted(index, to, accepted);
        let mut counters = lock(&shared.counters);
        counters.bytes_accepted += if accepted == burst { bytes } else { 0 };
        if accepted < burst {
            counters.send_errors += 1;
        }
    }
}

/// Records what node `index` is told, until its stream ends (or, once it crashed, goes
/// quiet).
async fn event_loop(
    index: usize,
    mut events: Events,
    shared: Arc<Shared>,
    crashed: CancellationToken,
) {
    loop {
        let event = if crashed.is_cancelled() {
            match tokio::time::timeout(CRASH_DRAIN_IDLE, events.recv()).await {
                Ok(Some(event)) => event,
                _ => return,
            }
        } else {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
                _ = crashed.cancelled() => continue,
            }
        };
        match event {
            Event::Message { peer, payload } => {
                let mut ledger = lock(&shared.ledger);
                match (ledger::decode(&payload), shared.index_of(peer)) {
                    (Some((from, to, seq)), Some(sender)) if from == sender && to == index => {
                        ledger.received(from, to, seq, payload.len() > 64 * 1024);
                    }
                    _ => ledger.corrupt += 1,
                }
            }
            Event::MessagesUnconfirmed { peer, count, .. } => {
                if let Some(to) = shared.index_of(peer) {
                    lock(&shared.ledger).reported(index, to, count);
                }
            }
            Event::NewPeer { .. } => lock(&shared.counters).new_peer_events += 1,
            Event::LostPeer { .. } => lock(&shared.counters).lost_peer_events += 1,
            _ => {}
        }
    }
}

/// The highest RSS sample of the middle and of the last third of the churn (the first
/// sample, at the start, and the last, after every node stopped, left out), once there
/// are at least 9.
fn rss_trend(series: &[(f64, u64)]) -> Option<(u64, u64)> {
    let churn = series.get(1..series.len().saturating_sub(1))?;
    if churn.len() < 9 {
        return None;
    }
    let third = churn.len() / 3;
    let max = |s: &[(f64, u64)]| s.iter().map(|(_, rss)| *rss).max().unwrap_or(0);
    Some((max(&churn[third..2 * third]), max(&churn[2 * third..])))
}

/// Prints the table, writes the JSON, and returns whether the soak passed.
fn report(
    opts: &Opts,
    shared: &Shared,
    start: Sample,
    peak: Sample,
    end: Sample,
    rss_series: &[(f64, u64)],
    elapsed: Duration,
) -> bool {
    let summary = lock(&shared.ledger).summary();
    let counters = lock(&shared.counters);
    let mut failures = summary.failures();
    if end.fds > start.fds {
        failures.push(format!(
            "open fds {} at the end, {} at the start",
            end.fds, start.fds
        ));
    }
    if end.tasks > start.tasks {
        failures.push(format!(
            "tokio tasks {} at the end, {} at the start",
            end.tasks, start.tasks
        ));
    }
    if end.rss_kib > start.rss_kib + RSS_TOLERANCE_KIB {
        failures.push(format!(
            "RSS {} KiB at the end, more than {} KiB above the {} KiB at the start",
            end.rss_kib, RSS_TOLERANCE_KIB, start.rss_kib
        ));
    }
    if let Some((middle, last)) = rss_trend(rss_series) {
        if last > middle + middle / 10 + RSS_TREND_SLACK_KIB {
            failures.push(format!(
                "RSS grows while churning: {last} KiB at most in the last third, {middle} KiB in the middle third"
            ));
        }
    }
    let mut connects: Vec<_> = counters.connects.iter().collect();
    connects.sort();
    println!(
        "soak: {:.0} s, up to {} nodes, seed {}",
        elapsed.as_secs_f64(),
        opts.nodes,
        opts.seed
    );
    println!(
        "  churn       joins {}  graceful leaves {}  crashes {}  disconnects {}  bans {}",
        counters.joins,
        counters.graceful_leaves,
        counters.crashes,
        counters.disconnects,
        counters.bans
    );
    println!(
        "  connects    {}  failed {}  new_peer events {}  lost_peer events {}",
        connects
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join("  "),
        counters.connect_failures,
        counters.new_peer_events,
        counters.lost_peer_events
    );
    println!(
        "  messages    accepted {} ({:.1} MiB)  received {} ({} over 64 KiB)  pairs {}",
        summary.accepted,
        counters.bytes_accepted as f64 / (1024.0 * 1024.0),
        summary.received,
        summary.large_received,
        summary.pairs
    );
    println!(
        "  not received {}  reported unconfirmed {} in {} reports  over-reported {}  lost with a crashed sender {}",
        summary.lost,
        summary.reported,
        summary.reports,
        summary.over_reported,
        summary.lost_with_crashed_sender
    );
    println!(
        "  UNREPORTED LOSSES {}  duplicates {}  out of order {}  corrupt {}",
        summary.unreported, summary.duplicates, summary.out_of_order, summary.corrupt
    );
    println!("  {:<10} {:>12} {:>12} {:>12}", "", "start", "peak", "end");
    println!(
        "  {:<10} {:>12} {:>12} {:>12}",
        "RSS KiB", start.rss_kib, peak.rss_kib, end.rss_kib
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>12}",
        "open fds", start.fds, peak.fds, end.fds
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>12}",
        "tasks", start.tasks, peak.tasks, end.tasks
    );
    let passed = failures.is_empty();
    if passed {
        println!("soak: PASS");
    } else {
        for failure in &failures {
            println!("soak: FAIL: {failure}");
        }
    }
    if let Some(path) = &opts.json {
        let value = json!({
            "seconds": elapsed.as_secs_f64(),
            "max_nodes": opts.nodes,
            "seed": opts.seed,
            "passed": passed,
            "failures": failures,
            "delivery": summary.to_json(),
            "churn": {
                "joins": counters.joins,
                "graceful_leaves": counters.graceful_leaves,
                "crashes": counters.crashes,
                "disconnects": counters.disconnects,
                "bans": counters.bans,
                "connects": counters.connects,
                "connect_failures": counters.connect_failures,
                "new_peer_events": counters.new_peer_events,
                "lost_peer_events": counters.lost_peer_events,
                "send_errors": counters.send_errors,
                "bytes_accepted": counters.bytes_accepted,
            },
            "resources": {
                "start": start.to_json(),
                "peak": peak.to_json(),
                "end": end.to_json(),
                "rss_tolerance_kib": RSS_TOLERANCE_KIB,
                "rss_series_kib": rss_series,
                "rss_trend_kib": rss_trend(rss_series).map(|(middle, last)| json!({"middle_third_max": middle, "last_third_max": last})),
                "rss_trend_slack_kib": RSS_TREND_SLACK_KIB,
            },
        });
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, format!("{value:#}\n")));
        match written {
            Ok(()) => println!("soak: report written to {}", path.display()),
            Err(e) => println!("soak: could not write {}: {e}", path.display()),
        }
    }
    passed
}
