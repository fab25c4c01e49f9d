//! `cargo xtask fuzz`: runs the cargo-fuzz (libFuzzer) targets of `fuzz/` for a fixed time
//! each and prints, per target, the executions, the crashes and the time.
//!
//! cargo-fuzz normally needs a nightly toolchain (it passes `-Z` flags to rustc); the task
//! sets `RUSTC_BOOTSTRAP=1` so the stable toolchain accepts them, and builds with
//! `--sanitizer none` (no sanitizer runtime needed): coverage-guided libFuzzer fuzzing,
//! without AddressSanitizer (the workspace forbids `unsafe`, so panics and aborts are
//! what a crash looks like). cargo-fuzz is installed when missing (`cargo install
//! cargo-fuzz --locked`); if that fails, the task says so and skips (`--require` makes it
//! an error).
//!
//! The checked-in seeds stay in `fuzz/corpus/<target>/`; inputs libFuzzer finds go to
//! `fuzz/target/corpus/<target>/` (not committed) and crashing inputs to
//! `fuzz/artifacts/<target>/` (turn each into a regression test next to its parser).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::Xtask;

/// Arguments of the `fuzz` task.
#[derive(Debug, Args)]
pub(crate) struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Run only these targets (default: all, as `cargo fuzz list` prints them).
    #[arg(long = "target", value_name = "TARGET")]
    pub(crate) targets: Vec<String>,
    /// Fail, rather than skip, when cargo-fuzz is missing and cannot be installed.
    #[arg(long)]
    pub(crate) require: bool,
    /// Stop each target after this many executions (`--seconds` then only caps the time).
    /// With `--seed`, a run is repeatable: CI's smoke uses both, so it cannot fail by
    /// chance on an input nobody can reproduce.
    #[arg(long, value_name = "N")]
    pub(crate) runs: Option<u64>,
    /// libFuzzer's random seed (default: a new one each run).
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
}

/// What one target's run gave.
#[derive(Debug)]
struct Outcome {
    target: String,
    executions: Option<u64>,
    crashed: bool,
    seconds: f64,
}

/// Runs the task.
pub(crate) fn run(xtask: &Xtask, args: &FuzzArgs) -> Result<()> {
    let start = Instant::now();
    let dir = xtask.root.join("fuzz");
    if !ensure_cargo_fuzz(xtask) {
        let msg = "cargo-fuzz is not installed and `cargo install cargo-fuzz --locked` failed";
        if args.require {
            bail!("{msg}");
        }
        println!("note: {msg}; skipping the fuzz targets");
        return Ok(());
    }
    let targets = if args.targets.is_empty() {
        list_targets(xtask, &dir)?
    } else {
        args.targets.clone()
    };

    let mut build = fuzz_cmd(xtask, &dir, ["build"]);
    if let [only] = targets.as_slice() {
        build.arg(only);
    }
    xtask.run(build)?;

    let mut outcomes = Vec::with_capacity(targets.len());
    for target in &targets {
        outcomes.push(run_target(xtask, &dir, target, args)?);
    }

    println!(
        "{:<20} {:>12} {:>8} {:>8}",
        "target", "executions", "crashes", "time"
    );
    for o in &outcomes {
        let runs = o
            .executions
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let crashes = u8::from(o.crashed);
        println!(
            "{:<20} {runs:>12} {crashes:>8} {:>7.1}s",
            o.target, o.seconds
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashed)
        .map(|o| o.target.as_str())
        .collect();
    println!(
        "==> fuzzing finished in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    if !crashed.is_empty() {
        bail!(
            "crashes in {}: inputs are in fuzz/artifacts/<target>/",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// `cargo fuzz <args> --sanitizer none` in `fuzz/`, with `RUSTC_BOOTSTRAP=1` so the stable
/// toolchain accepts cargo-fuzz's `-Z` flags.
fn fuzz_cmd<const N: usize>(xtask: &Xtask, dir: &Path, args: [&str; N]) -> Command {
    let mut cmd = Command::new(&xtask.cargo);
    cmd.arg("fuzz")
        .args(args)
        .args(["--sanitizer", "none"])
        .current_dir(dir)
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// Whether cargo-fuzz is available, installing it when it is not.
fn ensure_cargo_fuzz(xtask: &Xtask) -> bool {
    let present = || {
        Command::new(&xtask.cargo)
            .args(["fuzz", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if present() {
        return true;
    }
    let install = xtask.cargo(["install", "cargo-fuzz", "--locked"]);
    xtask.run(install).is_ok() && present()
}

/// The targets `cargo fuzz list` knows.
fn list_targets(xtask: &Xtask, dir: &Path) -> Result<Vec<String>> {
    let out = Command::new(&xtask.cargo)
        .args(["fuzz", "list"])
        .current_dir(dir)
        .output()
        .context("failed to run `cargo fuzz list`")?;
    if !out.status.success() {
        bail!("`cargo fuzz list` failed ({})", out.status);
    }
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no targets");
    }
    Ok(targets)
}

/// Fuzzes one target for `seconds`, new inputs going to `fuzz/target/corpus/<target>` and
/// the checked-in seeds read from `fuzz/corpus/<target>`.
fn run_target(xtask: &Xtask, dir: &Path, target: &str, args: &FuzzArgs) -> Result<Outcome> {
    let seconds = args.seconds;
    let work = dir.join("target").join("corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let seeds = dir.join("corpus").join(target);
    if !seeds.is_dir() {
        // libFuzzer would exit with an error that reads like a crash.
        bail!(
            "no seed corpus for {target} in {}: write it with `cargo test -- --ignored write_seed_corpus` in fuzz/",
            seeds.display()
        );
    }
    let mut cmd = fuzz_cmd(xtask, dir, ["run"]);
    cmd.arg(target)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(args.runs.map(|n| format!("-runs={n}")))
        .args(args.seed.map(|n| format!("-seed={n}")))
        .arg("-print_final_stats=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("==> cargo fuzz run {target} ({seconds}s)");
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("failed to start `cargo fuzz run {target}`"))?;
    let seconds = start.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    let executions = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok());
    let crashed = !out.status.success();
    if crashed {
        // libFuzzer's report (the panic, the input's path) and cargo-fuzz's reproduction
        // hint are the useful part: show their ends.
        let hint = String::from_utf8_lossy(&out.stdout);
        for text in [&*log, &*hint] {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            for line in tail.into_iter().rev() {
                eprintln!("    {line}");
            }
        }
    }
    Ok(Outcome {
        target: target.to_owned(),
        executions,
        crashed,
        seconds,
    })
}
