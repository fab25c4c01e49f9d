//! Port mapping against a real gateway: `miniupnpd` (nftables backend) on a Linux router
//! in network namespaces this test creates.
//!
//! Needs root, `ip` (iproute2), `nft` and `miniupnpd`; otherwise every test prints
//! `skipped: <reason>` and passes. `upnpc` (miniupnpc) is used when present to create a
//! conflicting mapping.
//!
//! # The lab
//!
//! ```text
//!  public  pub0 198.18.0.2/24 ── wan0 198.18.0.1/24  router  lan0 10.77.0.1/24 ── eth0 10.77.0.2/24  client
//!  (STUN responder, WAN probe)   nftables masquerade on wan0, miniupnpd          (PortMapper, echo servers)
//! ```
//!
//! Namespaces are named `cn<pid><tag><role>` so several tests (and several runs) coexist.
//! Every address lives inside them: nothing leaves the machine.
//!
//! The router's WAN address is in the benchmarking range 198.18.0.0/15. `miniupnpd`
//! refuses to map ports when its WAN address is reserved, unless it learns its public
//! address by STUN (`ext_perform_stun=yes`): the public namespace runs a tiny STUN
//! responder (answers every binding request with the sender's address), so `miniupnpd`
//! sees a 1:1, unfiltered "NAT" and enables port forwarding — with 198.18.0.1 as external
//! address, which the mapper must not discard (it is reserved, but it is the lab's
//! "internet"). `miniupnpd-nftables` ships only the binary: the test creates its tables
//! and chains and names them in the config.
//!
//! A gateway restart is a kill of `miniupnpd`, a flush of its chains (as a reboot would
//! lose them: `miniupnpd` itself leaves its rules behind and would reload them) and a
//! new `miniupnpd`: new NAT-PMP/PCP epoch, and a new HTTP port (as with miniupnpd's
//! default random port; the test sets 5000, then 5001, so the change is certain). A UPnP
//! gateway that comes back at the same URL is not noticed as restarted: the next renewal
//! simply re-creates the mapping.
//!
//! The workspace forbids `unsafe`, so instead of `setns` the test runs *this test binary*
//! again inside a namespace (`ip netns exec <ns> <this binary> --exact <role fn>`) with
//! `CRUST_NAT_*` variables set: `client_child` runs a `PortMapper` and TCP/UDP echo
//! servers and prints every event as a line; `wan_child` dials the external endpoints
//! from the public side; `stun_child` is the STUN responder. Run normally (variables
//! unset), those functions do nothing.
//!
//! A guard kills every child and deletes the namespaces and temporary files on every exit
//! path, also when an assertion fails. Every wait is bounded; the tests wait for lines the
//! children print (events), and poll only where nothing announces the change (the
//! gateway's rules after a mapper is dropped), with a bounded loop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crust_core::Protocol;
use crust_nat::{MappingRequest, PortMapConfig, PortMapEvent, PortMapper};

const ENV_CLIENT: &str = "CRUST_NAT_CLIENT";
const ENV_WAN: &str = "CRUST_NAT_WAN";
const ENV_STUN: &str = "CRUST_NAT_STUN";

const PUBLIC_IP: &str = "198.18.0.2";
const WAN_IP: &str = "198.18.0.1";
const LAN_GW: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";
/// The local ports the client maps.
const TCP_PORT: u16 = 4100;
const UDP_PORT: u16 = 4101;
/// The lease the client asks for (renewed every 5 s): short, so renewals and restarts
/// show within a test, long enough that a restart is detected before the lease runs out.
const LEASE_SECS: u64 = 10;
/// A generous bound for anything the lab waits for.
const WAIT: Duration = Duration::from_secs(30);
/// How long a child may live at most (safety net).
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Lab plumbing
// ---------------------------------------------------------------------------------------

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn has(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Some("not running as root".to_owned());
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
        ("miniupnpd", "--version", "miniupnpd-nftables"),
    ] {
        if !has(tool, arg) {
            return Some(format!("`{tool}` ({package}) not available"));
        }
    }
    None
}

