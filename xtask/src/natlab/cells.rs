//! The cells of the matrix: what each one sets up, drives and checks.
//!
//! Every cell configures the routers it needs (which also empties their conntrack tables),
//! starts fresh nodes behind them and ends them when it returns; the public nodes (`pub`,
//! `pubx`, `pub2`) run for the whole lab. Every wait is for an event, with a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::expect::{self, Target};
use super::nat::NatType;
use super::node::{DialOutcome, Node, cell_log_dir};
use super::report::{CellReport, round2};
use super::topology::{self, Lab, Role, Router};
use super::upnp;

/// Deadline for a dial that must succeed inside the lab (a few ms in practice).
const CONNECT: Duration = Duration::from_secs(15);
/// Deadline for a dial that may fail: Crust's connect timeout (20 s) plus a margin. A
/// blocked dial ends after the 10 s handshake timeout.
const DIAL_OUTCOME: Duration = Duration::from_secs(30);
/// Deadline for an event that follows a connection (observed address, inbound peer).
const FOLLOW_UP: Duration = Duration::from_secs(10);
/// Deadline for a node's port mapping through the lab's miniupnpd (probing takes up to
/// 2 s, a mapping a few round trips).
const MAPPING: Duration = Duration::from_secs(20);

/// Fixed `(tcp, rudp)` ports of each node.
const PUB_PORTS: (u16, u16) = (4000, 4001);
/// The second node on `pub`'s address.
const PUBX_PORTS: (u16, u16) = (4002, 4003);
const PUB2_PORTS: (u16, u16) = (4000, 4001);
/// The probe helper on `pub2`'s second address.
const HELPER_PORTS: (u16, u16) = (4004, 4005);
/// Deadline for Crust's own filtering verdict (its test takes at most 6 s).
const FILTERING_VERDICT: Duration = Duration::from_secs(20);
const A1_PORTS: (u16, u16) = (4100, 4101);
const A2_PORTS: (u16, u16) = (4200, 4201);
/// A second node on `a2` (same-NAT over rUDP).
const A2R_PORTS: (u16, u16) = (4202, 4203);
const B1_PORTS: (u16, u16) = (4300, 4301);

/// One row of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cell {
    /// `a1` behind `r1` of this type connects to the public nodes: what do they see, what
    /// does it learn, is the port kept, does the mapping depend on the destination?
    Observe(NatType),
    /// Unsolicited rUDP connections to `a1`'s live mapping, from the address it talks to
    /// (another port) and from another address: the NAT's filtering.
    Filter(NatType),
    /// `a1` behind `r1` (first type) dials `b1` behind `r2` (second type) directly at
    /// `b1`'s observed and LAN endpoints.
    Pair(NatType, NatType),
    /// `a1` and `a2` behind the same `r1` connect over their LAN endpoints.
    SameNat(NatType),
    /// `pub` dials a host behind a router without NAT.
    DirectNone,
    /// miniupnpd on a port-restricted `r1`: `a1` maps its ports with `upnpc`, the public
    /// nodes dial them, and the mappings go when deleted.
    Upnp,
    /// miniupnpd on a port-restricted `r1` and `a1` mapping its own ports (crust-peer's
    /// default): the public nodes dial the mapped endpoints; `a1`'s mappings go when it
    /// quits.
    UpnpCrust,
    /// IPv6, routed with a stateful firewall on `r1`: `a1` connects to `pub` over IPv6 on
    /// TCP and rUDP; `pub` dialling `a1`'s IPv6 endpoints unsolicited is dropped.
    Ipv6Firewall,
    /// `pub` sends to `r1`'s WAN port before `a1` uses it (an early punch); `a1`'s mapping
    /// towards `pub` must still keep its port (the WAN input firewall's job).
    EarlyPunch,
}

impl Cell {
    /// The cell's name in the matrix.
    pub(crate) fn name(self) -> String {
        match self {
            Cell::Observe(t) => format!("observe/{t}"),
            Cell::Filter(t) => format!("filter/{t}"),
            Cell::Pair(a, b) => format!("pair/{a}->{b}"),
            Cell::SameNat(t) => format!("same-nat/{t}"),
            Cell::DirectNone => "direct/none".to_owned(),
            Cell::Upnp => "upnp/port-restricted".to_owned(),
            Cell::EarlyPunch => "early-punch/port-restricted".to_owned(),
            Cell::UpnpCrust => "upnp/crust-peer-maps".to_owned(),
            Cell::Ipv6Firewall => "ipv6/firewall".to_owned(),
        }
    }

