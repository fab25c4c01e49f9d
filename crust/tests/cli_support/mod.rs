//! Helpers of the `crust-peer` tests: running the binary, and a running peer whose JSON
//! lines are read with a bounded wait.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn crust_peer() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crust-peer"));
    // Logs as a user without a terminal would see them.
    command.env_remove("RUST_LOG").env_remove("NO_COLOR");
    command
}

/// Collects everything a child writes on stderr, for checks once it has exited.
pub fn collect(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits (bounded) for `child` to exit.
pub fn wait_exit(child: &mut Child, name: &str) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: did not exit in {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `crust-peer` with `args` and stdin `input` (then closed) to its exit: its status,
/// stdout and stderr.
pub fn run_to_exit(args: &[&str], input: &[u8]) -> (ExitStatus, String, String) {
    let mut child = crust_peer()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crust-peer");
    let stdout = collect(child.stdout.take().expect("piped stdout"));
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A node that refuses to start closes stdin early: that is no failure here.
    let _ = stdin.write_all(input);
    drop(stdin);
    let status = wait_exit(&mut child, "crust-peer");
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    (status, stdout, stderr)
}

/// A running `crust-peer`; killed when dropped unless it already exited.
pub struct Peer {
    pub name: &'static str,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
    pub stderr: Option<JoinHandle<String>>,
    /// Holds the bootstrap config and cache, so the test writes nothing outside it.
    pub dir: tempfile::TempDir,
}

impl Peer {
    pub fn spawn(name: &'static str) -> Peer {
        Peer::spawn_with(name, &[])
    }

    /// A peer with a bootstrap config and cache in its own directory, and `extra` arguments.
    pub fn spawn_with(name: &'static str, extra: &[&str]) -> Peer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, "{}").expect("write bootstrap config");
        let cache = dir.path().join("cache.json");
        Peer::spawn_in(name, dir, |command| {
            command
                .arg("--config")
                .arg(config)
                .arg("--cache")
                .arg(cache)
                .args(extra);
        })
    }

    pub fn spawn_in(
        name: &'static str,
        dir: tempfile::TempDir,
        args: impl FnOnce(&mut Command),
    ) -> Peer {
        let mut command = crust_peer();
        command
            .args(["--json", "--loopback"])
            .current_dir(dir.path());
        args(&mut command);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crust-peer");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = Some(collect(child.stderr.take().expect("piped stderr")));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{name}: not a JSON line ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Peer {
            dir,
            name,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write command");
        stdin.flush().expect("flush command");
    }

    /// Reads lines until one satisfies `pred`; panics (killing the children) after [`TIMEOUT`].
    pub fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(value) => {
                    self.seen.push(value.clone());
                    if pred(&value) {
                        return value;
                    }
                    if value["event"] == "error" {
                        panic!(
                            "{}: error line while waiting for {what}: {value}",
                            self.name
                        );
                    }
                }
                Err(e) => panic!(
                    "{}: no {what} ({e}); lines so far: {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Sends `quit` and waits (bounded) for the process to exit.
    pub fn quit(&mut self) -> ExitStatus {
        self.command("quit");
        self.stdin = None;
        wait_exit(&mut self.child, self.name)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Show the logs of a failed test.
        if std::thread::panicking() {
            if let Some(stderr) = self.stderr.take().and_then(|h| h.join().ok()) {
                eprintln!("--- {} stderr ---\n{stderr}", self.name);
            }
        }
    }
}

pub fn string(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {value}"))
        .to_string()
}
