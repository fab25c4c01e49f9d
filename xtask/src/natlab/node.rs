//! Drives one `crust-peer --json` process inside a lab namespace: commands go to its stdin,
//! its JSON event lines are kept in a bounded log that waits can search with a deadline.
//!
//! Nothing here sleeps to synchronise: every wait is "until this event, or the deadline".

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Events kept per node; older ones are dropped (a wait never looks back that far).
const LOG_CAPACITY: usize = 4096;
/// How long a node may take to print `started`.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a node may take to exit after `quit` before it is killed.
const QUIT_DEADLINE: Duration = Duration::from_secs(3);

/// One event line with its position in the stream and when it was read.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// Position in the node's stream (0 = first line).
    pub(crate) seq: u64,
    /// When the line was read.
    pub(crate) at: Instant,
    /// The parsed line.
    pub(crate) value: Value,
}

impl Event {
    /// The `"event"` field.
    pub(crate) fn name(&self) -> &str {
        self.value["event"].as_str().unwrap_or("")
    }

    /// A string field, or `""`.
    pub(crate) fn str(&self, key: &str) -> &str {
        self.value[key].as_str().unwrap_or("")
    }
}

#[derive(Debug, Default)]
struct LogState {
    events: VecDeque<Event>,
    next_seq: u64,
    /// Stdout ended (the process exited).
    closed: bool,
}

/// The bounded event log one reader thread fills.
#[derive(Debug, Default)]
struct EventLog {
    state: Mutex<LogState>,
    changed: Condvar,
}

impl EventLog {
    fn push(&self, value: Value) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        if state.events.len() == LOG_CAPACITY {
            state.events.pop_front();
        }
        state.events.push_back(Event {
            seq,
            at: Instant::now(),
            value,
        });
        self.changed.notify_all();
    }

    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
        self.changed.notify_all();
    }
}

/// The outcome of one `connect` command.
#[derive(Clone, Debug)]
pub(crate) struct DialOutcome {
    /// The endpoint dialled.
    pub(crate) endpoint: String,
    /// The peer that answered, or `None` when the dial failed.
    pub(crate) peer: Option<String>,
    /// The error text of a failed dial.
    pub(crate) error: Option<String>,
    /// From sending the command to its answer.
    pub(crate) elapsed: Duration,
}

impl DialOutcome {
    /// Whether the dial reached a peer.
    pub(crate) fn connected(&self) -> bool {
        self.peer.is_some()
    }
}

/// A dial in flight (see [`Node::dial`]).
#[derive(Debug)]
pub(crate) struct PendingDial {
    endpoint: String,
    from: u64,
    sent: Instant,
}

/// A running `crust-peer --json` in a namespace. Dropping it ends the process.
#[derive(Debug)]
pub(crate) struct Node {
    /// Name in reports and log files (`a1`, `pub`, …).
    pub(crate) name: String,
    /// The node's `PeerId` (64 hex digits).
    pub(crate) peer_id: String,
    /// The endpoints it announced in `started` (its LAN endpoints behind a NAT).
    pub(crate) endpoints: Vec<String>,
    child: Option<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    log: Arc<EventLog>,
}

impl Node {
    /// Starts `bin` in namespace `ns` on fixed ports, without port mapping (the lab
    /// measures what the NAT does on its own), and waits for its `started` line. Stdout
    /// lines are also written to `<log_dir>/<name>.jsonl`, stderr to `<name>.log`.
    pub(crate) fn start(
        bin: &Path,
        ns: &str,
        name: &str,
        ports: (u16, u16),
        log_dir: &Path,
    ) -> Result<Node> {
        Self::spawn(bin, ns, name, ports, log_dir, &["--no-port-mapping"])
    }

    /// Like [`Node::start`], with the node listening on `ip` only (a host's second address).
    pub(crate) fn start_on(
        bin: &Path,
        ns: &str,
        name: &str,
        ports: (u16, u16),
        log_dir: &Path,
        ip: std::net::Ipv4Addr,
    ) -> Result<Node> {
        let ip = ip.to_string();
        Self::spawn(
            bin,
            ns,
            name,
            ports,
            log_dir,
            &["--no-port-mapping", "--listen-ip", &ip],
        )
    }

