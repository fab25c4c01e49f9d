//! Hole punching over reliable UDP, on loopback: probes from the listening socket, the
//! peer's address adopted from its probes, one QUIC connection from the client, the
//! server's copy diverted from its accept loop.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{DEADLINE, init_tracing, loopback, transport};
use crust_core::probe::{ProbeDatagram, decode_probe};
use crust_core::{
    Connection, ConnectionPath, Direction, Error, Identity, Listener, PunchPlan, PunchRole,
    PunchStrategy, SecureStream, Transport,
};
use crust_rudp::{RudpConfig, RudpTransport};

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("safety net")
}

async fn listening() -> (RudpTransport, Box<dyn Listener>, SocketAddr) {
    let t = transport(RudpConfig::default());
    let listener = t.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    (t, listener, addr)
}

/// A loopback UDP port nobody listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind(loopback()).expect("bind");
    socket.local_addr().expect("addr")
}

fn plan(
    peer: &RudpTransport,
    candidates: Vec<SocketAddr>,
    role: PunchRole,
    nonces: (u64, u64),
) -> PunchPlan {
    PunchPlan::new(
        peer.local_peer_id(),
        candidates,
        role,
        PunchStrategy::Direct,
        nonces,
    )
    .with_timeout(Duration::from_secs(20))
    .with_interval(Duration::from_millis(20))
}

/// Messages flow both ways over the punched pair, after both punches returned.
async fn exchange(a: SecureStream, b: SecureStream, a_t: &RudpTransport, b_t: &RudpTransport) {
    let mut a = Connection::new(a, a_t.connection_config());
    let mut b = Connection::new(b, b_t.connection_config());
    a.send(Bytes::from_static(b"client to server"))
        .await
        .expect("send a");
    b.send(Bytes::from_static(b"server to client"))
        .await
        .expect("send b");
    assert_eq!(
        &within(b.recv()).await.expect("recv b")[..],
        b"client to server"
    );
    assert_eq!(
        &within(a.recv()).await.expect("recv a")[..],
        b"server to client"
    );
}

