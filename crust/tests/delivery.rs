//! Delivery accounting: a connection that ends reports the messages the peer did not
//! confirm (`Event::MessagesUnconfirmed`, before `LostPeer`), covering exactly what the
//! peer's application did not get; a graceful end reports nothing and delivers everything.
//! Over TCP and over reliable UDP.

mod common;

use common::{SAFETY_NET, init_tracing, node, wait_for};
use crust::{Bytes, Event, Events, LostReason, PeerId, Protocol, Service, ServiceConfig};

/// Message `seq`, `len` bytes: the sequence number then a filler.
fn message(seq: u32, len: usize) -> Bytes {
    let mut out = seq.to_be_bytes().to_vec();
    out.resize(len.max(4), seq as u8);
    Bytes::from(out)
}

fn seq_of(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"))
}

/// `a` connected to `b` over `protocol` only.
async fn pair(protocol: Protocol) -> ((Service, Events), (Service, Events)) {
    init_tracing();
    let (a, a_events) = node(ServiceConfig::loopback()).await;
    let (b, b_events) = node(ServiceConfig::loopback()).await;
    let endpoints: Vec<_> = b
        .our_endpoints()
        .into_iter()
        .filter(|e| e.protocol() == protocol)
        .collect();
    let id = a
        .connect(&endpoints, Some(b.peer_id()))
        .await
        .expect("connect");
    assert_eq!(
        a.peer_info(id).expect("connected").connection.protocol,
        protocol
    );
    ((a, a_events), (b, b_events))
}

/// Every event until the stream ends (call after `shutdown()`).
async fn drain(events: &mut Events) -> Vec<Event> {
    tokio::time::timeout(SAFETY_NET, async {
        let mut out = Vec::new();
        while let Some(event) = events.recv().await {
            out.push(event);
        }
        out
    })
    .await
    .expect("the event stream ends after shutdown")
}

fn unconfirmed(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::MessagesUnconfirmed { count, sent, .. } => Some((*count, *sent)),
            _ => None,
        })
        .collect()
}

/// Sends 500 messages one by one (one of them large enough to be chunked) and 100 in one
/// `send_many`; returns how many.
async fn send_burst(from: &Service, to: PeerId) -> u32 {
    for seq in 0..500u32 {
        let len = if seq == 250 {
            300 * 1024
        } else {
            16 + (seq as usize * 37) % 2000
        };
        from.send(to, message(seq, len)).await.expect("send");
    }
    let batch: Vec<Bytes> = (500..600u32).map(|seq| message(seq, 64)).collect();
    from.send_many(to, &batch).await.expect("send_many");
    600
}

/// Messages from `from` in order until its `LostPeer`; returns how many.
async fn receive_until_lost(events: &mut Events, from: PeerId) -> u32 {
    let mut next = 0;
    loop {
        match wait_for(events, "a message or the loss", |_| true).await {
            Event::Message { peer, payload } if peer == from => {
                assert_eq!(seq_of(&payload), next, "in order, exactly once");
                next += 1;
            }
            Event::LostPeer { peer, .. } if peer == from => return next,
            _ => {}
        }
    }
}

async fn graceful_disconnect_delivers_everything_and_reports_nothing(protocol: Protocol) {
    let ((a, mut a_events), (b, mut b_events)) = pair(protocol).await;
    let sent = send_burst(&a, b.peer_id()).await;
    assert!(a.disconnect(b.peer_id()).await);
    assert_eq!(receive_until_lost(&mut b_events, a.peer_id()).await, sent);
    // Shutdown waits for the graceful close to end, so every report is in the stream.
    a.shutdown().await;
    let a_seen = drain(&mut a_events).await;
    assert_eq!(unconfirmed(&a_seen), vec![], "{a_seen:?}");
    assert!(a_seen.iter().any(|e| matches!(
        e,
        Event::LostPeer {
            reason: LostReason::Disconnected,
            ..
        }
    )));
    b.shutdown().await;
    assert_eq!(unconfirmed(&drain(&mut b_events).await), vec![]);
}

async fn graceful_shutdown_delivers_everything_and_reports_nothing(protocol: Protocol) {
    let ((a, mut a_events), (b, mut b_events)) = pair(protocol).await;
    let sent = send_burst(&a, b.peer_id()).await;
    a.shutdown().await;
    assert_eq!(receive_until_lost(&mut b_events, a.peer_id()).await, sent);
    let a_seen = drain(&mut a_events).await;
    assert_eq!(unconfirmed(&a_seen), vec![], "{a_seen:?}");
    b.shutdown().await;
    assert_eq!(unconfirmed(&drain(&mut b_events).await), vec![]);
}

