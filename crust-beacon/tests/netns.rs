//! Real LAN broadcast between two network namespaces this test creates.
//!
//! Needs root and `ip` (iproute2); otherwise it prints `skipped: <reason>` and passes.
//!
//! How: two namespaces `cb<pid>a` / `cb<pid>b` (unique per run), joined by a veth pair
//! with `10.77.0.1/24` and `10.77.0.2/24`. The workspace forbids `unsafe`, so instead of
//! calling `setns` the test runs *this test binary* again inside each namespace
//! (`ip netns exec <ns> <this binary> --exact probe_child_process --nocapture`) with
//! `CRUST_BEACON_PROBE_*` variables set; [`probe_child_process`] then acts as a beacon
//! node: it announces its endpoint by broadcast to `10.77.0.255:5483` and exits
//! successfully once it heard the other node's beacon with the expected `PeerId` and
//! endpoint. Run normally (variables unset), `probe_child_process` does nothing.
//!
//! A guard deletes the namespaces and kills the children on every exit path, also when an
//! assertion fails. Every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crust_beacon::{Beacon, BeaconConfig};
use crust_core::{Endpoint, PeerId};

const ENV_ID: &str = "CRUST_BEACON_PROBE_ID";
const ENV_PEER: &str = "CRUST_BEACON_PROBE_PEER";
const ENV_ENDPOINT: &str = "CRUST_BEACON_PROBE_ENDPOINT";
const ENV_PEER_ENDPOINT: &str = "CRUST_BEACON_PROBE_PEER_ENDPOINT";
const ENV_BROADCAST: &str = "CRUST_BEACON_PROBE_BROADCAST";
/// How long a probe waits for its peer, and the parent for its probes (safety nets).
const PROBE_DEADLINE: Duration = Duration::from_secs(30);

