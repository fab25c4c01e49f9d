//! The lab's network namespaces, links, addresses and routers, and their removal.
//!
//! Every namespace is called `natlab-<pid>-<role>` (`natlabk-<pid>-<role>` for a lab
//! started with `--keep`), so labs of different runs coexist and a lab whose process is dead
//! is recognisable: [`sweep_stale`] removes those at start-up (kept labs only with
//! `--clean`). Namespaces are created and registered in a process-wide list under one
//! lock, so the Ctrl-C/SIGTERM handler ([`install_signal_handler`]) and [`Lab`]'s `Drop`
//! remove everything that exists, killing the processes inside first, and nothing is
//! created once the handler ran.

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use super::nat::NatType;

/// Namespace prefix of a lab removed when its run ends.
pub(crate) const PREFIX: &str = "natlab-";
/// Namespace prefix of a lab left up by `--keep` (removed by `--clean` only).
pub(crate) const KEEP_PREFIX: &str = "natlabk-";

/// Namespaces this process created, for the signal handler and `Drop`.
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Set (under the `CREATED` lock) by the signal handler: create nothing more.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The internet segment: `198.18.0.0/16` (benchmarking range, RFC 2544), a bridge `br0`
/// in the `inet` namespace. `pub2` sits in another /24 than `pub` and the routers, so the
/// two observers count as two networks for Crust's NAT classification.
pub(crate) const INTERNET_PREFIX: u8 = 16;

/// The second address of `pub2`, where the probe helper runs (see `cells::Publics`).
pub(crate) const PROBE_HELPER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);

/// The routers' IPv6 firewall: forward what the LAN starts and its replies, nothing else
/// inbound (a stateful firewall in place of NAT, as home routers do for IPv6).
const ROUTER6_RULESET: &str = include_str!("../../natlab/router6.nft");

/// Private IPv4 ranges (RFC 1918), dropped silently on the internet segment.
const PRIVATE: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// A place in the lab (one namespace each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Holds the internet segment's bridge; no addresses.
    Inet,
    /// Public host: the rendezvous `crust-peer` (and a second peer on other ports).
    Pub,
    /// Second public host, a second observer at another address.
    Pub2,
    /// Router of LAN 1 (`a1`, `a2`).
    R1,
    /// Router of LAN 2 (`b1`).
    R2,
    /// Host behind `r1`.
    A1,
    /// Second host behind `r1` (same-NAT peers).
    A2,
    /// Host behind `r2`.
    B1,
}

impl Role {
    /// Every role, in creation order.
    pub(crate) const ALL: [Role; 8] = [
        Role::Inet,
        Role::Pub,
        Role::Pub2,
        Role::R1,
        Role::R2,
        Role::A1,
        Role::A2,
        Role::B1,
    ];

    /// Short name: namespace suffix and link name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Inet => "inet",
            Role::Pub => "pub",
            Role::Pub2 => "pub2",
            Role::R1 => "r1",
            Role::R2 => "r2",
            Role::A1 => "a1",
            Role::A2 => "a2",
            Role::B1 => "b1",
        }
    }

    /// The address on the internet segment (public hosts and routers' WAN side).
    pub(crate) fn wan_ip(self) -> Option<Ipv4Addr> {
        let (net, host) = match self {
            Role::Pub => (0, 2),
            Role::Pub2 => (2, 2),
            Role::R1 => (0, 11),
            Role::R2 => (0, 12),
            _ => return None,
        };
        Some(Ipv4Addr::new(198, 18, net, host))
    }

    /// The IPv6 address on the internet segment (`2001:db8::/64`, documentation range):
    /// IPv6 is routed, not translated; routers run a stateful firewall instead.
    pub(crate) fn wan_ipv6(self) -> Option<Ipv6Addr> {
        self.wan_ip().map(|v4| {
            Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                u16::from(v4.octets()[2]),
                u16::from(v4.octets()[3]),
            )
        })
    }

    /// The IPv6 address of a host behind a router (`2001:db8:N::host`).
    pub(crate) fn ipv6(self) -> Option<Ipv6Addr> {
        match (self.behind(), self.wan_ipv6()) {
            (Some((router, host)), _) => Some(Ipv6Addr::new(
                0x2001,
                0xdb8,
                u16::from(router.index()),
                0,
                0,
                0,
                0,
                u16::from(host),
            )),
            (None, wan) => wan,
        }
    }

    /// For a host behind a router: the router and the host's last address byte.
    fn behind(self) -> Option<(Router, u8)> {
        match self {
            Role::A1 => Some((Router::R1, 10)),
            Role::A2 => Some((Router::R1, 11)),
            Role::B1 => Some((Router::R2, 10)),
            _ => None,
        }
    }
}

