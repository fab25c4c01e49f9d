//! TCP first, reliable UDP as the fallback.

mod common;

use std::time::Duration;

use common::{SAFETY_NET, init_tracing, node, wait_for};
use crust::{Endpoint, Event, Protocol, ServiceConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_is_preferred_when_both_work() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    let endpoints = b.our_endpoints();
    assert!(endpoints.iter().any(|e| e.protocol() == Protocol::Tcp));
    assert!(endpoints.iter().any(|e| e.protocol() == Protocol::Rudp));
    // Give the reliable-UDP attempt every chance: it is offered first in the list.
    let mut reordered = endpoints.clone();
    reordered.sort_by_key(|e| e.protocol() == Protocol::Tcp);
    let peer = tokio::time::timeout(SAFETY_NET, a.connect(&reordered, Some(b.peer_id())))
        .await
        .expect("safety net")
        .expect("connect");
    assert_eq!(peer, b.peer_id());
    let info = a
        .peers()
        .into_iter()
        .find(|p| p.peer_id == peer)
        .expect("connected");
    assert_eq!(info.protocol, Protocol::Tcp);
    let event = wait_for(&mut be, "new peer", |e| matches!(e, Event::NewPeer { .. })).await;
    assert!(
        matches!(
            event,
            Event::NewPeer {
                protocol: Protocol::Tcp,
                ..
            }
        ),
        "{event:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_tcp_is_reached_over_reliable_udp() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    // Offer a TCP endpoint that refuses connections (a port nobody listens on any more)
    // next to b's real reliable-UDP endpoint.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let rudp = b
        .our_endpoints()
        .into_iter()
        .find(|e| e.protocol() == Protocol::Rudp)
        .expect("rudp endpoint");
    let endpoints = [Endpoint::tcp(closed_port), rudp];
    let peer = tokio::time::timeout(SAFETY_NET, a.connect(&endpoints, Some(b.peer_id())))
        .await
        .expect("safety net")
        .expect("connect over rudp");
    let info = a
        .peers()
        .into_iter()
        .find(|p| p.peer_id == peer)
        .expect("connected");
    assert_eq!(info.protocol, Protocol::Rudp);
    a.send(peer, "over quic".into()).await.expect("send");
    let event = wait_for(&mut be, "message", |e| matches!(e, Event::Message { .. })).await;
    assert_eq!(
        event,
        Event::Message {
            peer: a.peer_id(),
            payload: "over quic".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tcp_handshake_loses_the_race_to_reliable_udp() {
    init_tracing();
    // A TCP "firewall" that accepts connections and then never answers: the TCP attempt
    // stalls until its handshake timeout, so the fallback has to win the race.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let blackhole_addr = blackhole.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = blackhole.accept().await {
            held.push(stream);
        }
    });
    let config = ServiceConfig::loopback()
        .with_tcp_head_start(Duration::from_millis(100))
        .with_connection_config(
            crust::ConnectionConfig::default().with_handshake_timeout(Duration::from_secs(30)),
        );
    let (a, _ae) = node(config).await;
    let (b, _be) = node(ServiceConfig::loopback()).await;
    let rudp = b
        .our_endpoints()
        .into_iter()
        .find(|e| e.protocol() == Protocol::Rudp)
        .expect("rudp endpoint");
    let peer = tokio::time::timeout(
        SAFETY_NET,
        a.connect(&[Endpoint::tcp(blackhole_addr), rudp], Some(b.peer_id())),
    )
    .await
    .expect("safety net")
    .expect("connect");
    let info = a
        .peers()
        .into_iter()
        .find(|p| p.peer_id == peer)
        .expect("connected");
    assert_eq!(info.protocol, Protocol::Rudp);
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_failing_is_a_typed_error_naming_each_endpoint() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let err = tokio::time::timeout(SAFETY_NET, a.connect(&[Endpoint::tcp(closed)], None))
        .await
        .expect("safety net")
        .expect_err("nobody listens");
    match err {
        crust::Error::ConnectFailed(attempts) => {
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].0, Endpoint::tcp(closed));
        }
        other => panic!("expected ConnectFailed, got {other:?}"),
    }
    let err = a.connect(&[], None).await.expect_err("no endpoints");
    assert!(matches!(err, crust::Error::NoUsableEndpoint(_)), "{err:?}");
}
