//! Gossip at scale, simulated: N services in one process on loopback, each told about one
//! bootstrap node only. Measures how long until every node knows at least K others (its
//! address book), whether random pairs then reach each other by `PeerId` alone
//! (`connect_peer`, a message, its delivery) and by which path, and memory per node.
//!
//! ```text
//! cargo xtask sim [--nodes 200] [--k 20] [--pairs 50] [--seed 1] [--interval-ms 500]
//!                 [--topology star|tree] [--timeout-secs 180] [--pairs-at-k]
//!                 [--max-per-source 256] [--json PATH]
//! ```
//!
//! `star`: every node's one bootstrap node is node 0. `tree`: node i's is a random earlier
//! node (seeded), so most nodes are several hops from most others and only multi-hop
//! gossip can introduce them. The pairs start once every node knows all the others, or with
//! `--pairs-at-k` once every node knows K. Prints a table and one JSON object (also to
//! `--json`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crust::{ConnectionPath, Event, GossipConfig, PeerId, Service, ServiceConfig};
use tokio::sync::mpsc;

#[derive(Debug)]
struct Args {
    nodes: usize,
    k: usize,
    pairs: usize,
    seed: u64,
    interval: Duration,
    tree: bool,
    timeout: Duration,
    json: Option<String>,
    /// Start the pairs as soon as every node knows K peers (not all of them).
    pairs_at_k: bool,
    /// Peers one source may teach a node (`GossipConfig::max_records_per_source`); the
    /// default 256 keeps a star's leaves from learning all of more than 257 nodes.
    max_per_source: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        nodes: 200,
        k: 20,
        pairs: 50,
        seed: 1,
        interval: Duration::from_millis(500),
        tree: false,
        timeout: Duration::from_secs(180),
        json: None,
        pairs_at_k: false,
        max_per_source: GossipConfig::default().max_records_per_source,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => args.nodes = value()?.parse()?,
            "--k" => args.k = value()?.parse()?,
            "--pairs" => args.pairs = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--interval-ms" => args.interval = Duration::from_millis(value()?.parse()?),
            "--timeout-secs" => args.timeout = Duration::from_secs(value()?.parse()?),
            "--json" => args.json = Some(value()?),
            "--pairs-at-k" => args.pairs_at_k = true,
            "--max-per-source" => args.max_per_source = value()?.parse()?,
            "--topology" => {
                args.tree = match value()?.as_str() {
                    "star" => false,
                    "tree" => true,
                    other => bail!("unknown topology {other:?} (star or tree)"),
                }
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if args.nodes < 2 || args.k >= args.nodes {
        bail!("need at least 2 nodes and K below the number of nodes");
    }
    Ok(args)
}

/// A small seeded generator (xorshift64*): the same seed, the same topology and pairs.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// Resident memory of this process in bytes (Linux), else 0.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Raises RLIMIT_NOFILE so that every socket fits.
fn raise_fd_limit(want: u64) -> u64 {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((1024, 1024));
    if soft >= want {
        return soft;
    }
    if Resource::NOFILE.set(want, want.max(hard)).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(soft)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Drains one node's events: notes when it first knows K peers and when it knows all the
/// others, forwards messages.
struct Progress {
    k: usize,
    all: usize,
    start: Instant,
    converged: Arc<Mutex<HashMap<PeerId, Duration>>>,
    complete: Arc<Mutex<HashMap<PeerId, Duration>>>,
}

fn drain(
    service: Service,
    mut events: crust::Events,
    progress: Arc<Progress>,
    messages: mpsc::Sender<(PeerId, PeerId)>,
) {
    tokio::spawn(async move {
        let (mut done, mut full) = (false, false);
        while let Some(event) = events.recv().await {
            if !full && matches!(event, Event::PeersLearned { .. }) {
                let known = service.known_peers().len();
                let at = progress.start.elapsed();
                if !done && known >= progress.k {
                    done = true;
                    let mut converged =
                        progress.converged.lock().unwrap_or_else(|p| p.into_inner());
                    converged.insert(service.peer_id(), at);
                }
                if known >= progress.all {
                    full = true;
                    let mut complete = progress.complete.lock().unwrap_or_else(|p| p.into_inner());
                    complete.insert(service.peer_id(), at);
                }
            }
            if let Event::Message { peer, .. } = event {
                let _ = messages.send((peer, service.peer_id())).await;
            }
        }
    });
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    // Per node: a TCP listener, a UDP socket, and one socket per connection end.
    let fd_limit = raise_fd_limit((args.nodes as u64) * 8 + (args.pairs as u64) * 2 + 512);
    let gossip = GossipConfig::default()
        .with_interval(args.interval)
        .with_max_records_per_source(args.max_per_source);
    let config = ServiceConfig::loopback().with_gossip(gossip);
    let rss_before = rss_bytes();
    let start = Instant::now();
    let converged = Arc::new(Mutex::new(HashMap::new()));
    let complete = Arc::new(Mutex::new(HashMap::new()));
    let progress = Arc::new(Progress {
        k: args.k,
        all: args.nodes - 1,
        start,
        converged: converged.clone(),
        complete: complete.clone(),
    });
    let (messages_tx, mut messages) = mpsc::channel(1024);
    let mut nodes = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        let (service, events) = Service::new(config.clone())?;
        service.start_listening().await?;
        drain(
            service.clone(),
            events,
            progress.clone(),
            messages_tx.clone(),
        );
        nodes.push(service);
    }
    let started = start.elapsed();
    // Each node is told about one bootstrap node only.
    let mut rng = Rng(args.seed.max(1));
    let join_start = Instant::now();
    let mut join_failures = 0;
    for i in 1..args.nodes {
        let bootstrap = if args.tree { rng.below(i) } else { 0 };
        let target = &nodes[bootstrap];
        let joined = tokio::time::timeout(
            Duration::from_secs(20),
            nodes[i].connect(&target.our_endpoints(), Some(target.peer_id())),
        )
        .await;
        if !matches!(joined, Ok(Ok(_))) {
            join_failures += 1;
        }
    }
    let joined = join_start.elapsed();
    // Until every node knows K peers (bounded).
    let deadline = Instant::now() + args.timeout;
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticks.tick().await;
        let done = converged.lock().unwrap_or_else(|p| p.into_inner()).len();
        if done == args.nodes || Instant::now() >= deadline {
            break;
        }
    }
    let rss_converged = rss_bytes();
    let known_at_k: Vec<usize> = nodes.iter().map(|n| n.known_peers().len()).collect();
    // Then until every node knows every other (bounded by the same timeout).
    if !args.pairs_at_k {
        loop {
            let done = complete.lock().unwrap_or_else(|p| p.into_inner()).len();
            if done == args.nodes || Instant::now() >= deadline {
                break;
            }
            ticks.tick().await;
        }
    }
    let mut all_times: Vec<f64> = complete
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|d| d.saturating_sub(join_start - start).as_secs_f64())
        .collect();
    all_times.sort_by(f64::total_cmp);
    let mut times: Vec<f64> = converged
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|d| d.saturating_sub(join_start - start).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    let min_known = known_at_k.iter().copied().min().unwrap_or(0);
    let mean_known = known_at_k.iter().sum::<usize>() as f64 / known_at_k.len() as f64;

    // Random pairs by id alone: connect, a message, its delivery.
    let mut latencies = Vec::new();
    let mut paths: HashMap<String, usize> = HashMap::new();
    let mut failures: Vec<String> = Vec::new();
    for _ in 0..args.pairs {
        let a = rng.below(args.nodes);
        let mut b = rng.below(args.nodes - 1);
        if b >= a {
            b += 1;
        }
        let (from, to) = (&nodes[a], &nodes[b]);
        let t = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            from.connect_peer(to.peer_id()).await?;
            from.send(to.peer_id(), "hello by id".into()).await?;
            while let Some((sender, receiver)) = messages.recv().await {
                if sender == from.peer_id() && receiver == to.peer_id() {
                    return Ok::<(), crust::Error>(());
                }
            }
            Err(crust::Error::Shutdown)
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                let path = match from.peer_info(to.peer_id()).map(|i| i.connection.path) {
                    Some(ConnectionPath::Relayed { .. }) => "relayed".to_owned(),
                    Some(other) => format!("{other:?}").to_lowercase(),
                    None => "gone".to_owned(),
                };
                *paths.entry(path).or_default() += 1;
            }
            Ok(Err(e)) => failures.push(format!("{a}->{b}: {e}")),
            Err(_) => failures.push(format!("{a}->{b}: no delivery within 10 s")),
        }
    }
    latencies.sort_by(f64::total_cmp);
    let rss_after = rss_bytes();
    let per_node = |rss: u64| rss.saturating_sub(rss_before) as f64 / args.nodes as f64 / 1024.0;

    println!(
        "gossip simulation: {} nodes on loopback, {} topology, seed {}, push every {} ms",
        args.nodes,
        if args.tree { "tree" } else { "star" },
        args.seed,
        args.interval.as_millis()
    );
    println!("  RLIMIT_NOFILE                      {fd_limit}");
    println!(
        "  services started                   {:.2} s",
        started.as_secs_f64()
    );
    println!(
        "  joins (one bootstrap node each)    {:.2} s, {} failed",
        joined.as_secs_f64(),
        join_failures
    );
    println!(
        "  nodes knowing >= {:<3} peers         {} of {}",
        args.k,
        times.len(),
        args.nodes
    );
    println!(
        "  time to K after joins began        median {:.2} s, p90 {:.2} s, all {:.2} s",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        times.last().copied().unwrap_or(f64::NAN)
    );
    println!("  peers known per node when all had K min {min_known}, mean {mean_known:.1}");
    println!(
        "  nodes knowing all {} others         {} of {}, all by {:.2} s (median {:.2} s)",
        args.nodes - 1,
        all_times.len(),
        args.nodes,
        all_times.last().copied().unwrap_or(f64::NAN),
        percentile(&all_times, 0.5)
    );
    println!(
        "  pairs reached by id (+ message)    {} of {}, paths {:?}",
        latencies.len(),
        args.pairs,
        paths
    );
    println!(
        "  connect + deliver latency          median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  memory per node (RSS delta / N)    {:.0} KiB converged, {:.0} KiB after pairs",
        per_node(rss_converged),
        per_node(rss_after)
    );
    for failure in failures.iter().take(10) {
        println!("  failed pair: {failure}");
    }
    let json = serde_json::json!({
        "nodes": args.nodes,
        "k": args.k,
        "topology": if args.tree { "tree" } else { "star" },
        "seed": args.seed,
        "interval_ms": args.interval.as_millis() as u64,
        "services_started_s": started.as_secs_f64(),
        "joins_s": joined.as_secs_f64(),
        "join_failures": join_failures,
        "converged_nodes": times.len(),
        "time_to_k_median_s": percentile(&times, 0.5),
        "time_to_k_p90_s": percentile(&times, 0.9),
        "time_to_k_all_s": times.last().copied(),
        "known_min": min_known,
        "known_mean": mean_known,
        "complete_nodes": all_times.len(),
        "time_to_all_median_s": percentile(&all_times, 0.5),
        "time_to_all_s": all_times.last().copied(),
        "pairs": args.pairs,
        "pairs_ok": latencies.len(),
        "paths": paths,
        "pair_latency_median_ms": percentile(&latencies, 0.5),
        "pair_latency_p90_ms": percentile(&latencies, 0.9),
        "rss_per_node_kib_converged": per_node(rss_converged),
        "rss_per_node_kib_after_pairs": per_node(rss_after),
        "failures": failures,
    });
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json:#}\n")).with_context(|| format!("writing {path}"))?;
    }
    for node in &nodes {
        let _ = tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await;
    }
    if times.len() < args.nodes || latencies.len() < args.pairs {
        bail!("the simulation did not converge (see above)");
    }
    Ok(())
}
