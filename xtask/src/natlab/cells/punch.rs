//! Hole-punch cells: `a1` (behind `r1`) connects to `b1` (behind `r2`) by `PeerId` alone,
//! introduced by the rendezvous `pub`, many times over, and the success rate and times are
//! compared with what the NAT types allow (`expect::punch`).
//!
//! Every trial starts fresh nodes on ports no earlier trial used (so no NAT mapping or
//! conntrack entry of an earlier trial helps), runs only the protocol under test (the
//! other transport is disabled), lets both nodes learn their NAT class from `pub` and
//! `pub2` (two observer networks), then sends `connect <b1's id>` to `a1` and times the
//! answer.

use super::*;
use crate::natlab::expect::PunchProtocol;
use crate::natlab::node::Event as NodeEvent;

/// Deadline for a node to learn its NAT class after connecting to two observers.
const CLASSIFIED: Duration = Duration::from_secs(10);
/// Deadline for the answer to `connect <peer-id>`: coordination (3 s) + punch (5 s) + margin.
const PUNCH_ANSWER: Duration = Duration::from_secs(20);
/// First port of the range trials take their ports from (4 per trial: a1 and b1, TCP and
/// rUDP), cycling through 40,000 ports.
const TRIAL_PORT_BASE: u16 = 20_000;
const TRIAL_PORT_SPAN: u16 = 40_000;

/// What one trial gave.
#[derive(Debug)]
struct Trial {
    connected: bool,
    /// How the connection was made (`punched-udp`, …) or the failure kind.
    path: String,
    error: Option<String>,
    elapsed: Duration,
}

/// Sends `connect <peer>` (by `PeerId` alone) to `from` and waits for its answer
/// (`connected` or the command's `error`). Returns the answer, the time from the command
/// to it, and the event position the wait started from.
pub(super) fn connect_by_id(from: &Node, peer: &str) -> Result<(NodeEvent, Duration, u64)> {
    let marked = from.mark();
    let sent = Instant::now();
    from.send(&format!("connect {peer}"))?;
    let prefix = format!("connect {peer}:");
    let answer = from.wait_for(marked, PUNCH_ANSWER, "the answer to connect by id", |e| {
        (e.name() == "connected" && e.str("peer") == peer)
            || (e.name() == "error" && e.str("message").starts_with(&prefix))
    })?;
    let elapsed = answer.at.saturating_duration_since(sent);
    Ok((answer, elapsed, marked))
}

/// The reason of a failed `connect <peer>`, without the command's prefix.
pub(super) fn connect_error(answer: &NodeEvent, peer: &str) -> String {
    let message = answer.str("message");
    message
        .strip_prefix(&format!("connect {peer}:"))
        .unwrap_or(message)
        .trim()
        .to_owned()
}

