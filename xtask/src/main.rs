//! Workspace automation, invoked as `cargo xtask <COMMAND>` (the alias lives
//! in `.cargo/config.toml`).
//!
//! * `cargo xtask test [-p CRATE]...`: format check, clippy, tests (nextest
//!   when installed, else `cargo test`), doc tests and `cargo doc` builds with
//!   rustdoc warnings denied (default features, as docs.rs builds, and all
//!   features). Stops at the first failing step. Every step but the default
//!   `cargo doc` passes `--all-features`, which turns on `crust/cli`: the
//!   `crust-peer` binary and its test (`crust/tests/cli.rs`) need it. Ends with
//!   the demo and the NAT lab's short set.
//! * `cargo xtask ci`: exactly what CI runs, i.e. `test` on the whole
//!   workspace.
//! * `cargo xtask demo [ARGS]...`: runs the demo example in release mode.
//! * `cargo xtask bench [--quick] [ARGS]...`: runs the loopback benchmark
//!   (`crust/benches/bench.rs`) in release mode; prints a table and writes it as
//!   JSON to `target/bench/latest.json`.
//! * `cargo xtask soak [--minutes N] [--nodes M] [--seed S]`: churn and soak on loopback
//!   (`crust/examples/soak/`, release build): nodes join and leave while messages flow;
//!   fails on any message lost without a report, duplicated or reordered, and on fds, tasks
//!   or memory not back to their starting level. Writes `target/soak/report.json`. `test`
//!   runs a 20-second soak (debug build) after the demo.
//! * `cargo xtask sim [--nodes N] [--k K] [--seed S] [ARGS]...`: the gossip
//!   simulation (`crust/examples/gossip_sim.rs`, release): N services on loopback, each
//!   told about one bootstrap node; time until each knows K peers, pairs reached by
//!   `PeerId`, memory per node.
//! * `cargo xtask fuzz [--seconds N] [--target T]...`: runs the cargo-fuzz targets of
//!   `fuzz/` (every parser of peer or disk input) for N seconds each (`src/fuzz.rs`);
//!   prints executions, crashes and time per target.
//! * `cargo xtask natlab [--quick] [--keep] [--clean] [--ci]`: the NAT lab
//!   (`src/natlab/`): `crust-peer` nodes behind real Linux NAT in network
//!   namespaces (root); prints a matrix and writes `target/natlab/latest.json`.
//!   `test` runs `natlab --quick --ci` last (a skip with its reason when not root).
#![forbid(unsafe_code)]

mod fuzz;
mod natlab;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;
use std::{env, fmt};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

/// `(package, example)` run by `cargo xtask demo`.
///
/// Switch to `("crust", "demo")` once that example exists.
const DEMO: (&str, &str) = ("crust", "demo");

/// Command-line interface of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Workspace automation tasks"
)]
struct Cli {
    /// Task to run.
    #[command(subcommand)]
    command: Task,
}