/// One of the two routers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Router {
    /// `r1`, in front of `a1` and `a2`.
    R1,
    /// `r2`, in front of `b1`.
    R2,
}

impl Router {
    /// The router's place in the lab.
    pub(crate) fn role(self) -> Role {
        match self {
            Router::R1 => Role::R1,
            Router::R2 => Role::R2,
        }
    }

    fn index(self) -> u8 {
        match self {
            Router::R1 => 1,
            Router::R2 => 2,
        }
    }

    fn hosts(self) -> &'static [Role] {
        match self {
            Router::R1 => &[Role::A1, Role::A2],
            Router::R2 => &[Role::B1],
        }
    }

    /// The router's address on the internet segment.
    pub(crate) fn wan_ip(self) -> Ipv4Addr {
        match self.role().wan_ip() {
            Some(ip) => ip,
            None => unreachable!("routers have a WAN address"),
        }
    }

    /// First three bytes of the LAN: private `10.N.0.0/24` behind a NAT, public (routed)
    /// `198.19.N.0/24` without one.
    fn lan(self, nat: NatType) -> [u8; 3] {
        if nat.translates() {
            [10, self.index(), 0]
        } else {
            [198, 19, self.index()]
        }
    }
}

/// A running lab: its namespaces and what each router currently does.
#[derive(Debug)]
pub(crate) struct Lab {
    prefix: String,
    nat: [NatType; 2],
    /// Leave everything up when dropped (`--keep`).
    keep: bool,
    removed: bool,
}

impl Lab {
    /// Builds the whole topology (both routers start as port-restricted cones).
    pub(crate) fn create(keep: bool) -> Result<Lab> {
        let prefix = format!(
            "{}{}-",
            if keep { KEEP_PREFIX } else { PREFIX },
            std::process::id()
        );
        let mut lab = Lab {
            prefix,
            nat: [NatType::PortRestricted; 2],
            keep: false,
            removed: false,
        };
        lab.build()?;
        lab.keep = keep;
        Ok(lab)
    }

    /// The namespace of `role`.
    pub(crate) fn ns(&self, role: Role) -> String {
        format!("{}{}", self.prefix, role.name())
    }

    /// The NAT behaviour `router` has now.
    pub(crate) fn nat(&self, router: Router) -> NatType {
        self.nat[usize::from(router.index() - 1)]
    }