    /// The full matrix.
    pub(crate) fn all() -> Vec<Cell> {
        let mut cells: Vec<Cell> = NatType::ALL.iter().map(|t| Cell::Observe(*t)).collect();
        cells.extend(NatType::ALL.iter().map(|t| Cell::Filter(*t)));
        for a in NatType::ALL {
            cells.extend(NatType::ALL.iter().map(|b| Cell::Pair(a, *b)));
        }
        cells.extend(NatType::ALL.iter().map(|t| Cell::SameNat(*t)));
        cells.push(Cell::DirectNone);
        cells.push(Cell::EarlyPunch);
        cells.push(Cell::Upnp);
        cells.push(Cell::UpnpCrust);
        cells.push(Cell::Ipv6Firewall);
        cells
    }

    /// The short set CI runs (`--quick`): a few seconds once the lab is up.
    pub(crate) fn quick() -> Vec<Cell> {
        vec![
            Cell::Observe(NatType::None),
            Cell::Observe(NatType::FullCone),
            Cell::Observe(NatType::AddressRestricted),
            Cell::Observe(NatType::PortRestricted),
            Cell::Observe(NatType::Symmetric),
            Cell::Filter(NatType::FullCone),
            Cell::SameNat(NatType::PortRestricted),
            Cell::DirectNone,
            Cell::UpnpCrust,
            Cell::Ipv6Firewall,
        ]
    }
}

/// The public nodes, up for the whole lab.
#[derive(Debug)]
pub(crate) struct Publics {
    /// The rendezvous on `pub` (`198.18.0.2`, ports 4000/4001).
    pub(crate) rendezvous: Node,
    /// A second node on `pub`'s address (ports 4002/4003).
    pub(crate) same_address: Node,
    /// The node on `pub2` (`198.18.2.2`): another address.
    pub(crate) other_address: Node,
    /// A node on `pub2`'s second address, connected to `pubx` and `pub2`: the third party
    /// of Crust's filtering test (it probes from an address the host never talked to).
    pub(crate) probe_helper: Node,
}

impl Publics {
    /// Starts the three public nodes.
    pub(crate) fn start(lab: &Lab, bin: &Path, logs: &Path) -> Result<Publics> {
        let dir = logs.join("public");
        let publics = Publics {
            rendezvous: Node::start(bin, &lab.ns(Role::Pub), "pub", PUB_PORTS, &dir)?,
            same_address: Node::start(bin, &lab.ns(Role::Pub), "pubx", PUBX_PORTS, &dir)?,
            other_address: Node::start(bin, &lab.ns(Role::Pub2), "pub2", PUB2_PORTS, &dir)?,
            probe_helper: Node::start_on(
                bin,
                &lab.ns(Role::Pub2),
                "pubq",
                HELPER_PORTS,
                &dir,
                topology::PROBE_HELPER_IP,
            )?,
        };
        must_connect(&publics.same_address, &publics.probe_helper, "tcp")?;
        must_connect(&publics.other_address, &publics.probe_helper, "tcp")?;
        Ok(publics)
    }
}

/// What cells need: the lab, the public nodes, the binary and where logs go.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    /// The lab (cells re-configure its routers).
    pub(crate) lab: &'a mut Lab,
    /// The public nodes.
    pub(crate) publics: &'a Publics,
    /// The `crust-peer` binary.
    pub(crate) bin: PathBuf,
    /// Base directory of the node logs.
    pub(crate) logs: PathBuf,
}

