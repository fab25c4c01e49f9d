//! Pings: every connection measures its round-trip time, and a peer that vanishes is
//! reported lost within the ping timeout (on reliable UDP too, whose own idle timeout is
//! 30 s), never leaving sends to report success into the void.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, node, wait_for};
use crust::{Endpoint, Event, LostReason, Protocol, ServiceConfig};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// A loopback UDP relay between a client and `target`: what the client sends to `listen`
/// goes to `target` from a second socket, and back. Cancelling `cut` drops every datagram
/// from then on, as when a peer crashes or its network goes away.
async fn udp_relay(target: SocketAddr, cut: CancellationToken) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let listen = front.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut from_client = vec![0u8; 65536];
        let mut from_target = vec![0u8; 65536];
        loop {
            tokio::select! {
                _ = cut.cancelled() => return,
                got = front.recv_from(&mut from_client) => {
                    let Ok((n, from)) = got else { return };
                    client = Some(from);
                    let _ = back.send_to(&from_client[..n], target).await;
                }
                got = back.recv_from(&mut from_target) => {
                    let Ok((n, _)) = got else { return };
                    if let Some(client) = client {
                        let _ = front.send_to(&from_target[..n], client).await;
                    }
                }
            }
        }
    });
    listen
}

fn quick_pings() -> ServiceConfig {
    ServiceConfig::loopback().with_ping(Duration::from_millis(100), Duration::from_millis(600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_rudp_peer_is_lost_by_ping_timeout() {
    init_tracing();
    let (a, mut ae) = node(quick_pings()).await;
    let (b, _be) = node(quick_pings()).await;
    let b_rudp = b
        .our_endpoints()
        .into_iter()
        .find(|ep| ep.protocol() == Protocol::Rudp)
        .expect("b listens on rudp");
    let cut = CancellationToken::new();
    let relay = udp_relay(b_rudp.addr(), cut.clone()).await;
    let peer = a
        .connect(&[Endpoint::new(Protocol::Rudp, relay)], Some(b.peer_id()))
        .await
        .expect("connect through the relay");
    a.send(peer, "before".into()).await.expect("send");

    // The path dies (no close, no reset: just silence).
    cut.cancel();
    let lost = wait_for(
        &mut ae,
        "b lost",
        |e| matches!(e, Event::LostPeer { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    let Event::LostPeer { reason, .. } = lost else {
        unreachable!()
    };
    assert!(
        matches!(reason, LostReason::PingTimeout { silent_for } if silent_for >= Duration::from_millis(600)),
        "lost by our pings, not by QUIC's 30 s idle timeout: {reason:?}"
    );
    // A send now is an error, not a silent success.
    assert!(matches!(
        a.send(peer, "after".into()).await,
        Err(crust::Error::NotConnected(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_measure_the_round_trip_time() {
    init_tracing();
    let (a, _ae) = node(quick_pings()).await;
    let (b, _be) = node(quick_pings()).await;
    for protocol in [Protocol::Tcp, Protocol::Rudp] {
        let endpoints: Vec<Endpoint> = b
            .our_endpoints()
            .into_iter()
            .filter(|ep| ep.protocol() == protocol)
            .collect();
        let peer = a
            .connect(&endpoints, Some(b.peer_id()))
            .await
            .expect("connect");
        let rtt = tokio::time::timeout(common::SAFETY_NET, a.ping(peer))
            .await
            .expect("bounded")
            .expect("pong");
        assert!(rtt > Duration::ZERO);
        let info = a.peer_info(peer).expect("connected");
        assert_eq!(info.connection.protocol, protocol);
        a.disconnect(peer).await;
        assert!(!a.is_connected(peer));
        assert!(matches!(
            a.ping(peer).await,
            Err(crust::Error::NotConnected(_))
        ));
    }
}

/// A slow application is not a dead peer: while the receiving application does not take
/// its events, its reader stops reading (backpressure) and so answers no pings; it pings
/// the sender instead, so the sender does not give up on it after `ping_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_application_is_slow_is_not_taken_for_dead() {
    init_tracing();
    let fast_pings = |config: ServiceConfig| {
        config
            .with_ping(Duration::from_millis(50), Duration::from_millis(300))
            .with_event_queue_len(8)
    };
    let (receiver, mut re) = node(fast_pings(ServiceConfig::loopback())).await;
    let (sender, mut se) = node(fast_pings(ServiceConfig::loopback())).await;
    let peer = sender
        .connect(&receiver.our_endpoints(), Some(receiver.peer_id()))
        .await
        .expect("connect");
    // Enough to fill the queue and the socket buffers, so the sender's writes stall.
    const COUNT: u32 = 200;
    let payload = bytes::Bytes::from(vec![0u8; 256 * 1024]);
    let sending = {
        let sender = sender.clone();
        tokio::spawn(async move {
            for _ in 0..COUNT {
                sender.send(peer, payload.clone()).await?;
            }
            Ok::<(), crust::Error>(())
        })
    };
    // The receiving application takes nothing for ten ping timeouts (a slow
    // application, simulated: this sleep is the behaviour under test, not a wait for it).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut messages = 0;
    while messages < COUNT {
        if let Event::Message { .. } =
            wait_for(&mut re, "messages", |e| matches!(e, Event::Message { .. })).await
        {
            messages += 1;
        }
    }
    sending
        .await
        .expect("sender task")
        .expect("every send accepted");
    assert!(
        sender.is_connected(receiver.peer_id()),
        "the sender kept the peer"
    );
    // Nothing was lost on the way: no LostPeer at the sender.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(10), se.recv()).await {
        assert!(!matches!(event, Event::LostPeer { .. }), "{event:?}");
    }
}
