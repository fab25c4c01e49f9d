//! The event queue never deadlocks the application's own calls: `connect`, `disconnect`,
//! `ban` and `shutdown` do not wait for room, even with a queue of one event that nobody
//! is draining.

mod common;

use common::{init_tracing, node};
use crust::{Event, Service, ServiceConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_do_not_wait_for_the_application_to_take_events() {
    init_tracing();
    let (a, mut events) =
        Service::new(ServiceConfig::loopback().with_event_queue_len(1)).expect("service");
    // Listening alone queues more events than the queue holds.
    a.start_listening().await.expect("listen");
    let mut peers = Vec::new();
    for _ in 0..4 {
        peers.push(node(ServiceConfig::loopback()).await);
    }
    // This task is the one that drains events, and it is busy connecting.
    for (peer, peer_events) in &mut peers {
        let id = tokio::time::timeout(
            common::SAFETY_NET,
            a.connect(&peer.our_endpoints(), Some(peer.peer_id())),
        )
        .await
        .expect("connect must not wait for the event queue")
        .expect("connect");
        assert_eq!(id, peer.peer_id());
        // The peer talks to us meanwhile: its messages wait (backpressure), nothing is lost.
        common::wait_for(peer_events, "the peer registers us", |e| {
            matches!(e, Event::NewPeer { .. })
        })
        .await;
        peer.send(a.peer_id(), "hello".into()).await.expect("send");
    }
    let (first, _) = &peers[0];
    let (second, _) = &peers[1];
    tokio::time::timeout(common::SAFETY_NET, a.disconnect(first.peer_id()))
        .await
        .expect("disconnect must not wait");
    tokio::time::timeout(common::SAFETY_NET, a.ban([second.peer_id()]))
        .await
        .expect("ban must not wait");
    // Now drain: every NewPeer is there, and the messages of the peers still connected.
    let mut new_peers = 0;
    let mut messages = 0;
    while new_peers < 4 || messages < 2 {
        let event = tokio::time::timeout(common::SAFETY_NET, events.recv())
            .await
            .expect("events keep coming")
            .expect("stream open");
        match event {
            Event::NewPeer { .. } => new_peers += 1,
            Event::Message { peer, .. }
                if peer == peers[2].0.peer_id() || peer == peers[3].0.peer_id() =>
            {
                messages += 1
            }
            _ => {}
        }
    }
    tokio::time::timeout(common::SAFETY_NET, a.shutdown())
        .await
        .expect("shutdown must not wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_is_a_cheap_clone_handle() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    let a2 = a.clone();
    drop(a);
    // A clone keeps the node alive.
    a2.connect(&b.our_endpoints(), Some(b.peer_id()))
        .await
        .expect("connect through the clone");
    let task = tokio::spawn({
        let a3 = a2.clone();
        let b_id = b.peer_id();
        async move { a3.send(b_id, "from a task".into()).await }
    });
    task.await.expect("task").expect("send");
    common::wait_for(&mut be, "message", |e| matches!(e, Event::Message { .. })).await;
    // The last handle going tears the node down: b loses it.
    drop(a2);
    common::wait_for(&mut be, "a gone", |e| matches!(e, Event::LostPeer { .. })).await;
}