impl Ctx<'_> {
    /// Starts fresh `a1` and `b1` (trial `i` of `cell`, with `flags`) on unused ports,
    /// connects each to the two observers over `scheme` (`tcp` or `rudp`), and waits until
    /// both know their NAT class and the rendezvous `pub` registered both.
    pub(super) fn classified_pair(
        &mut self,
        cell: &str,
        i: usize,
        flags: &[&str],
        scheme: &str,
    ) -> Result<(Node, Node)> {
        let (a_ports, b_ports) = self.trial_ports();
        let dir = cell_log_dir(&self.logs, cell).join(format!("trial-{i:02}"));
        let a1 = Node::start_with(
            &self.bin,
            &self.lab.ns(Role::A1),
            "a1",
            a_ports,
            &dir,
            flags,
        )?;
        let b1 = Node::start_with(
            &self.bin,
            &self.lab.ns(Role::B1),
            "b1",
            b_ports,
            &dir,
            flags,
        )?;
        let p = self.publics;
        let pub_mark = p.rendezvous.mark();
        for node in [&a1, &b1] {
            let marked = node.mark();
            for observer in [&p.rendezvous, &p.other_address] {
                let outcome = node.connect(&observer.endpoint(scheme)?, CONNECT)?;
                if !outcome.connected() {
                    bail!(
                        "{} could not reach {}: {}",
                        node.name,
                        observer.name,
                        outcome.error.unwrap_or_default()
                    );
                }
            }
            node.wait_for(marked, CLASSIFIED, "its NAT class", |e| {
                e.name() == "reachability_changed"
                    && matches!(e.str("nat_type"), "cone" | "symmetric" | "public")
            })?;
        }
        // The coordinator knows both (its side of each connection is registered).
        for node in [&a1, &b1] {
            p.rendezvous
                .inbound_from(pub_mark, &node.peer_id, FOLLOW_UP)?;
        }
        Ok((a1, b1))
    }

    /// The next four unused ports: `(a1 tcp, a1 rudp)`, `(b1 tcp, b1 rudp)`.
    pub(super) fn trial_ports(&mut self) -> ((u16, u16), (u16, u16)) {
        let offset = self.next_trial_port;
        self.next_trial_port = (self.next_trial_port + 4) % TRIAL_PORT_SPAN;
        let p = TRIAL_PORT_BASE + offset;
        ((p, p + 1), (p + 2, p + 3))
    }

    pub(super) fn punch(
        &mut self,
        cell: &str,
        a: NatType,
        b: NatType,
        protocol: PunchProtocol,
    ) -> Result<CellReport> {
        self.lab.configure(Router::R1, a)?;
        self.lab.configure(Router::R2, b)?;
        let mut trials = Vec::new();
        for i in 0..self.trials {
            if topology::interrupted() {
                bail!("interrupted");
            }
            trials.push(self.punch_trial(cell, i, protocol)?);
        }
        let expected = expect::punch(a, b, protocol);
        let ok: Vec<&Trial> = trials.iter().filter(|t| t.connected).collect();
        let rate = ok.len() as f64 / trials.len().max(1) as f64;
        let mut times: Vec<Duration> = ok.iter().map(|t| t.elapsed).collect();
        times.sort();
        let median = times.get(times.len() / 2).copied();
        let mut failure_times: Vec<Duration> = trials
            .iter()
            .filter(|t| !t.connected)
            .map(|t| t.elapsed)
            .collect();
        failure_times.sort();
        let slowest_failure = failure_times.last().copied();
        let mut mismatches = Vec::new();
        if rate + 1e-9 < expected.min_success {
            mismatches.push(format!(
                "{:.0}% connected, expected at least {:.0}%",
                rate * 100.0,
                expected.min_success * 100.0
            ));
        }
        if expected.min_success == 0.0 && !ok.is_empty() {
            mismatches.push(format!(
                "{} of {} connected where none can (an improvement? update expect.rs)",
                ok.len(),
                trials.len()
            ));
        }
        if let Some(median) = median {
            if median >= expect::PUNCH_MEDIAN_LIMIT {
                mismatches.push(format!(
                    "median time to a punched connection {} ms, expected under {} ms",
                    median.as_millis(),
                    expect::PUNCH_MEDIAN_LIMIT.as_millis()
                ));
            }
        }
        if let Some(limit) = expected.fail_within {
            if let Some(slowest) = slowest_failure.filter(|s| *s > limit) {
                mismatches.push(format!(
                    "a failure took {} ms, expected within {} ms",
                    slowest.as_millis(),
                    limit.as_millis()
                ));
            }
            for trial in trials.iter().filter(|t| !t.connected) {
                let error = trial.error.as_deref().unwrap_or("");
                if !(error.contains(&format!("ours: {}", expect::nat_class(a)))
                    && error.contains(&format!("theirs: {}", expect::nat_class(b))))
                {
                    mismatches.push(format!(
                        "the failure does not name both NAT classes: {error}"
                    ));
                    break;
                }
            }
        }
        let wrong_path = ok
            .iter()
            .find(|t| t.path != protocol.path())
            .map(|t| t.path.clone());
        if let Some(path) = wrong_path {
            mismatches.push(format!(
                "a connection was made by {path}, expected {}",
                protocol.path()
            ));
        }
        let first_error = trials.iter().find_map(|t| t.error.clone());
        let details = format!(
            "{}/{} connected, median {}, failures in at most {}{}",
            ok.len(),
            trials.len(),
            median.map_or("-".to_owned(), |m| format!("{} ms", m.as_millis())),
            slowest_failure.map_or("-".to_owned(), |m| format!("{} ms", m.as_millis())),
            first_error
                .as_deref()
                .map(|e| format!("; e.g. {e}"))
                .unwrap_or_default()
        );
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: format!("{}/{} {:.0}%", ok.len(), trials.len(), rate * 100.0),
            mismatches,
            details,
            data: json!({
                "a1_nat": a.name(),
                "b1_nat": b.name(),
                "protocol": protocol.name(),
                "trials": trials.len(),
                "connected": ok.len(),
                "success_rate": round2(rate),
                "expected_min_success_rate": expected.min_success,
                "median_ms": median.map(|m| m.as_millis() as u64),
                "times_ms": times.iter().map(|t| t.as_millis() as u64).collect::<Vec<_>>(),
                "slowest_failure_ms": slowest_failure.map(|m| m.as_millis() as u64),
                "errors": trials.iter().filter_map(|t| t.error.clone()).collect::<Vec<_>>(),
            }),
            elapsed: Duration::ZERO,
        })
    }

    fn punch_trial(&mut self, cell: &str, i: usize, protocol: PunchProtocol) -> Result<Trial> {
        // IPv4 only: IPv6 is routed in the lab (a stateful firewall, no NAT), and a punch
        // over it would say nothing about the NATs. No relay: this measures the punch.
        let only = [
            "--no-port-mapping",
            "--no-ipv6",
            "--no-relay",
            protocol.disable_other(),
        ];
        let (a1, b1) = self.classified_pair(cell, i, &only, protocol.name_in_endpoints())?;
        let (answer, elapsed, marked) = connect_by_id(&a1, &b1.peer_id)?;
        let trial = if answer.name() == "connected" {
            let new_peer = a1.wait_for(marked, FOLLOW_UP, "new_peer for b1", |e| {
                e.name() == "new_peer" && e.str("peer") == b1.peer_id
            })?;
            Trial {
                connected: true,
                path: new_peer.str("path").to_owned(),
                error: None,
                elapsed,
            }
        } else {
            Trial {
                connected: false,
                path: answer.str("reason_kind").to_owned(),
                error: Some(connect_error(&answer, &b1.peer_id)),
                elapsed,
            }
        };
        a1.quit();
        b1.quit();
        Ok(trial)
    }
}

