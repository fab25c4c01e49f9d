//! The peer registry under pressure: a peer that keeps dialling, waiting sends, the end of
//! the event stream.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{SAFETY_NET, init_tracing};
use crust::{Service, ServiceConfig};
use crust_core::wire::FrameKind;
use crust_core::{ConnectionConfig, Identity, Transport};
use crust_tcp::{TcpConfig, TcpTransport};

fn tcp_only() -> ServiceConfig {
    ServiceConfig::loopback().with_rudp(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_dialling_again_and_again_cannot_pin_connections() {
    init_tracing();
    let (service, _events) = Service::new(tcp_only().with_max_peers(1)).expect("service");
    let endpoints = service.start_listening().await.expect("listen");
    let hostile = TcpTransport::new(Identity::generate().expect("id"), TcpConfig::default())
        .expect("transport");
    const DIALS: usize = 50;
    let closed_by_service = Arc::new(AtomicUsize::new(0));
    let all_closed = Arc::new(tokio::sync::Notify::new());
    let mut keep = Vec::new();
    for _ in 0..DIALS {
        let conn = hostile
            .dial(endpoints[0].addr(), Some(service.peer_id()))
            .await
            .expect("dial");
        let (sender, mut receiver) = conn.split();
        keep.push(sender);
        let closed = closed_by_service.clone();
        let all_closed = all_closed.clone();
        tokio::spawn(async move {
            // The hostile peer never retires anything; only the service can end these.
            let _ = receiver.recv().await;
            if closed.fetch_add(1, Ordering::SeqCst) + 1 == DIALS - 5 {
                all_closed.notify_one();
            }
        });
    }
    // One active connection and at most four extra ones may stay.
    tokio::time::timeout(SAFETY_NET, all_closed.notified())
        .await
        .expect("the service must abort connections beyond its per-peer cap");
    assert_eq!(service.peers().len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn disconnect_wakes_a_send_waiting_for_a_successor() {
    init_tracing();
    let config = tcp_only().with_connection_config(
        ConnectionConfig::default().with_handshake_timeout(Duration::from_secs(30)),
    );
    let (service, _events) = Service::new(config).expect("service");
    let service = Arc::new(service);
    let endpoints = service.start_listening().await.expect("listen");
    let peer = TcpTransport::new(Identity::generate().expect("id"), TcpConfig::default())
        .expect("transport");
    let peer_id = peer.local_peer_id();
    let mut conn = peer
        .dial(endpoints[0].addr(), Some(service.peer_id()))
        .await
        .expect("dial");
    // The peer announces a successor that never comes, and ends its side.
    conn.sender()
        .send_frame(FrameKind::Superseded, bytes::Bytes::new())
        .await
        .expect("superseded");
    conn.sender().finish().await;
    assert!(conn.recv().await.is_err(), "the service ended its side too");
    assert!(
        service.is_connected(peer_id),
        "still waiting for the successor"
    );
    let sending = {
        let service = service.clone();
        tokio::spawn(async move { service.send(peer_id, "x".into()).await })
    };
    // Let the send reach its wait (single-threaded runtime: it runs when we yield).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(service.disconnect(peer_id).await);
    let result = tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .expect("send must be woken by disconnect, not wait for its 30 s deadline")
        .expect("task");
    assert!(
        matches!(result, Err(crust::Error::NotConnected(_))),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_ends_after_shutdown() {
    init_tracing();
    let (service, mut events) = Service::new(tcp_only()).expect("service");
    service.start_listening().await.expect("listen");
    service.shutdown().await;
    let drained = tokio::time::timeout(SAFETY_NET, async {
        let mut n = 0;
        while events.recv().await.is_some() {
            n += 1;
        }
        n
    })
    .await
    .expect("Events::recv must return None after shutdown");
    assert_eq!(
        drained, 1,
        "the ListenerStarted event is still delivered first"
    );
}
