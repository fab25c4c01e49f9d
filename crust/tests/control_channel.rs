//! Control channels: plug-ins exchange their own frames with connected peers.

mod common;

use common::{init_tracing, node};
use crust::wire::FrameKind;
use crust::{Error, GossipConfig, ServiceConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_exchange_control_frames_both_ways() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, _be) = node(ServiceConfig::loopback()).await;
    let mut a_chan = a
        .control_channel(FrameKind::Unknown(200), 8)
        .expect("claim");
    let mut b_chan = b
        .control_channel(FrameKind::Unknown(200), 8)
        .expect("claim");
    let b_id = a
        .connect(&b.our_endpoints(), Some(b.peer_id()))
        .await
        .expect("connect");
    a_chan.send(b_id, "ping?".into()).await.expect("send");
    let got = tokio::time::timeout(common::SAFETY_NET, b_chan.recv())
        .await
        .expect("bounded")
        .expect("a frame");
    assert_eq!((got.peer, &got.payload[..]), (a.peer_id(), &b"ping?"[..]));
    assert!(
        b_chan
            .try_send(a.peer_id(), "pong!".into())
            .expect("connected")
    );
    let got = tokio::time::timeout(common::SAFETY_NET, a_chan.recv())
        .await
        .expect("bounded")
        .expect("a frame");
    assert_eq!(&got.payload[..], b"pong!");
    assert_eq!(a_chan.connected_peers(), vec![b_id]);
    assert_eq!(a_chan.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_and_taken_kinds_are_refused() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    for reserved in [
        FrameKind::Message,
        FrameKind::Ping,
        FrameKind::Pong,
        FrameKind::ObservedAddress,
        FrameKind::Superseded,
        FrameKind::MessageChunk,
        FrameKind::Unknown(20),
    ] {
        assert!(
            matches!(a.control_channel(reserved, 4), Err(Error::ControlKindUnavailable(k)) if k == reserved),
            "{reserved:?} must be refused"
        );
    }
    // The built-in gossip owns its kind while it runs.
    assert!(matches!(
        a.control_channel(FrameKind::PeerExchange, 4),
        Err(Error::ControlKindUnavailable(FrameKind::PeerExchange))
    ));
    // Without it, a plug-in may claim the kind, once at a time.
    let (quiet, _qe) = node(ServiceConfig::loopback().with_gossip(GossipConfig::disabled())).await;
    let gossip = quiet
        .control_channel(FrameKind::PeerExchange, 4)
        .expect("free");
    assert!(matches!(
        quiet.control_channel(FrameKind::PeerExchange, 4),
        Err(Error::ControlKindUnavailable(_))
    ));
    // Dropping a channel frees its kind.
    drop(gossip);
    quiet
        .control_channel(FrameKind::PeerExchange, 4)
        .expect("free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_drops_and_counts_but_messages_still_flow() {
    init_tracing();
    let (a, _ae) = node(ServiceConfig::loopback()).await;
    let (b, mut be) = node(ServiceConfig::loopback()).await;
    let a_chan = a.control_channel(FrameKind::Unknown(99), 1).expect("claim");
    let b_chan = b.control_channel(FrameKind::Unknown(99), 1).expect("claim");
    let b_id = a
        .connect(&b.our_endpoints(), Some(b.peer_id()))
        .await
        .expect("connect");
    for i in 0..5u8 {
        a_chan.send(b_id, vec![i].into()).await.expect("send");
    }
    // Oversized frames are refused before they leave.
    assert!(matches!(
        a_chan
            .send(b_id, vec![0; crust::MAX_CONTROL_PAYLOAD + 1].into())
            .await,
        Err(Error::Core(_))
    ));
    a.send(b_id, "after the control frames".into())
        .await
        .expect("send");
    common::wait_for(&mut be, "the message", |e| {
        matches!(e, crust::Event::Message { payload, .. } if &payload[..] == b"after the control frames")
    })
    .await;
    // Frames travel in order, so all five arrived before the message: one was queued,
    // four dropped and counted; delivery of messages never waited on the plug-in.
    assert_eq!(b_chan.dropped(), 4);
}

/// A control frame sent after a 16 MiB message reaches the peer before the message ends
/// (the control lane overtakes the message at a chunk boundary). The receiving side is a
/// raw transport connection, so the order of frames on the wire is what it sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_message_does_not_delay_a_control_frame() {
    use crust_core::Transport;
    init_tracing();
    let (alice, _ae) = node(ServiceConfig::loopback().with_rudp(false)).await;
    let bob_identity = crust::Identity::generate().expect("identity");
    let bob = crust_tcp::TcpTransport::new(bob_identity.clone(), crust_tcp::TcpConfig::default())
        .expect("transport");
    let mut listener = bob
        .listen("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let bob_endpoint = listener.local_endpoint();
    let channel = alice
        .control_channel(FrameKind::Unknown(77), 4)
        .expect("claim");
    let targets = [bob_endpoint];
    let (connected, accepted) = tokio::join!(
        alice.connect(&targets, Some(bob_identity.peer_id())),
        listener.accept()
    );
    let bob_id = connected.expect("connect");
    let (_bob_sender, mut bob_receiver) = accepted.expect("accept").split();

    let big = bytes::Bytes::from(vec![7u8; 16 * 1024 * 1024]);
    alice.send(bob_id, big.clone()).await.expect("queue 16 MiB");
    channel
        .send(bob_id, "urgent".into())
        .await
        .expect("control");

    let mut control_seen = false;
    loop {
        let frame = tokio::time::timeout(common::SAFETY_NET, bob_receiver.recv_frame())
            .await
            .expect("bounded")
            .expect("frame");
        match frame.kind {
            FrameKind::Unknown(77) => {
                assert_eq!(&frame.payload[..], b"urgent");
                control_seen = true;
            }
            FrameKind::Message => {
                assert_eq!(frame.payload.len(), big.len());
                break;
            }
            _ => {}
        }
    }
    assert!(
        control_seen,
        "the control frame arrived only after the 16 MiB message"
    );
}
