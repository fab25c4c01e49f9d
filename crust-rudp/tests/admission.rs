//! Handshake slots under pressure (issue #12): a host that completes QUIC and then stalls
//! gets only its fair share of the listener's handshake slots.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{DEADLINE, init_tracing, loopback, transport};
use crust_core::{Identity, Transport};
use crust_rudp::{RudpConfig, quinn};
use tokio::task::JoinSet;

/// A QUIC client on 127.0.0.2 with a valid Crust certificate and ALPN.
fn attacker_endpoint() -> (quinn::Endpoint, quinn::ClientConfig) {
    let identity = Identity::generate().expect("identity");
    let (tls, _) = crust_core::tls::client_config(
        &identity,
        crust_core::tls::default_crypto_provider(),
        None,
        &[crust_core::wire::ALPN],
    )
    .expect("tls");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic");
    let endpoint = quinn::Endpoint::client("127.0.0.2:0".parse().expect("addr")).expect("endpoint");
    (endpoint, quinn::ClientConfig::new(Arc::new(quic)))
}

/// Completes QUIC with the listener and never opens the Crust stream, so the listener's
/// handshake waits until its timeout; re-opens as soon as the listener closes or refuses.
/// `slots` counts the QUIC handshakes the listener completed (each held a slot).
async fn staller(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    slots: Arc<AtomicUsize>,
) {
    loop {
        let Ok(connecting) = endpoint.connect_with(config.clone(), addr, "crust") else {
            tokio::task::yield_now().await;
            continue;
        };
        match connecting.await {
            Ok(conn) => {
                slots.fetch_add(1, Ordering::SeqCst);
                conn.closed().await;
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// One address holds more stalled QUIC handshakes than the listener has slots (80 > 64),
/// re-opening each as it is cut; honest dials from another address still connect quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_holding_stalled_quic_handshakes_does_not_lock_out_honest_dials() {
    init_tracing();
    let server = transport(RudpConfig::default());
    let mut listener = server.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();

    let (endpoint, config) = attacker_endpoint();
    let slots = Arc::new(AtomicUsize::new(0));
    let mut attack = JoinSet::new();
    for _ in 0..80 {
        attack.spawn(staller(
            endpoint.clone(),
            config.clone(),
            addr,
            slots.clone(),
        ));
    }
    // Wait until the attacker holds at least its whole share (16 by default).
    tokio::time::timeout(DEADLINE, async {
        while slots.load(Ordering::SeqCst) < 16 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the attacker gets its share of the slots");

    let accepting = tokio::spawn(async move {
        loop {
            let Ok(conn) = listener.accept().await else {
                return;
            };
            let _ = conn.send("welcome".into()).await;
        }
    });
    let client = transport(RudpConfig::default());
    let mut times = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let mut conn =
            tokio::time::timeout(DEADLINE, client.dial(addr, Some(server.local_peer_id())))
                .await
                .expect("safety net")
                .expect("an honest dial gets through the attack");
        assert_eq!(conn.recv().await.expect("recv"), "welcome");
        times.push(started.elapsed());
    }
    let held = slots.load(Ordering::SeqCst);
    let worst = times.iter().max().copied().unwrap_or_default();
    let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(1);
    eprintln!(
        "honest rUDP dials under attack ({held} stalled QUIC handshakes): mean {mean:?}, worst {worst:?}"
    );
    assert!(
        worst < Duration::from_secs(5),
        "an honest dial took {worst:?}"
    );
    attack.shutdown().await;
    accepting.abort();
}

/// A burst of 20 dials from one address with 2 slots per address waits and is all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_address_waits_and_is_all_served() {
    init_tracing();
    let server = transport(
        RudpConfig::default()
            .with_max_concurrent_handshakes(4)
            .with_max_concurrent_handshakes_per_ip(2),
    );
    let mut listener = server.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    let accepting = tokio::spawn(async move {
        let mut accepted = Vec::new();
        while accepted.len() < 20 {
            accepted.push(listener.accept().await.expect("accept"));
        }
        accepted
    });
    let client = Arc::new(transport(RudpConfig::default()));
    let mut dials = JoinSet::new();
    for _ in 0..20 {
        let (client, expected) = (client.clone(), server.local_peer_id());
        dials.spawn(async move { client.dial(addr, Some(expected)).await });
    }
    // Kept open: the listener finishes its side after the dial returns.
    let mut dialled = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(dial) = dials.join_next().await {
            dialled.push(
                dial.expect("task")
                    .expect("every dial of the burst is served"),
            );
        }
    })
    .await
    .expect("safety net");
    let accepted = tokio::time::timeout(DEADLINE, accepting)
        .await
        .expect("safety net")
        .expect("accept task");
    assert_eq!(accepted.len(), 20);
    drop(dialled);
}
