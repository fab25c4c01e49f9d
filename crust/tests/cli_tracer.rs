//! `crust-peer --tracer` and `--key-log`: two tracer peers connect and talk; a tracer peer
//! and a normal one refuse each other with a clear error; both switches are announced by a
//! `warning` event; the key log fills with secrets.

mod cli_support;

use cli_support::{Peer, string};
use serde_json::Value;

fn endpoints(started: &Value) -> Vec<String> {
    started["endpoints"]
        .as_array()
        .expect("endpoints array")
        .iter()
        .map(|e| e.as_str().expect("endpoint string").to_string())
        .collect()
}

#[test]
fn tracer_peers_talk_and_refuse_normal_peers() {
    let tracer_args = ["--tracer", "--no-rudp"];
    let mut a = Peer::spawn_with("a", &tracer_args);
    let warning = a.expect("tracer warning", |v| v["event"] == "warning");
    assert!(
        string(&warning, "message").contains("unencrypted"),
        "{warning}"
    );
    let started_a = a.expect("started line", |v| v["event"] == "started");
    assert_eq!(started_a["tracer"], true, "{started_a}");
    let a_id = string(&started_a, "peer_id");

    let mut b = Peer::spawn_with("b", &tracer_args);
    b.expect("started line", |v| v["event"] == "started");
    b.command(&format!("connect {}", endpoints(&started_a).join(" ")));
    b.expect("connected line", |v| {
        v["event"] == "connected" && v["peer"] == a_id
    });
    b.command(&format!("send {} seen on the wire", &a_id[..8]));
    let message = a.expect("message from b", |v| v["event"] == "message");
    assert_eq!(message["text"], "seen on the wire", "{message}");

    // A normal peer (TCP only, so there is no encrypted path to fall back to) is refused.
    let mut c = Peer::spawn_with("c", &["--no-rudp"]);
    let started_c = c.expect("started line", |v| v["event"] == "started");
    assert_eq!(started_c["tracer"], false, "{started_c}");
    c.command(&format!("connect {}", endpoints(&started_a).join(" ")));
    // The command's answer: an `error` line naming the mismatch from c's side.
    let failed = c.expect("connect error", |v| {
        v["event"] == "error" && v["command"] == "connect"
    });
    assert!(
        string(&failed, "message")
            .contains("transport mode mismatch: we use tls mode, the peer tracer mode"),
        "{failed}"
    );
    for peer in [&mut a, &mut b, &mut c] {
        let status = peer.quit();
        assert!(status.success(), "{} exited with {status}", peer.name);
    }
}

#[test]
fn key_log_is_announced_and_filled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("keys.log");
    let log_arg = log.to_str().expect("UTF-8 path");
    let mut a = Peer::spawn_with("a", &["--key-log", log_arg]);
    let warning = a.expect("key log warning", |v| v["event"] == "warning");
    assert!(string(&warning, "message").contains(log_arg), "{warning}");
    let started_a = a.expect("started line", |v| v["event"] == "started");
    let a_id = string(&started_a, "peer_id");
    let mut b = Peer::spawn("b");
    b.expect("started line", |v| v["event"] == "started");
    b.command(&format!("connect {}", endpoints(&started_a).join(" ")));
    b.expect("connected line", |v| {
        v["event"] == "connected" && v["peer"] == a_id
    });
    a.expect("new_peer", |v| v["event"] == "new_peer");
    let text = std::fs::read_to_string(&log).expect("key log written");
    assert!(text.contains("CLIENT_TRAFFIC_SECRET_0 "), "{text}");
    assert!(text.contains("SERVER_TRAFFIC_SECRET_0 "), "{text}");
    for peer in [&mut a, &mut b] {
        let status = peer.quit();
        assert!(status.success(), "{} exited with {status}", peer.name);
    }
}
