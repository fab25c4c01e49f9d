//! Helpers the cells share: dialling, reading endpoints, building report rows.

use super::*;

/// A cell that cannot run here: expected, with the reason in its details.
pub(super) fn skipped(cell: &str, missing: &str) -> CellReport {
    CellReport {
        name: cell.to_owned(),
        outcome: "skipped".to_owned(),
        mismatches: Vec::new(),
        details: format!("not installed: {missing}"),
        data: json!({"skipped": missing}),
        elapsed: Duration::ZERO,
    }
}

/// Waits (bounded) until `router`'s WAN input firewall has dropped a packet, read from the
/// rule's counter; returns how many.
pub(super) fn wait_for_drop(lab: &Lab, router: Router) -> Result<u64> {
    let ns = lab.ns(router.role());
    let until = Instant::now() + FOLLOW_UP;
    loop {
        let out = topology::output(
            "ip",
            &[
                "netns", "exec", &ns, "nft", "list", "chain", "ip", "natlab", "input",
            ],
        )?;
        let dropped = out
            .lines()
            .find(|l| l.contains("iifname \"wan\"") && l.trim_end().ends_with("drop"))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if dropped > 0 {
            return Ok(dropped);
        }
        if Instant::now() >= until {
            bail!("r1 dropped nothing within {}s", FOLLOW_UP.as_secs());
        }
        // Polling a counter: there is no event to wait for. Bounded by the deadline.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The report of a cell whose dials must all reach `target`.
pub(super) fn reached_report<const N: usize>(
    cell: &str,
    target: &Node,
    dials: [(&str, DialOutcome); N],
    mut data: Value,
) -> Result<CellReport> {
    let mut mismatches = Vec::new();
    let mut details = Vec::new();
    let mut facts = Vec::new();
    let mut reached = 0;
    for (protocol, outcome) in &dials {
        let got = outcome.peer.as_deref() == Some(target.peer_id.as_str());
        reached += usize::from(got);
        if !got {
            mismatches.push(format!(
                "{protocol} {}: {}",
                outcome.endpoint,
                dial_text(outcome)
            ));
        }
        details.push(format!(
            "{protocol} {} {}",
            outcome.endpoint,
            dial_text(outcome)
        ));
        facts.push(json!({"protocol": protocol, "dial": dial_json(outcome)}));
    }
    data["dials"] = Value::Array(facts);
    Ok(CellReport {
        name: cell.to_owned(),
        outcome: format!("{reached}/{N} connected"),
        mismatches,
        details: details.join(" | "),
        data,
        elapsed: Duration::ZERO,
    })
}

/// `node` dials `target`'s `protocol` endpoint and must succeed.
pub(super) fn must_connect(node: &Node, target: &Node, protocol: &str) -> Result<()> {
    let outcome = node.connect(&target.endpoint(protocol)?, CONNECT)?;
    if outcome.peer.as_deref() != Some(target.peer_id.as_str()) {
        bail!(
            "{} could not reach {} at {}: {}",
            node.name,
            target.name,
            outcome.endpoint,
            outcome
                .error
                .unwrap_or_else(|| "another peer answered".into())
        );
    }
    Ok(())
}

/// The local port of `role`'s established TCP connection to `remote` (`tcp://IP:PORT`),
/// from `ss` inside its namespace.
pub(super) fn local_tcp_port(lab: &Lab, role: Role, remote: &str) -> Result<u16> {
    let remote = remote.trim_start_matches("tcp://");
    let out = topology::output(
        "ip",
        &[
            "netns",
            "exec",
            &lab.ns(role),
            "ss",
            "-Htn",
            "state",
            "established",
            "dst",
            remote,
        ],
    )?;
    // Lines: `Recv-Q Send-Q Local:Port Peer:Port` (no state column with a state filter).
    out.lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter_map(|local| local.rsplit_once(':')?.1.parse().ok())
        .next()
        .with_context(|| {
            format!(
                "no established TCP connection to {remote} in {}: {out:?}",
                role.name()
            )
        })
}

/// The address of an endpoint text `proto://IP:PORT`.
pub(super) fn ip_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    rest.rsplit_once(':').map_or(rest, |(ip, _)| ip)
}

/// The port of an endpoint text `proto://IP:PORT`.
pub(super) fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':')?.1.parse().ok()
}

pub(super) fn port_text(endpoint: &str) -> String {
    port_of(endpoint).map_or_else(|| endpoint.to_owned(), |p| p.to_string())
}

pub(super) fn pass(ok: bool) -> &'static str {
    if ok { "connects" } else { "blocked" }
}

/// `ok 0.01s` or `fail 10.0s (handshake timed out)`.
pub(super) fn dial_text(o: &DialOutcome) -> String {
    match &o.error {
        None => format!("ok {:.2}s", o.elapsed.as_secs_f64()),
        Some(e) => format!("fail {:.1}s ({})", o.elapsed.as_secs_f64(), short_error(e)),
    }
}

/// One word for a dial error (the whole text is in the JSON file).
pub(super) fn short_error(e: &str) -> &str {
    if e.contains("refused") {
        "refused"
    } else if e.contains("unreachable") {
        "unreachable"
    } else if e.contains("no answer") || e.contains("timed out") || e.contains("timeout") {
        "timeout"
    } else {
        e.rsplit(": ").next().unwrap_or(e)
    }
}

pub(super) fn dial_json(o: &DialOutcome) -> Value {
    json!({
        "endpoint": o.endpoint,
        "connected": o.connected(),
        "peer": o.peer,
        "error": o.error,
        "seconds": round2(o.elapsed.as_secs_f64()),
    })
}
