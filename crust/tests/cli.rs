//! Drives `crust-peer --json --loopback` processes through stdin/stdout: two of them
//! connect, exchange a message and quit cleanly; and the rough edges of issue #12 (bad
//! input lines, a closed stdout, identity and config files, flags, beacons) stay smooth.

mod cli_support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;

use cli_support::{Peer, TIMEOUT, collect, crust_peer, run_to_exit, string, wait_exit};
use serde_json::Value;

#[test]
fn two_peers_connect_and_exchange_a_message() {
    let mut a = Peer::spawn("a");
    let started_a = a.expect("started line", |v| v["event"] == "started");
    let a_id = string(&started_a, "peer_id");
    let a_endpoints: Vec<String> = started_a["endpoints"]
        .as_array()
        .expect("endpoints array")
        .iter()
        .map(|e| e.as_str().expect("endpoint string").to_string())
        .collect();
    assert!(
        !a_endpoints.is_empty(),
        "a reports no endpoints: {started_a}"
    );
    assert!(
        a_endpoints.iter().all(|e| e.contains("127.0.0.1")),
        "loopback only: {a_endpoints:?}"
    );

    let mut b = Peer::spawn("b");
    let started_b = b.expect("started line", |v| v["event"] == "started");
    let b_id = string(&started_b, "peer_id");
    assert_ne!(a_id, b_id);

    // A bad command is reported, not fatal.
    b.command("frobnicate");
    let err = b.expect("error for a bad command", |v| v["event"] == "error");
    assert!(string(&err, "message").contains("frobnicate"), "{err}");

    b.command(&format!("connect {}", a_endpoints.join(" ")));
    b.expect("connected line", |v| {
        v["event"] == "connected" && v["peer"] == a_id
    });
    a.expect("new_peer for b", |v| {
        v["event"] == "new_peer" && v["peer"] == b_id && v["direction"] == "inbound"
    });

    // A unique prefix of the peer id is enough.
    b.command(&format!("send {} hello from b, with  spaces", &a_id[..8]));
    b.expect("sent line", |v| v["event"] == "sent" && v["peer"] == a_id);
    let message = a.expect("message from b", |v| v["event"] == "message");
    assert_eq!(message["peer"], b_id.as_str(), "{message}");
    assert_eq!(message["text"], "hello from b, with  spaces", "{message}");

    // Round-trip time, the address book, and connecting by id alone.
    b.command(&format!("ping {}", &a_id[..8]));
    let pong = b.expect("pong", |v| v["event"] == "pong");
    assert!(pong["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{pong}");
    b.command("known");
    let known = b.expect("known_peers", |v| v["event"] == "known_peers");
    assert!(known.to_string().contains(&a_id), "{known}");
    b.command(&format!("disconnect {}", &a_id[..8]));
    b.expect("disconnected", |v| {
        v["event"] == "disconnected" && v["was_connected"] == true
    });
    let lost = a.expect("lost_peer for b", |v| {
        v["event"] == "lost_peer" && v["peer"] == b_id
    });
    assert_eq!(lost["reason_kind"], "closed_by_peer", "{lost}");
    b.command(&format!("connect {a_id}"));
    b.expect("connected by id", |v| {
        v["event"] == "connected" && v["peer"] == a_id
    });

    let status_b = b.quit();
    assert!(status_b.success(), "b exited with {status_b}");
    a.expect("lost_peer for b", |v| {
        v["event"] == "lost_peer" && v["peer"] == b_id
    });
    let status_a = a.quit();
    assert!(status_a.success(), "a exited with {status_a}");

    // b dialled a directly, so b's bootstrap cache (from --cache) remembers a; a, which only
    // accepted, cached nobody.
    let cache = std::fs::read_to_string(b.dir.path().join("cache.json")).expect("b's cache");
    assert!(cache.contains(&a_id), "a missing from b's cache: {cache}");
    assert!(!a.dir.path().join("cache.json").exists());
}

fn started(peer: &mut Peer) -> Value {
    peer.expect("started line", |v| v["event"] == "started")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

#[test]
fn a_line_that_is_not_utf8_is_reported_and_reading_goes_on() {
    let mut p = Peer::spawn("p");
    started(&mut p);
    let stdin = p.stdin.as_mut().expect("stdin open");
    stdin.write_all(b"help \xff\xfe\n").expect("write");
    stdin.flush().expect("flush");
    let err = p.expect("error for the bad line", |v| v["event"] == "error");
    assert!(string(&err, "message").contains("not UTF-8"), "{err}");
    p.command("endpoints");
    p.expect("endpoints after the bad line", |v| {
        v["event"] == "endpoints"
    });
    let status = p.quit();
    assert!(status.success(), "exited with {status}");
}

#[test]
fn long_lines_are_skipped_and_unknown_commands_echoed_short() {
    let mut p = Peer::spawn("p");
    started(&mut p);
    // An unknown command of 10,000 two-byte characters: the error quotes a short prefix,
    // cut on a character boundary.
    p.command(&"é".repeat(10_000));
    let err = p.expect("error for the unknown command", |v| v["event"] == "error");
    let message = string(&err, "message");
    assert!(
        message.chars().count() < 120 && message.contains("éé…"),
        "{} characters: {}",
        message.chars().count(),
        &message[..message.len().min(300)]
    );
    // A line over the 1 MiB bound is skipped as a whole, and not echoed.
    p.command(&"x".repeat(3 << 20));
    let err = p.expect("error for the long line", |v| v["event"] == "error");
    let message = string(&err, "message");
    assert!(
        message.contains("longer than") && message.len() < 120,
        "{}",
        &message[..message.len().min(300)]
    );
    p.command("endpoints");
    p.expect("endpoints after the long line", |v| {
        v["event"] == "endpoints"
    });
    let status = p.quit();
    assert!(status.success(), "exited with {status}");
}

#[test]
fn a_closed_stdout_shuts_the_node_down_without_a_panic() {
    let mut child = crust_peer()
        .args(["--json", "--loopback", "--no-bootstrap"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crust-peer");
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = stdout.read_line(&mut first);
        let _ = tx.send((first, stdout));
    });
    let (first, stdout) = rx.recv_timeout(TIMEOUT).expect("a first line");
    assert!(first.contains("\"started\""), "{first}");
    // The reader goes away; the next event cannot be written.
    drop(stdout);
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "help").expect("write help");
    stdin.flush().expect("flush");
    // stdin stays open: the node must stop because of stdout alone.
    let status = wait_exit(&mut child, "crust-peer");
    drop(stdin);
    let stderr = stderr.join().expect("stderr reader");
    assert!(status.success(), "exited with {status}; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn a_dangling_identity_symlink_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("gone.pem");
    let link = dir.path().join("identity.pem");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let (status, stdout, stderr) = run_to_exit(
        &[
            "--json",
            "--loopback",
            "--no-bootstrap",
            "--identity",
            path_str(&link),
        ],
        b"quit\n",
    );
    assert!(!status.success(), "started anyway: {stdout}");
    assert!(!stdout.contains("\"started\""), "{stdout}");
    assert!(stderr.contains("symlink"), "{stderr}");
    let meta = std::fs::symlink_metadata(&link).expect("link still there");
    assert!(meta.file_type().is_symlink(), "the link was replaced");
    assert!(!target.exists(), "a key was written behind the link");
}

#[cfg(unix)]
#[test]
fn an_identity_file_others_can_read_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("identity.pem");
    let identity = crust::Identity::generate().expect("generate");
    identity.save(&path).expect("save");
    let args = [
        "--json",
        "--loopback",
        "--no-bootstrap",
        "--identity",
        path_str(&path),
    ];
    let warnings = |stdout: &str| -> Vec<Value> {
        stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .filter(|v| v["event"] == "warning")
            .collect()
    };

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (status, stdout, stderr) = run_to_exit(&args, b"quit\n");
    assert!(status.success(), "exited with {status}: {stderr}");
    assert!(
        stdout.contains(&identity.peer_id().to_string()),
        "not our identity: {stdout}"
    );
    let warnings_644 = warnings(&stdout);
    assert_eq!(warnings_644.len(), 1, "{stdout}");
    let message = string(&warnings_644[0], "message");
    assert!(
        message.contains(path_str(&path)) && message.contains("644"),
        "{message}"
    );
    assert!(stderr.contains("accessible by others"), "{stderr}");

    // Owner-only: no warning.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (status, stdout, _) = run_to_exit(&args, b"quit\n");
    assert!(status.success(), "exited with {status}");
    assert!(warnings(&stdout).is_empty(), "{stdout}");
}

#[test]
fn a_bad_identity_file_error_names_each_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("identity.pem");
    std::fs::write(&path, "not a key").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let (status, _, stderr) = run_to_exit(
        &[
            "--json",
            "--loopback",
            "--no-bootstrap",
            "--identity",
            path_str(&path),
        ],
        b"quit\n",
    );
    assert!(!status.success(), "accepted a bad key");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("crust-peer:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert_eq!(line.matches("identity error").count(), 1, "{line}");
    assert_eq!(line.matches(path_str(&path)).count(), 1, "{line}");
}

#[test]
fn a_missing_explicit_config_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.json");
    let (status, stdout, stderr) = run_to_exit(
        &["--json", "--loopback", "--config", path_str(&missing)],
        b"quit\n",
    );
    assert!(!status.success(), "started without its config: {stdout}");
    assert!(!stdout.contains("\"started\""), "{stdout}");
    assert!(stderr.contains(path_str(&missing)), "{stderr}");
}

