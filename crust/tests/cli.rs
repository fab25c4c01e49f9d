//! Drives two `crust-peer --json --loopback` processes through stdin/stdout: the second
//! connects to the first, sends a message, and both quit cleanly.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A running `crust-peer`; killed when dropped unless it already exited.
struct Peer {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    /// Holds the bootstrap config and cache, so the test writes nothing outside it.
    dir: tempfile::TempDir,
}

impl Peer {
    fn spawn(name: &'static str) -> Peer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_crust-peer"))
            .args(["--json", "--loopback"])
            .arg("--config")
            .arg(dir.path().join("bootstrap.json"))
            .arg("--cache")
            .arg(dir.path().join("cache.json"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crust-peer");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{name}: not a JSON line ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Peer {
            dir,
            name,
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write command");
        stdin.flush().expect("flush command");
    }

    /// Reads lines until one satisfies `pred`; panics (killing the children) after [`TIMEOUT`].
    fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(value) => {
                    self.seen.push(value.clone());
                    if pred(&value) {
                        return value;
                    }
                    if value["event"] == "error" {
                        panic!(
                            "{}: error line while waiting for {what}: {value}",
                            self.name
                        );
                    }
                }
                Err(e) => panic!(
                    "{}: no {what} ({e}); lines so far: {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Sends `quit` and waits (bounded) for the process to exit.
    fn quit(&mut self) -> ExitStatus {
        self.command("quit");
        self.stdin = None;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: did not exit after quit",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn string(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {value}"))
        .to_string()
}

#[test]
fn two_peers_connect_and_exchange_a_message() {
    let mut a = Peer::spawn("a");
    let started_a = a.expect("started line", |v| v["event"] == "started");
    let a_id = string(&started_a, "peer_id");
    let a_endpoints: Vec<String> = started_a["endpoints"]
        .as_array()
        .expect("endpoints array")
        .iter()
        .map(|e| e.as_str().expect("endpoint string").to_string())
        .collect();
    assert!(
        !a_endpoints.is_empty(),
        "a reports no endpoints: {started_a}"
    );
    assert!(
        a_endpoints.iter().all(|e| e.contains("127.0.0.1")),
        "loopback only: {a_endpoints:?}"
    );

    let mut b = Peer::spawn("b");
    let started_b = b.expect("started line", |v| v["event"] == "started");
    let b_id = string(&started_b, "peer_id");
    assert_ne!(a_id, b_id);

    // A bad command is reported, not fatal.
    b.command("frobnicate");
    let err = b.expect("error for a bad command", |v| v["event"] == "error");
    assert!(string(&err, "message").contains("frobnicate"), "{err}");

    b.command(&format!("connect {}", a_endpoints.join(" ")));
    b.expect("connected line", |v| {
        v["event"] == "connected" && v["peer"] == a_id
    });
    a.expect("new_peer for b", |v| {
        v["event"] == "new_peer" && v["peer"] == b_id && v["direction"] == "inbound"
    });

    // A unique prefix of the peer id is enough.
    b.command(&format!("send {} hello from b, with  spaces", &a_id[..8]));
    b.expect("sent line", |v| v["event"] == "sent" && v["peer"] == a_id);
    let message = a.expect("message from b", |v| v["event"] == "message");
    assert_eq!(message["peer"], b_id.as_str(), "{message}");
    assert_eq!(message["text"], "hello from b, with  spaces", "{message}");

    // Round-trip time, the address book, and connecting by id alone.
    b.command(&format!("ping {}", &a_id[..8]));
    let pong = b.expect("pong", |v| v["event"] == "pong");
    assert!(pong["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{pong}");
    b.command("known");
    let known = b.expect("known_peers", |v| v["event"] == "known_peers");
    assert!(known.to_string().contains(&a_id), "{known}");
    b.command(&format!("disconnect {}", &a_id[..8]));
    b.expect("disconnected", |v| {
        v["event"] == "disconnected" && v["was_connected"] == true
    });
    let lost = a.expect("lost_peer for b", |v| {
        v["event"] == "lost_peer" && v["peer"] == b_id
    });
    assert_eq!(lost["reason_kind"], "closed_by_peer", "{lost}");
    b.command(&format!("connect {a_id}"));
    b.expect("connected by id", |v| {
        v["event"] == "connected" && v["peer"] == a_id
    });

    let status_b = b.quit();
    assert!(status_b.success(), "b exited with {status_b}");
    a.expect("lost_peer for b", |v| {
        v["event"] == "lost_peer" && v["peer"] == b_id
    });
    let status_a = a.quit();
    assert!(status_a.success(), "a exited with {status_a}");

    // b dialled a directly, so b's bootstrap cache (from --cache) remembers a; a, which only
    // accepted, cached nobody.
    let cache = std::fs::read_to_string(b.dir.path().join("cache.json")).expect("b's cache");
    assert!(cache.contains(&a_id), "a missing from b's cache: {cache}");
    assert!(!a.dir.path().join("cache.json").exists());
}
