//! The opt-in TLS key log: both ends of a QUIC connection log the secrets of its handshake
//! and traffic keys (what Wireshark needs to decrypt a capture of it).

mod common;

use common::{DEADLINE, connect, loopback, transport};
use crust_core::{Transport, tls};
use crust_rudp::RudpConfig;

#[tokio::test]
async fn key_log_records_the_quic_secrets_of_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.log");
    let config = RudpConfig::default().with_key_log(tls::KeyLogWriter::create(&path).expect("log"));
    let (alice, bob) = (transport(config.clone()), transport(config));
    let mut listener = bob.listen(loopback()).await.expect("listen");
    let (to_bob, mut to_alice) = tokio::time::timeout(DEADLINE, async {
        connect(&alice, &mut listener, bob.local_peer_id()).await
    })
    .await
    .expect("safety net");
    to_bob.send("secret".into()).await.expect("send");
    assert_eq!(to_alice.recv().await.expect("recv"), "secret");
    let text = std::fs::read_to_string(&path).expect("read key log");
    for label in [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
    ] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{label} ")))
            .collect();
        assert_eq!(lines.len(), 2, "{label} in {text}");
        assert_eq!(lines[0], lines[1], "both sides log the same secret");
    }
}
