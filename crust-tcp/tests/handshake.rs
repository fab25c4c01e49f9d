//! Handshake edge cases specific to TCP: strangers, other versions, slow peers, and dialling
//! from the listening port.

use std::net::SocketAddr;
use std::time::Duration;

use crust_core::{ConnectionConfig, Error, Identity, Transport, wire};
use crust_tcp::{TcpConfig, TcpTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SAFETY_NET: Duration = Duration::from_secs(60);
const LOOPBACK: &str = "127.0.0.1:0";

fn transport(config: TcpConfig) -> TcpTransport {
    TcpTransport::new(Identity::generate().expect("identity"), config).expect("transport")
}

fn loopback() -> SocketAddr {
    LOOPBACK.parse().expect("loopback")
}

/// Accepts one raw TCP connection on a plain socket and runs `server` on it.
async fn raw_server<F, Fut>(server: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        server(stream).await;
    });
    (addr, task)
}

#[tokio::test]
async fn dialing_a_non_crust_server_is_not_crust() {
    let (addr, server) = raw_server(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let mut sink = [0u8; 64];
        let _ = s.read(&mut sink).await;
    })
    .await;
    let client = transport(TcpConfig::default());
    let err = tokio::time::timeout(SAFETY_NET, client.dial(addr, None))
        .await
        .expect("safety net")
        .expect_err("must fail");
    assert!(matches!(err, Error::NotCrust), "got {err:?}");
    server.await.expect("server");
}

#[tokio::test]
async fn a_peer_that_dropped_our_version_is_refused_with_both_versions() {
    let (addr, server) = raw_server(|mut s| async move {
        let _ = s.write_all(&wire::preamble(7, 5)).await;
        let mut sink = [0u8; 64];
        let _ = s.read(&mut sink).await;
    })
    .await;
    let client = transport(TcpConfig::default());
    let err = tokio::time::timeout(SAFETY_NET, client.dial(addr, None))
        .await
        .expect("safety net")
        .expect_err("must fail");
    assert!(
        matches!(
            err,
            Error::VersionMismatch {
                ours: wire::PROTOCOL_VERSION,
                theirs: 7
            }
        ),
        "got {err:?}"
    );
    server.await.expect("server");
}

#[tokio::test]
async fn a_server_that_closes_immediately_is_not_crust() {
    let (addr, server) = raw_server(|s| async move { drop(s) }).await;
    let client = transport(TcpConfig::default());
    let err = tokio::time::timeout(SAFETY_NET, client.dial(addr, None))
        .await
        .expect("safety net")
        .expect_err("must fail");
    assert!(matches!(err, Error::NotCrust | Error::Io(_)), "got {err:?}");
    server.await.expect("server");
}

#[tokio::test]
async fn a_silent_server_hits_the_handshake_timeout() {
    let (addr, server) = raw_server(|mut s| async move {
        // Say nothing; wait for the client to give up.
        let mut sink = [0u8; 64];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let timeout = Duration::from_millis(300);
    let client = transport(
        TcpConfig::default()
            .with_connection_config(ConnectionConfig::default().with_handshake_timeout(timeout)),
    );
    let err = tokio::time::timeout(SAFETY_NET, client.dial(addr, None))
        .await
        .expect("safety net")
        .expect_err("must fail");
    assert!(
        matches!(err, Error::HandshakeTimeout(t) if t == timeout),
        "got {err:?}"
    );
    server.await.expect("server");
}

#[tokio::test]
async fn strangers_and_slow_peers_do_not_block_the_listener() {
    let server = transport(TcpConfig::default().with_connection_config(
        ConnectionConfig::default().with_handshake_timeout(Duration::from_secs(30)),
    ));
    let mut listener = server.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();

    // A stranger speaking HTTP, and a slowloris that sends half a preamble and stalls.
    let mut stranger = TcpStream::connect(addr).await.expect("connect");
    stranger
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"CRS").await.expect("write");

    // The stranger is told who we are and then dropped.
    let mut preamble = [0u8; wire::PREAMBLE_LEN];
    stranger.read_exact(&mut preamble).await.expect("preamble");
    assert_eq!(&preamble[..4], b"CRST");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SAFETY_NET, stranger.read_to_end(&mut rest))
        .await
        .expect("stranger must be disconnected");

    // An honest peer still gets through while the slowloris stalls.
    let client = transport(TcpConfig::default());
    let (dialed, accepted) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(
            client.dial(addr, Some(server.local_peer_id())),
            listener.accept()
        )
    })
    .await
    .expect("safety net");
    let (dialed, mut accepted) = (dialed.expect("dial"), accepted.expect("accept"));
    dialed.send("through".into()).await.expect("send");
    assert_eq!(accepted.recv().await.expect("recv"), "through");
    drop(slow);
}

