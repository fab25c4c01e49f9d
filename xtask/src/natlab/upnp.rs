//! A UPnP IGD / NAT-PMP / PCP gateway on a lab router: Debian's `miniupnpd-nftables` with
//! its own nft table, and the small STUN responder it needs on the public host.
//!
//! Use it for port-mapping tests (the `crust-nat` client, `upnpc`):
//!
//! ```text
//! lab.configure(Router::R1, NatType::PortRestricted)?; // first: this replaces r1's table
//! let gateway = upnp::start(&lab, Router::R1, &dir)?;  // miniupnpd on r1, STUN on pub
//! // a1 (10.1.0.10) maps ports: UPnP (SSDP on r1's LAN, HTTP on 10.1.0.1:5000) or
//! // NAT-PMP/PCP (10.1.0.1:5351); pub then dials 198.18.0.11:<external port>.
//! gateway.mappings()?;                                 // miniupnpd's DNAT rules
//! drop(gateway);                                       // stops miniupnpd and STUN
//! ```
//!
//! `cargo xtask natlab --keep --no-cells --upnp` leaves such a lab up (then
//! `ip netns exec <prefix>a1 upnpc -l`), and the `upnp/port-restricted` cell maps a1's
//! ports with `upnpc` and dials them from the internet side.
//!
//! Facts this relies on:
//! - The package ships only the binary: the table `inet miniupnpd` and its chains are
//!   created here and named in the config (`upnp_table_name`, `upnp_nat_table_name`,
//!   `upnp_forward_chain`, `upnp_nat_chain`, `upnp_nat_postrouting_chain`).
//!   `listening_ip` is the LAN interface's name; miniupnpd runs with `-d` (foreground,
//!   logs on stderr) inside the router's namespace, with its own pid and lease files.
//! - miniupnpd disables port forwarding when its WAN address is in a reserved range
//!   (198.18.0.0/15 included) unless `ext_perform_stun=yes` finds, with CHANGE-REQUESTs
//!   answered from another address and port, that nothing filters. So `pub` gets a second
//!   address and runs [`serve_stun`] on both addresses and two ports, and the router's
//!   input firewall lets the answers of that STUN server in (a rule inserted into
//!   `natlab`'s input chain; `Lab::configure` removes it with the rest of the table).
//! - Our forward chains accept `ct status dnat`, so flows miniupnpd's DNAT rules let in
//!   pass the NAT type's filtering. Deleting a mapping does not cut flows conntrack
//!   already tracks.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::topology::{self, Lab, Role, Router};

/// The STUN ports on `pub` (primary and the "changed" one).
const STUN_PORTS: [u16; 2] = [3478, 3479];
/// `pub`'s second address, the "changed" one of the STUN server.
const STUN_ALTERNATE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
/// miniupnpd's HTTP (UPnP control) port on the router's LAN address.
const HTTP_PORT: u16 = 5000;
/// How long miniupnpd may take to do its STUN test and listen.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// miniupnpd's table and chains (nft), named again in its config.
const UPNP_TABLE: &str = r#"
table inet miniupnpd {}
delete table inet miniupnpd
table inet miniupnpd {
	# miniupnpd adds its rules to the three chains it is told about; the base chains jump
	# there. Port forwards: DNAT in upnp_prerouting, accept in upnp_forward.
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		jump upnp_forward
	}
	chain upnp_forward {
	}
	chain prerouting {
		type nat hook prerouting priority dstnat - 10; policy accept;
		jump upnp_prerouting
	}
	chain upnp_prerouting {
	}
	chain postrouting {
		type nat hook postrouting priority srcnat - 10; policy accept;
		jump upnp_postrouting
	}
	chain upnp_postrouting {
	}
}
"#;

/// miniupnpd and the STUN responder; dropping it stops both.
#[derive(Debug)]
pub(crate) struct Gateway {
    miniupnpd: Option<Child>,
    stun: Option<Child>,
    router_ns: String,
}