/// A child process whose output lines arrive on a channel (and are kept for failure
/// messages). Killed when dropped.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// Sent on a process's channel when one of its output streams ends.
const EOF: &str = "\u{0}eof";

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for stream in out {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    // libtest prints `test <name> ... ` before a child's first line.
                    let line = match line.split_once(" ... ") {
                        Some((head, rest)) if head.starts_with("test ") => rest.to_owned(),
                        _ => line,
                    };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                let _ = tx.send(EOF.to_owned());
            });
        }
        Proc {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line matching `pred` and returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut eofs = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == EOF => {
                    eofs += 1;
                    if eofs == 2 {
                        panic!(
                            "{}: exited while waiting for {what}\n{}",
                            self.name,
                            self.log()
                        );
                    }
                }
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("{}: no {what} within {WAIT:?}\n{}", self.name, self.log()),
            }
        }
    }

    /// Lines already received (without waiting).
    fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            if line != EOF {
                self.seen.push(line);
            }
        }
        &self.seen
    }

    fn log(&self) -> String {
        let start = self.seen.len().saturating_sub(80);
        self.seen[start..].join("\n")
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("write to child");
        stdin.flush().expect("flush");
    }

    /// Closes stdin (the children's signal to end) and waits (bounded) for a clean exit.
    fn finish(mut self) -> Vec<String> {
        self.stdin = None;
        let mut eofs = 0;
        let deadline = Instant::now() + WAIT;
        while eofs < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == EOF => eofs += 1,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("{}: did not exit\n{}", self.name, self.log()),
            }
        }
        // Both streams closed: the process has exited (or is exiting).
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "{} failed: {status}\n{}",
            self.name,
            self.log()
        );
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Usually already gone; then this fails quietly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes the namespaces and the temporary directory when dropped (after the
/// processes, which are dropped first as they are declared later).
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Lab {
    /// Creates the namespaces `roles` (one letter each) under a unique prefix, with
    /// loopback up. `None` (after printing why) when namespaces cannot be created.
    fn new(tag: &str, roles: &[&str]) -> Option<Lab> {
        let prefix = format!("cn{}{tag}", std::process::id());
        let mut lab = Lab {
            prefix,
            namespaces: Vec::new(),
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        for role in roles {
            let ns = lab.ns(role);
            if let Err(e) = run(&["ip", "netns", "add", &ns]) {
                eprintln!("skipped: cannot create a network namespace: {e}");
                return None;
            }
            lab.namespaces.push(ns.clone());
            lab.ip(role, &["link", "set", "lo", "up"]);
        }
        Some(lab)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn ip(&self, role: &str, args: &[&str]) {
        let ns = self.ns(role);
        let mut cmd = vec!["ip", "-n", &ns];
        cmd.extend_from_slice(args);
        run(&cmd).expect("lab setup");
    }

    fn exec(&self, role: &str, args: &[&str]) -> Result<String, String> {
        let ns = self.ns(role);
        let mut cmd = vec!["ip", "netns", "exec", &ns];
        cmd.extend_from_slice(args);
        run(&cmd)
    }

    /// A veth pair from `a`'s `a_if` (address `a_ip`) to `b`'s `b_if` (`b_ip`).
    fn link(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
        let b_ns = self.ns(b);
        self.ip(
            a,
            &[
                "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b_ns,
            ],
        );
        self.ip(a, &["addr", "add", a_ip, "dev", a_if]);
        self.ip(b, &["addr", "add", b_ip, "dev", b_if]);
        self.ip(a, &["link", "set", a_if, "up"]);
        self.ip(b, &["link", "set", b_if, "up"]);
    }

    /// Runs this test binary's `role_fn` inside namespace `role` with `env` set.
    fn spawn_child(&self, role: &str, role_fn: &str, env: &[(&str, String)]) -> Proc {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(role)]).arg(&exe).args([
            "--exact",
            role_fn,
            "--nocapture",
            "--test-threads=1",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(&format!("{role_fn} in {}", self.ns(role)), cmd)
    }
}

/// The full lab: public host, router with NAT and miniupnpd, client.
struct GatewayLab {
    // Processes first: fields drop in order, and the namespaces go last.
    /// Kept running for miniupnpd's STUN checks.
    _stun: Proc,
    miniupnpd: Option<Proc>,
    http_port: u16,
    igd_v1: bool,
    lab: Lab,
}

const NFT_RULESET: &str = r#"
table inet crust_lab {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
}
table inet upnp_filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
        jump upnp_forward
    }
    chain upnp_forward {
    }
}
table inet upnp_nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump upnp_prerouting
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        jump upnp_postrouting
    }
    chain upnp_prerouting {
    }
    chain upnp_postrouting {
    }
}
"#;