    /// The address of a host behind a router, for the router's current behaviour; the
    /// internet address of a public host or router.
    pub(crate) fn ip(&self, role: Role) -> Ipv4Addr {
        match (role.behind(), role.wan_ip()) {
            (Some((router, host)), _) => {
                let [a, b, c] = router.lan(self.nat(router));
                Ipv4Addr::new(a, b, c, host)
            }
            (None, Some(ip)) => ip,
            (None, None) => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The router's own address on its LAN now, e.g. `10.1.0.1`.
    pub(crate) fn router_lan_ip(&self, router: Router) -> Ipv4Addr {
        let [a, b, c] = router.lan(self.nat(router));
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The LAN behind `router` now, e.g. `10.1.0.0/24`.
    pub(crate) fn lan_subnet(&self, router: Router) -> String {
        let [a, b, c] = router.lan(self.nat(router));
        format!("{a}.{b}.{c}.0/24")
    }

    fn ip_ns(&self, role: Role, args: &[&str]) -> Result<()> {
        let ns = self.ns(role);
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `sh -c script` inside `role`'s namespace (for `/proc/sys/net`, which shows the
    /// namespace of the process reading it).
    fn sh(&self, role: Role, script: &str) -> Result<()> {
        run("ip", &["netns", "exec", &self.ns(role), "sh", "-c", script])
    }

    fn build(&mut self) -> Result<()> {
        for role in Role::ALL {
            create_namespace(&self.ns(role))?;
            self.ip_ns(role, &["link", "set", "lo", "up"])?;
        }
        // The internet segment: one bridge, a veth to every public host and router.
        self.ip_ns(Role::Inet, &["link", "add", "br0", "type", "bridge"])?;
        self.ip_ns(Role::Inet, &["link", "set", "br0", "up"])?;
        for role in [Role::Pub, Role::Pub2, Role::R1, Role::R2] {
            let ns = self.ns(role);
            let name = role.name();
            self.ip_ns(
                Role::Inet,
                &[
                    "link", "add", name, "type", "veth", "peer", "name", "wan", "netns", &ns,
                ],
            )?;
            self.ip_ns(Role::Inet, &["link", "set", name, "master", "br0", "up"])?;
            self.ip_ns(role, &["link", "set", "wan", "up"])?;
            let addr = format!(
                "{}/{INTERNET_PREFIX}",
                role.wan_ip().context("public role")?
            );
            self.ip_ns(role, &["addr", "add", &addr, "dev", "wan"])?;
        }
        // `pub2`'s second address: the probe helper Crust's filtering test asks for lives
        // there, an address the NATed hosts never talk to themselves.
        let helper = format!("{PROBE_HELPER_IP}/{INTERNET_PREFIX}");
        self.ip_ns(Role::Pub2, &["addr", "add", &helper, "dev", "wan"])?;
        // Routers: a LAN bridge with a veth to each host, forwarding on.
        for router in [Router::R1, Router::R2] {
            let r = router.role();
            self.ip_ns(r, &["link", "add", "lan", "type", "bridge"])?;
            self.ip_ns(r, &["link", "set", "lan", "up"])?;
            // Bridged LAN traffic must not pass the router's nft chains even where
            // br_netfilter is loaded (Docker loads it).
            self.sh(
                r,
                "echo 1 > /proc/sys/net/ipv4/ip_forward; \
                 f=/proc/sys/net/bridge/bridge-nf-call-iptables; \
                 if [ -e $f ]; then echo 0 > $f; fi",
            )?;
            for &host in router.hosts() {
                let ns = self.ns(host);
                self.ip_ns(
                    r,
                    &[
                        "link",
                        "add",
                        host.name(),
                        "type",
                        "veth",
                        "peer",
                        "name",
                        "eth0",
                        "netns",
                        &ns,
                    ],
                )?;
                self.ip_ns(r, &["link", "set", host.name(), "master", "lan", "up"])?;
                self.ip_ns(host, &["link", "set", "eth0", "up"])?;
            }
        }
        // IPv6: routed end to end (no NAT), the routers forward and run a stateful firewall
        // (`router6.nft`): what a home router does for IPv6.
        for role in [Role::Pub, Role::Pub2, Role::R1, Role::R2] {
            let ip = role.wan_ipv6().context("public role")?;
            self.ip_ns(
                role,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip}/64"),
                    "dev",
                    "wan",
                    "nodad",
                ],
            )?;
        }
        for router in [Router::R1, Router::R2] {
            let r = router.role();
            self.sh(r, "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")?;
            let ns = self.ns(r);
            run_with_input(
                "ip",
                &["netns", "exec", &ns, "nft", "-f", "-"],
                ROUTER6_RULESET,
            )
            .with_context(|| format!("loading the IPv6 firewall on {}", r.name()))?;
            let lan = format!("2001:db8:{}::/64", router.index());
            let via = r.wan_ipv6().context("router")?.to_string();
            for role in [Role::Pub, Role::Pub2, Role::R1, Role::R2] {
                if role != r {
                    self.ip_ns(role, &["-6", "route", "add", &lan, "via", &via])?;
                }
            }
        }
        // Private destinations are not routed on the internet: their packets vanish (as
        // they do past a real ISP), so a dial to a private address elsewhere times out
        // instead of failing at once or not, depending on ICMP rate limits.
        for role in [Role::Pub, Role::Pub2, Role::R1, Role::R2] {
            for net in PRIVATE {
                self.ip_ns(role, &["route", "add", "blackhole", net])?;
            }
        }
        // The public LANs (routers of type `none`) are routed on the internet segment.
        for router in [Router::R1, Router::R2] {
            let [a, b, c] = router.lan(NatType::None);
            let net = format!("{a}.{b}.{c}.0/24");
            let via = router.wan_ip().to_string();
            for role in [Role::Pub, Role::Pub2, Role::R1, Role::R2] {
                if role != router.role() {
                    self.ip_ns(role, &["route", "add", &net, "via", &via])?;
                }
            }
        }
        for router in [Router::R1, Router::R2] {
            self.configure(router, NatType::PortRestricted)?;
        }
        Ok(())
    }

    /// Gives `router` the behaviour `nat`: LAN addresses (private or public), the nft
    /// ruleset (replaced atomically) and an empty conntrack table, so no mapping or
    /// conntrack entry of an earlier cell survives. Hosts behind it are re-addressed: start
    /// their nodes afterwards.
    pub(crate) fn configure(&mut self, router: Router, nat: NatType) -> Result<()> {
        let r = router.role();
        let [a, b, c] = router.lan(nat);
        self.nat[usize::from(router.index() - 1)] = nat;
        self.ip_ns(r, &["addr", "flush", "dev", "lan"])?;
        self.ip_ns(
            r,
            &["addr", "add", &format!("{a}.{b}.{c}.1/24"), "dev", "lan"],
        )?;
        let lan6 = format!("2001:db8:{}::1", router.index());
        self.ip_ns(
            r,
            &[
                "-6",
                "addr",
                "add",
                &format!("{lan6}/64"),
                "dev",
                "lan",
                "nodad",
            ],
        )?;
        for &host in router.hosts() {
            let ip = self.ip(host);
            self.ip_ns(host, &["addr", "flush", "dev", "eth0"])?;
            self.ip_ns(host, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            let gateway = format!("{a}.{b}.{c}.1");
            self.ip_ns(host, &["route", "replace", "default", "via", &gateway])?;
            let ip6 = host.ipv6().context("host behind a router")?;
            self.ip_ns(
                host,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            self.ip_ns(host, &["-6", "route", "replace", "default", "via", &lan6])?;
        }
        let ns = self.ns(r);
        run_with_input(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            &nat.ruleset(),
        )
        .with_context(|| format!("loading the {nat} ruleset on {}", r.name()))?;
        run("ip", &["netns", "exec", &ns, "conntrack", "-F"])
            .with_context(|| format!("flushing conntrack on {}", r.name()))
    }

    /// Drops (or, with `blocked` false, lets through again) every packet between the two
    /// routers' WAN addresses, both ways: "the direct path is blocked" while each still
    /// reaches the public hosts. A table of its own (`natlab_block`, before conntrack),
    /// so re-configuring a router's NAT leaves it alone.
    pub(crate) fn block_between_routers(&self, blocked: bool) -> Result<()> {
        for (router, other) in [(Router::R1, Router::R2), (Router::R2, Router::R1)] {
            let ns = self.ns(router.role());
            if blocked {
                let rules = format!(
                    "table ip natlab_block {{\n\tchain prerouting {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tiifname \"wan\" ip saddr {} drop\n\t}}\n}}\n",
                    other.wan_ip()
                );
                run_with_input("ip", &["netns", "exec", &ns, "nft", "-f", "-"], &rules)
                    .with_context(|| format!("blocking on {}", router.role().name()))?;
            } else {
                // Absent already is fine.
                let _ = run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns,
                        "nft",
                        "delete",
                        "table",
                        "ip",
                        "natlab_block",
                    ],
                );
            }
        }
        Ok(())
    }

    /// Removes the lab now, also a kept one (processes inside are killed).
    pub(crate) fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let names: Vec<String> = Role::ALL.iter().rev().map(|r| self.ns(*r)).collect();
        for ns in &names {
            remove_namespace(ns);
        }
        if let Ok(mut created) = CREATED.lock() {
            created.retain(|n| !names.contains(n));
        }
    }

    /// The namespace prefix, e.g. `natlab-4242-`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep && !std::thread::panicking() {
            // Left up on purpose; the signal handler must not remove it any more either.
            if let Ok(mut created) = CREATED.lock() {
                created.retain(|n| !n.starts_with(&self.prefix));
            }
            return;
        }
        self.remove();
    }
}

