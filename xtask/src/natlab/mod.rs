//! `cargo xtask natlab`: real `crust-peer` processes behind real Linux NAT (nftables in
//! network namespaces), no simulation. Prints a matrix, writes `target/natlab/latest.json`.
//!
//! ```text
//!            internet segment 198.18.0.0/16 (bridge br0 in namespace `inet`)
//!    +--------------+--------------+-----------------------+------------------------+
//!    |              |              |                       |
//!  pub 0.2        pub2 2.2       wan 0.11                wan 0.12
//!  pub  :4000/1   pub2 :4000/1   r1  nft: NAT type X     r2  nft: NAT type Y
//!  pubx :4002/3                  |   WAN input firewall  |   WAN input firewall
//!  (rendezvous                   lan bridge .1           lan bridge .1
//!   + 2nd port)                  10.1.0.0/24             10.2.0.0/24
//!                                (198.19.1.0/24 if X     (198.19.2.0/24 if Y
//!                                 is none: routed)        is none: routed)
//!                                +-----------+           |
//!                                |           |           |
//!                              a1 .10      a2 .11      b1 .10
//!                              :4100/1     :4200/1     :4300/1
//!                                          (+ :4202/3)
//! ```
//!
//! Every box is a network namespace `natlab-<pid>-<name>` (`natlabk-…` with `--keep`);
//! `:T/U` are the fixed TCP/rUDP ports of the `crust-peer --json` nodes run there with
//! `ip netns exec`. Addresses are benchmarking (198.18.0.0/15) and private ranges, and
//! exist only inside the lab's namespaces; nothing leaves the machine.
//!
//! NAT types (`nat.rs`, rulesets in `xtask/natlab/*.nft`): `none`, `full-cone`,
//! `address-restricted`, `port-restricted` (= `masquerade`), `symmetric` (= `masquerade
//! fully-random`). Cells (`cells.rs`) re-configure the routers (which empties their
//! conntrack tables), start fresh hosts, drive them over stdin/stdout JSON lines
//! (`node.rs`) and compare with today's expectations (`expect.rs`); `report.rs` prints the
//! matrix. `topology.rs` builds and removes the namespaces: a guard's `Drop`, a Ctrl-C /
//! SIGTERM handler and a start-up sweep of labs whose process is dead. `upnp.rs` runs
//! miniupnpd (UPnP IGD, NAT-PMP, PCP) on a router, with the STUN responder it needs.
//!
//! Needs root and `ip`, `nft`, `conntrack`, `ss`. Without them it prints what is missing
//! and exits 0 with `--ci` (what `cargo xtask test` passes), non-zero otherwise. Exits
//! non-zero when a cell is `UNEXPECTED`.

mod cells;
mod expect;
mod nat;
mod node;
mod report;
mod topology;
pub(crate) mod upnp;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;

use self::cells::{Cell, Ctx, Publics};
use self::nat::NatType;
use self::topology::{Lab, Role, Router};
use crate::Xtask;

/// Arguments of `cargo xtask natlab`.
#[derive(Debug, Default, Args)]
pub(crate) struct NatlabArgs {
    /// Run a few cells only (what CI runs): observations behind every NAT type, full-cone
    /// filtering, same-NAT peers, hole punches (cone, TCP, birthday, symmetric pair), a
    /// public host dialled directly, crust-peer's own port mapping, IPv6.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Leave the lab up afterwards (without its nodes) and print how to use it; remove it
    /// with `--clean`.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Remove every lab whose process is gone (kept ones included), then exit.
    #[arg(long)]
    pub(crate) clean: bool,
    /// Missing root or tools is a skip (exit 0) instead of an error.
    #[arg(long)]
    pub(crate) ci: bool,
    /// Run only the cells whose name contains TEXT (e.g. `pair/`, `symmetric`).
    #[arg(long, value_name = "TEXT")]
    pub(crate) only: Option<String>,
    /// Use this crust-peer binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub(crate) peer_bin: Option<PathBuf>,
    /// With --keep: the NAT type r1 is left with (default port-restricted).
    #[arg(long, value_name = "NAT", value_parser = parse_nat)]
    pub(crate) r1: Option<NatType>,
    /// With --keep: the NAT type r2 is left with (default port-restricted).
    #[arg(long, value_name = "NAT", value_parser = parse_nat)]
    pub(crate) r2: Option<NatType>,
    /// Build the lab without running any cell (with --keep: a lab to poke at by hand).
    #[arg(long)]
    pub(crate) no_cells: bool,
    /// Trials per hole-punch cell (default 20, 5 with --quick).
    #[arg(long, value_name = "N")]
    pub(crate) trials: Option<usize>,
    /// With --keep: also leave miniupnpd (UPnP IGD, NAT-PMP, PCP) running on r1.
    #[arg(long)]
    pub(crate) upnp: bool,
}

