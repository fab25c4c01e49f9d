//! Tracer mode through the facade: two tracer nodes connect over TCP (frames in clear text,
//! pings and observed addresses included) and talk; a tracer node and a normal node refuse
//! each other, whichever dials, with a typed `ModeMismatch` (never a clear-text fallback).

mod common;

use common::{SAFETY_NET, init_tracing, node, wait_for};
use crust::wire::TransportMode;
use crust::{DialFailure, Error, Event, Protocol, ServiceConfig};

fn tcp_only(tracer: bool) -> ServiceConfig {
    ServiceConfig::loopback()
        .with_rudp(false)
        .with_tracer(tracer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tracer_nodes_connect_and_talk() {
    init_tracing();
    let (a, _ae) = node(tcp_only(true)).await;
    let (b, mut be) = node(tcp_only(true)).await;
    let peer = tokio::time::timeout(SAFETY_NET, a.connect(&b.our_endpoints(), Some(b.peer_id())))
        .await
        .expect("safety net")
        .expect("connect");
    assert_eq!(peer, b.peer_id());
    a.send(peer, "in clear text".into()).await.expect("send");
    let event = wait_for(&mut be, "message", |e| matches!(e, Event::Message { .. })).await;
    assert_eq!(
        event,
        Event::Message {
            peer: a.peer_id(),
            payload: "in clear text".into()
        }
    );
    let rtt = tokio::time::timeout(SAFETY_NET, a.ping(peer))
        .await
        .expect("safety net")
        .expect("ping");
    assert!(rtt < SAFETY_NET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracer_and_normal_nodes_refuse_each_other() {
    init_tracing();
    for dialler_is_tracer in [true, false] {
        let (a, _ae) = node(tcp_only(dialler_is_tracer)).await;
        let (b, _be) = node(tcp_only(!dialler_is_tracer)).await;
        let err =
            tokio::time::timeout(SAFETY_NET, a.connect(&b.our_endpoints(), Some(b.peer_id())))
                .await
                .expect("safety net")
                .expect_err("a mode mismatch must fail");
        let (ours, theirs) = if dialler_is_tracer {
            (TransportMode::Tracer, TransportMode::Tls)
        } else {
            (TransportMode::Tls, TransportMode::Tracer)
        };
        match &err {
            Error::ConnectFailed(attempts) => {
                assert!(!attempts.is_empty());
                for (endpoint, failure) in attempts {
                    assert_eq!(endpoint.protocol(), Protocol::Tcp);
                    assert_eq!(failure, &DialFailure::ModeMismatch { ours, theirs });
                }
            }
            other => panic!("dialler tracer={dialler_is_tracer}: {other:?}"),
        }
        assert!(err.to_string().contains("mode mismatch"), "{err}");
        assert!(a.peers().is_empty() && b.peers().is_empty());
    }
}
