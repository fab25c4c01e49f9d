//! Connect by `PeerId` through a hole punch introduced by a common peer, on loopback (the
//! real NAT cases run in `cargo xtask natlab`): the coordination, the roles, the path the
//! connection reports, and the typed failures.

mod common;

use std::time::Instant;

use common::{SAFETY_NET, init_tracing, node, wait_for};
use crust::{
    ConnectionPath, Direction, Error, Event, GossipConfig, PunchFailure, RelayConfig, RelayFailure,
    Service, ServiceConfig,
};

fn config() -> ServiceConfig {
    // Observed endpoints are not needed: loopback listeners are the candidates. No gossip:
    // it would teach each node the others' loopback endpoints, and these tests are about
    // peers known only by id. No relays: these tests are about what punching does alone
    // (a relay would connect where they expect a punch's failure).
    ServiceConfig::loopback()
        .with_gossip(GossipConfig::disabled())
        .with_relay(RelayConfig::disabled())
}

/// Connects each node to `r` and waits until `r` has registered them all (a coordinator
/// can only introduce peers it knows).
async fn introduce(r: &Service, r_events: &mut crust::Events, nodes: &[&Service]) {
    for n in nodes {
        n.connect(&r.our_endpoints(), Some(r.peer_id()))
            .await
            .expect("connect to r");
        let id = n.peer_id();
        wait_for(
            r_events,
            "r: new peer",
            |e| matches!(e, Event::NewPeer { peer, .. } if *peer == id),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_of_a_common_peer_connect_by_id_through_a_punch() {
    init_tracing();
    let (r, mut re) = node(config()).await;
    let (a, mut ae) = node(config()).await;
    let (b, mut be) = node(config()).await;
    introduce(&r, &mut re, &[&a, &b]).await;
    // `a` knows nothing about where `b` is: only a punch introduced by `r` can help.
    assert!(a.known_address(b.peer_id()).is_none());
    let started = Instant::now();
    let peer = tokio::time::timeout(SAFETY_NET, a.connect_peer(b.peer_id()))
        .await
        .expect("safety net")
        .expect("punched");
    assert_eq!(peer, b.peer_id());
    let elapsed = started.elapsed();
    let event = wait_for(
        &mut ae,
        "a: new peer b",
        |e| matches!(e, Event::NewPeer { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    let Event::NewPeer {
        path, direction, ..
    } = event
    else {
        unreachable!()
    };
    assert!(
        matches!(
            path,
            ConnectionPath::PunchedTcp | ConnectionPath::PunchedUdp
        ),
        "got {path:?}"
    );
    assert_eq!(
        direction,
        Direction::Outbound,
        "the initiator is the client"
    );
    let on_b = wait_for(
        &mut be,
        "b: new peer a",
        |e| matches!(e, Event::NewPeer { peer, .. } if *peer == a.peer_id()),
    )
    .await;
    assert!(matches!(
        on_b,
        Event::NewPeer {
            direction: Direction::Inbound,
            ..
        }
    ));
    let info = a.peer_info(b.peer_id()).expect("info");
    assert_eq!(info.connection.path, path);
    a.send(b.peer_id(), "through the hole".into())
        .await
        .expect("send");
    wait_for(
        &mut be,
        "message",
        |e| matches!(e, Event::Message { peer, payload } if *peer == a.peer_id() && payload.as_ref() == b"through the hole"),
    )
    .await;
    tracing::info!(?elapsed, "punched on loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_common_peer_the_failure_says_so() {
    init_tracing();
    let (r, _re) = node(config()).await;
    // With relays on: after the punch, a relay is tried too.
    let (a, _ae) = node(config().with_relay(RelayConfig::default())).await;
    let (b, _be) = node(config()).await;
    a.connect(&r.our_endpoints(), Some(r.peer_id()))
        .await
        .expect("connect to r");
    // `b` is connected to nobody: `r` can neither introduce us nor relay.
    let err = tokio::time::timeout(SAFETY_NET, a.connect_peer(b.peer_id()))
        .await
        .expect("safety net")
        .expect_err("nobody can introduce us");
    // Neither a punch nor a relay: both say so.
    assert!(
        matches!(
            &err,
            Error::RelayFailed {
                relay: RelayFailure::NoRelay(p),
                punch: Some(punch),
            } if *p == b.peer_id() && matches!(**punch, PunchFailure::NoCoordinator(p) if p == b.peer_id())
        ),
        "got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_punching_and_relays_off_an_unknown_peer_stays_unknown() {
    init_tracing();
    let (r, mut re) = node(config()).await;
    let (a, _ae) = node(
        config()
            .with_hole_punching(false)
            .with_relay(RelayConfig::disabled()),
    )
    .await;
    let (b, _be) = node(config()).await;
    introduce(&r, &mut re, &[&a, &b]).await;
    let err = a
        .connect_peer(b.peer_id())
        .await
        .expect_err("no punch, no relay");
    assert!(
        matches!(err, Error::UnknownPeer(p) if p == b.peer_id()),
        "got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_asking_at_once_still_connects_once() {
    init_tracing();
    let (r, mut re) = node(config()).await;
    let (a, mut ae) = node(config()).await;
    let (b, mut be) = node(config()).await;
    introduce(&r, &mut re, &[&a, &b]).await;
    let (ab, ba) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(a.connect_peer(b.peer_id()), b.connect_peer(a.peer_id()))
    })
    .await
    .expect("safety net");
    // The lower id's attempt goes on; the other is declined as crossed.
    assert!(ab.is_ok() || ba.is_ok(), "a: {ab:?}, b: {ba:?}");
    wait_for(
        &mut ae,
        "a: new peer b",
        |e| matches!(e, Event::NewPeer { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    wait_for(
        &mut be,
        "b: new peer a",
        |e| matches!(e, Event::NewPeer { peer, .. } if *peer == a.peer_id()),
    )
    .await;
}