fn expect_punched(stream: &SecureStream, peer: &RudpTransport, direction: Direction) {
    assert_eq!(stream.info.peer_id, peer.local_peer_id());
    assert_eq!(stream.info.path, ConnectionPath::PunchedUdp);
    assert_eq!(stream.info.direction, direction);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_punch_opens_one_connection_both_ways() {
    init_tracing();
    let (a, _a_listener, a_addr) = listening().await;
    let (b, mut b_listener, b_addr) = listening().await;
    let (ra, rb) = within(async {
        tokio::join!(
            a.punch_stream(plan(&b, vec![b_addr], PunchRole::Client, (11, 22))),
            b.punch_stream(plan(&a, vec![a_addr], PunchRole::Server, (22, 11))),
        )
    })
    .await;
    let (sa, sb) = (ra.expect("client punch"), rb.expect("server punch"));
    expect_punched(&sa, &b, Direction::Outbound);
    expect_punched(&sb, &a, Direction::Inbound);
    assert_eq!(sa.info.remote_addr, b_addr);
    assert_eq!(
        sa.info.local_addr, a_addr,
        "dialled from the listening socket"
    );
    assert_eq!(sb.info.remote_addr, a_addr);
    // The punched connection went to the punch, not to the listener's queue (it would be
    // there already: diverting and queueing are one decision).
    assert!(
        tokio::time::timeout(Duration::ZERO, b_listener.accept())
            .await
            .is_err(),
        "the listener saw the punched connection"
    );
    exchange(sa, sb, &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_address_is_adopted_from_its_probes() {
    init_tracing();
    let (a, _a_listener, a_addr) = listening().await;
    let (b, _b_listener, b_addr) = listening().await;
    // The client does not know the server's address at all (its only candidate is a
    // closed port); the server tries a wrong address first.
    let (ra, rb) = within(async {
        tokio::join!(
            a.punch_stream(plan(&b, vec![closed_port()], PunchRole::Client, (1, 2))),
            b.punch_stream(plan(
                &a,
                vec![closed_port(), a_addr],
                PunchRole::Server,
                (2, 1)
            )),
        )
    })
    .await;
    let (sa, sb) = (ra.expect("client punch"), rb.expect("server punch"));
    expect_punched(&sa, &b, Direction::Outbound);
    expect_punched(&sb, &a, Direction::Inbound);
    assert_eq!(sa.info.remote_addr, b_addr, "the probe's source, adopted");
    exchange(sa, sb, &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_is_never_connected() {
    init_tracing();
    let (a, _a_listener, a_addr) = listening().await;
    let (b, mut b_listener, b_addr) = listening().await;
    // A expects a third identity; B knows the nonces and answers, but is not that peer.
    let third = Identity::generate().expect("identity").peer_id();
    let mut a_plan = plan(&b, vec![b_addr], PunchRole::Client, (5, 6));
    a_plan.peer = third;
    let short = Duration::from_secs(3);
    let (ra, rb) = within(async {
        tokio::join!(
            a.punch_stream(a_plan.with_timeout(short)),
            b.punch_stream(plan(&a, vec![a_addr], PunchRole::Server, (6, 5)).with_timeout(short)),
        )
    })
    .await;
    match ra {
        Err(Error::PeerIdMismatch { expected, actual }) => {
            assert_eq!(expected, third);
            assert_eq!(actual, b.local_peer_id());
        }
        Err(Error::PunchTimeout(_)) => {}
        other => panic!("the client must not connect to an impostor: {other:?}"),
    }
    assert!(
        matches!(rb, Err(Error::PunchTimeout(_))),
        "the server got no connection: {rb:?}"
    );
    assert!(
        tokio::time::timeout(Duration::ZERO, b_listener.accept())
            .await
            .is_err(),
        "nor did its listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_with_another_nonce_open_nothing() {
    init_tracing();
    let (a, _a_listener, a_addr) = listening().await;
    let (b, mut b_listener, b_addr) = listening().await;
    let mut a_probes = a.take_probe_receiver().expect("probe receiver");
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    // B sends nonce 99; A waits for nonce 2.
    let (ra, rb) = within(async {
        tokio::join!(
            a.punch_stream(plan(&b, vec![b_addr], PunchRole::Client, (1, 2)).with_timeout(timeout)),
            b.punch_stream(
                plan(&a, vec![a_addr], PunchRole::Server, (99, 1)).with_timeout(timeout)
            ),
        )
    })
    .await;
    assert!(
        matches!(ra, Err(Error::PunchTimeout(t)) if t == timeout),
        "{ra:?}"
    );
    assert!(matches!(rb, Err(Error::PunchTimeout(_))), "{rb:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A's stray probes went where they always go: the general probe receiver.
    let probe = within(a_probes.recv()).await.expect("a probe");
    assert_eq!((probe.from, probe.nonce), (b_addr, 99));

    // The punches are over: their nonces and peers are nobody's any more. A probe with the
    // nonce A waited for reaches the general receiver...
    let stranger = tokio::net::UdpSocket::bind(loopback()).await.expect("bind");
    stranger
        .send_to(&crust_core::probe::encode_probe(2), a_addr)
        .await
        .expect("send");
    let stranger_addr = stranger.local_addr().expect("addr");
    loop {
        let probe = within(a_probes.recv()).await.expect("a probe");
        if probe.from == stranger_addr {
            assert_eq!(probe.nonce, 2);
            break;
        }
    }
    // ...and A's ordinary dial reaches B's listener, not a finished punch.
    let (dialled, accepted) = within(async {
        tokio::join!(a.dial(b_addr, Some(b.local_peer_id())), b_listener.accept())
    })
    .await;
    dialled.expect("dial");
    let accepted = accepted.expect("accept");
    assert_eq!(accepted.peer_id(), a.local_peer_id());
    assert_eq!(accepted.info().path, ConnectionPath::Direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punching_needs_a_listener_and_a_consistent_plan() {
    init_tracing();
    let a = transport(RudpConfig::default());
    let b = transport(RudpConfig::default());
    let p = || plan(&b, vec![closed_port()], PunchRole::Client, (1, 2));
    let result = a.punch_stream(p()).await;
    assert!(matches!(result, Err(Error::Unsupported(_))), "{result:?}");

    let listener = a.listen(loopback()).await.expect("listen");
    drop(listener);
    let result = a.punch_stream(p()).await;
    assert!(
        matches!(result, Err(Error::Unsupported(_))),
        "no listener any more: {result:?}"
    );

    let _listener = a.listen(loopback()).await.expect("listen again");
    let mut server_opens = p();
    server_opens.role = PunchRole::Server;
    server_opens.strategy = PunchStrategy::BirthdayOpen { sockets: 4 };
    let result = a.punch_stream(server_opens).await;
    assert!(matches!(result, Err(Error::Unsupported(_))), "{result:?}");
}

/// Reads the probes carrying `nonce` that reached `socket` until none came for a while
/// (loopback delivery can lag behind the send under load: a late probe still counts).
fn drain(socket: &std::net::UdpSocket, nonce: u64) -> Vec<SocketAddr> {
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    let mut sources = Vec::new();
    while let Ok((len, from)) = tokio::task::block_in_place(|| socket.recv_from(&mut buf)) {
        if decode_probe(&buf[..len]) == ProbeDatagram::Probe(nonce) {
            sources.push(from);
        }
    }
    sources
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_stay_within_the_budget_and_the_rate() {
    init_tracing();
    let (a, _a_listener, a_addr) = listening().await;
    let b = transport(RudpConfig::default());
    let sniffer = std::net::UdpSocket::bind(loopback()).expect("bind");
    let target = sniffer.local_addr().expect("addr");
    let fast = Duration::from_millis(1);
    let timeout = Duration::from_millis(500);

    // A budget of 10 packets, though rounds come every millisecond.
    let budget = plan(&b, vec![target], PunchRole::Client, (7, 8))
        .with_interval(fast)
        .with_packet_limits(1000, 10)
        .with_timeout(timeout);
    let result = within(a.punch_stream(budget)).await;
    assert!(matches!(result, Err(Error::PunchTimeout(_))), "{result:?}");
    let sources = drain(&sniffer, 7);
    assert_eq!(sources.len(), 10);
    assert!(
        sources.iter().all(|s| *s == a_addr),
        "sent from the listening socket"
    );

    // 20 packets a second, rounds every millisecond: at most 20 in the half second.
    let rate = plan(&b, vec![target], PunchRole::Client, (9, 10))
        .with_interval(fast)
        .with_packet_limits(20, 10_000)
        .with_timeout(timeout);
    let result = within(a.punch_stream(rate)).await;
    assert!(matches!(result, Err(Error::PunchTimeout(_))), "{result:?}");
    let sent = drain(&sniffer, 9).len();
    assert!((3..=20).contains(&sent), "{sent} probes at 20 per second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn birthday_search_finds_an_opened_socket() {
    init_tracing();
    let (a, _a_listener, a_addr) = listening().await;
    let (b, _b_listener, b_addr) = listening().await;
    // A is "behind a symmetric NAT": its probes towards B's observed address never arrive
    // (they land on `filtered`, which the test reads to learn A's birthday ports). B must
    // find one of those ports by probing A's IP.
    let filtered = std::net::UdpSocket::bind(loopback()).expect("bind");
    let filtered_addr = filtered.local_addr().expect("addr");
    let sockets = 16;
    let a_plan = PunchPlan::new(
        b.local_peer_id(),
        vec![filtered_addr],
        PunchRole::Client,
        PunchStrategy::BirthdayOpen { sockets },
        (31, 32),
    )
    .with_timeout(Duration::from_secs(20))
    .with_interval(Duration::from_millis(20));
    let a_id = a.local_peer_id();
    let a_task = tokio::spawn(async move {
        let stream = a.punch_stream(a_plan).await;
        (a, stream)
    });

    // The first round sends one probe from every birthday socket.
    filtered
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut ports = BTreeSet::new();
    let mut buf = [0u8; 64];
    while ports.len() < sockets {
        let (len, from) =
            tokio::task::block_in_place(|| filtered.recv_from(&mut buf)).expect("a birthday probe");
        if decode_probe(&buf[..len]) == ProbeDatagram::Probe(31) {
            assert_eq!(from.ip(), a_addr.ip(), "bound on the listening socket's IP");
            assert_ne!(from, a_addr, "fresh sockets, not the listening one");
            ports.insert(from.port());
        }
    }
    let chosen = *ports.iter().nth(sockets / 2).expect("a port");

    // B tries a closed port first, then the right one; its one random port is drawn from
    // a range holding only that port again (so nothing else on this host is probed).
    let b_plan = PunchPlan::new(
        a_id,
        vec![a_addr],
        PunchRole::Server,
        PunchStrategy::BirthdayProbe {
            predicted: vec![closed_port().port(), chosen],
            probes: 1,
            port_range: (chosen, chosen),
        },
        (32, 31),
    )
    .with_timeout(Duration::from_secs(20))
    .with_interval(Duration::from_millis(20));
    let sb = within(b.punch_stream(b_plan)).await.expect("server punch");
    let (a, sa) = within(a_task).await.expect("task");
    let sa = sa.expect("client punch");
    expect_punched(&sa, &b, Direction::Outbound);
    expect_punched(&sb, &a, Direction::Inbound);
    assert_eq!(
        sa.info.local_addr.port(),
        chosen,
        "connected from the found socket"
    );
    assert_eq!(
        sa.info.remote_addr, b_addr,
        "to the address B's probes came from"
    );
    assert_eq!(sb.info.remote_addr.port(), chosen);
    // The client-only endpoint on the birthday socket was dropped with the punch; its
    // connection lives on.
    exchange(sa, sb, &a, &b).await;
}