impl Gateway {
    /// The port forwards miniupnpd made (its DNAT rules, as `nft` lists them).
    pub(crate) fn mappings(&self) -> Result<String> {
        topology::output(
            "ip",
            &[
                "netns",
                "exec",
                &self.router_ns,
                "nft",
                "list",
                "chain",
                "inet",
                "miniupnpd",
                "upnp_prerouting",
            ],
        )
    }

    /// Leaves both processes running after this program exits (`--keep`); removing the
    /// lab kills them.
    pub(crate) fn detach(mut self) {
        self.miniupnpd = None;
        self.stun = None;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let stopped = self.miniupnpd.is_some();
        for mut child in [self.miniupnpd.take(), self.stun.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if stopped {
            // Its port forwards go with it (flows conntrack tracks stay until they end).
            let ns = self.router_ns.as_str();
            let _ = topology::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "miniupnpd",
                ],
            );
        }
    }
}

/// What the UPnP cell needs and this machine lacks (packages `miniupnpd-nftables`,
/// `miniupnpc`), or `None`.
pub(crate) fn missing() -> Option<String> {
    let missing: Vec<&str> = [("miniupnpd", "--version"), ("upnpc", "--help")]
        .into_iter()
        .filter(|(tool, arg)| {
            Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|(tool, _)| tool)
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The URL of miniupnpd's device description on `router` (for `upnpc -u`, which skips
/// SSDP discovery).
pub(crate) fn root_desc_url(lab: &Lab, router: Router) -> String {
    format!(
        "http://{}:{HTTP_PORT}/rootDesc.xml",
        lab.router_lan_ip(router)
    )
}

/// Starts the STUN responder on `pub` and miniupnpd on `router` (whose behaviour should be
/// a cone, normally `port-restricted`), and waits until miniupnpd has enabled port
/// forwarding. Files go to `dir`.
pub(crate) fn start(lab: &Lab, router: Router, dir: &Path) -> Result<Gateway> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pub_ns = lab.ns(Role::Pub);
    let router_ns = lab.ns(router.role());
    let primary = lab.ip(Role::Pub);

    // The STUN server: pub's second address, then this program as the responder.
    // Same prefix as the primary: a secondary address, never chosen as a source.
    let alternate = format!("{STUN_ALTERNATE}/{}", topology::INTERNET_PREFIX);
    if let Err(e) = topology::run(
        "ip",
        &["-n", &pub_ns, "addr", "add", &alternate, "dev", "wan"],
    ) {
        let text = format!("{e:#}");
        if !text.contains("exists") && !text.contains("already assigned") {
            return Err(e);
        }
    }
    let exe = std::env::current_exe().context("path of this program")?;
    let stun = Command::new("ip")
        .args(["netns", "exec", &pub_ns])
        .arg(exe)
        .args([
            "natlab-stun",
            &primary.to_string(),
            &STUN_ALTERNATE.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(File::create(dir.join("stun.log"))?))
        .spawn()
        .context("starting the STUN responder")?;
    let mut gateway = Gateway {
        miniupnpd: None,
        stun: Some(stun),
        router_ns: router_ns.clone(),
    };

    // The router: miniupnpd's table, and the STUN answers through the input firewall.
    let exec = |args: &[&str]| -> Result<()> {
        let mut full = vec!["netns", "exec", router_ns.as_str()];
        full.extend_from_slice(args);
        topology::run("ip", &full)
    };
    let table = dir.join("miniupnpd.nft");
    std::fs::write(&table, UPNP_TABLE)?;
    exec(&["nft", "-f", &table.to_string_lossy()])?;
    let stun_rule = format!(
        "iifname \"wan\" ip saddr {{ {primary}, {STUN_ALTERNATE} }} udp sport {{ {}, {} }} accept",
        STUN_PORTS[0], STUN_PORTS[1]
    );
    exec(&["nft", "insert", "rule", "ip", "natlab", "input", &stun_rule])?;

    let lan = lab.lan_subnet(router);
    let conf = dir.join("miniupnpd.conf");
    std::fs::write(&conf, config(lab.ip(Role::Pub), &lan, dir))?;
    let log_path = dir.join("miniupnpd.log");
    let child = Command::new("ip")
        .args(["netns", "exec", &router_ns, "miniupnpd", "-d", "-f"])
        .arg(&conf)
        .arg("-P")
        .arg(dir.join("miniupnpd.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting miniupnpd")?;
    gateway.miniupnpd = Some(child);
    wait_ready(&mut gateway, &log_path)?;
    Ok(gateway)
}

/// Copies miniupnpd's stderr to `log` and waits until it listens with port forwarding
/// enabled (bounded).
fn wait_ready(gateway: &mut Gateway, log: &Path) -> Result<()> {
    let child = gateway
        .miniupnpd
        .as_mut()
        .context("miniupnpd not started")?;
    let stderr = child.stderr.take().context("miniupnpd stderr")?;
    let mut file = File::create(log)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(256);
    std::thread::spawn(move || {
        use std::io::Write as _;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            // Only the start-up lines matter; later ones are only written to the file.
            let _ = tx.try_send(line);
        }
    });
    let until = Instant::now() + READY_DEADLINE;
    let (mut forwarding, mut listening) = (false, false);
    while !(forwarding && listening) {
        let left = until.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => bail!(
                "miniupnpd was not ready within {}s (see {})",
                READY_DEADLINE.as_secs(),
                log.display()
            ),
        };
        if line.contains("Port forwarding is now disabled") {
            bail!(
                "miniupnpd disabled port forwarding: {line} (see {})",
                log.display()
            );
        }
        forwarding |= line.contains("Port forwarding is now enabled");
        listening |= line.contains("Listening for NAT-PMP");
    }
    Ok(())
}

/// miniupnpd's config for a router whose LAN is `lan` (`10.1.0.0/24`).
fn config(stun_host: Ipv4Addr, lan: &str, dir: &Path) -> String {
    format!(
        "# miniupnpd on a natlab router (xtask/src/natlab/upnp.rs)\n\
         ext_ifname=wan\n\
         listening_ip=lan\n\
         http_port={HTTP_PORT}\n\
         enable_upnp=yes\n\
         # NAT-PMP and PCP\n\
         enable_natpmp=yes\n\
         # The WAN address is in a reserved range: learn it and test filtering by STUN.\n\
         ext_perform_stun=yes\n\
         ext_stun_host={stun_host}\n\
         ext_stun_port={}\n\
         upnp_table_name=miniupnpd\n\
         upnp_nat_table_name=miniupnpd\n\
         upnp_forward_chain=upnp_forward\n\
         upnp_nat_chain=upnp_prerouting\n\
         upnp_nat_postrouting_chain=upnp_postrouting\n\
         lease_file={}\n\
         secure_mode=yes\n\
         system_uptime=yes\n\
         uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b\n\
         allow 1024-65535 {lan} 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        STUN_PORTS[0],
        dir.join("leases").display()
    )
}

/// Runs the STUN responder (hidden `xtask natlab-stun PRIMARY ALTERNATE`, started by
/// [`start`] inside `pub`'s namespace): binding requests on both addresses and both
/// [`STUN_PORTS`], answered from the address and port a CHANGE-REQUEST asks for. Runs
/// until killed (the lab's removal kills it).
pub(crate) fn serve_stun(primary: Ipv4Addr, alternate: Ipv4Addr) -> Result<()> {
    // sockets[ip][port]: ip 0 = primary, 1 = alternate; port 0 = 3478, 1 = 3479.
    let mut sockets = Vec::new();
    for ip in [primary, alternate] {
        for port in STUN_PORTS {
            let socket = UdpSocket::bind(SocketAddrV4::new(ip, port))
                .with_context(|| format!("binding {ip}:{port}"))?;
            sockets.push(socket);
        }
    }
    let sockets = Arc::new(sockets);
    let mut threads = Vec::new();
    for index in 0..sockets.len() {
        let sockets = sockets.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((len, from)) = sockets[index].recv_from(&mut buf) else {
                    return;
                };
                let SocketAddr::V4(from) = from else { continue };
                if let Some((response, change_ip, change_port)) = stun_response(&buf[..len], from) {
                    let (ip, port) = (index / 2, index % 2);
                    let out = (ip ^ usize::from(change_ip)) * 2 + (port ^ usize::from(change_port));
                    let _ = sockets[out].send_to(&response, from);
                }
            }
        }));
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

