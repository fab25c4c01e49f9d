//! The Wireshark dissector (`tools/wireshark/crust.lua`) against real captures: a loopback
//! session is captured with `dumpcap` and read back with `tshark` and the dissector, which
//! must show exactly the frames that were sent. Three sessions: two tracer nodes (frames in
//! clear text), a normal TLS session (the preamble is recognised, the rest is TLS), and a
//! TLS session with a key log (tshark decrypts it and the dissector shows the frames
//! inside).
//!
//! Needs root (to capture on `lo`), `dumpcap` and `tshark`; skips with a message otherwise
//! (CI runs as root and `.ci/run` installs `tshark`, which brings `dumpcap`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crust_core::wire::{self, FrameKind};
use crust_core::{Connection, Identity, Transport, tls};
use crust_tcp::{TcpConfig, TcpTransport};

const SAFETY_NET: Duration = Duration::from_secs(60);
/// How long a marker datagram may take to reach the capture file.
const CAPTURE_DEADLINE: Duration = Duration::from_secs(30);
/// The nonce of the ping the dialler sends.
const PING_NONCE: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
/// A message sent in chunks: two of 64 KiB and the rest (8,928 bytes) in a `Message`.
const LARGE: usize = 140_000;

fn lua_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/wireshark/crust.lua")
}

/// Why this machine cannot run the capture tests, if it cannot.
fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: capturing on lo needs root".into());
    }
    for tool in ["tshark", "dumpcap"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed (apt-get install tshark)"));
        }
    }
    None
}

macro_rules! skip_unless_capture_possible {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
}

