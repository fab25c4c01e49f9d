//! Cells about what a router does besides NAT: a UPnP gateway (miniupnpd), its WAN input
//! firewall against early packets, and IPv6 routed through a stateful firewall.

use super::*;

impl Ctx<'_> {
    /// `r1` without NAT: `pub` dials `a1`'s own TCP endpoint, `pubx` its rUDP endpoint.
    pub(super) fn ipv6_firewall(&mut self, cell: &str) -> Result<CellReport> {
        self.lab.configure(Router::R1, NatType::PortRestricted)?;
        let p = self.publics;
        let a1 = self.node(cell, Role::A1, "a1", A1_PORTS)?;
        let pub6 = Role::Pub.ipv6().context("pub has IPv6")?;
        let a16 = Role::A1.ipv6().context("a1 has IPv6")?;
        // Outbound over IPv6: must work on both transports.
        let mut outbound = Vec::new();
        for (protocol, port) in [("tcp", PUB_PORTS.0), ("rudp", PUB_PORTS.1)] {
            let endpoint = format!("{protocol}://[{pub6}]:{port}");
            outbound.push((protocol, a1.connect(&endpoint, CONNECT)?));
        }
        // Inbound, unsolicited, at a1's own IPv6 endpoints: the firewall drops it.
        let tcp_in = p
            .same_address
            .dial(&format!("tcp://[{a16}]:{}", A1_PORTS.0))?;
        let rudp_in = p
            .same_address
            .dial(&format!("rudp://[{a16}]:{}", A1_PORTS.1))?;
        let inbound = [
            ("tcp", p.same_address.finish_dial(tcp_in, DIAL_OUTCOME)),
            ("rudp", p.same_address.finish_dial(rudp_in, DIAL_OUTCOME)),
        ];
        let announced_v6 = a1.endpoints.iter().any(|e| e.contains(&a16.to_string()));
        a1.quit();
        let mut mismatches = Vec::new();
        let mut details = Vec::new();
        for (protocol, outcome) in &outbound {
            let ok = outcome.peer.as_deref() == Some(p.rendezvous.peer_id.as_str());
            if !ok {
                mismatches.push(format!(
                    "a1 -> pub over IPv6 {protocol}: {}",
                    dial_text(outcome)
                ));
            }
            details.push(format!("out {protocol} {}", dial_text(outcome)));
        }
        for (protocol, outcome) in &inbound {
            if outcome.connected() {
                mismatches.push(format!(
                    "unsolicited IPv6 {protocol} reached a1 through the firewall"
                ));
            }
            details.push(format!("in {protocol} {}", dial_text(outcome)));
        }
        if !announced_v6 {
            mismatches.push(format!("a1 does not announce its IPv6 address {a16}"));
        }
        let out_ok = outbound
            .iter()
            .filter(|(_, o)| o.peer.as_deref() == Some(p.rendezvous.peer_id.as_str()))
            .count();
        let in_ok = inbound.iter().filter(|(_, o)| o.connected()).count();
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: format!("out {out_ok}/2 connected, in {in_ok}/2 (firewall)"),
            mismatches,
            details: details.join(" | "),
            data: json!({
                "a1": a16.to_string(),
                "pub": pub6.to_string(),
                "outbound": outbound.iter().map(|(p, o)| json!({"protocol": p, "dial": dial_json(o)})).collect::<Vec<_>>(),
                "inbound": inbound.iter().map(|(p, o)| json!({"protocol": p, "dial": dial_json(o)})).collect::<Vec<_>>(),
                "a1_announces_ipv6": announced_v6,
            }),
            elapsed: Duration::ZERO,
        })
    }
}

impl Ctx<'_> {
    /// miniupnpd on `r1` (port-restricted); `a1` maps TCP 4100 and UDP 4101 with `upnpc`,
    /// `pub` dials the TCP mapping and `pubx` the rUDP one; then `a1` deletes them.
    pub(super) fn upnp(&mut self, cell: &str) -> Result<CellReport> {
        if let Some(missing) = upnp::missing() {
            return Ok(skipped(cell, &missing));
        }
        self.lab.configure(Router::R1, NatType::PortRestricted)?;
        let dir = cell_log_dir(&self.logs, cell);
        let gateway = upnp::start(self.lab, Router::R1, &dir.join("gateway"))?;
        let p = self.publics;
        let a1 = self.node(cell, Role::A1, "a1", A1_PORTS)?;
        let url = upnp::root_desc_url(self.lab, Router::R1);
        let a1_ns = self.lab.ns(Role::A1);
        let a1_ip = self.lab.ip(Role::A1).to_string();
        let upnpc = |args: &[&str]| -> Result<String> {
            let mut full = vec!["netns", "exec", a1_ns.as_str(), "upnpc", "-u", url.as_str()];
            full.extend_from_slice(args);
            topology::output("ip", &full)
        };
        let (tcp, udp) = (A1_PORTS.0.to_string(), A1_PORTS.1.to_string());
        upnpc(&["-e", "natlab", "-a", &a1_ip, &tcp, &tcp, "TCP"])?;
        upnpc(&["-e", "natlab", "-a", &a1_ip, &udp, &udp, "UDP"])?;
        let mapped = gateway.mappings()?;
        let wan = Router::R1.wan_ip();
        let tcp_dial = p.rendezvous.dial(&format!("tcp://{wan}:{tcp}"))?;
        let rudp_dial = p.same_address.dial(&format!("rudp://{wan}:{udp}"))?;
        let tcp_outcome = p.rendezvous.finish_dial(tcp_dial, DIAL_OUTCOME);
        let rudp_outcome = p.same_address.finish_dial(rudp_dial, DIAL_OUTCOME);
        upnpc(&["-d", &tcp, "TCP"])?;
        upnpc(&["-d", &udp, "UDP"])?;
        let left = gateway.mappings()?;
        let mut report = reached_report(
            cell,
            &a1,
            [("tcp", tcp_outcome), ("rudp", rudp_outcome)],
            json!({"nat": "port-restricted", "dnat_rules": mapped, "after_delete": left}),
        )?;
        let made = mapped.matches("dnat").count();
        let remaining = left.matches("dnat").count();
        if made != 2 {
            report
                .mismatches
                .push(format!("{made} DNAT rules after two mappings"));
        }
        if remaining != 0 {
            report
                .mismatches
                .push(format!("{remaining} DNAT rules left after deleting"));
        }
        report.outcome = format!("{} (mapped {made}, left {remaining})", report.outcome);
        drop(gateway);
        Ok(report)
    }
}

