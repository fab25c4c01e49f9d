//! Nodes on one network find each other by LAN beacon and connect without being told any
//! endpoint.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{init_tracing, node, wait_for};
use crust::{BeaconConfig, Event, ServiceConfig};

fn beacon(port: u16) -> BeaconConfig {
    BeaconConfig::default()
        .with_port(port)
        // Loopback has no broadcast flag, but Linux delivers its broadcast address to every
        // socket sharing the port; on a real LAN the default 255.255.255.255 is used.
        .with_broadcast_addrs(vec![IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255))])
        .with_announce_interval(Duration::from_millis(200))
        .with_min_announce_gap(Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_by_beacon_and_connect() {
    init_tracing();
    // The first node picks a free beacon port; the others share it.
    let (a, mut ae) = node(ServiceConfig::loopback().with_beacon(beacon(0))).await;
    let port = a.beacon_acceptor_port().expect("a runs a beacon");
    assert_ne!(port, 0);
    let (b, mut be) = node(ServiceConfig::loopback().with_beacon(beacon(port))).await;
    assert_eq!(b.beacon_acceptor_port(), Some(port));

    // Nobody was given an endpoint: the beacons do it.
    wait_for(
        &mut ae,
        "a finds b",
        |e| matches!(e, Event::NewPeer { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    wait_for(
        &mut be,
        "b finds a",
        |e| matches!(e, Event::NewPeer { peer, .. } if *peer == a.peer_id()),
    )
    .await;
    a.send(b.peer_id(), "found you".into()).await.expect("send");
    let got = wait_for(&mut be, "message", |e| matches!(e, Event::Message { .. })).await;
    assert_eq!(
        got,
        Event::Message {
            peer: a.peer_id(),
            payload: "found you".into()
        }
    );
    assert!(a.is_connected(b.peer_id()) && b.is_connected(a.peer_id()));
    assert_eq!(
        a.peers().len(),
        1,
        "still one connection, even if both dialled"
    );
}
