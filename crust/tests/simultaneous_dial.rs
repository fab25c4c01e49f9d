//! At most one connection between two nodes, even when both dial at the same moment.

mod common;

use std::collections::HashSet;

use common::{SAFETY_NET, init_tracing, node, wait_for};
use crust::{Event, ServiceConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dial_leaves_one_connection_on_both_sides() {
    init_tracing();
    let (a, mut ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    let a_eps = a.our_endpoints();
    let b_eps = b.our_endpoints();
    // Without an expected PeerId, `connect` cannot know it is already connected, so both
    // sides always dial, whatever the scheduling.
    let (ab, ba) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(a.connect(&b_eps, None), b.connect(&a_eps, None))
    })
    .await
    .expect("safety net");
    assert_eq!(ab.expect("a connects"), b.peer_id());
    assert_eq!(ba.expect("b connects"), a.peer_id());

    // Each side sees two connections and closes the same one.
    let a_dup = wait_for(&mut ae, "duplicate resolution on a", |e| {
        matches!(e, Event::DuplicateConnectionClosed { .. })
    })
    .await;
    let b_dup = wait_for(&mut be, "duplicate resolution on b", |e| {
        matches!(e, Event::DuplicateConnectionClosed { .. })
    })
    .await;
    let a_peers = a.peers();
    let b_peers = b.peers();
    assert_eq!(a_peers.len(), 1, "a keeps one connection: {a_peers:?}");
    assert_eq!(b_peers.len(), 1, "b keeps one connection: {b_peers:?}");
    // The same connection: a's local address is b's remote address and vice versa.
    assert_eq!(a_peers[0].local_addr, b_peers[0].remote_addr);
    assert_eq!(a_peers[0].remote_addr, b_peers[0].local_addr);
    assert_ne!(a_peers[0].direction, b_peers[0].direction);
    // The kept connection is the one the smaller PeerId dialled.
    let a_dialled = a.peer_id() < b.peer_id();
    let expected_a = if a_dialled {
        crust::Direction::Outbound
    } else {
        crust::Direction::Inbound
    };
    assert_eq!(a_peers[0].direction, expected_a);
    assert!(matches!(a_dup, Event::DuplicateConnectionClosed { kept, .. } if kept == expected_a));
    assert!(matches!(b_dup, Event::DuplicateConnectionClosed { kept, .. } if kept != expected_a));

    // Messages flow both ways, each exactly once.
    for i in 0..50u32 {
        a.send(b.peer_id(), format!("a{i}").into())
            .await
            .expect("a sends");
        b.send(a.peer_id(), format!("b{i}").into())
            .await
            .expect("b sends");
    }
    for (events, prefix) in [(&mut be, "a"), (&mut ae, "b")] {
        let mut seen = HashSet::new();
        while seen.len() < 50 {
            let event = wait_for(events, "message", |e| matches!(e, Event::Message { .. })).await;
            if let Event::Message { payload, .. } = event {
                let text = String::from_utf8(payload.to_vec()).expect("utf8");
                assert!(text.starts_with(prefix), "{text}");
                assert!(seen.insert(text.clone()), "{text} delivered twice");
            }
        }
    }
    assert_eq!(a.peers().len(), 1);
    assert_eq!(b.peers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_twice_keeps_one_connection() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    let eps = b.our_endpoints();
    a.connect(&eps, Some(b.peer_id())).await.expect("first");
    a.connect(&eps, Some(b.peer_id()))
        .await
        .expect("second is a no-op");
    a.connect(&eps, None)
        .await
        .expect("third dials, then resolves the duplicate");
    assert_eq!(a.peers().len(), 1);
    a.send(b.peer_id(), "once".into()).await.expect("send");
    let event = wait_for(&mut be, "message", |e| matches!(e, Event::Message { .. })).await;
    assert_eq!(
        event,
        Event::Message {
            peer: a.peer_id(),
            payload: "once".into()
        }
    );
    assert_eq!(b.peers().len(), 1);
}
