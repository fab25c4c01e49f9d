//! Real sockets on loopback: two beacons share one port and hear each other through the
//! loopback broadcast address `127.255.255.255` (Linux routes it on `lo`; every socket
//! bound to `0.0.0.0:port` receives a copy, which is exactly LAN broadcast semantics).
//!
//! Unicast to `127.0.0.1:port` would not do: with `SO_REUSEPORT`, Linux hands a unicast
//! datagram to *one* socket of the group (chosen by a hash of the addresses), and since
//! both beacons send from `127.0.0.1:port`, one of them would never hear the other.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crust_beacon::{Beacon, BeaconConfig, BeaconDiscovery};
use crust_core::{Discovery, Endpoint, PeerCandidate, PeerId};

/// Safety net for every wait; normally things happen within milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

fn config(port: u16) -> BeaconConfig {
    BeaconConfig::default()
        .with_port(port)
        .with_broadcast_addrs(vec![IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255))])
        .with_announce_interval(Duration::from_millis(400))
        .with_min_announce_gap(Duration::from_millis(50))
        .with_sender_rate(200)
}

fn id(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn tcp(port: u16) -> Endpoint {
    Endpoint::tcp(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Waits for a candidate for `peer`, ignoring others.
async fn wait_for(discovery: &mut dyn Discovery, peer: PeerId) -> PeerCandidate {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let batch = discovery
                .next_candidates()
                .await
                .expect("beacon still running");
            if let Some(c) = batch.into_iter().find(|c| c.peer_id == Some(peer)) {
                return c;
            }
        }
    })
    .await
    .expect("peer heard before the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beacons_share_the_port_and_hear_each_other() {
    let a = Beacon::bind(config(0), id(1), vec![tcp(4001)])
        .await
        .expect("bind a");
    let port = a.beacon_acceptor_port();
    assert_ne!(port, 0);
    let b = Beacon::bind(config(port), id(2), vec![tcp(4002)])
        .await
        .expect("bind b on the same port");
    assert_eq!(b.beacon_acceptor_port(), port);

    let mut a: Box<dyn Discovery> = Box::new(BeaconDiscovery::new(a));
    let mut b: Box<dyn Discovery> = Box::new(BeaconDiscovery::new(b));
    assert_eq!(a.name(), "beacon");

    let heard_by_a = wait_for(&mut *a, id(2)).await;
    assert_eq!(heard_by_a.endpoints, vec![tcp(4002)]);
    let heard_by_b = wait_for(&mut *b, id(1)).await;
    assert_eq!(heard_by_b.endpoints, vec![tcp(4001)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_beacons_are_not_offered_and_updates_are() {
    let a = Beacon::bind(config(0), id(1), vec![tcp(5001)])
        .await
        .expect("bind a");
    let port = a.beacon_acceptor_port();
    let b = BeaconDiscovery::bind(config(port), id(2), vec![])
        .await
        .expect("bind b");
    let a_handle = a.handle();
    let mut a = BeaconDiscovery::new(a);
    let mut b: Box<dyn Discovery> = Box::new(b);

    // B announces no endpoints: A remembers it but offers nothing; B hears A.
    let heard = wait_for(&mut *b, id(1)).await;
    assert_eq!(heard.endpoints, vec![tcp(5001)]);

    // A changes its endpoints: B is offered A again, with the new ones.
    a_handle.set_endpoints(vec![tcp(5002)]);
    let updated = tokio::time::timeout(DEADLINE, async {
        loop {
            let c = wait_for(&mut *b, id(1)).await;
            if c.endpoints == vec![tcp(5002)] {
                return c;
            }
        }
    })
    .await
    .expect("update heard");
    assert_eq!(updated.peer_id, Some(id(1)));
    // A never offers itself, and B's empty announcement gives A nothing to dial.
    assert!(a.beacon().peers().iter().all(|p| p.peer_id != id(1)));
    let nothing = tokio::time::timeout(Duration::from_millis(300), a.next_candidates()).await;
    assert!(nothing.is_err(), "A offered {nothing:?}");
    assert!(a_handle.peers().iter().any(|p| p.peer_id == id(2)));
    assert!(!a_handle.is_closed());
    drop(a);
    assert!(a_handle.is_closed(), "dropping the beacon stops it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_candidates_is_cancel_safe() {
    let a = Beacon::bind(config(0), id(1), vec![tcp(6001)])
        .await
        .expect("bind a");
    let port = a.beacon_acceptor_port();
    let mut a = BeaconDiscovery::new(a);
    // Start waiting and give up at once, again and again, before anything can arrive.
    for _ in 0..20 {
        let cancelled = tokio::time::timeout(Duration::ZERO, a.next_candidates()).await;
        assert!(cancelled.is_err(), "nothing can be queued yet");
    }
    let b = Beacon::bind(config(port), id(2), vec![tcp(6002)])
        .await
        .expect("bind b");
    let mut b = BeaconDiscovery::new(b);
    wait_for(&mut b, id(1)).await;
    // Drop more waits, some possibly while B's beacon is being handled. A wait that does
    // complete returns the candidate; one that is dropped must leave it queued.
    let mut early = None;
    for _ in 0..50 {
        if let Ok(batch) = tokio::time::timeout(Duration::ZERO, a.next_candidates()).await {
            early = batch
                .expect("running")
                .into_iter()
                .find(|c| c.peer_id == Some(id(2)));
            break;
        }
        tokio::task::yield_now().await;
    }
    let c = match early {
        Some(c) => c,
        None => wait_for(&mut a, id(2)).await,
    };
    assert_eq!(c.endpoints, vec![tcp(6002)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_floods_leave_the_beacon_working() {
    let cfg = config(0).with_max_peers(4).with_sender_rate(20);
    let a = Beacon::bind(cfg, id(1), vec![tcp(7001)])
        .await
        .expect("bind a");
    let port = a.beacon_acceptor_port();
    let flooder = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("flooder");
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    for i in 0..2_000u32 {
        let mut raw = [0x55; 32];
        raw[..4].copy_from_slice(&i.to_be_bytes());
        let packet = crust_beacon::BeaconPacket::new(PeerId::from_bytes(raw), vec![tcp(9)], 0, 0)
            .encode()
            .expect("encode");
        flooder.send_to(&packet, target).await.expect("send");
        flooder
            .send_to(&[0xff; 600], target)
            .await
            .expect("send junk");
        flooder.send_to(b"CRBN", target).await.expect("send short");
    }
    // Peers from the flood are bounded by max_peers, whatever got through.
    assert!(a.peers().len() <= 4);
    assert!(!a.is_closed());
}