#[tokio::test]
async fn impostor_presenting_another_key_is_refused() {
    // `victim` is who the dialer wants; `impostor` listens where the dialer connects.
    let victim = Identity::generate().expect("identity");
    let impostor = transport(TcpConfig::default());
    let mut listener = impostor.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    let accept = tokio::spawn(async move { listener.accept().await });
    let client = transport(TcpConfig::default());
    let err = client
        .dial(addr, Some(victim.peer_id()))
        .await
        .expect_err("impostor accepted");
    assert!(
        matches!(err, Error::PeerIdMismatch { expected, actual } if expected == victim.peer_id() && actual == impostor.local_peer_id()),
        "got {err:?}"
    );
    accept.abort();
}

#[tokio::test]
async fn dials_can_leave_from_the_listening_port() {
    let a = transport(TcpConfig::default().with_dial_from_listen_port(true));
    let b = transport(TcpConfig::default());
    let a_listener = a.listen(loopback()).await.expect("listen a");
    let a_port = a_listener.local_endpoint().addr().port();
    let mut b_listener = b.listen(loopback()).await.expect("listen b");
    let b_addr = b_listener.local_endpoint().addr();
    let (dialed, accepted) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(a.dial(b_addr, None), b_listener.accept())
    })
    .await
    .expect("safety net");
    let (dialed, accepted) = (dialed.expect("dial"), accepted.expect("accept"));
    assert_eq!(
        dialed.local_addr().port(),
        a_port,
        "dial must leave from the listening port"
    );
    assert_eq!(accepted.remote_addr().port(), a_port);
    assert_eq!(accepted.peer_id(), a.local_peer_id());
    drop(a_listener);
}

/// Both nodes dial from their listening ports: the second dial finds the four-tuple taken
/// (the first connection) and leaves from an ephemeral port instead of failing.
#[tokio::test]
async fn a_taken_four_tuple_falls_back_to_an_ephemeral_port() {
    let config = || TcpConfig::default().with_dial_from_listen_port(true);
    let (a, b) = (transport(config()), transport(config()));
    let mut a_listener = a.listen(loopback()).await.expect("listen a");
    let mut b_listener = b.listen(loopback()).await.expect("listen b");
    let (a_addr, b_addr) = (
        a_listener.local_endpoint().addr(),
        b_listener.local_endpoint().addr(),
    );
    let (first, accepted) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(a.dial(b_addr, None), b_listener.accept())
    })
    .await
    .expect("safety net");
    let (first, _accepted) = (first.expect("a dials b"), accepted.expect("b accepts"));
    assert_eq!(first.local_addr(), a_addr);
    // b -> a from b_addr to a_addr: the same four-tuple as the first connection.
    let (second, accepted) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(b.dial(a_addr, Some(a.local_peer_id())), a_listener.accept())
    })
    .await
    .expect("safety net");
    let second = second.expect("b dials a from another port");
    assert_ne!(second.local_addr(), b_addr);
    assert_eq!(accepted.expect("a accepts").peer_id(), b.local_peer_id());
}

/// A second node on a port already in use fails loudly instead of sharing it.
#[tokio::test]
async fn a_port_in_use_is_refused() {
    let first = transport(TcpConfig::default().with_dial_from_listen_port(true));
    let listener = first.listen(loopback()).await.expect("listen");
    let taken = listener.local_endpoint().addr();
    let second = transport(TcpConfig::default());
    match second.listen(taken).await {
        Err(crust_core::Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("expected address in use, got {other:?}"),
    }
    // Once the first listener is gone the port is free again.
    drop(listener);
    second.listen(taken).await.expect("port free again");
}

#[tokio::test]
async fn dropping_the_listener_refuses_new_connections_at_once() {
    let server = transport(TcpConfig::default());
    let listener = server.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    TcpStream::connect(addr).await.expect("listening");
    drop(listener);
    // No waiting: the socket stops listening when the listener is dropped.
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_stalling_many_handshakes_cannot_lock_out_others() {
    let server = transport(
        TcpConfig::default()
            // The per-address share is on by default (64); a larger one, still within the
            // subnet's share (128: 127.0.0.1 and 127.0.0.2 share a /24), keeps room too.
            .with_max_pending_handshakes_per_ip(100)
            .with_connection_config(
                ConnectionConfig::default().with_handshake_timeout(Duration::from_secs(30)),
            ),
    );
    let mut listener = server.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    // 300 connections from 127.0.0.2 that never say a word: more than all handshake slots.
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind 127.0.0.2");
        stalled.push(socket.connect(addr).await.expect("connect"));
    }
    // An honest peer from 127.0.0.1 still gets a handshake slot.
    let client = transport(TcpConfig::default());
    let (dialed, accepted) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(
            client.dial(addr, Some(server.local_peer_id())),
            listener.accept()
        )
    })
    .await
    .expect("safety net");
    let (dialed, mut accepted) = (dialed.expect("honest dial"), accepted.expect("accept"));
    dialed.send("made it".into()).await.expect("send");
    assert_eq!(accepted.recv().await.expect("recv"), "made it");
    drop(stalled);
}
