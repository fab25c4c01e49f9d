//! Reachability from observations: peers in distinct networks (here distinct /24s of the
//! loopback range) agree on where they see us, and the node classifies itself.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{init_tracing, node, wait_for};
use crust::{Endpoint, Event, NatType, Protocol, ServiceConfig};

fn at(ip: [u8; 4]) -> ServiceConfig {
    ServiceConfig::loopback().with_listen_ip(IpAddr::V4(Ipv4Addr::from(ip)))
}

fn rudp(endpoints: &[Endpoint]) -> Vec<Endpoint> {
    endpoints
        .iter()
        .copied()
        .filter(|ep| ep.protocol() == Protocol::Rudp)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_in_two_networks_make_a_public_node() {
    init_tracing();
    let (a, mut ae) = node(at([127, 0, 0, 1])).await;
    let (b, _be) = node(at([127, 0, 1, 2])).await;
    let (c, _ce) = node(at([127, 0, 2, 3])).await;
    assert_eq!(a.reachability().nat_type, NatType::Unknown);

    // One observer network is not enough (identities are free).
    b.connect(&rudp(&a.our_endpoints()), Some(a.peer_id()))
        .await
        .expect("b dials a");
    wait_for(
        &mut ae,
        "b's observation",
        |e| matches!(e, Event::AddressObserved { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    assert_eq!(a.reachability().nat_type, NatType::Unknown);

    // A second network agrees: a sees itself as public.
    c.connect(&rudp(&a.our_endpoints()), Some(a.peer_id()))
        .await
        .expect("c dials a");
    let event = wait_for(&mut ae, "reachability", |e| {
        matches!(e, Event::ReachabilityChanged { reachability } if reachability.nat_type == NatType::Public)
    })
    .await;
    let Event::ReachabilityChanged { reachability } = event else {
        unreachable!()
    };
    let a_rudp = rudp(&a.listening_endpoints());
    assert_eq!(
        reachability.external, a_rudp,
        "our own listening endpoint, confirmed"
    );
    assert_eq!(reachability.observer_networks, 2);
    assert_eq!(a.reachability(), reachability);
    // The confirmed endpoint leads our endpoints; no dial port ever appears.
    assert_eq!(a.our_endpoints().first(), a_rudp.first());
    let listening_ports: Vec<u16> = a
        .listening_endpoints()
        .iter()
        .map(|e| e.addr().port())
        .collect();
    assert!(
        a.our_endpoints()
            .iter()
            .all(|ep| listening_ports.contains(&ep.addr().port()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_assisted_probe_test_finds_the_filtering() {
    init_tracing();
    // q is connected to p only; a never talks to q.
    let (p, _pe) = node(at([127, 0, 1, 2])).await;
    let (q, _qe) = node(at([127, 0, 2, 3])).await;
    p.connect(&q.our_endpoints(), Some(q.peer_id()))
        .await
        .expect("p-q");
    let (a, mut ae) = node(at([127, 0, 0, 1])).await;
    a.connect(&rudp(&p.our_endpoints()), Some(p.peer_id()))
        .await
        .expect("a dials p over rudp");
    // No NAT on loopback: q's probe from a host a never sent to gets through.
    let event = wait_for(&mut ae, "filtering verdict", |e| {
        matches!(e, Event::ReachabilityChanged { reachability } if reachability.filtering != crust::FilteringBehaviour::Unknown)
    })
    .await;
    let Event::ReachabilityChanged { reachability } = event else {
        unreachable!()
    };
    assert_eq!(
        reachability.filtering,
        crust::FilteringBehaviour::EndpointIndependent
    );
    assert!(
        !q.is_connected(a.peer_id()),
        "q probed without a connection"
    );
}