enum ProbeEvent {
    Found(&'static str),
    Exited(&'static str, bool, String, String),
}

/// Deletes the namespaces and kills the probes when dropped.
struct Lab {
    namespaces: Vec<String>,
    children: Vec<u32>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in &self.children {
            // Usually already reaped; then `kill` just fails quietly.
            let _ = Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Some("not running as root".to_owned());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip` (iproute2) not available".to_owned()),
    }
}

#[test]
fn broadcast_between_network_namespaces() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let pid = std::process::id();
    let (ns_a, ns_b) = (format!("cb{pid}a"), format!("cb{pid}b"));
    let mut lab = Lab {
        namespaces: Vec::new(),
        children: Vec::new(),
    };
    if let Err(e) = run(&["ip", "netns", "add", &ns_a]) {
        eprintln!("skipped: cannot create a network namespace: {e}");
        return;
    }
    lab.namespaces.push(ns_a.clone());
    run(&["ip", "netns", "add", &ns_b]).expect("second namespace");
    lab.namespaces.push(ns_b.clone());
    for cmd in [
        vec![
            "ip", "-n", &ns_a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
            "netns", &ns_b,
        ],
        vec![
            "ip",
            "-n",
            &ns_a,
            "addr",
            "add",
            "10.77.0.1/24",
            "broadcast",
            "10.77.0.255",
            "dev",
            "veth0",
        ],
        vec![
            "ip",
            "-n",
            &ns_b,
            "addr",
            "add",
            "10.77.0.2/24",
            "broadcast",
            "10.77.0.255",
            "dev",
            "veth1",
        ],
        vec!["ip", "-n", &ns_a, "link", "set", "veth0", "up"],
        vec!["ip", "-n", &ns_b, "link", "set", "veth1", "up"],
        vec!["ip", "-n", &ns_a, "link", "set", "lo", "up"],
        vec!["ip", "-n", &ns_b, "link", "set", "lo", "up"],
    ] {
        run(&cmd).expect("lab setup");
    }

    let exe = std::env::current_exe().expect("test binary path");
    let id_a = PeerId::from_bytes([0xa1; 32]);
    let id_b = PeerId::from_bytes([0xb2; 32]);
    let ep_a = "tcp://10.77.0.1:4000";
    // B announces an unspecified address: A must see B's source address instead.
    let ep_b_announced = "rudp://0.0.0.0:4001";
    let ep_b_seen = "rudp://10.77.0.2:4001";
    let spawn = |ns: &str, me: PeerId, peer: PeerId, ep: &str, peer_ep: &str| -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args([
                "--exact",
                "probe_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_ID, me.to_string())
            .env(ENV_PEER, peer.to_string())
            .env(ENV_ENDPOINT, ep)
            .env(ENV_PEER_ENDPOINT, peer_ep)
            .env(ENV_BROADCAST, "10.77.0.255")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn probe")
    };
    let probes = [
        ("a", spawn(&ns_a, id_a, id_b, ep_a, ep_b_seen)),
        ("b", spawn(&ns_b, id_b, id_a, ep_b_announced, ep_a)),
    ];
    let (tx, rx) = mpsc::channel();
    let mut stdins = Vec::new();
    for (name, mut child) in probes {
        // `ip netns exec` execs the command, so this pid is the probe's.
        lab.children.push(child.id());
        stdins.push(child.stdin.take());
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut stdout = String::new();
            if let Some(s) = child.stdout.take() {
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("PROBE FOUND") {
                        let _ = tx.send(ProbeEvent::Found(name));
                    }
                    stdout.push_str(&line);
                    stdout.push('\n');
                }
            }
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut stderr);
            }
            let status = child.wait().map(|s| s.success()).unwrap_or(false);
            let _ = tx.send(ProbeEvent::Exited(name, status, stdout, stderr));
        });
    }
    drop(tx);
    // Both probes must hear each other; each keeps announcing until its stdin closes.
    let mut found = Vec::new();
    while found.len() < 2 {
        match rx.recv_timeout(PROBE_DEADLINE + Duration::from_secs(10)) {
            Ok(ProbeEvent::Found(name)) => found.push(name),
            Ok(ProbeEvent::Exited(name, ok, stdout, stderr)) => {
                panic!("probe {name} ended early (success: {ok}):\n{stdout}\n{stderr}")
            }
            Err(e) => panic!("probes did not hear each other in time: {e}"),
        }
    }
    drop(stdins);
    for _ in 0..2 {
        match rx.recv_timeout(PROBE_DEADLINE) {
            Ok(ProbeEvent::Exited(name, ok, stdout, stderr)) => {
                assert!(ok, "probe {name} failed:\n{stdout}\n{stderr}");
                eprintln!("probe {name}: {}", stdout.trim());
            }
            Ok(ProbeEvent::Found(_)) => {}
            Err(e) => panic!("probes did not exit in time: {e}"),
        }
    }
    drop(lab);
}

/// The node run inside a namespace by [`broadcast_between_network_namespaces`]; does
/// nothing unless `CRUST_BEACON_PROBE_ID` is set.
#[test]
fn probe_child_process() {
    let Ok(me) = std::env::var(ENV_ID) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let me: PeerId = me.parse().expect("probe id");
    let peer: PeerId = var(ENV_PEER).parse().expect("peer id");
    let endpoint: Endpoint = var(ENV_ENDPOINT).parse().expect("endpoint");
    let peer_endpoint: Endpoint = var(ENV_PEER_ENDPOINT).parse().expect("peer endpoint");
    let broadcast: IpAddr = var(ENV_BROADCAST).parse().expect("broadcast address");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = BeaconConfig::default()
            .with_bind_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            .with_broadcast_addrs(vec![broadcast])
            .with_announce_interval(Duration::from_millis(300))
            .with_min_announce_gap(Duration::from_millis(50));
        let beacon = Beacon::bind(config, me, vec![endpoint])
            .await
            .expect("bind beacon");
        assert_eq!(beacon.beacon_acceptor_port(), crust_beacon::DEFAULT_PORT);
        let found = tokio::time::timeout(PROBE_DEADLINE, async {
            loop {
                let batch = beacon.next_candidates().await.expect("beacon running");
                if let Some(c) = batch.into_iter().find(|c| c.peer_id == Some(peer)) {
                    return c;
                }
            }
        })
        .await
        .expect("peer heard before the deadline");
        assert_eq!(found.endpoints, vec![peer_endpoint]);
        let from = beacon
            .peers()
            .into_iter()
            .find(|p| p.peer_id == peer)
            .map(|p| p.from)
            .expect("peer remembered");
        println!("PROBE FOUND {peer} at {:?} from {from}", found.endpoints);
        // Keep announcing until the parent closes our stdin (both probes found their
        // peer); bounded by the deadline.
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)
        });
        tokio::time::timeout(PROBE_DEADLINE, stdin_closed)
            .await
            .expect("parent closed stdin before the deadline")
            .expect("stdin reader")
            .expect("read stdin");
    });
}