/// The available tasks.
#[derive(Debug, Subcommand)]
enum Task {
    /// Check formatting, run clippy, tests, doc tests and rustdoc.
    Test(TestArgs),
    /// Run exactly what CI runs: `test` for the whole workspace.
    Ci,
    /// Run the demo example in release mode.
    Demo {
        /// Arguments passed through to the example.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the loopback benchmark (release build): Crust against raw TCP, TLS and QUIC.
    ///
    /// Prints a table and writes it as JSON to `target/bench/latest.json`. `--quick` moves
    /// 256 MiB instead of 1 GiB per bulk run and uses fewer repetitions; `--json PATH`,
    /// `--only bulk|rate|handshake|scale`, `--reps N` and `--scale N` are passed through too.
    Bench {
        /// Arguments passed through to the benchmark, e.g. `--quick`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Churn and soak: in-process nodes join and leave at random while messages flow.
    ///
    /// Release build of `crust/examples/soak/`. Checks that every message `send` accepted
    /// arrived exactly once and in order or was reported to its sender
    /// (`MessagesUnconfirmed`), and that fds, tokio tasks and memory return to their
    /// starting level; prints a table, writes `target/soak/report.json`, exits non-zero on
    /// any failure.
    Soak(SoakArgs),
    /// Simulate gossip at scale: N services on loopback, each told about one bootstrap node
    /// (release build of `crust/examples/gossip_sim.rs`).
    ///
    /// Measures the time until every node knows K peers, random pairs reaching each other
    /// by `PeerId` alone, and memory per node; prints a table and JSON. Arguments are passed
    /// through: `--nodes 200 --k 20 --pairs 50 --seed 1 --interval-ms 500
    /// --topology star|tree --timeout-secs 180 --pairs-at-k --max-per-source 256 --json PATH`.
    Sim {
        /// Arguments passed through to the simulation, e.g. `--nodes 200`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz every parser of peer or disk input (cargo-fuzz targets in `fuzz/`).
    ///
    /// Runs each target for `--seconds` (default 10) and prints executions, crashes and
    /// time per target; fails when one crashed (inputs in `fuzz/artifacts/<target>/`).
    /// Installs cargo-fuzz when missing, and works on the stable toolchain
    /// (`RUSTC_BOOTSTRAP=1`, no sanitizer).
    Fuzz(fuzz::FuzzArgs),
    /// Run the NAT lab: crust-peer nodes behind real Linux NAT in network namespaces (root).
    ///
    /// Prints a matrix (cells: observed addresses, filtering, direct dials between NAT
    /// types, same-NAT peers, a public host) and writes `target/natlab/latest.json`; exits
    /// non-zero when a result is unexpected. Without root or tools it says what is missing
    /// and fails, or exits 0 with `--ci`.
    Natlab(natlab::NatlabArgs),
    /// The NAT lab's STUN responder (started by the lab inside its public host).
    #[command(hide = true)]
    NatlabStun {
        /// The server's address.
        primary: std::net::Ipv4Addr,
        /// Its second address, for CHANGE-REQUESTs.
        alternate: std::net::Ipv4Addr,
    },
}

/// Arguments of the `soak` task.
#[derive(Debug, Args)]
struct SoakArgs {
    /// How long nodes churn (minutes; fractions allowed). Default 1.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Most nodes alive at once.
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Seed of the RNG that drives churn and traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Debug build instead of release (what `cargo xtask test` runs: no extra build).
    #[arg(long)]
    debug: bool,
}

/// Arguments of the `test` task.
#[derive(Debug, Default, Args)]
struct TestArgs {
    /// Restrict checks to these packages (default: whole workspace).
    #[arg(short = 'p', long = "package", value_name = "CRATE")]
    packages: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one task.
fn run(task: Task) -> Result<()> {
    let xtask = Xtask::new()?;
    match task {
        Task::Test(args) => xtask.test(&args),
        Task::Ci => xtask.test(&TestArgs::default()),
        Task::Sim { args } => {
            let mut cmd = xtask.cargo([
                "run",
                "--release",
                "-p",
                "crust",
                "--example",
                "gossip_sim",
                "--",
            ]);
            cmd.args(args);
            xtask.run(cmd)
        }
        Task::Demo { args } => {
            let (package, example) = DEMO;
            let mut cmd = xtask.cargo(["run", "--release", "-p", package, "--example", example]);
            if !args.is_empty() {
                cmd.arg("--").args(args);
            }
            xtask.run(cmd)
        }
        Task::Bench { args } => {
            // `cargo bench` builds with the `bench` profile (release optimisations).
            let mut cmd = xtask.cargo(["bench", "-p", "crust", "--bench", "bench"]);
            cmd.arg("--").args(args);
            xtask.run(cmd)
        }
        Task::Soak(args) => xtask.soak(&args),
        Task::Fuzz(args) => fuzz::run(&xtask, &args),
        Task::Natlab(args) => natlab::run(&xtask, &args),
        Task::NatlabStun { primary, alternate } => natlab::upnp::serve_stun(primary, alternate),
    }
}

/// Shared context: where the workspace is and which cargo to call.
#[derive(Debug)]
struct Xtask {
    /// Workspace root directory; every command runs there.
    root: PathBuf,
    /// Cargo binary: `$CARGO` (set by `cargo run`) or `cargo` from `PATH`.
    cargo: OsString,
}

impl Xtask {
    fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask manifest directory has no parent")?
            .to_path_buf();
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Self { root, cargo })
    }

    /// A `cargo` command with `args`, run from the workspace root.
    fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(&self.cargo);
        cmd.args(args).current_dir(&self.root);
        cmd
    }

    /// Runs `cmd` as one named step: prints a header and the wall time, and
    /// fails with a message naming the step if it does not succeed.
    fn run(&self, mut cmd: Command) -> Result<()> {
        let step = Step(&cmd).to_string();
        println!("==> {step}");
        let start = Instant::now();
        let status = cmd
            .status()
            .with_context(|| format!("failed to start `{step}`"))?;
        let elapsed = start.elapsed().as_secs_f64();
        if !status.success() {
            bail!("step `{step}` failed ({status}) after {elapsed:.1}s");
        }
        println!("    ok in {elapsed:.1}s");
        Ok(())
    }

    /// The `soak` task: runs `crust/examples/soak/` and writes its report.
    fn soak(&self, args: &SoakArgs) -> Result<()> {
        let target = env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("target"));
        let json = target.join("soak").join("report.json");
        let mut cmd = self.cargo(["run", "--quiet", "-p", "crust", "--example", "soak"]);
        if !args.debug {
            cmd.arg("--release");
        }
        cmd.arg("--")
            .args(["--seconds", &format!("{}", args.minutes * 60.0)])
            .args(["--nodes", &args.nodes.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .arg("--json")
            .arg(&json);
        self.run(cmd)
    }

    /// Whether `cargo nextest` is installed.
    fn has_nextest(&self) -> bool {
        self.cargo(["nextest", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The `test` task: fmt, clippy, tests, doc tests, rustdoc.
    ///
    /// Clippy, the tests and the doc tests run with `--all-features`, so the `crust-peer`
    /// binary (feature `crust/cli`) is linted and its integration test runs.
    fn test(&self, args: &TestArgs) -> Result<()> {
        let start = Instant::now();
        // `--workspace`, or one `-p CRATE` per requested package.
        let scope: Vec<String> = if args.packages.is_empty() {
            vec!["--workspace".into()]
        } else {
            args.packages
                .iter()
                .flat_map(|p| ["-p".to_owned(), p.clone()])
                .collect()
        };

        let mut fmt = self.cargo(["fmt"]);
        if args.packages.is_empty() {
            fmt.arg("--all");
        } else {
            fmt.args(&scope);
        }
        fmt.args(["--", "--check"]);
        self.run(fmt)?;

        let mut clippy = self.cargo(["clippy"]);
        clippy
            .args(&scope)
            .args(["--all-targets", "--all-features", "--", "-D", "warnings"]);
        self.run(clippy)?;

        let tests = if self.has_nextest() {
            let mut cmd = self.cargo(["nextest", "run"]);
            cmd.args(&scope).args(["--all-features", "--no-tests=warn"]);
            if env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                cmd.args(["--profile", "ci"]);
            }
            cmd
        } else {
            println!("note: cargo-nextest not found, falling back to `cargo test`");
            // Doc tests run in their own step below.
            let mut cmd = self.cargo(["test"]);
            cmd.args(&scope).args(["--all-targets", "--all-features"]);
            cmd
        };
        self.run(tests)?;

        // nextest does not run doc tests.
        let mut doctests = self.cargo(["test", "--doc"]);
        doctests.args(&scope).arg("--all-features");
        self.run(doctests)?;

        // Default features first (what docs.rs builds, and where links to feature-gated
        // items break), then everything.
        for features in [None, Some("--all-features")] {
            let mut doc = self.cargo(["doc"]);
            doc.args(&scope)
                .arg("--no-deps")
                .args(features)
                .env("RUSTDOCFLAGS", "-D warnings");
            self.run(doc)?;
        }

        // The main job must keep working: run the demo (debug build, a few seconds) when
        // the whole workspace or the facade is tested.
        if args.packages.is_empty() || args.packages.iter().any(|p| p == DEMO.0) {
            let (package, example) = DEMO;
            let mut demo = self.cargo(["run", "-p", package, "--example", example]);
            demo.arg("--quiet");
            self.run(demo)?;
            // A short churn and soak (debug build, 20 s, at most 6 nodes): delivery
            // accounting and resource levels under joins, leaves, crashes and bans.
            self.soak(&SoakArgs {
                minutes: 20.0 / 60.0,
                nodes: 6,
                seed: 1,
                debug: true,
            })?;
        }

        // The NAT lab's short set (root only; elsewhere it prints why it skips), with the
        // crust-peer binary the tests above just built (`--all-features` includes `cli`).
        if args.packages.is_empty() || args.packages.iter().any(|p| p == "crust") {
            let bin = natlab::built_peer(self);
            let mut shown = String::from("cargo xtask natlab --quick --ci");
            if let Some(bin) = &bin {
                shown.push_str(&format!(" --peer-bin {}", bin.display()));
            }
            println!("==> {shown}");
            let lab_start = Instant::now();
            let lab = natlab::NatlabArgs {
                quick: true,
                ci: true,
                peer_bin: bin,
                ..natlab::NatlabArgs::default()
            };
            natlab::run(self, &lab).with_context(|| format!("step `{shown}` failed"))?;
            println!("    ok in {:.1}s", lab_start.elapsed().as_secs_f64());
        }

        println!(
            "==> all checks passed in {:.1}s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Displays a command the way a user would type it, e.g.
/// `RUSTDOCFLAGS="-D warnings" cargo doc --workspace`.
struct Step<'a>(&'a Command);

impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in self.0.get_envs() {
            if let Some(value) = value {
                write!(f, "{}={:?} ", key.to_string_lossy(), value)?;
            }
        }
        // Show plain `cargo` rather than the full path from `$CARGO`.
        let program = Path::new(self.0.get_program())
            .file_stem()
            .unwrap_or(self.0.get_program());
        write!(f, "{}", program.to_string_lossy())?;
        for arg in self.0.get_args() {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}
