//! Probe datagrams share the QUIC socket: they reach the probe receiver, QUIC never sees
//! them, and connections on the same socket are unaffected.

mod common;

use bytes::Bytes;
use common::{DEADLINE, connect, init_tracing, loopback, transport};
use crust_core::Transport;
use crust_core::probe::{PROBE_MAGIC, encode_probe};
use crust_rudp::RudpConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_taken_out_and_quic_carries_on() {
    init_tracing();
    let server = transport(RudpConfig::default());
    assert!(
        server.take_probe_receiver().is_none(),
        "no socket before listen"
    );
    let mut listener = server.listen(loopback()).await.expect("listen");
    let mut probes = server
        .take_probe_receiver()
        .expect("the main socket's probes");
    assert!(server.take_probe_receiver().is_none(), "taken once");
    let server_addr = listener.local_endpoint().addr();

    let prober = tokio::net::UdpSocket::bind(loopback()).await.expect("bind");
    for nonce in [1u64, 2, 3] {
        prober
            .send_to(&encode_probe(nonce), server_addr)
            .await
            .expect("send");
    }
    // Malformed probes and plain garbage are dropped without harming anything.
    prober
        .send_to(&PROBE_MAGIC, server_addr)
        .await
        .expect("send");
    prober
        .send_to(b"not quic at all", server_addr)
        .await
        .expect("send");

    let client = transport(RudpConfig::default());
    let (mut dialled, mut accepted) = connect(&client, &mut listener, server.local_peer_id()).await;
    dialled
        .send(Bytes::from_static(b"over quic"))
        .await
        .expect("send");
    let got = tokio::time::timeout(DEADLINE, accepted.recv())
        .await
        .expect("bounded")
        .expect("message");
    assert_eq!(&got[..], b"over quic");

    let prober_addr = prober.local_addr().expect("addr");
    for nonce in [1u64, 2, 3] {
        let probe = tokio::time::timeout(DEADLINE, probes.recv())
            .await
            .expect("bounded")
            .expect("a probe");
        assert_eq!((probe.from, probe.nonce), (prober_addr, nonce));
    }
    // The malformed one was counted (once it was read, which happened before the QUIC
    // handshake's packets that followed it).
    assert_eq!(probes.dropped(), 1);
    let _ = &mut dialled;
}