#[test]
fn logs_on_a_pipe_have_no_colour_codes() {
    let mut command = crust_peer();
    command
        .args(["--json", "--loopback", "--no-bootstrap"])
        .env("RUST_LOG", "debug");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crust-peer");
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "quit").expect("write quit");
    drop(stdin);
    let status = wait_exit(&mut child, "crust-peer");
    let stderr = stderr.join().expect("stderr reader");
    assert!(status.success(), "exited with {status}");
    assert!(stderr.contains("DEBUG"), "no debug logs: {stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

#[test]
fn quit_logs_no_accept_failure() {
    let (status, _, stderr) = run_to_exit(&["--json", "--loopback", "--no-bootstrap"], b"quit\n");
    assert!(status.success(), "exited with {status}");
    assert!(!stderr.contains("accept failed"), "{stderr}");
}

#[test]
fn connect_refuses_port_zero_and_unknown_schemes() {
    let mut p = Peer::spawn("p");
    started(&mut p);
    let peer = "ab".repeat(32);
    for (target, says) in [
        ("udp://127.0.0.1:5000".to_string(), "unknown scheme"),
        ("quic://127.0.0.1:5000".to_string(), "unknown scheme"),
        ("tcp://127.0.0.1:0".to_string(), "port 0"),
        ("rudp://[::1]:0".to_string(), "port 0"),
        (format!("{peer}@tcp://127.0.0.1:0"), "port 0"),
        (format!("{peer}@udp://127.0.0.1:5000"), "unknown scheme"),
    ] {
        p.command(&format!("connect {target}"));
        let err = p.expect("error for the target", |v| v["event"] == "error");
        assert!(string(&err, "message").contains(says), "{target}: {err}");
        assert!(err.get("command").is_none(), "dialled {target}: {err}");
    }
    let status = p.quit();
    assert!(status.success(), "exited with {status}");

    // On the command line, clap refuses them (usage error: exit code 2).
    for target in ["udp://127.0.0.1:5000", "tcp://127.0.0.1:0"] {
        let (status, stdout, stderr) =
            run_to_exit(&["--json", "--loopback", "--no-bootstrap", target], b"");
        assert_eq!(status.code(), Some(2), "{target}: {stdout}");
        assert!(stderr.contains("bad endpoint"), "{stderr}");
    }
}

#[test]
fn clap_rejects_conflicting_flags() {
    for args in [
        ["--no-tcp", "--no-rudp"].as_slice(),
        &["--no-bootstrap", "--config", "bootstrap.json"],
        &["--no-bootstrap", "--cache", "cache.json"],
    ] {
        let (status, stdout, stderr) = run_to_exit(args, b"");
        assert_eq!(status.code(), Some(2), "{args:?}: {stdout}");
        assert!(stderr.contains("cannot be used with"), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}

#[test]
fn two_peers_with_beacons_find_each_other() {
    // The first peer's beacon picks a free port; the second shares it.
    let mut a = Peer::spawn_with("a", &["--beacon", "--beacon-port", "0"]);
    let started_a = started(&mut a);
    let a_id = string(&started_a, "peer_id");
    let port = started_a["beacon_port"]
        .as_u64()
        .unwrap_or_else(|| panic!("no beacon port: {started_a}"));
    assert_ne!(port, 0);
    let port = port.to_string();
    let mut b = Peer::spawn_with("b", &["--beacon", "--beacon-port", &port]);
    let started_b = started(&mut b);
    let b_id = string(&started_b, "peer_id");
    assert_eq!(
        started_b["beacon_port"].as_u64(),
        Some(port.parse().expect("port"))
    );

    // Neither was told an endpoint: the beacons do it.
    a.expect("new_peer b", |v| {
        v["event"] == "new_peer" && v["peer"] == b_id
    });
    b.expect("new_peer a", |v| {
        v["event"] == "new_peer" && v["peer"] == a_id
    });
    let status = b.quit();
    assert!(status.success(), "b exited with {status}");
    let status = a.quit();
    assert!(status.success(), "a exited with {status}");

    // Without --beacon there is none.
    let mut c = Peer::spawn("c");
    assert_eq!(started(&mut c)["beacon_port"], Value::Null);
}