impl Ctx<'_> {
    /// Runs one cell; a cell that cannot finish becomes an `error` row.
    pub(crate) fn run(&mut self, cell: Cell) -> CellReport {
        let name = cell.name();
        let start = Instant::now();
        let result = match cell {
            Cell::Observe(t) => self.observe(&name, t),
            Cell::Filter(t) => self.filter(&name, t),
            Cell::Pair(a, b) => self.pair(&name, a, b),
            Cell::SameNat(t) => self.same_nat(&name, t),
            Cell::DirectNone => self.direct_none(&name),
            Cell::Upnp => self.upnp(&name),
            Cell::EarlyPunch => self.early_punch(&name),
            Cell::UpnpCrust => self.upnp_crust(&name),
            Cell::Ipv6Firewall => self.ipv6_firewall(&name),
        };
        match result {
            Ok(mut report) => {
                report.elapsed = start.elapsed();
                report
            }
            Err(e) => CellReport::error(&name, &e, start.elapsed()),
        }
    }

    fn node(&self, cell: &str, role: Role, name: &str, ports: (u16, u16)) -> Result<Node> {
        Node::start(
            &self.bin,
            &self.lab.ns(role),
            name,
            ports,
            &cell_log_dir(&self.logs, cell),
        )
    }

    /// `a1` connects to `pub` over TCP, and over rUDP to `pub2` and `pubx` (two observers
    /// at different addresses and ports).
    fn observe(&mut self, cell: &str, nat: NatType) -> Result<CellReport> {
        self.lab.configure(Router::R1, nat)?;
        let p = self.publics;
        let a1 = self.node(cell, Role::A1, "a1", A1_PORTS)?;
        let want_ip = if nat.translates() {
            Router::R1.wan_ip().to_string()
        } else {
            self.lab.ip(Role::A1).to_string()
        };

        must_connect(&a1, &p.rendezvous, "tcp")?;
        let seen_tcp = p.rendezvous.inbound_from(0, &a1.peer_id, FOLLOW_UP)?;
        let learned_tcp = a1.observed_by(0, &p.rendezvous.peer_id, FOLLOW_UP)?;
        let local_tcp = local_tcp_port(self.lab, Role::A1, &p.rendezvous.endpoint("tcp")?)?;

        let to_other = a1.dial(&p.other_address.endpoint("rudp")?)?;
        let to_same = a1.dial(&p.same_address.endpoint("rudp")?)?;
        for outcome in [
            a1.finish_dial(to_other, CONNECT),
            a1.finish_dial(to_same, CONNECT),
        ] {
            if !outcome.connected() {
                bail!(
                    "a1 could not reach {}: {:?}",
                    outcome.endpoint,
                    outcome.error
                );
            }
        }
        let seen_other = p.other_address.inbound_from(0, &a1.peer_id, FOLLOW_UP)?;
        let seen_same = p.same_address.inbound_from(0, &a1.peer_id, FOLLOW_UP)?;
        let learned_other = a1.observed_by(0, &p.other_address.peer_id, FOLLOW_UP)?;
        let learned_same = a1.observed_by(0, &p.same_address.peer_id, FOLLOW_UP)?;
        // What Crust concludes from these observations (`nat` command).
        let from = a1.mark();
        a1.send("nat")?;
        let class = a1.wait_for(from, FOLLOW_UP, "the answer to nat", |e| e.name() == "nat")?;
        // Crust's peer-assisted filtering test (pub2 or pubx probes from another port,
        // pubq from another address) completes the class.
        let verdict = a1.wait_for(0, FILTERING_VERDICT, "a filtering verdict", |e| {
            e.name() == "reachability_changed"
                && e.str("filtering") != "unknown"
                && e.str("nat_type") != "unknown"
        });
        a1.quit();
        let nat_class = match &verdict {
            Ok(event) => event.str("nat_class").to_owned(),
            Err(_) => "none reported".to_owned(),
        };

        let mut mismatches = Vec::new();
        for seen in [&seen_tcp, &seen_other, &seen_same] {
            if ip_of(seen) != want_ip {
                mismatches.push(format!("observed {seen}, expected address {want_ip}"));
            }
        }
        for (seen, learned, by) in [
            (&seen_tcp, &learned_tcp, "pub"),
            (&seen_other, &learned_other, "pub2"),
            (&seen_same, &learned_same, "pubx"),
        ] {
            if seen != learned {
                mismatches.push(format!("{by} saw {seen} but a1 learned {learned}"));
            }
        }
        let tcp_kept = port_of(&seen_tcp) == Some(local_tcp);
        let rudp_kept = [&seen_other, &seen_same]
            .iter()
            .all(|s| port_of(s) == Some(A1_PORTS.1));
        let independent = port_of(&seen_other) == port_of(&seen_same);
        let want = expect::observation(nat);
        for (what, got, wanted) in [
            ("tcp port preserved", tcp_kept, want.port_preserved),
            ("rudp port preserved", rudp_kept, want.port_preserved),
            (
                "endpoint-independent mapping",
                independent,
                want.endpoint_independent_mapping,
            ),
        ] {
            if got != wanted {
                mismatches.push(format!("{what}: {got}, expected {wanted}"));
            }
        }
        let nat_type = class.str("nat_type").to_owned();
        let want_class = expect::classification(nat);
        if nat_type != want_class {
            mismatches.push(format!(
                "crust classifies it as {nat_type:?}, expected {want_class:?}"
            ));
        }
        let want_nat_class = expect::nat_class(nat);
        if nat_class != want_nat_class {
            mismatches.push(format!(
                "crust's class with filtering is {nat_class:?}, expected {want_nat_class:?}"
            ));
        }
        let mapping = if independent {
            "independent"
        } else {
            "dependent"
        };
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: format!(
                "{} {} {} nat={nat_type} class={nat_class}",
                ip_of(&seen_tcp),
                if tcp_kept && rudp_kept {
                    "kept"
                } else {
                    "moved"
                },
                if independent { "EIM" } else { "EDM" },
            ),
            mismatches,
            details: format!(
                "tcp {local_tcp}->{} | rudp {}->{} (pub2) {} (pubx) | mapping {mapping}",
                port_text(&seen_tcp),
                A1_PORTS.1,
                port_text(&seen_other),
                port_text(&seen_same),
            ),
            data: json!({
                "nat": nat.name(),
                "expected_address": want_ip,
                "tcp": {"local_port": local_tcp, "pub_sees": seen_tcp, "a1_learns": learned_tcp, "port_preserved": tcp_kept},
                "rudp": {
                    "local_port": A1_PORTS.1,
                    "pub2_sees": seen_other, "a1_learns_from_pub2": learned_other,
                    "pubx_sees": seen_same, "a1_learns_from_pubx": learned_same,
                    "port_preserved": rudp_kept,
                },
                "mapping": mapping,
                "crust_nat": class.value,
                "crust_nat_class": nat_class,
            }),
            elapsed: Duration::ZERO,
        })
    }

    /// `a1` talks to `pub` over rUDP; then `pubx` (same address, other port) and `pub2`
    /// (other address) dial the mapping `pub` observed.
    fn filter(&mut self, cell: &str, nat: NatType) -> Result<CellReport> {
        self.lab.configure(Router::R1, nat)?;
        let p = self.publics;
        let a1 = self.node(cell, Role::A1, "a1", A1_PORTS)?;
        must_connect(&a1, &p.rendezvous, "rudp")?;
        let mapped = p.rendezvous.inbound_from(0, &a1.peer_id, FOLLOW_UP)?;

        // The two probes are different nodes, so they run at once.
        let same = p.same_address.dial(&mapped)?;
        let other = p.other_address.dial(&mapped)?;
        let same = p.same_address.finish_dial(same, DIAL_OUTCOME);
        let other = p.other_address.finish_dial(other, DIAL_OUTCOME);

        // A probe counts when it reached a1 itself (not just something at that address).
        let got_same = same.peer.as_deref() == Some(a1.peer_id.as_str());
        let got_other = other.peer.as_deref() == Some(a1.peer_id.as_str());
        a1.quit();
        let (want_same, want_other) = expect::filtering(nat);
        let mut mismatches = Vec::new();
        for (who, got, wanted) in [
            ("from pub's address, other port", got_same, want_same),
            ("from another address", got_other, want_other),
        ] {
            if got != wanted {
                mismatches.push(format!("{who}: {}, expected {}", pass(got), pass(wanted)));
            }
        }
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: format!(
                "same-addr {} / other-addr {}",
                pass(got_same),
                pass(got_other)
            ),
            mismatches,
            details: format!(
                "mapping {mapped} | pubx {} | pub2 {}",
                dial_text(&same),
                dial_text(&other)
            ),
            data: json!({
                "nat": nat.name(),
                "mapping": mapped,
                "from_same_address": dial_json(&same),
                "from_other_address": dial_json(&other),
            }),
            elapsed: Duration::ZERO,
        })
    }

    /// `a1` (behind `r1` of type `a`) and `b1` (behind `r2` of type `b`) connect to the
    /// public nodes (`b1`: TCP to `pub`, rUDP to `pub2`, so it learns both observed
    /// endpoints); then `a1` dials `b1` directly at each of [`Target::ALL`], all at once.
    fn pair(&mut self, cell: &str, a: NatType, b: NatType) -> Result<CellReport> {
        self.lab.configure(Router::R1, a)?;
        self.lab.configure(Router::R2, b)?;
        let p = self.publics;
        let a1 = self.node(cell, Role::A1, "a1", A1_PORTS)?;
        let b1 = self.node(cell, Role::B1, "b1", B1_PORTS)?;
        let dials = [
            (&a1, a1.dial(&p.rendezvous.endpoint("tcp")?)?),
            (&b1, b1.dial(&p.rendezvous.endpoint("tcp")?)?),
            (&b1, b1.dial(&p.other_address.endpoint("rudp")?)?),
        ];
        for (node, dial) in dials {
            let outcome = node.finish_dial(dial, CONNECT);
            if !outcome.connected() {
                bail!(
                    "{} could not reach {}: {}",
                    node.name,
                    outcome.endpoint,
                    outcome.error.unwrap_or_default()
                );
            }
        }
        let observed_tcp = b1.observed_by(0, &p.rendezvous.peer_id, FOLLOW_UP)?;
        let observed_rudp = b1.observed_by(0, &p.other_address.peer_id, FOLLOW_UP)?;
        let endpoint_of = |target: Target| -> Result<String> {
            Ok(match target {
                Target::ObservedTcp => observed_tcp.clone(),
                Target::ObservedRudp => observed_rudp.clone(),
                Target::LanTcp => b1.endpoint("tcp")?,
                Target::LanRudp => b1.endpoint("rudp")?,
            })
        };
        let targets: Vec<(Target, String)> = Target::ALL
            .iter()
            .map(|t| Ok((*t, endpoint_of(*t)?)))
            .collect::<Result<_>>()?;
        // One dial per distinct endpoint (without NAT the observed rUDP endpoint is the
        // LAN one), all at once; each target takes the outcome of its endpoint.
        let mut pending = Vec::new();
        for (_, endpoint) in &targets {
            if !pending.iter().any(|(e, _)| e == endpoint) {
                pending.push((endpoint.clone(), a1.dial(endpoint)?));
            }
        }
        let outcomes: Vec<DialOutcome> = pending
            .into_iter()
            .map(|(_, dial)| a1.finish_dial(dial, DIAL_OUTCOME))
            .collect();
        let b1_id = b1.peer_id.clone();
        a1.quit();
        b1.quit();

        let mut mismatches = Vec::new();
        let mut details = Vec::new();
        let mut facts = Vec::new();
        let mut reached = 0;
        for (target, endpoint) in &targets {
            let outcome = outcomes
                .iter()
                .find(|o| &o.endpoint == endpoint)
                .context("every endpoint was dialled")?;
            // Counts only when b1 itself answered.
            let got = outcome.peer.as_deref() == Some(b1_id.as_str());
            reached += usize::from(got);
            let wanted = expect::direct_dial(a, b, *target);
            if got != wanted {
                mismatches.push(format!(
                    "{} ({endpoint}): {}, expected {}",
                    target.name(),
                    pass(got),
                    pass(wanted)
                ));
            }
            details.push(format!("{} {}", target.name(), dial_text(outcome)));
            facts.push(json!({
                "target": target.name(),
                "expected": wanted,
                "dial": dial_json(outcome),
            }));
        }
        Ok(CellReport {
            name: cell.to_owned(),
            outcome: format!("{reached}/{} connected", targets.len()),
            mismatches,
            details: details.join(" | "),
            data: json!({"a1_nat": a.name(), "b1_nat": b.name(), "dials": facts}),
            elapsed: Duration::ZERO,
        })
    }

    /// `a1` and `a2` behind the same `r1`: `a2` dials `a1`'s LAN TCP endpoint while a second
    /// node on `a2` dials its LAN rUDP endpoint (two nodes, so neither dial is a duplicate).
    fn same_nat(&mut self, cell: &str, nat: NatType) -> Result<CellReport> {
        self.lab.configure(Router::R1, nat)?;
        let a1 = self.node(cell, Role::A1, "a1", A1_PORTS)?;
        let a2 = self.node(cell, Role::A2, "a2", A2_PORTS)?;
        let a2r = self.node(cell, Role::A2, "a2-rudp", A2R_PORTS)?;
        let tcp = a2.dial(&a1.endpoint("tcp")?)?;
        let rudp = a2r.dial(&a1.endpoint("rudp")?)?;
        let tcp = a2.finish_dial(tcp, DIAL_OUTCOME);
        let rudp = a2r.finish_dial(rudp, DIAL_OUTCOME);
        reached_report(
            cell,
            &a1,
            [("tcp", tcp), ("rudp", rudp)],
            json!({"nat": nat.name()}),
        )
    }

    /// `r1` without NAT: `pub` dials `a1`'s own TCP endpoint, `pubx` its rUDP endpoint.
    fn ipv6_firewall(&mut self, cell: &str) -> Result<CellReport> {
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

    fn direct_none(&mut self, cell: &str) -> Result<CellReport> {
        self.lab.configure(Router::R1, NatType::None)?;
        let p = self.publics;
        let a1 = self.node(cell, Role::A1, "a1", A1_PORTS)?;
        let tcp = p.rendezvous.dial(&a1.endpoint("tcp")?)?;
        let rudp = p.same_address.dial(&a1.endpoint("rudp")?)?;
        let tcp = p.rendezvous.finish_dial(tcp, DIAL_OUTCOME);
        let rudp = p.same_address.finish_dial(rudp, DIAL_OUTCOME);
        reached_report(
            cell,
            &a1,
            [("tcp", tcp), ("rudp", rudp)],
            json!({"nat": "none"}),
        )
    }
}