impl GatewayLab {
    fn new(tag: &str, igd_v1: bool) -> Option<GatewayLab> {
        if let Some(reason) = skip_reason() {
            eprintln!("skipped: {reason}");
            return None;
        }
        let lab = Lab::new(tag, &["p", "r", "c"])?;
        lab.link(
            "r",
            "wan0",
            &format!("{WAN_IP}/24"),
            "p",
            "pub0",
            &format!("{PUBLIC_IP}/24"),
        );
        lab.link(
            "r",
            "lan0",
            &format!("{LAN_GW}/24"),
            "c",
            "eth0",
            &format!("{CLIENT_IP}/24"),
        );
        lab.ip("c", &["route", "add", "default", "via", LAN_GW]);
        lab.exec("r", &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .expect("forwarding");
        let rules = lab.dir.path().join("router.nft");
        std::fs::write(&rules, NFT_RULESET).expect("write ruleset");
        lab.exec("r", &["nft", "-f", rules.to_str().expect("utf-8 path")])
            .expect("router ruleset");
        let mut stun = lab.spawn_child(
            "p",
            "stun_child",
            &[(ENV_STUN, format!("{PUBLIC_IP}:3478"))],
        );
        stun.wait_for("STUN READY", |l| l.starts_with("STUN READY"));
        let mut gw = GatewayLab {
            lab,
            _stun: stun,
            miniupnpd: None,
            http_port: 0,
            igd_v1,
        };
        gw.start_miniupnpd();
        Some(gw)
    }

    fn start_miniupnpd(&mut self) {
        let dir = self.lab.dir.path();
        let conf = dir.join("miniupnpd.conf");
        // Like miniupnpd's default (a random port per start), but certain to differ
        // across a restart: 5000 for the first start, 5001 after a restart.
        let http_port = if self.http_port == 0 {
            5000
        } else {
            self.http_port + 1
        };
        let config = format!(
            "ext_ifname=wan0\n\
             listening_ip=lan0\n\
             http_port={http_port}\n\
             enable_natpmp=yes\n\
             enable_upnp=yes\n\
             secure_mode=no\n\
             system_uptime=no\n\
             force_igd_desc_v1={}\n\
             ext_perform_stun=yes\n\
             ext_stun_host={PUBLIC_IP}\n\
             ext_stun_port=3478\n\
             min_lifetime=2\n\
             max_lifetime=86400\n\
             upnp_table_name=upnp_filter\n\
             upnp_nat_table_name=upnp_nat\n\
             upnp_forward_chain=upnp_forward\n\
             upnp_nat_chain=upnp_prerouting\n\
             upnp_nat_postrouting_chain=upnp_postrouting\n\
             uuid=3b1a2f3c-0000-4000-8000-00000000c0de\n\
             allow 1024-65535 10.77.0.0/24 1024-65535\n\
             deny 0-65535 0.0.0.0/0 0-65535\n",
            if self.igd_v1 { "yes" } else { "no" }
        );
        std::fs::write(&conf, config).expect("write miniupnpd.conf");
        let pid = dir.join("miniupnpd.pid");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.ns("r"), "miniupnpd", "-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(&pid);
        let mut proc = Proc::spawn("miniupnpd", cmd);
        let http = proc.wait_for("HTTP listening", |l| l.contains("HTTP listening on port"));
        assert!(http.ends_with(&format!(" {http_port}")), "{http}");
        self.http_port = http_port;
        // The last socket miniupnpd opens before its main loop: ready.
        proc.wait_for("NAT-PMP/PCP listening", |l| {
            l.contains("Listening for NAT-PMP/PCP traffic")
        });
        assert!(
            proc.drain()
                .iter()
                .any(|l| l.contains("Port forwarding is now enabled")),
            "miniupnpd did not enable port forwarding:\n{}",
            proc.log()
        );
        self.miniupnpd = Some(proc);
    }

    /// Kills miniupnpd, flushes its chains (a reboot loses them) and starts a new one.
    fn restart_miniupnpd(&mut self) {
        drop(self.miniupnpd.take());
        for (table, chain) in [
            ("upnp_nat", "upnp_prerouting"),
            ("upnp_nat", "upnp_postrouting"),
            ("upnp_filter", "upnp_forward"),
        ] {
            self.lab
                .exec("r", &["nft", "flush", "chain", "inet", table, chain])
                .expect("flush miniupnpd chain");
        }
        assert!(self.redirects().is_empty());
        self.start_miniupnpd();
    }

    /// The DNAT rules miniupnpd installed: (protocol byte, external port, internal
    /// address).
    fn redirects(&self) -> Vec<(String, u16, String)> {
        let out = self
            .lab
            .exec(
                "r",
                &[
                    "nft",
                    "list",
                    "chain",
                    "inet",
                    "upnp_nat",
                    "upnp_prerouting",
                ],
            )
            .expect("list rules");
        // e.g. `iif "wan0" @nh,72,8 0x6 th dport 4100 dnat ip to 10.77.0.2:4100`
        out.lines()
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "dport")?;
                let proto = (*words.get(at.checked_sub(2)?)?).to_owned();
                let port = words.get(at + 1)?.parse().ok()?;
                let to = (*words.last()?).to_owned();
                Some((proto, port, to))
            })
            .collect()
    }

    fn has_redirect(&self, protocol: Protocol, external_port: u16, local_port: u16) -> bool {
        let proto = if protocol == Protocol::Tcp {
            "0x6"
        } else {
            "0x11"
        };
        let to = format!("{CLIENT_IP}:{local_port}");
        self.redirects()
            .iter()
            .any(|(p, port, t)| p == proto && *port == external_port && *t == to)
    }

    fn root_desc(&self) -> String {
        format!("http://{LAN_GW}:{}/rootDesc.xml", self.http_port)
    }

    fn client(&self, methods: &str) -> Proc {
        self.lab.spawn_child(
            "c",
            "client_child",
            &[(ENV_CLIENT, format!("{methods} {LEASE_SECS} 300 1000"))],
        )
    }

    /// Dials the external endpoints from the public host and checks the echoes.
    fn dial_from_wan(&self, tcp: SocketAddr, udp: SocketAddr) {
        let probe = self
            .lab
            .spawn_child("p", "wan_child", &[(ENV_WAN, format!("{tcp} {udp}"))]);
        let lines = probe.finish();
        assert!(lines.iter().any(|l| l == "WAN OK tcp"), "{lines:?}");
        assert!(lines.iter().any(|l| l == "WAN OK udp"), "{lines:?}");
    }
}

