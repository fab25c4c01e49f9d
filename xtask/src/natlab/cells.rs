//! The cells of the matrix: what each one sets up, drives and checks.
//!
//! Every cell configures the routers it needs (which also empties their conntrack tables),
//! starts fresh nodes behind them and ends them when it returns; the public nodes (`pub`,
//! `pubx`, `pub2`) run for the whole lab. Every wait is for an event, with a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::expect::{self, PunchProtocol, Target};
use super::nat::NatType;
use super::node::{DialOutcome, Node, cell_log_dir};
use super::report::{CellReport, round2};
use super::topology::{self, Lab, Role, Router};
use super::upnp;

mod punch;
mod relay;
mod router;
mod support;

use support::*;

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
    /// `a1` behind `r1` (first type) connects to `b1` behind `r2` (second type) by `PeerId`
    /// alone: a hole punch introduced by `pub`, over one protocol, many trials.
    Punch(NatType, NatType, PunchProtocol),
    /// `a1` maps its ports through miniupnpd on `r1`; `b1` connects to it by `PeerId` and
    /// must use the mapped endpoints the coordination hands over (path `mapped`).
    PunchMapped,
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
    /// `a1` behind `r1` (first type) connects to `b1` behind `r2` (second type) by `PeerId`
    /// where no punch works: through `pub` as a relay, many trials, a message each way.
    Relay(NatType, NatType),
    /// A relay allowing one circuit per peer refuses a second one with a typed reason.
    RelayLimit,
}

impl Cell {
    /// The cell's name in the matrix.
    pub(crate) fn name(self) -> String {
        match self {
            Cell::Observe(t) => format!("observe/{t}"),
            Cell::Filter(t) => format!("filter/{t}"),
            Cell::Pair(a, b) => format!("pair/{a}->{b}"),
            Cell::Punch(a, b, p) => format!("punch/{}/{a}->{b}", p.name()),
            Cell::PunchMapped => "punch/mapped".to_owned(),
            Cell::SameNat(t) => format!("same-nat/{t}"),
            Cell::DirectNone => "direct/none".to_owned(),
            Cell::Upnp => "upnp/port-restricted".to_owned(),
            Cell::EarlyPunch => "early-punch/port-restricted".to_owned(),
            Cell::UpnpCrust => "upnp/crust-peer-maps".to_owned(),
            Cell::Ipv6Firewall => "ipv6/firewall".to_owned(),
            Cell::Relay(a, b) => format!("relay/{a}->{b}"),
            Cell::RelayLimit => "relay/limit".to_owned(),
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
        for protocol in PunchProtocol::ALL {
            for a in NatType::BEHIND {
                cells.extend(NatType::BEHIND.iter().map(|b| Cell::Punch(a, *b, protocol)));
            }
        }
        cells.push(Cell::PunchMapped);
        cells.push(Cell::Relay(NatType::Symmetric, NatType::Symmetric));
        cells.push(Cell::RelayLimit);
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
            Cell::Punch(
                NatType::PortRestricted,
                NatType::PortRestricted,
                PunchProtocol::Udp,
            ),
            Cell::Punch(
                NatType::AddressRestricted,
                NatType::PortRestricted,
                PunchProtocol::Tcp,
            ),
            // Symmetric against address-restricted: the birthday sockets and probes run,
            // yet the outcome is certain (the cone's probes open its filter to the whole
            // address), so a 5-trial CI run cannot fail by chance; the probabilistic search
            // against port-restricted runs in the full matrix.
            Cell::Punch(
                NatType::Symmetric,
                NatType::AddressRestricted,
                PunchProtocol::Udp,
            ),
            Cell::Punch(NatType::Symmetric, NatType::Symmetric, PunchProtocol::Udp),
            Cell::PunchMapped,
            Cell::Relay(NatType::Symmetric, NatType::Symmetric),
            Cell::RelayLimit,
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
    /// Trials per punch cell.
    pub(crate) trials: usize,
    /// Where the next punch trial's ports start (see `cells/punch.rs`).
    pub(crate) next_trial_port: u16,
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
            Cell::Punch(a, b, p) => self.punch(&name, a, b, p),
            Cell::PunchMapped => self.punch_mapped(&name),
            Cell::SameNat(t) => self.same_nat(&name, t),
            Cell::DirectNone => self.direct_none(&name),
            Cell::Upnp => self.upnp(&name),
            Cell::EarlyPunch => self.early_punch(&name),
            Cell::UpnpCrust => self.upnp_crust(&name),
            Cell::Ipv6Firewall => self.ipv6_firewall(&name),
            Cell::Relay(a, b) => self.relay(&name, a, b),
            Cell::RelayLimit => self.relay_limit(&name),
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
        // Observe, filter, pairs, same NAT, punches, punch-mapped, relay and relay limit,
        // direct-none, early punch, UPnP (two), IPv6 firewall.
        assert_eq!(all.len(), 5 + 5 + 25 + 5 + 32 + 1 + 2 + 1 + 1 + 2 + 1);
        let names: std::collections::HashSet<String> = all.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), all.len(), "cell names are unique");
        assert!(Cell::quick().iter().all(|c| all.contains(c)));
    }
}