impl Ctx<'_> {
    /// miniupnpd on `r1` (port-restricted); `a1` maps TCP 4100 and UDP 4101 with `upnpc`,
    /// `pub` dials the TCP mapping and `pubx` the rUDP one; then `a1` deletes them.
    fn upnp(&mut self, cell: &str) -> Result<CellReport> {
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
    fn early_punch(&mut self, cell: &str) -> Result<CellReport> {
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
    fn upnp_crust(&mut self, cell: &str) -> Result<CellReport> {
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

/// A cell that cannot run here: expected, with the reason in its details.
fn skipped(cell: &str, missing: &str) -> CellReport {
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
fn wait_for_drop(lab: &Lab, router: Router) -> Result<u64> {
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
fn reached_report<const N: usize>(
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
fn must_connect(node: &Node, target: &Node, protocol: &str) -> Result<()> {
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
fn local_tcp_port(lab: &Lab, role: Role, remote: &str) -> Result<u16> {
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
fn ip_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    rest.rsplit_once(':').map_or(rest, |(ip, _)| ip)
}

/// The port of an endpoint text `proto://IP:PORT`.
fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':')?.1.parse().ok()
}

fn port_text(endpoint: &str) -> String {
    port_of(endpoint).map_or_else(|| endpoint.to_owned(), |p| p.to_string())
}

fn pass(ok: bool) -> &'static str {
    if ok { "connects" } else { "blocked" }
}

/// `ok 0.01s` or `fail 10.0s (handshake timed out)`.
fn dial_text(o: &DialOutcome) -> String {
    match &o.error {
        None => format!("ok {:.2}s", o.elapsed.as_secs_f64()),
        Some(e) => format!("fail {:.1}s ({})", o.elapsed.as_secs_f64(), short_error(e)),
    }
}

/// One word for a dial error (the whole text is in the JSON file).
fn short_error(e: &str) -> &str {
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

fn dial_json(o: &DialOutcome) -> Value {
    json!({
        "endpoint": o.endpoint,
        "connected": o.connected(),
        "peer": o.peer,
        "error": o.error,
        "seconds": round2(o.elapsed.as_secs_f64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_text_parts() {
        assert_eq!(ip_of("rudp://198.18.0.11:4101"), "198.18.0.11");
        assert_eq!(port_of("rudp://198.18.0.11:4101"), Some(4101));
        assert_eq!(port_of("nonsense"), None);
        assert_eq!(short_error("dial: connection refused (nothing)"), "refused");
        assert_eq!(short_error("no answer within 10 s (offline?)"), "timeout");
        assert_eq!(short_error("dial: weird"), "weird");
    }

    #[test]
    fn matrix_shape() {
        let all = Cell::all();
        assert_eq!(all.len(), 5 + 5 + 25 + 5 + 1 + 1 + 2 + 1);
        let names: std::collections::HashSet<String> = all.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), all.len(), "cell names are unique");
        assert!(Cell::quick().iter().all(|c| all.contains(c)));
    }
}
