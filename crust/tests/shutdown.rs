//! Stopping or dropping a service closes its listeners and connections.

mod common;

use common::{SAFETY_NET, init_tracing, node, wait_for};
use crust::{Event, Protocol, ServiceConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_listeners_and_connections() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    let a_endpoints = a.our_endpoints();
    b.connect(&a_endpoints, Some(a.peer_id()))
        .await
        .expect("connect");

    tokio::time::timeout(SAFETY_NET, a.shutdown())
        .await
        .expect("shutdown finishes");
    wait_for(
        &mut be,
        "lost a",
        |e| matches!(e, Event::LostPeer { peer, .. } if *peer == a.peer_id()),
    )
    .await;
    assert!(a.peers().is_empty());

    // The TCP listener is gone: connecting is refused at once.
    let tcp = a_endpoints
        .iter()
        .find(|e| e.protocol() == Protocol::Tcp)
        .expect("tcp endpoint");
    let refused = tokio::net::TcpStream::connect(tcp.addr()).await;
    assert!(refused.is_err(), "listener still accepts after shutdown");
    // A full connect attempt fails too, with a typed error.
    let err = b
        .connect(&a_endpoints, Some(a.peer_id()))
        .await
        .expect_err("a is gone");
    assert!(
        matches!(
            err,
            crust::Error::ConnectFailed(_) | crust::Error::ConnectTimeout(_)
        ),
        "{err:?}"
    );
    // The stopped service refuses new work.
    let err = a
        .connect(&b.our_endpoints(), None)
        .await
        .expect_err("shut down");
    assert!(matches!(err, crust::Error::Shutdown), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_service_disconnects_its_peers() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    b.connect(&a.our_endpoints(), Some(a.peer_id()))
        .await
        .expect("connect");
    let a_id = a.peer_id();
    drop(a);
    wait_for(
        &mut be,
        "lost a",
        |e| matches!(e, Event::LostPeer { peer, .. } if *peer == a_id),
    )
    .await;
    assert!(!b.is_connected(a_id));
}
