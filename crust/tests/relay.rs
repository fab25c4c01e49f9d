//! Relayed connections (issue #11) on loopback: A reaches B only through R (A knows no
//! endpoint of B and does not punch), with end-to-end TLS inside the circuit, R's limits,
//! and the circuit released when the connection ends.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{SAFETY_NET, init_tracing, node, wait_for};
use crust::{
    ConnectionPath, Error, Event, GossipConfig, RelayConfig, RelayFailure, Service, ServiceConfig,
};

/// A node that reaches others only by relay (no hole punching).
fn relaying_only() -> ServiceConfig {
    // No gossip: it would teach the ends each other's loopback endpoints (a direct path).
    ServiceConfig::loopback()
        .with_hole_punching(false)
        .with_gossip(GossipConfig::disabled())
}

/// Connects `from` to `to` and waits until `to` has registered its side too (the relay
/// must know both ends before it can join them).
async fn connect(from: &Service, to: &Service) {
    from.connect(&to.our_endpoints(), Some(to.peer_id()))
        .await
        .expect("direct connect");
    // The dialler's handshake ends before the listener's: a relay can only join peers it
    // has registered.
    eventually("the listener registers the dialler", || {
        to.is_connected(from.peer_id())
    })
    .await;
}

/// Waits (bounded) until `f` holds; the registry and the circuit table change in tasks.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SAFETY_NET;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_is_a_connection_like_any_other() {
    init_tracing();
    let (r, _re) = node(ServiceConfig::loopback()).await;
    let (a, mut ae) = node(relaying_only()).await;
    let (b, mut be) = node(relaying_only()).await;
    connect(&a, &r).await;
    connect(&b, &r).await;
    // A knows no endpoint of B: only R can bring them together.
    let peer = a.connect_peer(b.peer_id()).await.expect("relayed connect");
    assert_eq!(peer, b.peer_id());
    let info = a.peer_info(b.peer_id()).expect("connected").connection;
    assert_eq!(info.path, ConnectionPath::Relayed { via: r.peer_id() });
    let event = wait_for(
        &mut be,
        "B sees A",
        |e| matches!(e, Event::NewPeer { peer, .. } if *peer == a.peer_id()),
    )
    .await;
    assert!(
        matches!(event, Event::NewPeer { path: ConnectionPath::Relayed { via }, .. } if via == r.peer_id()),
        "{event:?}"
    );
    assert_eq!(r.relayed_circuits(), 1);

    // Messages both ways, in order, small and large (chunked, several windows).
    let big = Bytes::from(
        (0..3 * 1024 * 1024u32)
            .map(|i| i as u8)
            .collect::<Vec<u8>>(),
    );
    for i in 0..100u32 {
        a.send(b.peer_id(), Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("send");
    }
    a.send(b.peer_id(), big.clone()).await.expect("send big");
    for i in 0..100u32 {
        let Event::Message { payload, .. } =
            wait_for(&mut be, "message", |e| matches!(e, Event::Message { .. })).await
        else {
            unreachable!()
        };
        assert_eq!(&payload[..], &i.to_be_bytes());
    }
    let Event::Message { payload, .. } = wait_for(&mut be, "big message", |e| {
        matches!(e, Event::Message { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(payload, big);
    b.send(a.peer_id(), Bytes::from_static(b"back"))
        .await
        .expect("send back");
    let Event::Message { payload, .. } =
        wait_for(&mut ae, "reply", |e| matches!(e, Event::Message { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(&payload[..], b"back");
    let rtt = a.ping(b.peer_id()).await.expect("ping through the relay");
    assert!(rtt < SAFETY_NET);

    // Ending the connection releases the circuit.
    assert!(a.disconnect(b.peer_id()).await);
    wait_for(
        &mut be,
        "B loses A",
        |e| matches!(e, Event::LostPeer { peer, .. } if *peer == a.peer_id()),
    )
    .await;
    eventually("circuit released", || r.relayed_circuits() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_beyond_its_limits_with_a_typed_reason() {
    init_tracing();
    let limited = RelayConfig::default().with_limits(1, 1, 1 << 30, Duration::from_secs(3600));
    let (r, _re) = node(ServiceConfig::loopback().with_relay(limited)).await;
    let (a, _ae) = node(relaying_only()).await;
    let (b, _be) = node(relaying_only()).await;
    let (c, _ce) = node(relaying_only()).await;
    for n in [&a, &b, &c] {
        connect(n, &r).await;
    }
    a.connect_peer(b.peer_id()).await.expect("first circuit");
    let err = c
        .connect_peer(b.peer_id())
        .await
        .expect_err("over the limit");
    match err {
        Error::RelayFailed {
            relay: RelayFailure::Refused { by, reason },
            punch: None,
        } => {
            assert_eq!(by, r.peer_id());
            assert_eq!(reason, "too_many_circuits");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.relayed_circuits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_opts_out_relays_nothing() {
    init_tracing();
    let (r, _re) =
        node(ServiceConfig::loopback().with_relay(RelayConfig::default().with_serve(false))).await;
    let (a, _ae) = node(relaying_only()).await;
    let (b, _be) = node(relaying_only()).await;
    connect(&a, &r).await;
    connect(&b, &r).await;
    let err = a.connect_peer(b.peer_id()).await.expect_err("no relay");
    assert!(
        matches!(
            err,
            Error::RelayFailed {
                relay: RelayFailure::NoRelay(peer),
                ..
            } if peer == b.peer_id()
        ),
        "{err:?}"
    );
    assert_eq!(r.relayed_circuits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_over_its_byte_limit_is_closed_and_both_ends_are_told() {
    init_tracing();
    let limited = RelayConfig::default().with_limits(8, 8, 1 << 20, Duration::from_secs(3600));
    let (r, _re) = node(ServiceConfig::loopback().with_relay(limited)).await;
    let (a, mut ae) = node(relaying_only()).await;
    let (b, mut be) = node(relaying_only()).await;
    connect(&a, &r).await;
    connect(&b, &r).await;
    a.connect_peer(b.peer_id()).await.expect("relayed");
    // 2 MiB through a circuit allowed 1 MiB.
    let _ = a.send(b.peer_id(), Bytes::from(vec![7u8; 2 << 20])).await;
    wait_for(
        &mut ae,
        "A loses B",
        |e| matches!(e, Event::LostPeer { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    wait_for(
        &mut be,
        "B loses A",
        |e| matches!(e, Event::LostPeer { peer, .. } if *peer == a.peer_id()),
    )
    .await;
    assert_eq!(r.relayed_circuits(), 0);
    // The links to the relay are unharmed.
    assert!(a.is_connected(r.peer_id()) && b.is_connected(r.peer_id()));
}

/// Issue #11: a relayed connection moves to a direct one once A learns where B is, with
/// every message in both directions delivered once and in order across the switch, and
/// the relay's circuit released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_upgrades_to_a_direct_one_without_losing_a_message() {
    init_tracing();
    let (r, _re) = node(ServiceConfig::loopback()).await;
    let (a, mut ae) = node(relaying_only()).await;
    let (b, mut be) = node(relaying_only()).await;
    connect(&a, &r).await;
    connect(&b, &r).await;
    a.connect_peer(b.peer_id()).await.expect("relayed connect");
    assert_eq!(
        a.peer_info(b.peer_id()).expect("connected").connection.path,
        ConnectionPath::Relayed { via: r.peer_id() }
    );
    eventually("B registered A", || b.is_connected(a.peer_id())).await;
    // Both send numbered messages the whole time; meanwhile A learns B's endpoints (as
    // gossip or a bootstrap cache would tell it), and its next upgrade attempt dials them.
    const COUNT: u32 = 3000;
    let sender = |from: Service, to: crust::PeerId| {
        tokio::spawn(async move {
            for i in 0..COUNT {
                from.send(to, Bytes::from(i.to_be_bytes().to_vec()))
                    .await
                    .expect("send");
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let a_sends = sender(a.clone(), b.peer_id());
    let b_sends = sender(b.clone(), a.peer_id());
    a.add_address(b.our_addr());
    let (a_upgraded, b_upgraded) = tokio::join!(
        receive_in_order(&mut ae, b.peer_id(), COUNT),
        receive_in_order(&mut be, a.peer_id(), COUNT)
    );
    a_sends.await.expect("a sender");
    b_sends.await.expect("b sender");
    // The upgrade may come after the last message: wait for it where it was not seen.
    if a_upgraded.is_none() {
        wait_for(&mut ae, "A upgraded", |e| {
            matches!(e, Event::ConnectionUpgraded { .. })
        })
        .await;
    }
    if b_upgraded.is_none() {
        wait_for(&mut be, "B upgraded", |e| {
            matches!(e, Event::ConnectionUpgraded { .. })
        })
        .await;
    }
    let info = a
        .peer_info(b.peer_id())
        .expect("still connected")
        .connection;
    assert_eq!(info.path, ConnectionPath::Direct);
    eventually("circuit released", || r.relayed_circuits() == 0).await;
    // And the direct connection carries on.
    a.send(b.peer_id(), Bytes::from_static(b"after"))
        .await
        .expect("send");
    let Event::Message { payload, .. } =
        wait_for(&mut be, "after", |e| matches!(e, Event::Message { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(&payload[..], b"after");
}

/// Takes `count` numbered messages from `from`, checking they come once each and in order;
/// returns the path of a `ConnectionUpgraded` seen meanwhile.
async fn receive_in_order(
    events: &mut crust::Events,
    from: crust::PeerId,
    count: u32,
) -> Option<ConnectionPath> {
    let mut next = 0u32;
    let mut upgraded = None;
    while next < count {
        match wait_for(events, "messages and the upgrade", |e| {
            matches!(e, Event::Message { .. } | Event::ConnectionUpgraded { .. })
        })
        .await
        {
            Event::Message { peer, payload } if peer == from => {
                let got = u32::from_be_bytes(payload[..].try_into().expect("4 bytes"));
                assert_eq!(got, next, "in order, exactly once");
                next += 1;
            }
            Event::ConnectionUpgraded { peer, path, .. } if peer == from => {
                upgraded = Some(path);
            }
            _ => {}
        }
    }
    upgraded
}