    /// Like [`Node::start`], with these extra `crust-peer` arguments (port mapping stays
    /// on unless they say `--no-port-mapping`).
    pub(crate) fn start_with(
        bin: &Path,
        ns: &str,
        name: &str,
        ports: (u16, u16),
        log_dir: &Path,
        extra: &[&str],
    ) -> Result<Node> {
        Self::spawn(bin, ns, name, ports, log_dir, extra)
    }

    /// Like [`Node::start`], but the node maps its ports (UPnP, NAT-PMP, PCP) if its
    /// router offers that.
    pub(crate) fn start_mapping(
        bin: &Path,
        ns: &str,
        name: &str,
        ports: (u16, u16),
        log_dir: &Path,
    ) -> Result<Node> {
        Self::spawn(bin, ns, name, ports, log_dir, &[])
    }

    fn spawn(
        bin: &Path,
        ns: &str,
        name: &str,
        (tcp_port, rudp_port): (u16, u16),
        log_dir: &Path,
        extra: &[&str],
    ) -> Result<Node> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let stderr = File::create(log_dir.join(format!("{name}.log")))?;
        let mut transcript = File::create(log_dir.join(format!("{name}.jsonl")))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            // No gossip: the cells test which path traversal takes between nodes that know
            // each other only by id (gossip would teach them endpoints, or other relays).
            .args(["--json", "--no-bootstrap", "--no-gossip", "--tcp-port"])
            .arg(tcp_port.to_string())
            .arg("--rudp-port")
            .arg(rudp_port.to_string())
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("NATLAB_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("starting {} in {ns}", bin.display()))?;
        let log = Arc::new(EventLog::default());
        let stdout = child.stdout.take().context("child stdout")?;
        let reader_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(transcript, "{line}");
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => reader_log.push(value),
                    Err(_) => {
                        reader_log.push(serde_json::json!({"event": "unparsed", "line": line}))
                    }
                }
            }
            reader_log.close();
        });
        let stdin = child.stdin.take();
        let mut node = Node {
            name: name.to_owned(),
            peer_id: String::new(),
            endpoints: Vec::new(),
            child: Some(child),
            stdin: Mutex::new(stdin),
            log,
        };
        let started = node
            .wait_for(0, START_DEADLINE, "started", |e| e.name() == "started")
            .with_context(|| {
                format!(
                    "{name} did not start (see {}/{name}.log)",
                    log_dir.display()
                )
            })?;
        node.peer_id = started.str("peer_id").to_owned();
        node.endpoints = started.value["endpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(node)
    }

    /// The endpoint of `protocol` (`"tcp"`/`"rudp"`) the node announced.
    pub(crate) fn endpoint(&self, protocol: &str) -> Result<String> {
        let scheme = format!("{protocol}://");
        self.endpoints
            .iter()
            .find(|e| e.starts_with(&scheme))
            .cloned()
            .ok_or_else(|| anyhow!("{} announced no {protocol} endpoint", self.name))
    }

    /// Sends one command line.
    pub(crate) fn send(&self, line: &str) -> Result<()> {
        let mut stdin = self
            .stdin
            .lock()
            .map_err(|_| anyhow!("stdin lock poisoned"))?;
        let stdin = stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("sending {line:?} to {}", self.name))
    }

    /// The position of the next event: waits from here see only what happens later.
    pub(crate) fn mark(&self) -> u64 {
        self.log.state.lock().map(|s| s.next_seq).unwrap_or(0)
    }

    /// The first event at or after position `from` that `pred` accepts, waiting until
    /// `deadline` from now; an error names `what` when it does not come.
    pub(crate) fn wait_for(
        &self,
        from: u64,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event> {
        let until = Instant::now() + deadline;
        let mut state = self
            .log
            .state
            .lock()
            .map_err(|_| anyhow!("event log poisoned"))?;
        loop {
            if let Some(e) = state.events.iter().find(|e| e.seq >= from && pred(e)) {
                return Ok(e.clone());
            }
            if state.closed {
                bail!("{} exited while waiting for {what}", self.name);
            }
            let now = Instant::now();
            if now >= until {
                bail!(
                    "{} printed no {what} within {:.0}s",
                    self.name,
                    deadline.as_secs_f64()
                );
            }
            state = self
                .log
                .changed
                .wait_timeout(state, until - now)
                .map_err(|_| anyhow!("event log poisoned"))?
                .0;
        }
    }

    /// Every event at or after position `from` that `pred` accepts (of those still held:
    /// the log keeps the most recent events only).
    pub(crate) fn events_since(&self, from: u64, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.log
            .state
            .lock()
            .map(|state| {
                state
                    .events
                    .iter()
                    .filter(|e| e.seq >= from && pred(e))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts `connect <endpoint>`; [`Node::finish_dial`] waits for its answer.
    pub(crate) fn dial(&self, endpoint: &str) -> Result<PendingDial> {
        let from = self.mark();
        let sent = Instant::now();
        self.send(&format!("connect {endpoint}"))?;
        Ok(PendingDial {
            endpoint: endpoint.to_owned(),
            from,
            sent,
        })
    }

    /// Waits (up to `deadline`) for the answer to a [`Node::dial`]: `connected` naming the
    /// endpoint, or the command's `error` (whose message starts `connect <endpoint>:`).
    pub(crate) fn finish_dial(&self, dial: PendingDial, deadline: Duration) -> DialOutcome {
        let prefix = format!("connect {}:", dial.endpoint);
        let answer = self.wait_for(dial.from, deadline, "the answer to a connect", |e| {
            (e.name() == "connected"
                && e.value["endpoints"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1 && a[0].as_str() == Some(&dial.endpoint)))
                || (e.name() == "error"
                    && e.str("command") == "connect"
                    && e.str("message").starts_with(&prefix))
        });
        match answer {
            Ok(e) if e.name() == "connected" => DialOutcome {
                endpoint: dial.endpoint,
                peer: Some(e.str("peer").to_owned()),
                error: None,
                elapsed: e.at.saturating_duration_since(dial.sent),
            },
            Ok(e) => DialOutcome {
                error: Some(
                    e.str("message")
                        .strip_prefix(&prefix)
                        .unwrap_or(e.str("message"))
                        .trim()
                        .to_owned(),
                ),
                endpoint: dial.endpoint,
                peer: None,
                elapsed: e.at.saturating_duration_since(dial.sent),
            },
            Err(e) => DialOutcome {
                endpoint: dial.endpoint,
                peer: None,
                error: Some(format!("{e:#}")),
                elapsed: dial.sent.elapsed(),
            },
        }
    }

    /// Dials `endpoint` and waits for the outcome.
    pub(crate) fn connect(&self, endpoint: &str, deadline: Duration) -> Result<DialOutcome> {
        let dial = self.dial(endpoint)?;
        Ok(self.finish_dial(dial, deadline))
    }

    /// The `address_observed` event `peer` sent us (since position `from`).
    pub(crate) fn observed_by(&self, from: u64, peer: &str, deadline: Duration) -> Result<String> {
        let e = self.wait_for(from, deadline, "address_observed", |e| {
            e.name() == "address_observed" && e.str("peer") == peer
        })?;
        Ok(e.str("endpoint").to_owned())
    }

    /// The endpoint of the connection `peer` made to us (its `new_peer`, inbound).
    pub(crate) fn inbound_from(&self, from: u64, peer: &str, deadline: Duration) -> Result<String> {
        let e = self.wait_for(from, deadline, "new_peer (inbound)", |e| {
            e.name() == "new_peer" && e.str("peer") == peer && e.str("direction") == "inbound"
        })?;
        Ok(e.str("endpoint").to_owned())
    }

    /// Asks the node to quit and waits for it (bounded), killing it if it does not exit.
    pub(crate) fn quit(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(mut stdin) = self.stdin.get_mut().ok().and_then(Option::take) {
            let _ = writeln!(stdin, "quit");
        }
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let _ = child.wait();
            let _ = tx.send(());
        });
        if rx.recv_timeout(QUIT_DEADLINE).is_err() {
            // `ip netns exec` execs the program: this pid is crust-peer's.
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = rx.recv_timeout(QUIT_DEADLINE);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory for one cell's node logs: `<base>/<cell name with / as _>`.
pub(crate) fn cell_log_dir(base: &Path, cell: &str) -> PathBuf {
    base.join(cell.replace('/', "_"))
}