fn parse_nat(text: &str) -> Result<NatType, String> {
    NatType::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = NatType::ALL.iter().map(|t| t.name()).collect();
        format!("unknown NAT type {text:?}; one of {}", names.join(", "))
    })
}

/// Runs `cargo xtask natlab`.
pub(crate) fn run(xtask: &Xtask, args: &NatlabArgs) -> Result<()> {
    if args.clean {
        let removed = topology::sweep_stale(true);
        println!("natlab: removed {} namespaces", removed.len());
        for ns in removed {
            println!("  {ns}");
        }
        return Ok(());
    }
    if let Some(missing) = missing_prerequisites() {
        let message = format!(
            "the NAT lab needs root, network namespaces and `ip`, `nft`, `conntrack`, `ss` \
             (Debian: iproute2 nftables conntrack); missing: {missing}"
        );
        if args.ci {
            println!("natlab: skipped: {message}");
            return Ok(());
        }
        bail!("{message}");
    }
    topology::install_signal_handler()?;
    let swept = topology::sweep_stale(false);
    if !swept.is_empty() {
        println!(
            "natlab: removed {} namespaces of labs whose process died",
            swept.len()
        );
    }

    let mut cells = if args.quick {
        Cell::quick()
    } else {
        Cell::all()
    };
    if let Some(only) = &args.only {
        cells.retain(|c| c.name().contains(only.as_str()));
    }
    if args.no_cells {
        cells.clear();
    }
    let target = target_dir(xtask);
    let bin = match &args.peer_bin {
        Some(bin) => bin.clone(),
        None => build_peer(xtask, &target)?,
    };
    let logs = target.join("natlab").join("logs");
    let _ = std::fs::remove_dir_all(&logs);

    let start = Instant::now();
    let mut lab = Lab::create(args.keep)?;
    println!(
        "natlab: lab {} up in {:.1}s; {} cells (node logs in {})",
        lab.prefix(),
        start.elapsed().as_secs_f64(),
        cells.len(),
        logs.display()
    );
    let publics = Publics::start(&lab, &bin, &logs)?;
    let mut reports = Vec::new();
    {
        let mut ctx = Ctx {
            lab: &mut lab,
            publics: &publics,
            bin: bin.clone(),
            logs: logs.clone(),
            trials: args
                .trials
                .unwrap_or(if args.quick { 5 } else { 20 })
                .max(1),
            next_trial_port: 0,
        };
        for cell in cells {
            let report = ctx.run(cell);
            if topology::interrupted() {
                return Err(topology::wait_for_signal_handler());
            }
            println!(
                "  {:<40} {:<10} {:>5.1}s",
                report.name,
                if report.expected() {
                    "expected"
                } else {
                    "UNEXPECTED"
                },
                report.elapsed.as_secs_f64()
            );
            reports.push(report);
        }
    }
    drop(publics);
    let total = start.elapsed();

    println!();
    print!("{}", report::matrix(&reports));
    let json = target.join("natlab").join("latest.json");
    let mode = if args.quick { "quick" } else { "full" };
    report::write_json(&json, mode, lab.prefix(), &reports, total)?;
    println!(
        "natlab: {:.1}s with the lab's set-up; JSON in {}",
        total.as_secs_f64(),
        json.display()
    );

    if args.keep {
        keep(&mut lab, args, &bin)?;
    }
    drop(lab);
    let unexpected = reports.iter().filter(|r| !r.expected()).count();
    if unexpected > 0 {
        bail!(
            "{unexpected} unexpected natlab results (matrix above; node logs in {})",
            logs.display()
        );
    }
    Ok(())
}

