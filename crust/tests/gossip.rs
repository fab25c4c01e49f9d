//! Gossip (peer exchange, frame kind 4) between real services on loopback: nodes learn
//! peers they were never told about and reach them by `PeerId`; records are checked,
//! capped per source and stay hints; a peer flooding records is cut off.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{SAFETY_NET, init_tracing, node, wait_for};
use crust::wire::FrameKind;
use crust::{
    Endpoint, Event, Events, FloodLimit, GossipConfig, PeerId, Protocol, Service, ServiceConfig,
};
use tokio::sync::mpsc;

/// A Records message, byte by byte as `docs/protocol.md` describes it (the test's own
/// encoder: what a foreign implementation would send).
fn records(list: &[(PeerId, u32, Vec<Endpoint>)]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(2);
    out.put_u8(list.len() as u8);
    for (peer, age, endpoints) in list {
        out.put_slice(peer.as_bytes());
        out.put_u32(*age);
        out.put_u8(endpoints.len() as u8);
        for endpoint in endpoints {
            out.put_u8(match endpoint.protocol() {
                Protocol::Tcp => 1,
                _ => 2,
            });
            match endpoint.addr().ip() {
                IpAddr::V4(v4) => {
                    out.put_u8(4);
                    out.put_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.put_u8(6);
                    out.put_slice(&v6.octets());
                }
            }
            out.put_u16(endpoint.addr().port());
        }
    }
    out.freeze()
}

fn ep(s: &str) -> Endpoint {
    s.parse().expect("endpoint")
}

fn fresh_id(n: u8) -> PeerId {
    let mut bytes = [0xA5; 32];
    bytes[0] = n;
    PeerId::from_bytes(bytes)
}

fn fast_gossip() -> GossipConfig {
    GossipConfig::default().with_interval(Duration::from_millis(200))
}