/// Creates namespace `ns` and registers it for removal, unless the lab was interrupted.
fn create_namespace(ns: &str) -> Result<()> {
    let mut created = CREATED
        .lock()
        .map_err(|_| anyhow::anyhow!("namespace list poisoned"))?;
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    run("ip", &["netns", "add", ns])?;
    created.push(ns.to_owned());
    Ok(())
}

/// Whether Ctrl-C or SIGTERM arrived (the handler is removing the lab).
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Called by the main thread once it saw [`interrupted`]: the handler is removing the lab
/// and ends the process with status 130; returning early would cut that short. Bounded.
pub(crate) fn wait_for_signal_handler() -> anyhow::Error {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = std::time::Instant::now();
        if now >= until {
            return anyhow::anyhow!("interrupted, and the lab's removal did not finish");
        }
        std::thread::park_timeout(until - now);
    }
}

/// Removes every namespace registered by this process (the signal handler's job).
fn remove_registered() {
    let names = match CREATED.lock() {
        Ok(mut created) => {
            INTERRUPTED.store(true, Ordering::SeqCst);
            std::mem::take(&mut *created)
        }
        Err(poisoned) => {
            INTERRUPTED.store(true, Ordering::SeqCst);
            std::mem::take(&mut *poisoned.into_inner())
        }
    };
    for ns in names.iter().rev() {
        remove_namespace(ns);
    }
}

