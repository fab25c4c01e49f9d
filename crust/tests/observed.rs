//! Peers tell each other the address they observe (external-address discovery for NAT
//! traversal).

mod common;

use common::{init_tracing, node, wait_for};
use crust::{Direction, Endpoint, Event, Protocol, ServiceConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_learn_where_the_other_sees_them() {
    init_tracing();
    let (a, mut ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    let b_tcp = *b
        .our_endpoints()
        .iter()
        .find(|e| e.protocol() == Protocol::Tcp)
        .expect("tcp endpoint");
    a.connect(&[b_tcp], Some(b.peer_id()))
        .await
        .expect("connect");

    // b was dialled: a saw it at its listening endpoint, an address worth publishing.
    let event = wait_for(&mut be, "observation at b", |e| {
        matches!(e, Event::AddressObserved { .. })
    })
    .await;
    assert_eq!(
        event,
        Event::AddressObserved {
            peer: a.peer_id(),
            endpoint: b_tcp,
            direction: Direction::Inbound
        }
    );
    assert_eq!(b.observed_endpoints(), vec![(b_tcp, 1)]);

    // a dialled: b saw the connection's source address (with a NAT: the mapped one).
    let a_source = a.peers()[0].local_addr;
    let event = wait_for(&mut ae, "observation at a", |e| {
        matches!(e, Event::AddressObserved { .. })
    })
    .await;
    assert_eq!(
        event,
        Event::AddressObserved {
            peer: b.peer_id(),
            endpoint: Endpoint::tcp(a_source),
            direction: Direction::Outbound
        }
    );
    assert!(
        a.observed_endpoints().is_empty(),
        "a source port is not a reachable endpoint"
    );
}
