//! Relay cells: `a1` and `b1` behind NATs no punch gets through (symmetric against
//! symmetric) connect by `PeerId` through a public node both are connected to (`pub` or
//! `pub2`, the two observers each side talks to), and the
//! application sees a normal connection: messages both ways. A relay with a limit of one
//! circuit per peer refuses a second circuit to the same target with a typed reason.

use super::punch::{connect_by_id, connect_error};
use super::*;

/// Deadline for the answer to `connect <peer-id>` that ends relayed: the punch gives up at
/// once between two symmetric NATs, then the relay's circuit and the TLS handshake.
const RELAY_ANSWER: Duration = Duration::from_secs(30);
/// Fixed ports of the limited relay on `pub`.
const LIMITED_RELAY_PORTS: (u16, u16) = (4008, 4009);

/// What one trial gave.
#[derive(Debug)]
struct Trial {
    connected: bool,
    path: String,
    via: String,
    /// A message went each way over the connection.
    messages: bool,
    error: Option<String>,
    elapsed: Duration,
}

/// `from` sends `text` to `to`, which must print it.
fn message_arrives(from: &Node, to: &Node, text: &str) -> Result<()> {
    let marked = to.mark();
    from.send(&format!("send {} {text}", to.peer_id))?;
    to.wait_for(marked, FOLLOW_UP, "the relayed message", |e| {
        e.name() == "message" && e.str("peer") == from.peer_id && e.str("text") == text
    })?;
    Ok(())
}

