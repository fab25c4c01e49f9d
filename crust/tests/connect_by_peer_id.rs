//! Connecting to a peer by its `PeerId` alone, from what the address book learnt: the
//! bootstrap cache, a LAN beacon, earlier dials, the application.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{init_tracing, node, wait_for};
use crust::bootstrap::BackoffConfig;
use crust::{BeaconConfig, BootstrapConfig, Contact, Event, LostReason, PeerAddr, ServiceConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_the_bootstrap_cache_is_reachable_by_id() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, _be) = node(ServiceConfig::loopback()).await;
    let (c, _ce) = node(ServiceConfig::loopback()).await;
    let bootstrap = BootstrapConfig::default()
        .with_contact(Contact::new(Some(b.peer_id()), b.our_endpoints()))
        .with_cache_path(dir.path().join("cache.json"))
        .with_backoff(BackoffConfig::default().with_initial_delay(Duration::from_millis(20)));
    let (a, mut ae) = node(ServiceConfig::loopback().with_bootstrap(bootstrap)).await;
    wait_for(
        &mut ae,
        "bootstrap",
        |e| matches!(e, Event::BootstrapConnected { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    // Another peer keeps `a` from losing every peer (which would restart the bootstrap).
    a.connect(&c.our_endpoints(), Some(c.peer_id()))
        .await
        .expect("connect c");
    let known = a.known_address(b.peer_id()).expect("the book knows b");
    assert!(
        b.our_endpoints()
            .iter()
            .all(|ep| known.endpoints.contains(ep))
    );

    assert!(a.disconnect(b.peer_id()).await);
    wait_for(
        &mut ae,
        "b lost",
        |e| matches!(e, Event::LostPeer { peer, reason: LostReason::Disconnected } if *peer == b.peer_id()),
    )
    .await;
    assert!(!a.is_connected(b.peer_id()));
    assert_eq!(
        a.connect_peer(b.peer_id()).await.expect("by id"),
        b.peer_id()
    );
    assert!(a.is_connected(b.peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_heard_by_beacon_is_reachable_by_id() {
    init_tracing();
    let beacon = |port: u16| {
        BeaconConfig::default()
            .with_port(port)
            .with_broadcast_addrs(vec![IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255))])
            .with_announce_interval(Duration::from_millis(200))
            .with_min_announce_gap(Duration::from_millis(20))
    };
    let (a, mut ae) = node(ServiceConfig::loopback().with_beacon(beacon(0))).await;
    let port = a.beacon_acceptor_port().expect("beacon");
    let (b, _be) = node(ServiceConfig::loopback().with_beacon(beacon(port))).await;
    wait_for(
        &mut ae,
        "a finds b",
        |e| matches!(e, Event::NewPeer { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    let known = a
        .known_address(b.peer_id())
        .expect("the beacon fed the book");
    assert!(!known.endpoints.is_empty());
    a.disconnect(b.peer_id()).await;
    // Connected again by id (the beacon may race us to it: either way one connection).
    assert_eq!(
        a.connect_peer(b.peer_id()).await.expect("by id"),
        b.peer_id()
    );
    assert!(a.is_connected(b.peer_id()));
    assert_eq!(a.peers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_a_typed_error_and_added_addresses_work() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, _be) = node(ServiceConfig::loopback()).await;
    match a.connect_peer(b.peer_id()).await {
        Err(crust::Error::UnknownPeer(peer)) => assert_eq!(peer, b.peer_id()),
        other => panic!("expected UnknownPeer, got {other:?}"),
    }
    a.add_address(b.our_addr());
    assert_eq!(a.known_address(b.peer_id()), Some(b.our_addr()));
    assert_eq!(
        a.connect_peer(b.peer_id()).await.expect("by id"),
        b.peer_id()
    );
    // The text form of an address (what `crust-peer` takes) round-trips and connects too.
    let (c, _ce) = node(ServiceConfig::loopback()).await;
    let addr: PeerAddr = c.our_addr().to_string().parse().expect("parse");
    assert_eq!(a.connect_to(addr).await.expect("connect_to"), c.peer_id());
    assert!(a.forget_address(c.peer_id()));
}