/// The answer to a STUN binding request from `from`, with the request's CHANGE-REQUEST
/// flags `(change ip, change port)`; `None` for anything else. The answer carries
/// XOR-MAPPED-ADDRESS (RFC 5389) and MAPPED-ADDRESS (RFC 3489).
fn stun_response(request: &[u8], from: SocketAddrV4) -> Option<(Vec<u8>, bool, bool)> {
    const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    if request.len() < 20 || request[0..2] != [0x00, 0x01] || request[4..8] != COOKIE {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([request[2], request[3]]));
    let body = request.get(20..20 + body_len)?;
    let (mut change_ip, mut change_port) = (false, false);
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == 0x0003 && len == 4 {
            change_ip = value[3] & 0x04 != 0;
            change_port = value[3] & 0x02 != 0;
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    let port = from.port().to_be_bytes();
    let ip = from.ip().octets();
    let mut out = Vec::with_capacity(44);
    out.extend_from_slice(&[0x01, 0x01, 0x00, 24]);
    out.extend_from_slice(&request[4..20]);
    // XOR-MAPPED-ADDRESS
    out.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
    out.extend_from_slice(&[port[0] ^ COOKIE[0], port[1] ^ COOKIE[1]]);
    out.extend(ip.iter().zip(COOKIE).map(|(b, c)| b ^ c));
    // MAPPED-ADDRESS
    out.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01]);
    out.extend_from_slice(&port);
    out.extend_from_slice(&ip);
    Some((out, change_ip, change_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(flags: u8) -> Vec<u8> {
        let mut r = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        r.extend_from_slice(&[7; 12]);
        r.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, flags]);
        r
    }

    #[test]
    fn binding_response_maps_the_sender() {
        let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 40000);
        let (resp, change_ip, change_port) = stun_response(&request(0x06), from).expect("answer");
        assert!(change_ip && change_port);
        assert_eq!(&resp[0..2], &[0x01, 0x01]);
        assert_eq!(
            usize::from(u16::from_be_bytes([resp[2], resp[3]])),
            resp.len() - 20
        );
        assert_eq!(&resp[8..20], &[7; 12], "transaction id echoed");
        // XOR-MAPPED-ADDRESS decodes to the sender.
        let port = u16::from_be_bytes([resp[26] ^ 0x21, resp[27] ^ 0x12]);
        let ip = Ipv4Addr::new(
            resp[28] ^ 0x21,
            resp[29] ^ 0x12,
            resp[30] ^ 0xa4,
            resp[31] ^ 0x42,
        );
        assert_eq!(SocketAddrV4::new(ip, port), from);
        let (_, ci, cp) = stun_response(&request(0x02), from).expect("answer");
        assert!(!ci && cp);
    }

    #[test]
    fn not_a_binding_request() {
        let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        assert!(stun_response(&[0u8; 10], from).is_none());
        let mut r = request(0);
        r[0] = 0x01;
        assert!(stun_response(&r, from).is_none());
        let mut r = request(0);
        r[3] = 0x40; // longer than the datagram
        assert!(stun_response(&r, from).is_none());
    }

    #[test]
    fn config_names_the_tables_and_lan() {
        let text = config(
            Ipv4Addr::new(198, 18, 0, 2),
            "10.1.0.0/24",
            Path::new("/tmp/x"),
        );
        for key in [
            "upnp_table_name=miniupnpd",
            "upnp_nat_table_name=miniupnpd",
            "upnp_forward_chain=upnp_forward",
            "upnp_nat_chain=upnp_prerouting",
            "upnp_nat_postrouting_chain=upnp_postrouting",
            "listening_ip=lan",
            "ext_perform_stun=yes",
            "ext_stun_host=198.18.0.2",
            "allow 1024-65535 10.1.0.0/24 1024-65535",
        ] {
            assert!(text.contains(key), "{key}");
        }
    }
}
