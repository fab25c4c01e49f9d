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
            let messages = message_arrives(&a1, &b1, &format!("hello-b1-{i}")).is_ok()
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