impl Ctx<'_> {
    pub(super) fn relay(&mut self, cell: &str, a: NatType, b: NatType) -> Result<CellReport> {
        self.lab.configure(Router::R1, a)?;
        self.lab.configure(Router::R2, b)?;
        // Both observers are connected to both sides: either may relay.
        let relays = [
            self.publics.rendezvous.peer_id.clone(),
            self.publics.other_address.peer_id.clone(),
        ];
        let mut trials = Vec::new();
        for i in 0..self.trials {
            if topology::interrupted() {
                bail!("interrupted");
            }
            trials.push(self.relay_trial(cell, i)?);
        }
        let ok: Vec<&Trial> = trials.iter().filter(|t| t.connected).collect();
        let rate = ok.len() as f64 / trials.len().max(1) as f64;
        let mut times: Vec<Duration> = ok.iter().map(|t| t.elapsed).collect();
        times.sort();
        let median = times.get(times.len() / 2).copied();
        let mut mismatches = Vec::new();
        if ok.len() < trials.len() {
            mismatches.push(format!(
                "{} of {} connected, expected all",
                ok.len(),
                trials.len()
            ));
        }
        if let Some(t) = ok
            .iter()
            .find(|t| t.path != "relayed" || !relays.contains(&t.via))
        {
            mismatches.push(format!(
                "a connection was made by {} via {:?}, expected relayed via pub or pub2",
                t.path, t.via
            ));
        }
        let via_pub = ok.iter().filter(|t| t.via == relays[0]).count();
        let silent = ok.iter().filter(|t| !t.messages).count();
        if silent > 0 {
            mismatches.push(format!("{silent} relayed connections carried no message"));
        }
        let first_error = trials.iter().find_map(|t| t.error.clone());
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: format!("{}/{} {:.0}%", ok.len(), trials.len(), rate * 100.0),
            mismatches,
            details: format!(
                "{}/{} relayed ({via_pub} via pub, {} via pub2) with a message each way, median {}{}",
                ok.iter().filter(|t| t.messages).count(),
                trials.len(),
                ok.len() - via_pub,
                median.map_or("-".to_owned(), |m| format!("{} ms", m.as_millis())),
                first_error
                    .as_deref()
                    .map(|e| format!("; e.g. {e}"))
                    .unwrap_or_default()
            ),
            data: json!({
                "a1_nat": a.name(),
                "b1_nat": b.name(),
                "trials": trials.len(),
                "connected": ok.len(),
                "success_rate": round2(rate),
                "median_ms": median.map(|m| m.as_millis() as u64),
                "times_ms": times.iter().map(|t| t.as_millis() as u64).collect::<Vec<_>>(),
                "errors": trials.iter().filter_map(|t| t.error.clone()).collect::<Vec<_>>(),
            }),
            elapsed: Duration::ZERO,
        })
    }

    fn relay_trial(&mut self, cell: &str, i: usize) -> Result<Trial> {
        let flags = ["--no-port-mapping", "--no-ipv6"];
        let (a1, b1) = self.classified_pair(cell, i, &flags, "rudp")?;
        let marked = a1.mark();
        let sent = Instant::now();
        a1.send(&format!("connect {}", b1.peer_id))?;
        let prefix = format!("connect {}:", b1.peer_id);
        let answer = a1.wait_for(marked, RELAY_ANSWER, "the answer to connect by id", |e| {
            (e.name() == "connected" && e.str("peer") == b1.peer_id)
                || (e.name() == "error" && e.str("message").starts_with(&prefix))
        })?;
        let elapsed = answer.at.saturating_duration_since(sent);
        let trial = if answer.name() == "connected" {
            // b1 registers its side a moment after a1 answered.
            let b1_ready = b1
                .wait_for(0, FOLLOW_UP, "new_peer for a1", |e| {
                    e.name() == "new_peer" && e.str("peer") == a1.peer_id
                })
                .is_ok();
            let messages = b1_ready
                && message_arrives(&a1, &b1, &format!("hello-b1-{i}")).is_ok()
                && message_arrives(&b1, &a1, &format!("hello-a1-{i}")).is_ok();
            Trial {
                connected: true,
                path: answer.str("path").to_owned(),
                via: answer.str("via").to_owned(),
                messages,
                error: None,
                elapsed,
            }
        } else {
            Trial {
                connected: false,
                path: String::new(),
                via: String::new(),
                messages: false,
                error: Some(connect_error(&answer, &b1.peer_id)),
                elapsed,
            }
        };
        a1.quit();
        b1.quit();
        Ok(trial)
    }

    /// A relay on `pub` allowing one circuit per peer: `a1` reaches `b1` through it, `a2`
    /// (behind the same router) asking for a second circuit to `b1` is refused with the
    /// limit's name, and the relay's circuit count follows.
    pub(super) fn relay_limit(&mut self, cell: &str) -> Result<CellReport> {
        self.lab.configure(Router::R1, NatType::Symmetric)?;
        self.lab.configure(Router::R2, NatType::Symmetric)?;
        let dir = cell_log_dir(&self.logs, cell);
        let relay = Node::start_with(
            &self.bin,
            &self.lab.ns(Role::Pub),
            "publ",
            LIMITED_RELAY_PORTS,
            &dir,
            &["--no-ipv6", "--relay-max-circuits", "1"],
        )?;
        let flags = ["--no-port-mapping", "--no-ipv6", "--no-hole-punching"];
        let (a_ports, b_ports) = self.trial_ports();
        let (a2_ports, _) = self.trial_ports();
        let a1 = Node::start_with(
            &self.bin,
            &self.lab.ns(Role::A1),
            "a1",
            a_ports,
            &dir,
            &flags,
        )?;
        let a2 = Node::start_with(
            &self.bin,
            &self.lab.ns(Role::A2),
            "a2",
            a2_ports,
            &dir,
            &flags,
        )?;
        let b1 = Node::start_with(
            &self.bin,
            &self.lab.ns(Role::B1),
            "b1",
            b_ports,
            &dir,
            &flags,
        )?;
        let relay_mark = relay.mark();
        for node in [&a1, &a2, &b1] {
            let outcome = node.connect(&relay.endpoint("tcp")?, CONNECT)?;
            if !outcome.connected() {
                bail!("{} could not reach the relay", node.name);
            }
            relay.inbound_from(relay_mark, &node.peer_id, FOLLOW_UP)?;
        }
        let (first, first_ms, _) = connect_by_id(&a1, &b1.peer_id)?;
        let first_path = first.str("path").to_owned();
        let (second, _, _) = connect_by_id(&a2, &b1.peer_id)?;
        let refusal = (second.name() == "error").then(|| connect_error(&second, &b1.peer_id));
        let relay_failure = second.str("relay_failure").to_owned();
        let count = |relay: &Node| -> Result<u64> {
            let marked = relay.mark();
            relay.send("relays")?;
            let answer = relay.wait_for(marked, FOLLOW_UP, "relays", |e| e.name() == "relays")?;
            Ok(answer.value["circuits"].as_u64().unwrap_or(u64::MAX))
        };
        let during = count(&relay)?;
        // a1 quits: its relayed connection ends, and with it the circuit.
        let a1_id = a1.peer_id.clone();
        a1.quit();
        b1.wait_for(0, FOLLOW_UP, "b1 losing a1", |e| {
            e.name() == "lost_peer" && e.str("peer") == a1_id
        })?;
        let after = count(&relay)?;
        a2.quit();
        b1.quit();
        relay.quit();
        let mut mismatches = Vec::new();
        if first_path != "relayed" {
            mismatches.push(format!(
                "the first circuit gave {first_path:?}, expected relayed"
            ));
        }
        match &refusal {
            Some(e) if relay_failure == "refused" && e.contains("too_many_circuits") => {}
            other => mismatches.push(format!(
                "the second circuit was not refused by the limit: {other:?} ({relay_failure})"
            )),
        }
        if during != 1 || after != 0 {
            mismatches.push(format!(
                "the relay counted {during} circuits during and {after} after, expected 1 and 0"
            ));
        }
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: if mismatches.is_empty() {
                "refused".to_owned()
            } else {
                "wrong".to_owned()
            },
            mismatches,
            details: format!(
                "first circuit {first_path} in {} ms; second: {}; circuits {during} -> {after}",
                first_ms.as_millis(),
                refusal.as_deref().unwrap_or("connected")
            ),
            data: json!({
                "first_path": first_path,
                "refusal": refusal,
                "relay_failure": relay_failure,
                "circuits_during": during,
                "circuits_after": after,
            }),
            elapsed: Duration::ZERO,
        })
    }
}