/// On Ctrl-C or SIGTERM: remove this process's namespaces (killing what runs inside them)
/// and exit with status 130.
pub(crate) fn install_signal_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("natlab: interrupted; removing the lab");
        remove_registered();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")
}

/// Kills every process in `ns` and deletes it; errors are ignored (it may be gone).
pub(crate) fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    {
        let pids = String::from_utf8_lossy(&out.stdout);
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-9")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Lab namespaces on this machine: `(name, owner pid, kept)`.
fn lab_namespaces() -> Vec<(String, u32, bool)> {
    let names: Vec<String> = match std::fs::read_dir("/run/netns") {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names
        .into_iter()
        .filter_map(|name| {
            let (rest, kept) = if let Some(rest) = name.strip_prefix(KEEP_PREFIX) {
                (rest, true)
            } else {
                (name.strip_prefix(PREFIX)?, false)
            };
            let pid = rest.split('-').next()?.parse().ok()?;
            Some((name, pid, kept))
        })
        .collect()
}

/// Removes labs whose process is dead: those of crashed or killed runs, and with
/// `include_kept` also those left up by `--keep`. Returns the namespaces removed.
pub(crate) fn sweep_stale(include_kept: bool) -> Vec<String> {
    let mut removed = Vec::new();
    for (name, pid, kept) in lab_namespaces() {
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if alive || (kept && !include_kept) {
            continue;
        }
        remove_namespace(&name);
        removed.push(name);
    }
    removed
}

/// Runs `program args`; an error carries its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    output(program, args).map(drop)
}

/// Runs `program args` and returns its stdout; an error carries its stderr.
pub(crate) fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{program}`"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` with `input` on its stdin.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{program}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