impl Ctx<'_> {
    /// `a1` behind a port-restricted `r1` running miniupnpd maps its ports; `b1` behind a
    /// port-restricted `r2` connects to it by `PeerId`: the coordination hands `b1` the
    /// mapped endpoints, which answer at once, so no punch is needed (`path` = `mapped`).
    pub(super) fn punch_mapped(&mut self, cell: &str) -> Result<CellReport> {
        if let Some(missing) = upnp::missing() {
            return Ok(skipped(cell, &missing));
        }
        self.lab.configure(Router::R1, NatType::PortRestricted)?;
        self.lab.configure(Router::R2, NatType::PortRestricted)?;
        let dir = cell_log_dir(&self.logs, cell);
        let gateway = upnp::start(self.lab, Router::R1, &dir.join("gateway"))?;
        let (a_ports, b_ports) = self.trial_ports();
        let a1 = Node::start_with(
            &self.bin,
            &self.lab.ns(Role::A1),
            "a1",
            a_ports,
            &dir,
            &["--no-ipv6"],
        )?;
        for scheme in ["tcp://", "rudp://"] {
            a1.wait_for(0, MAPPING, "port_mapped", |e| {
                e.name() == "port_mapped" && e.str("external").starts_with(scheme)
            })?;
        }
        let b1 = Node::start_with(
            &self.bin,
            &self.lab.ns(Role::B1),
            "b1",
            b_ports,
            &dir,
            &["--no-port-mapping", "--no-ipv6"],
        )?;
        let p = self.publics;
        let pub_mark = p.rendezvous.mark();
        for node in [&a1, &b1] {
            let outcome = node.connect(&p.rendezvous.endpoint("tcp")?, CONNECT)?;
            if !outcome.connected() {
                bail!(
                    "{} could not reach pub: {}",
                    node.name,
                    outcome.error.unwrap_or_default()
                );
            }
            p.rendezvous
                .inbound_from(pub_mark, &node.peer_id, FOLLOW_UP)?;
        }
        let (answer, elapsed, _) = connect_by_id(&b1, &a1.peer_id)?;
        let path = answer.str("path").to_owned();
        let error = (answer.name() == "error").then(|| connect_error(&answer, &a1.peer_id));
        b1.quit();
        a1.quit();
        drop(gateway);
        let mut mismatches = Vec::new();
        if path != "mapped" {
            mismatches.push(format!(
                "connected by {:?}, expected mapped{}",
                path,
                error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: if path.is_empty() {
                "failed".to_owned()
            } else {
                path.clone()
            },
            mismatches,
            details: format!("b1 -> a1 by id in {} ms via {path}", elapsed.as_millis()),
            data: json!({"path": path, "elapsed_ms": elapsed.as_millis() as u64, "error": error}),
            elapsed: Duration::ZERO,
        })
    }
}