/// Parses a client `EVENT mapped <proto> <local> <external> <method> <ms>` line.
fn mapped(line: &str) -> (Protocol, SocketAddr, String, u64) {
    let w: Vec<&str> = line.split_whitespace().collect();
    let protocol = w[2].parse().expect("protocol");
    let external = w[4].parse().expect("external");
    (
        protocol,
        external,
        w[5].to_owned(),
        w[6].parse().expect("ms"),
    )
}

/// Waits for `mapped` events of both protocols; returns (tcp, udp) external endpoints.
fn wait_mapped(client: &mut Proc, method: &str) -> (SocketAddr, SocketAddr) {
    let mut tcp = None;
    let mut udp = None;
    while tcp.is_none() || udp.is_none() {
        let line = client.wait_for("a mapping", |l| l.starts_with("EVENT mapped "));
        let (protocol, external, got, ms) = mapped(&line);
        assert_eq!(got, method, "mapped by another protocol: {line}");
        eprintln!("mapped {protocol} at {external} via {got} after {ms} ms");
        if protocol == Protocol::Tcp {
            tcp = Some(external);
        } else {
            udp = Some(external);
        }
    }
    (tcp.expect("tcp"), udp.expect("udp"))
}

/// The whole story against one gateway: map, reach from the WAN, renew, survive a
/// gateway restart, remove on shutdown (or on drop).
fn gateway_scenario(
    tag: &str,
    methods: &str,
    expected: &str,
    igd_v1: bool,
    conflict: bool,
    drop_instead: bool,
) {
    let Some(mut gw) = GatewayLab::new(tag, igd_v1) else {
        return;
    };
    let conflict = conflict && has("upnpc", "--help");
    if conflict {
        // Another LAN host already holds external TCP port TCP_PORT: the gateway answers
        // 718 ConflictInMappingEntry and the mapper must pick another port.
        let port = TCP_PORT.to_string();
        let url = gw.root_desc();
        gw.lab
            .exec(
                "c",
                &[
                    "upnpc",
                    "-u",
                    &url,
                    "-e",
                    "other",
                    "-a",
                    "10.77.0.3",
                    &port,
                    &port,
                    "TCP",
                    "600",
                ],
            )
            .expect("conflicting mapping");
        assert!(
            gw.redirects()
                .iter()
                .any(|(_, p, to)| *p == TCP_PORT && to.starts_with("10.77.0.3"))
        );
    }

    let mut client = gw.client(methods);
    let start_us = client.wait_for("start cost", |l| l.starts_with("START_US "));
    eprintln!("PortMapper::start took {} µs", &start_us[9..]);
    let (tcp, udp) = wait_mapped(&mut client, expected);
    assert_eq!(tcp.ip().to_string(), WAN_IP);
    assert_eq!(udp.ip().to_string(), WAN_IP);
    if conflict {
        assert_ne!(tcp.port(), TCP_PORT, "the conflicting port was not avoided");
    } else {
        assert_eq!(tcp.port(), TCP_PORT);
    }
    assert!(
        gw.has_redirect(Protocol::Tcp, tcp.port(), TCP_PORT),
        "{:?}",
        gw.redirects()
    );
    assert!(
        gw.has_redirect(Protocol::Rudp, udp.port(), UDP_PORT),
        "{:?}",
        gw.redirects()
    );
    gw.dial_from_wan(tcp, udp);

    // A renewal, then a gateway restart right after it (the most time before the lease
    // would run out): the mapper must notice and re-create both mappings.
    client.wait_for("a renewal", |l| l.starts_with("EVENT renewed "));
    gw.restart_miniupnpd();
    let lost = client.wait_for("the loss", |l| l.starts_with("EVENT lost "));
    assert!(
        lost.contains("GatewayRestarted"),
        "not detected as a restart: {lost}"
    );
    let (tcp2, udp2) = wait_mapped(&mut client, expected);
    assert!(
        gw.has_redirect(Protocol::Tcp, tcp2.port(), TCP_PORT),
        "{:?}",
        gw.redirects()
    );
    assert!(
        gw.has_redirect(Protocol::Rudp, udp2.port(), UDP_PORT),
        "{:?}",
        gw.redirects()
    );
    gw.dial_from_wan(tcp2, udp2);

    if drop_instead {
        client.send("drop");
        client.wait_for("the drop", |l| l == "DROPPED");
        // Nothing announces the background removal: poll the router, bounded.
        let deadline = Instant::now() + WAIT;
        while gw.has_redirect(Protocol::Tcp, tcp2.port(), TCP_PORT)
            || gw.has_redirect(Protocol::Rudp, udp2.port(), UDP_PORT)
        {
            assert!(
                Instant::now() < deadline,
                "mappings not removed after drop: {:?}",
                gw.redirects()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        client.send("shutdown");
        let done = client.wait_for("shutdown", |l| l.starts_with("SHUTDOWN DONE "));
        eprintln!("shutdown took {} ms", &done[14..]);
        let left: Vec<_> = gw
            .redirects()
            .into_iter()
            .filter(|(_, _, to)| to.starts_with(CLIENT_IP))
            .collect();
        assert!(left.is_empty(), "mappings left after shutdown: {left:?}");
    }
    let lines = client.finish();
    for line in lines.iter().filter(|l| l.starts_with("EVENT ")) {
        eprintln!("client: {line}");
    }
    drop(gw);
}

#[test]
fn upnp_igd2_maps_reaches_survives_restart_and_cleans_up() {
    gateway_scenario("u", "upnp", "upnp", false, true, false);
}

#[test]
fn upnp_igd1_maps_reaches_survives_restart_and_cleans_up() {
    gateway_scenario("v", "upnp", "upnp", true, false, false);
}

#[test]
fn pcp_maps_reaches_survives_restart_and_cleans_up() {
    gateway_scenario("p", "pcp,natpmp", "pcp", false, false, false);
}

#[test]
fn natpmp_maps_reaches_survives_restart_and_cleans_up_on_drop() {
    gateway_scenario("n", "natpmp", "natpmp", false, false, true);
}

/// A client namespace with no route at all: `NoGateway` at once.
#[test]
fn no_gateway_without_routes_is_reported_at_once() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let Some(lab) = Lab::new("a", &["c"]) else {
        return;
    };
    let mut client = lab.spawn_child(
        "c",
        "client_child",
        &[(ENV_CLIENT, "pcp,natpmp,upnp 3600 300 1000".to_owned())],
    );
    let line = client.wait_for("NoGateway", |l| l.starts_with("EVENT nogateway"));
    let ms: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("ms");
    eprintln!("NoGateway after {ms} ms (no routes)");
    assert!(ms < 1000, "took {ms} ms");
    let lines = client.finish();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("EVENT ")).count(),
        1,
        "{lines:?}"
    );
}