/// The receiver aborts the connection (a ban) in the middle of a stream: the sender's
/// report, before its `LostPeer`, covers at least everything the receiver's application
/// did not get and never what was confirmed before.
async fn an_aborted_stream_reports_the_undelivered_tail(protocol: Protocol) {
    const CONFIRMED: u32 = 300;
    const MORE: u32 = 3000;
    const READ_BEFORE_ABORT: u32 = 500;
    let ((a, mut a_events), (b, mut b_events)) = pair(protocol).await;
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    for seq in 0..CONFIRMED {
        a.send(b_id, message(seq, 100)).await.expect("send");
    }
    let mut received = 0;
    while received < CONFIRMED {
        if let Event::Message { payload, .. } = wait_for(&mut b_events, "the first messages", |e| {
            matches!(e, Event::Message { .. })
        })
        .await
        {
            assert_eq!(seq_of(&payload), received);
            received += 1;
        }
    }
    // More than 256 messages handed over are acknowledged at once, on the control lane,
    // before the pong that answers this ping: at least 256 are confirmed now.
    a.ping(b_id).await.expect("ping");
    // A stream the receiver cuts off after reading part of it.
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut ok = CONFIRMED;
            for seq in CONFIRMED..CONFIRMED + MORE {
                if a.send(b_id, message(seq, 1000)).await.is_err() {
                    break;
                }
                ok += 1;
            }
            ok
        })
    };
    while received < CONFIRMED + READ_BEFORE_ABORT {
        if let Event::Message { payload, .. } = wait_for(&mut b_events, "more messages", |e| {
            matches!(e, Event::Message { .. })
        })
        .await
        {
            assert_eq!(seq_of(&payload), received);
            received += 1;
        }
    }
    b.ban([a_id]).await;
    // Everything b's Crust handed over before the abort reaches its application.
    b.shutdown().await;
    for event in drain(&mut b_events).await {
        if let Event::Message { payload, .. } = event {
            assert_eq!(seq_of(&payload), received, "a prefix, in order");
            received += 1;
        }
    }
    let sent = u64::from(sender.await.expect("sender task"));
    let (count, reported_sent) = match wait_for(&mut a_events, "the report or the loss", |e| {
        matches!(
            e,
            Event::MessagesUnconfirmed { .. } | Event::LostPeer { .. }
        )
    })
    .await
    {
        Event::MessagesUnconfirmed { peer, count, sent } => {
            assert_eq!(peer, b_id);
            (count, sent)
        }
        other => panic!("the report comes before the loss: {other:?}"),
    };
    // Every message `send` accepted is counted; a send in flight when the connection
    // ended may be counted too (over-reporting is safe, under-reporting is not).
    assert!(
        (sent..=sent + 1).contains(&reported_sent),
        "{reported_sent} counted, {sent} accepted"
    );
    let not_received = sent - u64::from(received);
    assert!(
        count >= not_received,
        "{count} reported, {not_received} not received (sent {sent}, received {received})"
    );
    assert!(
        count <= sent - 256,
        "{count} reported, but at least 256 of {sent} were confirmed"
    );
    wait_for(&mut a_events, "the loss", |e| {
        matches!(e, Event::LostPeer { .. })
    })
    .await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_disconnect_delivers_everything_and_reports_nothing_tcp() {
    graceful_disconnect_delivers_everything_and_reports_nothing(Protocol::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_disconnect_delivers_everything_and_reports_nothing_rudp() {
    graceful_disconnect_delivers_everything_and_reports_nothing(Protocol::Rudp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_everything_and_reports_nothing_tcp() {
    graceful_shutdown_delivers_everything_and_reports_nothing(Protocol::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_everything_and_reports_nothing_rudp() {
    graceful_shutdown_delivers_everything_and_reports_nothing(Protocol::Rudp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_stream_reports_the_undelivered_tail_tcp() {
    an_aborted_stream_reports_the_undelivered_tail(Protocol::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_stream_reports_the_undelivered_tail_rudp() {
    an_aborted_stream_reports_the_undelivered_tail(Protocol::Rudp).await;
}