/// Messages each side sends in each phase of the upgrade cell (relayed, unblocked, upgraded).
const UPGRADE_MESSAGES: usize = 100;
/// Deadline for the upgrade once the direct path is open again: the relayed side retries
/// after 1, 2, 4, 8 s (cumulative 15 s), each attempt a coordination and a 5 s punch.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(40);

/// Lets the routers talk to each other again however the cell ends.
struct Unblock<'a>(&'a Lab);

impl Drop for Unblock<'_> {
    fn drop(&mut self) {
        let _ = self.0.block_between_routers(false);
    }
}

/// Sends `count` numbered messages `tag-<n>` (from `first`) from `from` to `to`.
fn send_numbered(from: &Node, to: &Node, first: usize, count: usize) -> Result<()> {
    for n in first..first + count {
        from.send(&format!("send {} m-{n}", to.peer_id))?;
    }
    Ok(())
}

/// Waits for message `m-<last>` from `from` at `to`, then checks that the messages from
/// `from` since `marked` are exactly `m-0` … `m-<last>`, once each, in order.
fn numbered_in_order(to: &Node, from: &Node, marked: u64, last: usize) -> Result<Option<String>> {
    let text = format!("m-{last}");
    to.wait_for(marked, UPGRADE_DEADLINE, "the last numbered message", |e| {
        e.name() == "message" && e.str("peer") == from.peer_id && e.str("text") == text
    })?;
    let got: Vec<String> = to
        .events_since(marked, |e| {
            e.name() == "message" && e.str("peer") == from.peer_id
        })
        .iter()
        .map(|e| e.str("text").to_owned())
        .collect();
    let expected: Vec<String> = (0..=last).map(|n| format!("m-{n}")).collect();
    if got == expected {
        return Ok(None);
    }
    let first_wrong = got
        .iter()
        .zip(&expected)
        .position(|(g, e)| g != e)
        .unwrap_or(got.len().min(expected.len()));
    Ok(Some(format!(
        "{} got {} messages from {}, expected {}; first difference at #{first_wrong}: {:?}",
        to.name,
        got.len(),
        from.name,
        expected.len(),
        got.get(first_wrong)
    )))
}