/// A LAN whose router runs neither PCP/NAT-PMP nor UPnP: `NoGateway` once, after the
/// probe timeouts, and re-probes back off (counted on the router).
#[test]
fn no_gateway_behind_a_silent_router_is_reported_once_without_a_storm() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let Some(lab) = Lab::new("s", &["r", "c"]) else {
        return;
    };
    lab.link(
        "r",
        "lan0",
        &format!("{LAN_GW}/24"),
        "c",
        "eth0",
        &format!("{CLIENT_IP}/24"),
    );
    lab.ip("c", &["route", "add", "default", "via", LAN_GW]);
    let rules = lab.dir.path().join("count.nft");
    std::fs::write(
        &rules,
        "table inet count {\n\
           counter pmp {}\n\
           counter ssdp {}\n\
           chain prerouting {\n\
             type filter hook prerouting priority raw; policy accept;\n\
             udp dport 5351 counter name pmp\n\
             udp dport 1900 counter name ssdp\n\
           }\n\
         }\n",
    )
    .expect("write counters");
    lab.exec("r", &["nft", "-f", rules.to_str().expect("utf-8 path")])
        .expect("counters");
    // Re-probes after 0.5 s, doubling to 2 s (fast, for the test): a storm would show at
    // once.
    let mut client = lab.spawn_child(
        "c",
        "client_child",
        &[(ENV_CLIENT, "pcp,natpmp,upnp 3600 500 2000".to_owned())],
    );
    let line = client.wait_for("NoGateway", |l| l.starts_with("EVENT nogateway"));
    let ms: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("ms");
    eprintln!("NoGateway after {ms} ms (silent router)");
    assert!(ms < 5000, "took {ms} ms");
    let counters = || {
        lab.exec("r", &["nft", "list", "counters"])
            .expect("counters")
    };
    let packets = |counters: &str, name: &str| -> u64 {
        let at = counters.find(&format!("counter {name}")).expect("counter");
        counters[at..]
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("packet count")
    };
    // Nothing announces a re-probe: poll the router's counter (bounded) until three more
    // SSDP searches arrived, and check they were spread out by the backoff (0.5 + 1 + 2 s
    // of pauses, plus three searches of 1 s each).
    let after_first = Instant::now();
    let deadline = after_first + WAIT;
    let (pmp, ssdp) = loop {
        let c = counters();
        let (pmp, ssdp) = (packets(&c, "pmp"), packets(&c, "ssdp"));
        if ssdp >= 4 {
            break (pmp, ssdp);
        }
        assert!(
            Instant::now() < deadline,
            "re-probes stopped: {ssdp} searches"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let spread = after_first.elapsed();
    eprintln!("4 probes: {pmp} PCP/NAT-PMP and {ssdp} SSDP packets; 3 re-probes in {spread:?}");
    assert!(
        spread >= Duration::from_millis(3500),
        "re-probes too fast: {spread:?}"
    );
    // Each probe is one SSDP search and at most two NAT-PMP requests (the router refuses
    // them at once with ICMP port unreachable).
    assert_eq!(ssdp, 4);
    assert!(pmp <= 8, "{pmp} NAT-PMP requests");
    let lines = client.finish();
    let events: Vec<_> = lines.iter().filter(|l| l.starts_with("EVENT ")).collect();
    assert_eq!(
        events.len(),
        1,
        "NoGateway must be reported once: {events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Roles run inside the namespaces
// ---------------------------------------------------------------------------------------

fn line_of(event: &PortMapEvent, ms: u128) -> String {
    match event {
        PortMapEvent::Mapped(m) => format!(
            "EVENT mapped {} {} {} {} {ms}",
            m.protocol, m.local, m.external, m.method
        ),
        PortMapEvent::Renewed(m) => format!(
            "EVENT renewed {} {} {} {} {ms}",
            m.protocol, m.local, m.external, m.method
        ),
        PortMapEvent::Lost { mapping, reason } => format!(
            "EVENT lost {} {} {reason:?} {ms}",
            mapping.protocol, mapping.external
        ),
        PortMapEvent::ExternalAddressChanged { old, new } => {
            format!("EVENT changed {old} {new} {ms}")
        }
        PortMapEvent::Failed { request, error } => format!(
            "EVENT failed {} {} {error} {ms}",
            request.protocol, request.local
        ),
        PortMapEvent::NoGateway => format!("EVENT nogateway {ms}"),
        other => format!("EVENT other {other:?} {ms}"),
    }
}

/// Echoes TCP lines and UDP datagrams with a `pong ` prefix.
fn echo_servers() -> (TcpListener, UdpSocket) {
    let tcp = TcpListener::bind(("0.0.0.0", TCP_PORT)).expect("bind tcp");
    let udp = UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("bind udp");
    (tcp, udp)
}

/// The mapping node, run by the tests inside the client namespace; does nothing unless
/// `CRUST_NAT_CLIENT` is set (`<methods> <lease secs> <reprobe initial ms> <reprobe max
/// ms>`). Reads commands on stdin (`shutdown`, `drop`); ends when stdin closes.
#[test]
fn client_child() {
    let Ok(spec) = std::env::var(ENV_CLIENT) else {
        return;
    };
    let words: Vec<&str> = spec.split_whitespace().collect();
    let methods = words[0];
    let lease = Duration::from_secs(words[1].parse().expect("lease"));
    let ms = |i: usize| Duration::from_millis(words[i].parse().expect("milliseconds"));
    let (reprobe_initial, reprobe_max) = (ms(2), ms(3));
    let (tcp, udp) = echo_servers();
    std::thread::spawn(move || {
        for stream in tcp.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_ok() {
                let _ = writeln!(stream, "pong {}", line.trim());
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let mut reply = b"pong ".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&reply, from);
        }
    });
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<String>(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if commands_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let config = PortMapConfig::default()
            .with_pcp(methods.contains("pcp"))
            .with_natpmp(methods.contains("natpmp"))
            .with_upnp(methods.contains("upnp"))
            .with_lease_duration(lease)
            .with_upnp_search_timeout(Duration::from_secs(1))
            .with_request_timeout(Duration::from_secs(2))
            .with_retry(Duration::from_millis(300), Duration::from_secs(2))
            .with_reprobe(reprobe_initial, reprobe_max);
        let requests = vec![
            MappingRequest::new(Protocol::Tcp, SocketAddr::from(([0, 0, 0, 0], TCP_PORT))),
            MappingRequest::new(Protocol::Rudp, SocketAddr::from(([0, 0, 0, 0], UDP_PORT))),
        ];
        let started = Instant::now();
        let (mapper, mut events) = PortMapper::start(config, requests);
        println!("START_US {}", started.elapsed().as_micros());
        let mut mapper = Some(mapper);
        let deadline = tokio::time::Instant::now() + CHILD_DEADLINE;
        loop {
            tokio::select! {
                event = events.recv(), if mapper.is_some() => {
                    let Some(event) = event else { break };
                    println!("{}", line_of(&event, started.elapsed().as_millis()));
                }
                command = commands.recv() => match command.as_deref() {
                    Some("shutdown") => {
                        let t = Instant::now();
                        if let Some(m) = mapper.take() {
                            m.shutdown().await;
                        }
                        println!("SHUTDOWN DONE {}", t.elapsed().as_millis());
                    }
                    Some("drop") => {
                        drop(mapper.take());
                        println!("DROPPED");
                    }
                    Some(other) => panic!("unknown command {other:?}"),
                    // stdin closed: the parent is done with us. Give a dropped mapper's
                    // background clean-up its bounded time before the runtime ends.
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => panic!("client ran too long"),
            }
        }
        drop(mapper);
    });
}

/// Dials the external endpoints in `CRUST_NAT_WAN` (`<tcp addr> <udp addr>`) from the
/// public namespace and checks the echoes.
#[test]
fn wan_child() {
    let Ok(spec) = std::env::var(ENV_WAN) else {
        return;
    };
    let mut words = spec.split_whitespace();
    let tcp: SocketAddr = words.next().expect("tcp").parse().expect("tcp addr");
    let udp: SocketAddr = words.next().expect("udp").parse().expect("udp addr");
    let mut stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(5)).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    writeln!(stream, "ping").expect("tcp write");
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .expect("tcp read");
    assert_eq!(reply.trim(), "pong ping");
    println!("WAN OK tcp");
    let socket = UdpSocket::bind("0.0.0.0:0").expect("udp bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let mut answered = false;
    // Datagrams may be lost: a few attempts, each bounded.
    for _ in 0..5 {
        socket.send_to(b"ping", udp).expect("udp send");
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"pong ping");
            answered = true;
            break;
        }
    }
    assert!(answered, "no UDP echo from {udp}");
    println!("WAN OK udp");
}

