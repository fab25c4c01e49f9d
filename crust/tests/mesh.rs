//! 50 nodes in one process form a full mesh; every message arrives exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{SAFETY_NET, init_tracing, node};
use crust::{Event, PeerId, Protocol, ServiceConfig};

const NODES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_full_mesh_exactly_once() {
    init_tracing();
    let mut nodes = Vec::with_capacity(NODES);
    for _ in 0..NODES {
        // TCP only keeps the test's file descriptors and handshakes moderate; the mesh logic
        // is transport independent.
        // Gossip off: this test is about a burst of 1,225 simultaneous handshakes resolving
        // to exactly one connection per pair, on a shared 2-core machine; gossip's pushes on
        // every new connection only add load to that burst (gossip has its own tests).
        nodes.push(
            node(
                ServiceConfig::loopback()
                    .with_rudp(false)
                    .with_gossip(crust::GossipConfig::disabled()),
            )
            .await,
        );
    }
    let ids: Vec<PeerId> = nodes.iter().map(|(s, _)| s.peer_id()).collect();
    let endpoints: Vec<_> = nodes.iter().map(|(s, _)| s.our_endpoints()).collect();

    // Every node dials every node after it: 1225 connections, each pair exactly once.
    tokio::time::timeout(SAFETY_NET, async {
        let mut dials = Vec::new();
        for (i, (service, _)) in nodes.iter().enumerate() {
            for j in (i + 1)..NODES {
                dials.push(service.connect(&endpoints[j], Some(ids[j])));
            }
        }
        for result in futures::future::join_all(dials).await {
            result.expect("dial");
        }
    })
    .await
    .expect("mesh within the safety net");

    // A dial returns once the dialer registered the connection; wait until every node also
    // registered its accepted ones.
    for (j, (_, events)) in nodes.iter_mut().enumerate() {
        let mut known = 0;
        while known < NODES - 1 {
            match tokio::time::timeout(SAFETY_NET, events.recv()).await {
                Ok(Some(Event::NewPeer { .. })) => known += 1,
                Ok(Some(Event::LostPeer { peer, reason })) => {
                    panic!("node {j} lost {peer}: {reason}")
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("events ended"),
                Err(_) => panic!("node {j} knows only {known} peers"),
            }
        }
    }
    // Each node sends one message to each other node.
    for (i, (service, _)) in nodes.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                service
                    .send(*id, format!("{i}->{j}").into())
                    .await
                    .expect("send");
            }
        }
    }
    // Each node receives exactly one message from each other node.
    for (j, (service, events)) in nodes.iter_mut().enumerate() {
        let mut from: HashMap<PeerId, String> = HashMap::new();
        let collected = tokio::time::timeout(SAFETY_NET, async {
            while from.len() < NODES - 1 {
                match events.recv().await {
                    Some(Event::Message { peer, payload }) => {
                        let text = String::from_utf8(payload.to_vec()).expect("utf8");
                        assert!(text.ends_with(&format!("->{j}")), "node {j} got {text}");
                        assert!(
                            from.insert(peer, text).is_none(),
                            "duplicate message at node {j}"
                        );
                    }
                    Some(Event::LostPeer { peer, reason }) => {
                        panic!("node {j} lost {peer}: {reason}")
                    }
                    Some(_) => {}
                    None => panic!("events ended"),
                }
            }
        })
        .await;
        assert!(
            collected.is_ok(),
            "node {j} got {} of {} messages",
            from.len(),
            NODES - 1
        );
        assert_eq!(
            service.peers().len(),
            NODES - 1,
            "node {j} is connected to everyone"
        );
        assert!(service.peers().iter().all(|p| p.protocol == Protocol::Tcp));
    }
    // Nothing more arrives: no duplicates were in flight.
    for (j, (_, events)) in nodes.iter_mut().enumerate() {
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(1), events.recv()).await
        {
            assert!(
                !matches!(event, Event::Message { .. }),
                "extra message at node {j}: {event:?}"
            );
        }
    }
    for (service, _) in &nodes {
        service.shutdown().await;
    }
}
