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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_one_vote_per_connection_and_loses_it_when_it_goes() {
    use crust_core::wire::{FrameKind, encode_observed_address};
    use crust_core::{Identity, Transport};
    use crust_tcp::{TcpConfig, TcpTransport};

    init_tracing();
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    let b_tcp = *b
        .our_endpoints()
        .iter()
        .find(|e| e.protocol() == Protocol::Tcp)
        .expect("tcp endpoint");
    // A liar dials b and reports sixteen made-up addresses, then a message.
    let liar = TcpTransport::new(Identity::generate().expect("id"), TcpConfig::default())
        .expect("transport");
    let conn = liar
        .dial(b_tcp.addr(), Some(b.peer_id()))
        .await
        .expect("dial");
    let sender = conn.sender();
    for i in 0..16u16 {
        let fake = std::net::SocketAddr::from(([198, 51, 100, 1], 1000 + i));
        sender
            .send_frame(FrameKind::ObservedAddress, encode_observed_address(fake))
            .await
            .expect("send");
    }
    sender.send("done".into()).await.expect("send");
    // Frames arrive in order: once "done" is here, every observation was handled.
    let mut observations = 0;
    while let Event::AddressObserved { .. } = wait_for(&mut be, "events", |e| {
        matches!(e, Event::AddressObserved { .. } | Event::Message { .. })
    })
    .await
    {
        observations += 1;
    }
    assert_eq!(
        observations, 1,
        "only the first observation of a connection counts"
    );
    let first = Endpoint::tcp(std::net::SocketAddr::from(([198, 51, 100, 1], 1000)));
    assert_eq!(b.observed_endpoints(), vec![(first, 1)]);

    // The liar goes; so does its vote.
    drop((conn, sender));
    wait_for(&mut be, "liar lost", |e| {
        matches!(e, Event::LostPeer { .. })
    })
    .await;
    assert!(b.observed_endpoints().is_empty());
}

#[test]
fn a_huge_event_queue_is_clamped_not_a_panic() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let config = ServiceConfig::loopback().with_event_queue_len(usize::MAX);
        let (service, _events) = crust::Service::new(config).expect("service");
        service.start_listening().await.expect("listen");
    });
}