/// A minimal STUN responder (RFC 5389 binding responses with XOR-MAPPED-ADDRESS) on
/// `CRUST_NAT_STUN`, for miniupnpd's `ext_perform_stun`. Runs until killed (or stdin
/// closes).
#[test]
fn stun_child() {
    let Ok(addr) = std::env::var(ENV_STUN) else {
        return;
    };
    let socket = UdpSocket::bind(addr.as_str()).expect("bind stun");
    println!("STUN READY {addr}");
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let request = &buf[..n];
        // A binding request: type 0x0001, magic cookie, 12-byte transaction id.
        if n < 20 || request[0..2] != [0x00, 0x01] {
            continue;
        }
        let SocketAddr::V4(from4) = from else {
            continue;
        };
        let cookie = [0x21, 0x12, 0xa4, 0x42];
        let port = from4.port() ^ 0x2112;
        let ip = u32::from(*from4.ip()) ^ 0x2112_a442;
        let mut reply = vec![0x01, 0x01, 0x00, 12];
        reply.extend_from_slice(&cookie);
        reply.extend_from_slice(&request[8..20]);
        reply.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
        reply.extend_from_slice(&port.to_be_bytes());
        reply.extend_from_slice(&ip.to_be_bytes());
        let _ = socket.send_to(&reply, from);
    }
}