impl Ctx<'_> {
    /// `a1` and `b1` behind port-restricted NATs, the direct path between the routers
    /// blocked: `connect <b1>` ends relayed. Numbered messages flow both ways; the block is
    /// lifted; `a1`'s upgrade attempts punch through, both sides report
    /// `connection_upgraded`, every message arrives once and in order, and the relay's
    /// circuit is released.
    pub(super) fn relay_upgrade(&mut self, cell: &str) -> Result<CellReport> {
        self.lab.configure(Router::R1, NatType::PortRestricted)?;
        self.lab.configure(Router::R2, NatType::PortRestricted)?;
        let flags = ["--no-port-mapping", "--no-ipv6"];
        let (a1, b1) = self.classified_pair(cell, 0, &flags, "rudp")?;
        self.lab.block_between_routers(true)?;
        let unblock = Unblock(self.lab);
        let (answer, relayed_ms, _) = connect_by_id(&a1, &b1.peer_id)?;
        if answer.name() != "connected" || answer.str("path") != "relayed" {
            bail!(
                "with the direct path blocked, connect gave {} {:?} ({})",
                answer.name(),
                answer.str("path"),
                answer.str("message")
            );
        }
        let via = answer.str("via").to_owned();
        // b1 registers its side a moment after a1 answered: before that its sends to a1
        // would fail ("not connected").
        b1.wait_for(0, FOLLOW_UP, "new_peer for a1", |e| {
            e.name() == "new_peer" && e.str("peer") == a1.peer_id
        })?;
        let (a_mark, b_mark) = (a1.mark(), b1.mark());
        // Phase 1: relayed.
        send_numbered(&a1, &b1, 0, UPGRADE_MESSAGES)?;
        send_numbered(&b1, &a1, 0, UPGRADE_MESSAGES)?;
        // Phase 2: the direct path opens; a1's next attempt punches through.
        drop(unblock);
        let unblocked = Instant::now();
        send_numbered(&a1, &b1, UPGRADE_MESSAGES, UPGRADE_MESSAGES)?;
        send_numbered(&b1, &a1, UPGRADE_MESSAGES, UPGRADE_MESSAGES)?;
        let upgraded = a1.wait_for(a_mark, UPGRADE_DEADLINE, "connection_upgraded", |e| {
            e.name() == "connection_upgraded" && e.str("peer") == b1.peer_id
        })?;
        let upgrade_ms = upgraded.at.saturating_duration_since(unblocked).as_millis() as u64;
        let new_path = upgraded.str("path").to_owned();
        let b_upgraded = b1
            .wait_for(b_mark, FOLLOW_UP, "connection_upgraded at b1", |e| {
                e.name() == "connection_upgraded" && e.str("peer") == a1.peer_id
            })
            .is_ok();
        // Phase 3: upgraded.
        send_numbered(&a1, &b1, 2 * UPGRADE_MESSAGES, UPGRADE_MESSAGES)?;
        send_numbered(&b1, &a1, 2 * UPGRADE_MESSAGES, UPGRADE_MESSAGES)?;
        let last = 3 * UPGRADE_MESSAGES - 1;
        let mut mismatches = Vec::new();
        for (node, mark) in [(&a1, a_mark), (&b1, b_mark)] {
            // Commands run in order: once `peers` is answered, every `send` before it has
            // printed its `sent` (or its error).
            let marked = node.mark();
            node.send("peers")?;
            node.wait_for(marked, FOLLOW_UP, "peers", |e| e.name() == "peers")?;
            let sent = node.events_since(mark, |e| e.name() == "sent").len();
            if sent != last + 1 {
                mismatches.push(format!("{} sent {sent} of {}", node.name, last + 1));
            }
        }
        mismatches.extend(numbered_in_order(&b1, &a1, b_mark, last)?);
        mismatches.extend(numbered_in_order(&a1, &b1, a_mark, last)?);
        if !matches!(new_path.as_str(), "punched-udp" | "punched-tcp") {
            mismatches.push(format!("upgraded to {new_path:?}, expected a punched path"));
        }
        if !b_upgraded {
            mismatches.push("b1 reported no connection_upgraded".to_owned());
        }
        // The circuit goes once the relayed connection has drained.
        let relay = [&self.publics.rendezvous, &self.publics.other_address]
            .into_iter()
            .find(|n| n.peer_id == via)
            .context("the relay is one of the public nodes")?;
        let released_by = Instant::now() + FOLLOW_UP;
        let circuits = loop {
            let marked = relay.mark();
            relay.send("relays")?;
            let answer = relay.wait_for(marked, FOLLOW_UP, "relays", |e| e.name() == "relays")?;
            let n = answer.value["circuits"].as_u64().unwrap_or(u64::MAX);
            if n == 0 || Instant::now() >= released_by {
                break n;
            }
            // Polling a count: the release has no event of its own. Bounded by the deadline.
            std::thread::sleep(Duration::from_millis(100));
        };
        if circuits != 0 {
            mismatches.push(format!("the relay still carries {circuits} circuits"));
        }
        a1.quit();
        b1.quit();
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: if mismatches.is_empty() {
                new_path.clone()
            } else {
                "wrong".to_owned()
            },
            mismatches,
            details: format!(
                "relayed in {} ms; upgraded to {new_path} {upgrade_ms} ms after the block was lifted; {} numbered messages each way once and in order; circuits now {circuits}",
                relayed_ms.as_millis(),
                last + 1
            ),
            data: json!({
                "relayed_ms": relayed_ms.as_millis() as u64,
                "upgrade_ms": upgrade_ms,
                "path": new_path,
                "messages_each_way": last + 1,
                "circuits_after": circuits,
            }),
            elapsed: Duration::ZERO,
        })
    }
}