/// A running `dumpcap` on `lo`, killed if the test fails before stopping it.
///
/// dumpcap says "Capturing on" a moment before packets really reach it, writes its file in
/// batches, and drops what it has not read yet when stopped. So the capture also takes a
/// UDP port of the test's own, and [`Capture::sync`] sends marker datagrams there until one
/// shows up in the file: after a marker sent at the start, the capture is live; after one
/// sent at the end, every packet sent before it is in the file.
struct Capture {
    child: Option<Child>,
    file: PathBuf,
    marker_socket: std::net::UdpSocket,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Starts capturing TCP on `port` and returns once packets reach the file.
    fn start(port: u16) -> Capture {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("capture.pcapng");
        let marker_socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("marker socket");
        let marker_port = marker_socket.local_addr().expect("marker addr").port();
        let filter = format!("tcp port {port} or udp port {marker_port}");
        let mut child = Command::new("dumpcap")
            .args(["-q", "-i", "lo", "-f", &filter, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dumpcap");
        let stderr = child.stderr.take().expect("dumpcap stderr");
        let mut capture = Capture {
            child: Some(child),
            file,
            marker_socket,
            _dir: dir,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stderr until dumpcap exits, so it never blocks on it.
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + SAFETY_NET;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("Capturing on") => break,
                Ok(_) => continue,
                Err(e) => {
                    capture.kill();
                    panic!("dumpcap did not start capturing: {e}");
                }
            }
        }
        capture.sync(b"crust-capture-start");
        capture
    }

    /// Sends `marker` datagrams (every 20 ms, for at most [`CAPTURE_DEADLINE`]) until one is
    /// in the capture file.
    fn sync(&mut self, marker: &[u8]) {
        let to = self.marker_socket.local_addr().expect("marker addr");
        let deadline = std::time::Instant::now() + CAPTURE_DEADLINE;
        while std::time::Instant::now() < deadline {
            self.marker_socket.send_to(marker, to).expect("send marker");
            std::thread::sleep(Duration::from_millis(20));
            let written = std::fs::read(&self.file).unwrap_or_default();
            if written.windows(marker.len()).any(|w| w == marker) {
                return;
            }
        }
        self.kill();
        panic!("the capture did not see its marker within {CAPTURE_DEADLINE:?}");
    }

    /// Waits until everything sent so far is in the file, then stops dumpcap and waits for
    /// it to exit.
    fn finish(&mut self) {
        self.sync(b"crust-capture-end");
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + SAFETY_NET;
        while std::time::Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("dumpcap did not stop");
    }

    /// With `CRUST_KEEP_CAPTURES=DIR` set, copies the capture (and `extra` files) to
    /// `DIR/<name>.*` for a look with Wireshark.
    fn keep(&self, name: &str, extra: &[&Path]) {
        let Some(dir) = std::env::var_os("CRUST_KEEP_CAPTURES") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(&self.file, dir.join(format!("{name}.pcapng")));
        for file in extra {
            if let Some(file_name) = file.file_name() {
                let target = dir.join(format!("{name}.{}", file_name.to_string_lossy()));
                let _ = std::fs::copy(file, target);
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tshark` with the dissector on `file`: one line per packet with a Crust item, fields
/// separated by tabs (several occurrences in one packet by commas).
fn tshark(file: &Path, extra: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    tshark_filtered(file, "crust", extra, fields)
}

/// [`tshark`] with another display filter.
fn tshark_filtered(file: &Path, filter: &str, extra: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-X")
        .arg(format!("lua_script:{}", lua_script().display()))
        .args(["-o", "tcp.try_heuristic_first:TRUE"])
        .args(extra)
        .arg("-r")
        .arg(file)
        .args(["-Y", filter, "-T", "fields", "-E", "separator=/t"]);
    for field in fields {
        cmd.args(["-e", field]);
    }
    let out = cmd.output().expect("run tshark");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Lua: Error"),
        "the dissector failed to load: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// The frames (kind name, length) each side sent, by source port, in order.
fn frames_by_port(rows: &[Vec<String>]) -> Vec<(u16, Frames)> {
    let mut out: Vec<(u16, Frames)> = Vec::new();
    for row in rows {
        let [port, kinds, lengths] = &row[..] else {
            panic!("unexpected row {row:?}");
        };
        if kinds.is_empty() {
            continue;
        }
        let port: u16 = port.parse().expect("port");
        let pairs = kinds
            .split(',')
            .zip(lengths.split(','))
            .map(|(k, l)| (k.to_owned(), l.parse().expect("length")));
        match out.iter_mut().find(|(p, _)| *p == port) {
            Some((_, frames)) => frames.extend(pairs),
            None => out.push((port, pairs.collect())),
        }
    }
    out
}

fn frame_list(items: &[(&str, u32)]) -> Frames {
    items.iter().map(|(k, l)| ((*k).to_owned(), *l)).collect()
}

/// A session with known frames: the dialler sends an observed address, a ping, a small
/// message and a large one (in chunks); the listener answers the ping and replies.
async fn exchange(to_bob: Connection, to_alice: Connection) {
    let bob_addr = to_bob.remote_addr();
    let (alice_tx, mut alice_rx) = to_bob.split();
    let (bob_tx, mut bob_rx) = to_alice.split();
    alice_tx
        .send_control(
            FrameKind::ObservedAddress,
            wire::encode_observed_address(bob_addr),
        )
        .await
        .expect("observed");
    alice_tx
        .send_control(FrameKind::Ping, Bytes::copy_from_slice(&PING_NONCE))
        .await
        .expect("ping");
    alice_tx
        .send_control(FrameKind::Unknown(16), Bytes::from(filtering_request()))
        .await
        .expect("filtering request");
    alice_tx
        .send_control(FrameKind::Unknown(17), Bytes::from(punch_offer()))
        .await
        .expect("punch offer");
    alice_tx
        .send_control(FrameKind::Unknown(19), Bytes::from(relay_credit()))
        .await
        .expect("relay credit");
    alice_tx.send("hello crust".into()).await.expect("hello");
    alice_tx
        .send(Bytes::from(vec![0xab; LARGE]))
        .await
        .expect("large");
    tokio::time::timeout(SAFETY_NET, async {
        let mut messages = 0;
        while messages < 2 {
            let frame = bob_rx.recv_frame().await.expect("bob receives");
            match frame.kind {
                FrameKind::Ping => bob_rx.answer_ping(frame.payload),
                FrameKind::Message => messages += 1,
                _ => {}
            }
        }
        bob_tx.send("reply".into()).await.expect("reply");
        let mut got_pong = false;
        loop {
            let frame = alice_rx.recv_frame().await.expect("alice receives");
            match frame.kind {
                FrameKind::Pong => got_pong = true,
                FrameKind::Message => {
                    assert_eq!(frame.payload, "reply");
                    break;
                }
                _ => {}
            }
        }
        assert!(got_pong, "the pong came before the reply");
        alice_tx.close().await;
        bob_tx.close().await;
    })
    .await
    .expect("safety net");
}

/// A NAT filtering test request (kind 16) as `docs/protocol.md` lays it out: type 1, nonce,
/// two addresses (10.0.0.1 and ::1). 32 bytes.
fn filtering_request() -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&0x1111_1111_1111_1111u64.to_be_bytes());
    out.push(2);
    out.extend_from_slice(&[4, 10, 0, 0, 1]);
    out.push(6);
    out.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    out
}

/// A hole-punch `Offer` (kind 17) as `docs/protocol.md` lays it out: type 2, request id,
/// origin, the endpoint at which R sees A (rudp://127.0.0.1:8080), and A's info: NAT class
/// 6 (port-restricted), a constant port step of 2, the probe nonce, two candidates
/// (observed tcp://192.0.2.1:4000, local rudp://[::1]:5000). 92 bytes.
fn punch_offer() -> Vec<u8> {
    let mut out = vec![2];
    out.extend_from_slice(&0x2222_2222_2222_2222u64.to_be_bytes());
    out.extend_from_slice(&[0xaa; 32]);
    out.extend_from_slice(&[2, 4, 127, 0, 0, 1]);
    out.extend_from_slice(&8080u16.to_be_bytes());
    out.extend_from_slice(&[6, 1]);
    out.extend_from_slice(&2i16.to_be_bytes());
    out.extend_from_slice(&0x3333_3333_3333_3333u64.to_be_bytes());
    out.push(2);
    out.extend_from_slice(&[2, 1, 4, 192, 0, 2, 1]);
    out.extend_from_slice(&4000u16.to_be_bytes());
    out.extend_from_slice(&[3, 2, 6]);
    out.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    out.extend_from_slice(&5000u16.to_be_bytes());
    out
}

/// A relay `Credit` (kind 19) as `docs/protocol.md` lays it out: type 7, circuit 7, the
/// sender opened it, 65,536 bytes consumed. 10 bytes.
fn relay_credit() -> Vec<u8> {
    let mut out = vec![7];
    out.extend_from_slice(&7u32.to_be_bytes());
    out.push(1);
    out.extend_from_slice(&65_536u32.to_be_bytes());
    out
}

/// Every value tshark shows for each of `fields` over the whole capture.
fn all_values(rows: &[Vec<String>], fields: usize) -> Vec<Vec<String>> {
    (0..fields)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .flat_map(|v| v.split(','))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// Binds a listener first (the capture filters on its port), then runs the session.
async fn captured_session(alice: TcpTransport, bob: TcpTransport) -> (Capture, u16) {
    let mut listener = bob
        .listen("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let addr = listener.local_endpoint().addr();
    let capture = Capture::start(addr.port());
    let (dialled, accepted) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(
            alice.dial(addr, Some(bob.local_peer_id())),
            listener.accept()
        )
    })
    .await
    .expect("safety net");
    exchange(dialled.expect("dial"), accepted.expect("accept")).await;
    (capture, addr.port())
}

/// Frames of one direction: kind name and payload length, in order.
type Frames = Vec<(String, u32)>;

/// The frames the dialler and the listener send in [`exchange`].
fn expected_frames(handshake: bool) -> (Frames, Frames) {
    let mut alice = Vec::new();
    let mut bob = Vec::new();
    if handshake {
        // The hello carries a 32-byte nonce and the certificate; the proof the scheme and an
        // Ed25519 signature (2 + 64 bytes).
        alice.push(("TracerHello".to_owned(), 0));
        alice.push(("TracerProof".to_owned(), 66));
        bob.push(("TracerHello".to_owned(), 0));
        bob.push(("TracerProof".to_owned(), 66));
    }
    alice.extend(frame_list(&[
        ("ObservedAddress", 7),
        ("Ping", 8),
        ("NatFilteringTest", 32),
        ("HolePunch", 92),
        ("Relay", 10),
        ("Message", 11),
        ("MessageChunk", 65_536),
        ("MessageChunk", 65_536),
        ("Message", (LARGE - 2 * 65_536) as u32),
    ]));
    bob.extend(frame_list(&[("Pong", 8), ("Message", 5)]));
    (alice, bob)
}

/// Replaces the hello lengths (they depend on the certificate) with the real ones.
fn with_hello_lengths(expected: &mut Frames, hello_len: u32) {
    for (kind, len) in expected.iter_mut() {
        if kind == "TracerHello" {
            *len = hello_len;
        }
    }
}

fn node(config: TcpConfig) -> (TcpTransport, Identity) {
    let identity = Identity::generate().expect("identity");
    (
        TcpTransport::new(identity.clone(), config).expect("transport"),
        identity,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracer_session_is_decoded_frame_by_frame() {
    skip_unless_capture_possible!();
    let tracer = TcpConfig::default().with_tracer(true);
    let (alice, alice_id) = node(tracer.clone());
    let (bob, bob_id) = node(tracer);
    let (mut capture, port) = captured_session(alice, bob).await;
    let (mut to_bob, mut to_alice) = expected_frames(true);
    with_hello_lengths(&mut to_bob, 32 + alice_id.certificate().len() as u32);
    with_hello_lengths(&mut to_alice, 32 + bob_id.certificate().len() as u32);
    let fields = ["tcp.srcport", "crust.frame.kind_name", "crust.frame.length"];
    capture.finish();
    capture.keep("tracer", &[]);
    let seen = frames_by_port(&tshark(&capture.file, &[], &fields));
    let from_bob: Vec<_> = seen.iter().filter(|(p, _)| *p == port).collect();
    let from_alice: Vec<_> = seen.iter().filter(|(p, _)| *p != port).collect();
    assert_eq!(from_alice.len(), 1, "{seen:?}");
    assert_eq!(from_bob.len(), 1, "{seen:?}");
    assert_eq!(from_alice[0].1, to_bob, "dialler's frames");
    assert_eq!(from_bob[0].1, to_alice, "listener's frames");

    // The preambles (tracer mode, version 2) and the known payloads.
    let rows = tshark(
        &capture.file,
        &[],
        &[
            "crust.magic",
            "crust.max_version",
            "crust.min_version",
            "crust.mode",
            "crust.message",
            "crust.ping.nonce",
        ],
    );
    let preambles: Vec<_> = rows.iter().filter(|r| r[0] == "CRST").collect();
    assert_eq!(preambles.len(), 2, "one preamble each way");
    for p in preambles {
        assert_eq!(&p[1..4], ["2", "2", "1"], "{p:?}");
    }
    let hello_hex: String = b"hello crust".iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        rows.iter().any(|r| r[4].split(',').any(|m| m == hello_hex)),
        "the known payload is not in the capture"
    );
    let nonces: Vec<&str> = rows
        .iter()
        .map(|r| r[5].as_str())
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(nonces, ["0x0102030405060708"; 2], "ping and pong");
    // The filtering test, the hole-punch offer and the relay credit, field by field.
    let fields = [
        "crust.filtering.type",
        "crust.filtering.nonce",
        "crust.filtering.count",
        "crust.punch.type",
        "crust.punch.id",
        "crust.punch.nat_class",
        "crust.punch.step",
        "crust.punch.probe_nonce",
        "crust.punch.candidates",
        "crust.punch.candidate_kind",
        "crust.endpoint.protocol",
        "crust.addr.ipv4",
        "crust.addr.ipv6",
        "crust.addr.port",
        "crust.relay.type",
        "crust.relay.circuit",
        "crust.relay.sender_opened",
        "crust.relay.credit",
    ];
    let values = all_values(&tshark(&capture.file, &[], &fields), fields.len());
    let expect = |field: &str, want: &[&str]| {
        let i = fields.iter().position(|f| *f == field).expect("field");
        assert_eq!(values[i], want, "{field}");
    };
    expect("crust.filtering.type", &["1"]);
    expect("crust.filtering.nonce", &["0x1111111111111111"]);
    expect("crust.filtering.count", &["2"]);
    expect("crust.punch.type", &["2"]);
    expect("crust.punch.id", &["0x2222222222222222"]);
    expect("crust.punch.nat_class", &["6"]);
    expect("crust.punch.step", &["2"]);
    expect("crust.punch.probe_nonce", &["0x3333333333333333"]);
    expect("crust.punch.candidates", &["2"]);
    expect("crust.punch.candidate_kind", &["2", "3"]);
    expect("crust.endpoint.protocol", &["2", "1", "2"]);
    expect(
        "crust.addr.ipv4",
        &["127.0.0.1", "10.0.0.1", "127.0.0.1", "192.0.2.1"],
    );
    expect("crust.addr.ipv6", &["::1", "::1"]);
    let port = port.to_string();
    // The observed address (where Alice sees Bob) first.
    expect("crust.addr.port", &[port.as_str(), "8080", "4000", "5000"]);
    expect("crust.relay.type", &["7"]);
    expect("crust.relay.circuit", &["7"]);
    expect("crust.relay.sender_opened", &["1"]);
    expect("crust.relay.credit", &["65536"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_session_preamble_is_recognised() {
    skip_unless_capture_possible!();
    let (alice, _) = node(TcpConfig::default());
    let (bob, _) = node(TcpConfig::default());
    let (mut capture, _) = captured_session(alice, bob).await;
    let fields = [
        "crust.magic",
        "crust.max_version",
        "crust.min_version",
        "crust.mode",
    ];
    capture.finish();
    capture.keep("tls", &[]);
    let rows = tshark(&capture.file, &[], &fields);
    let preambles: Vec<_> = rows.iter().filter(|r| r[0] == "CRST").collect();
    assert_eq!(preambles.len(), 2, "{rows:?}");
    for p in &preambles {
        assert_eq!(&p[1..4], ["2", "2", "0"], "{p:?}");
    }
    // Without the keys the frames stay hidden inside TLS.
    let frames = tshark(&capture.file, &[], &["crust.frame.kind_name"]);
    assert!(frames.iter().all(|r| r[0].is_empty()), "{frames:?}");
    let tls = tshark_filtered(&capture.file, "tls", &[], &["tls.record.opaque_type"]);
    assert!(
        tls.iter().any(|r| r[0].contains("23")),
        "application data records: {tls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_logged_tls_session_is_decrypted() {
    skip_unless_capture_possible!();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_log_path = dir.path().join("keys.log");
    let key_log: Arc<dyn rustls::KeyLog> = tls::KeyLogWriter::create(&key_log_path).expect("log");
    let config = TcpConfig::default().with_key_log(key_log);
    let (alice, _) = node(config.clone());
    let (bob, _) = node(config);
    let (mut capture, port) = captured_session(alice, bob).await;
    let (to_bob, to_alice) = expected_frames(false);
    let keylog = format!("tls.keylog_file:{}", key_log_path.display());
    let fields = ["tcp.srcport", "crust.frame.kind_name", "crust.frame.length"];
    capture.finish();
    capture.keep("keylog", &[&key_log_path]);
    let seen = frames_by_port(&tshark(&capture.file, &["-o", &keylog], &fields));
    let from_bob: Vec<_> = seen.iter().filter(|(p, _)| *p == port).collect();
    let from_alice: Vec<_> = seen.iter().filter(|(p, _)| *p != port).collect();
    assert_eq!(from_alice.len(), 1, "{seen:?}");
    assert_eq!(from_bob.len(), 1, "{seen:?}");
    assert_eq!(from_alice[0].1, to_bob, "dialler's frames, decrypted");
    assert_eq!(from_bob[0].1, to_alice, "listener's frames, decrypted");
    let rows = tshark(&capture.file, &["-o", &keylog], &["crust.message"]);
    let reply_hex: String = b"reply".iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        rows.iter().any(|r| r[0].split(',').any(|m| m == reply_hex)),
        "the known payload is not in the decrypted capture"
    );
}