/// A node that speaks gossip by hand: its own gossip is off, so it may claim kind 4.
async fn hand_gossiper() -> (Service, Events, crust::ControlChannel) {
    let (service, events) =
        node(ServiceConfig::loopback().with_gossip(GossipConfig::disabled())).await;
    let channel = service
        .control_channel(FrameKind::PeerExchange, 64)
        .expect("kind 4 is free without gossip");
    (service, events, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_checked_capped_per_source_and_stay_hints() {
    init_tracing();
    let config = ServiceConfig::loopback()
        .with_gossip(GossipConfig::default().with_max_records_per_source(5));
    let (victim, mut victim_events) = node(config).await;
    let (known, _known_events) = node(ServiceConfig::loopback()).await;
    let (stranger, _stranger_events) = node(ServiceConfig::loopback()).await;
    victim
        .connect(&known.our_endpoints(), Some(known.peer_id()))
        .await
        .expect("connect");
    let confirmed = victim
        .known_address(known.peer_id())
        .expect("confirmed")
        .endpoints;
    let (liar, _liar_events, channel) = hand_gossiper().await;
    liar.connect(&victim.our_endpoints(), Some(victim.peer_id()))
        .await
        .expect("connect");

    // Lies: a known peer at a bogus endpoint; an unknown id at the stranger's address;
    // endpoints we never dial; then more peers than one source may teach.
    let impostor = fresh_id(1);
    let stranger_tcp = stranger
        .our_endpoints()
        .into_iter()
        .find(|e| e.protocol() == Protocol::Tcp)
        .expect("tcp endpoint");
    let mut list = vec![
        (known.peer_id(), 0, vec![ep("tcp://127.0.0.1:9")]),
        (impostor, 0, vec![stranger_tcp]),
        (
            fresh_id(2),
            0,
            vec![ep("tcp://169.254.1.1:80"), ep("tcp://224.0.0.1:80")],
        ),
        (
            fresh_id(3),
            0,
            vec![ep("tcp://0.0.0.0:80"), ep("tcp://127.0.0.1:0")],
        ),
        (fresh_id(4), 86_400, vec![ep("tcp://127.0.0.1:4")]),
    ];
    for n in 10..20 {
        list.push((
            fresh_id(n),
            1,
            vec![ep(&format!("tcp://127.0.0.1:{}", 1000 + u16::from(n)))],
        ));
    }
    channel
        .send(victim.peer_id(), records(&list))
        .await
        .expect("send");
    // (The known peer's own record may teach the victim too, before its dial confirms it.)
    let Event::PeersLearned { peers, .. } = wait_for(
        &mut victim_events,
        "peers learned from the liar",
        |e| matches!(e, Event::PeersLearned { from, .. } if *from == liar.peer_id()),
    )
    .await
    else {
        unreachable!()
    };
    // The cap of 5 counts the known peer and the impostor; three more fit.
    assert_eq!(
        peers,
        vec![impostor, fresh_id(10), fresh_id(11), fresh_id(12)]
    );
    for n in [2, 3, 4, 13, 14, 19] {
        assert!(
            victim.known_address(fresh_id(n)).is_none(),
            "peer {n} must not be learned"
        );
    }
    // The confirmed endpoint still leads; the lie is only a hint after it.
    let now_known = victim
        .known_address(known.peer_id())
        .expect("known")
        .endpoints;
    assert_eq!(now_known[..confirmed.len()], confirmed[..]);
    assert_eq!(now_known.last(), Some(&ep("tcp://127.0.0.1:9")));
    // Whoever told us is remembered as a way to the peer (relay or punch coordinator).
    assert_eq!(
        victim.known_address(fresh_id(10)).expect("hint").relays,
        vec![liar.peer_id()]
    );

    // Dialling the impostor's hint reaches the stranger, whose TLS proves another id.
    let outcome = tokio::time::timeout(SAFETY_NET, victim.connect_peer(impostor))
        .await
        .expect("bounded");
    assert!(
        outcome.is_err(),
        "the impostor cannot be reached: {outcome:?}"
    );
    assert!(!victim.is_connected(impostor));
    assert!(!victim.is_connected(stranger.peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_records_is_cut_off() {
    init_tracing();
    let config = ServiceConfig::loopback()
        .with_gossip(GossipConfig::default().with_message_budget(6.0, 3.0));
    let (victim, mut victim_events) = node(config).await;
    let (flooder, mut flooder_events, channel) = hand_gossiper().await;
    flooder
        .connect(&victim.our_endpoints(), Some(victim.peer_id()))
        .await
        .expect("connect");
    let one = records(&[(fresh_id(1), 0, vec![ep("tcp://127.0.0.1:7")])]);
    for _ in 0..10 {
        if channel.send(victim.peer_id(), one.clone()).await.is_err() {
            break; // already cut off
        }
    }
    let event = wait_for(&mut victim_events, "flood detected", |e| {
        matches!(e, Event::FloodDetected { .. })
    })
    .await;
    assert!(matches!(
        event,
        Event::FloodDetected { peer, limit: FloodLimit::PeerRecords, banned: true } if peer == flooder.peer_id()
    ));
    assert!(victim.is_banned(flooder.peer_id()));
    wait_for(
        &mut flooder_events,
        "lost the victim",
        |e| matches!(e, Event::LostPeer { peer, .. } if *peer == victim.peer_id()),
    )
    .await;
}

/// Drains a node's events: reports once it knows `k` peers, and forwards messages.
fn drain(
    service: Service,
    mut events: Events,
    k: usize,
    converged: mpsc::Sender<PeerId>,
    messages: mpsc::Sender<(PeerId, PeerId)>,
) {
    tokio::spawn(async move {
        let mut reported = false;
        while let Some(event) = events.recv().await {
            if !reported && service.known_peers().len() >= k {
                reported = true;
                let _ = converged.send(service.peer_id()).await;
            }
            if let Event::Message { peer, .. } = event {
                let _ = messages.send((peer, service.peer_id())).await;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_knowing_one_bootstrap_node_learn_and_reach_each_other() {
    init_tracing();
    const N: usize = 20;
    const K: usize = 10;
    let config = ServiceConfig::loopback().with_gossip(fast_gossip());
    let (converged_tx, mut converged) = mpsc::channel(N);
    let (messages_tx, mut messages) = mpsc::channel(N);
    let mut nodes = Vec::new();
    for _ in 0..N {
        let (service, events) = node(config.clone()).await;
        drain(
            service.clone(),
            events,
            K,
            converged_tx.clone(),
            messages_tx.clone(),
        );
        nodes.push(service);
    }
    let hub = nodes[0].clone();
    for leaf in &nodes[1..] {
        leaf.connect(&hub.our_endpoints(), Some(hub.peer_id()))
            .await
            .expect("connect to the bootstrap node");
    }
    let mut done = HashSet::new();
    tokio::time::timeout(SAFETY_NET, async {
        while done.len() < N {
            done.insert(converged.recv().await.expect("drains run"));
        }
    })
    .await
    .expect("every node knows K peers");
    // Leaves reach leaves they were never told about, by id alone.
    for i in 1..6 {
        let (from, to) = (&nodes[i], &nodes[(i * 7) % (N - 1) + 1]);
        if from.peer_id() == to.peer_id() {
            continue;
        }
        from.connect_peer(to.peer_id())
            .await
            .expect("connect by id");
        from.send(to.peer_id(), "hello".into()).await.expect("send");
        let got = tokio::time::timeout(SAFETY_NET, async {
            loop {
                let (sender, receiver) = messages.recv().await.expect("drains run");
                if sender == from.peer_id() && receiver == to.peer_id() {
                    return;
                }
            }
        })
        .await;
        assert!(got.is_ok(), "message {i} delivered");
    }
    for service in &nodes {
        service.shutdown().await;
    }
}