/// Sets the routers as asked, optionally starts miniupnpd, and prints how to use the lab.
fn keep(lab: &mut Lab, args: &NatlabArgs, bin: &Path) -> Result<()> {
    let r1 = args.r1.unwrap_or(NatType::PortRestricted);
    let r2 = args.r2.unwrap_or(NatType::PortRestricted);
    lab.configure(Router::R1, r1)?;
    lab.configure(Router::R2, r2)?;
    let upnp = if args.upnp {
        let dir = target_dir_of(bin)
            .join("natlab")
            .join(format!("{}upnp", lab.prefix()));
        let gateway = upnp::start(lab, Router::R1, &dir)?;
        let note = format!(
            "miniupnpd on r1 (files in {}): ip netns exec {} upnpc -u {} -l",
            dir.display(),
            lab.ns(Role::A1),
            upnp::root_desc_url(lab, Router::R1),
        );
        gateway.detach();
        Some(note)
    } else {
        None
    };
    let ns = |role: Role| lab.ns(role);
    println!();
    println!(
        "natlab: the lab stays up: r1 = {r1} (a1 {}, a2 {}), r2 = {r2} (b1 {}), pub {}, pub2 {}",
        lab.ip(Role::A1),
        lab.ip(Role::A2),
        lab.ip(Role::B1),
        lab.ip(Role::Pub),
        lab.ip(Role::Pub2),
    );
    println!(
        "  a shell in a namespace:  ip netns exec {} bash",
        ns(Role::A1)
    );
    println!(
        "  a node:                  ip netns exec {} {} --no-bootstrap --tcp-port 4000 --rudp-port 4001",
        ns(Role::Pub),
        bin.display()
    );
    println!(
        "  the NAT and its state:   ip netns exec {0} nft list ruleset; ip netns exec {0} conntrack -L",
        ns(Role::R1)
    );
    println!(
        "  a lab of other types:    cargo xtask natlab --keep --no-cells --r1 symmetric --r2 full-cone"
    );
    if let Some(note) = upnp {
        println!("  {note}");
    }
    println!("  tear down:               cargo xtask natlab --clean");
    Ok(())
}

/// The target directory a `target/debug/crust-peer` lives in (or `target/`).
fn target_dir_of(bin: &Path) -> PathBuf {
    bin.parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

/// `$CARGO_TARGET_DIR`, or `target/` in the workspace.
fn target_dir(xtask: &Xtask) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| xtask.root.join("target"))
}

/// The `crust-peer` an earlier build left in `target/debug`, if any. `cargo xtask test`
/// uses the one its test step just built with `--all-features`: building it again with
/// only `cli` would rebuild most dependencies, whose features differ without the
/// dev-dependencies.
pub(crate) fn built_peer(xtask: &Xtask) -> Option<PathBuf> {
    let bin = target_dir(xtask).join("debug").join("crust-peer");
    bin.exists().then_some(bin)
}

/// Builds `crust-peer` (debug, feature `cli`) and returns its path.
fn build_peer(xtask: &Xtask, target: &Path) -> Result<PathBuf> {
    let cmd = xtask.cargo([
        "build",
        "-p",
        "crust",
        "--features",
        "cli",
        "--bin",
        "crust-peer",
    ]);
    xtask.run(cmd)?;
    let bin = target.join("debug").join("crust-peer");
    if !bin.exists() {
        bail!("built crust-peer but found no {}", bin.display());
    }
    Ok(bin)
}

/// What the lab needs and this machine lacks, or `None`.
fn missing_prerequisites() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Some("root (running as a normal user)".to_owned());
    }
    let mut missing = Vec::new();
    for (tool, arg) in [
        ("ip", "-V"),
        ("nft", "--version"),
        ("conntrack", "--version"),
        ("ss", "-V"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            missing.push(format!("`{tool}`"));
        }
    }
    if missing.is_empty() {
        // Root is not always enough (containers without CAP_SYS_ADMIN).
        let probe = format!("{}{}-probe", topology::PREFIX, std::process::id());
        match topology::run("ip", &["netns", "add", &probe]) {
            Ok(()) => topology::remove_namespace(&probe),
            Err(e) => missing.push(format!("network namespaces ({e:#})")),
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}