impl Ctx<'_> {
    /// `pub` dials `r1`'s WAN address at the port `a1` will use (nothing is mapped there
    /// yet: the packets reach the router itself); then `a1` connects to `pub` over rUDP.
    /// Without the WAN input firewall the early packets leave a conntrack entry whose tuple
    /// is the one `a1`'s mapping needs, and masquerade moves `a1` to another port.
    pub(super) fn early_punch(&mut self, cell: &str) -> Result<CellReport> {
        self.lab.configure(Router::R1, NatType::PortRestricted)?;
        let p = self.publics;
        let target = format!("rudp://{}:{}", Router::R1.wan_ip(), A1_PORTS.1);
        let punch = p.rendezvous.dial(&target)?;
        // The QUIC Initial leaves at once; make sure the router saw it before a1 starts.
        let seen = wait_for_drop(self.lab, Router::R1)?;
        let a1 = self.node(cell, Role::A1, "a1", A1_PORTS)?;
        must_connect(&a1, &p.rendezvous, "rudp")?;
        let mapped = p.rendezvous.inbound_from(0, &a1.peer_id, FOLLOW_UP)?;
        a1.quit();
        // The punch dial fails after the handshake timeout; wait for it, so that its late
        // answer cannot be taken for the answer to a later dial to the same endpoint.
        let punch = p.rendezvous.finish_dial(punch, DIAL_OUTCOME);
        let kept = port_of(&mapped) == Some(A1_PORTS.1);
        let mut mismatches = Vec::new();
        if !kept {
            mismatches.push(format!(
                "a1's mapping moved to {mapped} after an early packet"
            ));
        }
        if punch.connected() {
            mismatches.push("the early dial reached something".to_owned());
        }
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: format!("port {}", if kept { "kept" } else { "moved" }),
            mismatches,
            details: format!(
                "early packets dropped by r1's input firewall: {seen} | a1 then mapped to {mapped}"
            ),
            data: json!({"early_dial": dial_json(&punch), "mapped": mapped, "dropped_by_input_firewall": seen}),
            elapsed: Duration::ZERO,
        })
    }
}

impl Ctx<'_> {
    /// miniupnpd on `r1` (port-restricted) and `a1` with port mapping on: it must report
    /// `port_mapped` for TCP and UDP, be reachable there from `pub` and `pubx`, and its
    /// mappings must be gone once it has quit.
    pub(super) fn upnp_crust(&mut self, cell: &str) -> Result<CellReport> {
        if let Some(missing) = upnp::missing() {
            return Ok(skipped(cell, &missing));
        }
        self.lab.configure(Router::R1, NatType::PortRestricted)?;
        let dir = cell_log_dir(&self.logs, cell);
        let gateway = upnp::start(self.lab, Router::R1, &dir.join("gateway"))?;
        let p = self.publics;
        let a1 = Node::start_mapping(&self.bin, &self.lab.ns(Role::A1), "a1", A1_PORTS, &dir)?;
        let mut external = Vec::new();
        let mut methods = Vec::new();
        for scheme in ["tcp://", "rudp://"] {
            let e = a1.wait_for(0, MAPPING, "port_mapped", |e| {
                e.name() == "port_mapped" && e.str("external").starts_with(scheme)
            })?;
            external.push(e.str("external").to_owned());
            methods.push(e.str("method").to_owned());
        }
        let rules = gateway.mappings()?;
        let tcp = p.rendezvous.dial(&external[0])?;
        let rudp = p.same_address.dial(&external[1])?;
        let tcp = p.rendezvous.finish_dial(tcp, DIAL_OUTCOME);
        let rudp = p.same_address.finish_dial(rudp, DIAL_OUTCOME);
        let mut report = reached_report(
            cell,
            &a1,
            [("tcp", tcp), ("rudp", rudp)],
            json!({"external": external, "methods": methods, "dnat_rules": rules}),
        )?;
        // Quitting shuts the service down, which removes its mappings before it exits.
        a1.quit();
        let left = gateway.mappings()?;
        let remaining = left.matches("dnat").count();
        if remaining != 0 {
            report
                .mismatches
                .push(format!("{remaining} DNAT rules left after a1 quit"));
        }
        report.data["after_quit"] = json!(left);
        report.outcome = format!(
            "{} via {}, left {remaining}",
            report.outcome,
            methods.join("+")
        );
        drop(gateway);
        Ok(report)
    }
}
