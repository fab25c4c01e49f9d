//! rUDP-specific behaviour beyond the conformance kit: identities, the shared socket,
//! timeouts, listener shutdown, graceful close, vanishing peers.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{DEADLINE, connect, init_tracing, loopback, lossy_transport, transport};
use crust_core::{ConnectionConfig, Direction, Error, Identity, Protocol, Transport};
use crust_rudp::{RudpConfig, RudpTransport};

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("test did not finish within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sizes_and_peer_ids_match_identities() {
    init_tracing();
    within(async {
        let max = 2 * 1024 * 1024;
        let config = RudpConfig::default()
            .with_connection_config(ConnectionConfig::default().with_max_message_size(max));
        let server_identity = Identity::generate().expect("identity");
        let client_identity = Identity::generate().expect("identity");
        let server = RudpTransport::new(server_identity.clone(), config.clone()).expect("server");
        let client = RudpTransport::new(client_identity.clone(), config).expect("client");
        assert_eq!(server.protocol(), Protocol::Rudp);
        let mut listener = server.listen(loopback()).await.expect("listen");
        assert_eq!(listener.local_endpoint().protocol(), Protocol::Rudp);
        let (mut conn, mut incoming) =
            connect(&client, &mut listener, server_identity.peer_id()).await;

        // The same derivation as every Crust transport: the PeerId is the identity's.
        assert_eq!(conn.peer_id(), server_identity.peer_id());
        assert_eq!(incoming.peer_id(), client_identity.peer_id());
        assert_eq!(conn.info().direction, Direction::Outbound);
        assert_eq!(incoming.info().direction, Direction::Inbound);
        assert_eq!(incoming.remote_addr(), conn.local_addr());
        assert_eq!(conn.remote_addr(), listener.local_endpoint().addr());

        for (i, len) in [1usize, 1024 * 1024, max].into_iter().enumerate() {
            let msg = pattern(len, i as u8);
            conn.send(msg.clone()).await.expect("send");
            let got = incoming.recv().await.expect("recv");
            assert!(got == msg, "message of {len} bytes differs");
            incoming.send(got).await.expect("echo");
            assert!(conn.recv().await.expect("echo back") == msg);
        }
        conn.close().await;
        assert!(matches!(
            incoming.recv().await,
            Err(Error::ConnectionClosed)
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_is_refused_with_peer_id_mismatch() {
    init_tracing();
    within(async {
        let server = transport(RudpConfig::default());
        let client = transport(RudpConfig::default());
        let mut listener = server.listen(loopback()).await.expect("listen");
        let addr = listener.local_endpoint().addr();
        let wanted = Identity::generate().expect("identity").peer_id();
        match client.dial(addr, Some(wanted)).await {
            Err(Error::PeerIdMismatch { expected, actual }) => {
                assert_eq!(expected, wanted);
                assert_eq!(actual, server.local_peer_id());
            }
            other => panic!("expected PeerIdMismatch, got {other:?}"),
        }
        // Without an expectation any peer is accepted, and its real id reported.
        let (dialled, accepted) = tokio::join!(client.dial(addr, None), listener.accept());
        assert_eq!(dialled.expect("dial").peer_id(), server.local_peer_id());
        assert_eq!(accepted.expect("accept").peer_id(), client.local_peer_id());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_ordered_messages_and_hundred_connections() {
    init_tracing();
    within(async {
        let server = transport(RudpConfig::default());
        let client = std::sync::Arc::new(transport(RudpConfig::default()));
        let mut listener = server.listen(loopback()).await.expect("listen");
        let addr = listener.local_endpoint().addr();
        let server_id = server.local_peer_id();

        let (conn, mut incoming) = connect(&*client, &mut listener, server_id).await;
        let sender = tokio::spawn(async move {
            for i in 0u32..1000 {
                conn.send(Bytes::from(i.to_be_bytes().to_vec()))
                    .await
                    .expect("send");
            }
            conn
        });
        for i in 0u32..1000 {
            let msg = incoming.recv().await.expect("recv");
            assert_eq!(&msg[..], &i.to_be_bytes()[..], "out of order");
        }
        sender.await.expect("sender").close().await;

        const N: usize = 100;
        let acceptor = tokio::spawn(async move {
            let mut conns = Vec::new();
            for _ in 0..N {
                let mut c = listener.accept().await.expect("accept");
                let msg = c.recv().await.expect("recv");
                c.send(msg).await.expect("echo");
                conns.push(c);
            }
            conns
        });
        let mut dials = Vec::new();
        for i in 0..N {
            let client = client.clone();
            dials.push(tokio::spawn(async move {
                let mut c = client.dial(addr, Some(server_id)).await.expect("dial");
                let msg = Bytes::from(format!("hello {i}"));
                c.send(msg.clone()).await.expect("send");
                assert_eq!(c.recv().await.expect("echo"), msg);
                c
            }));
        }
        for d in dials {
            d.await.expect("dial task");
        }
        assert_eq!(acceptor.await.expect("acceptor").len(), N);
    })
    .await
}

/// A NAT-punched socket handed over with `with_socket` is the one we listen on *and* dial
/// from, so peers see the punched port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_socket_listens_and_dials_from_the_same_port() {
    init_tracing();
    within(async {
        let socket = std::net::UdpSocket::bind(loopback()).expect("bind");
        let port = socket.local_addr().expect("addr").port();
        let a = RudpTransport::with_socket(
            Identity::generate().expect("identity"),
            RudpConfig::default(),
            socket,
        )
        .expect("transport");
        assert_eq!(a.local_addr().map(|x| x.port()), Some(port));
        let b = transport(RudpConfig::default());
        let mut b_listener = b.listen(loopback()).await.expect("listen b");

        // Dial before listen: from the given socket.
        let (out, seen_by_b) = connect(&a, &mut b_listener, b.local_peer_id()).await;
        assert_eq!(seen_by_b.remote_addr().port(), port);
        assert_eq!(out.local_addr().port(), port);

        // Listening reuses the socket (port 0 means "the socket's port") ...
        let mut a_listener = a.listen(loopback()).await.expect("listen a");
        assert_eq!(a_listener.local_endpoint().addr().port(), port);
        // ... a second listener on it is refused, and so is another address.
        assert!(a.listen(loopback()).await.is_err());
        assert!(
            a.listen("127.0.0.1:1".parse().expect("addr"))
                .await
                .is_err()
        );

        let (into_a, accepted) = connect(&b, &mut a_listener, a.local_peer_id()).await;
        assert_eq!(accepted.peer_id(), b.local_peer_id());
        assert_eq!(into_a.remote_addr().port(), port);

        // After the listener is gone the socket still dials, and a new listener may start.
        drop(a_listener);
        let (_out2, seen2) = connect(&a, &mut b_listener, b.local_peer_id()).await;
        assert_eq!(seen2.remote_addr().port(), port);
        let _again = a.listen(loopback()).await.expect("listen again");
    })
    .await
}

/// `new()`: a dial before `listen` uses an ephemeral port; after `listen`, dials come from
/// the listening port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_after_listen_use_the_listening_port() {
    init_tracing();
    within(async {
        let a = transport(RudpConfig::default());
        let b = transport(RudpConfig::default());
        let mut b_listener = b.listen(loopback()).await.expect("listen b");
        let (_c1, s1) = connect(&a, &mut b_listener, b.local_peer_id()).await;
        let a_listener = a.listen(loopback()).await.expect("listen a");
        let a_port = a_listener.local_endpoint().addr().port();
        assert_ne!(s1.remote_addr().port(), a_port);
        assert_eq!(a.local_addr().map(|x| x.port()), Some(a_port));
        let (_c2, s2) = connect(&a, &mut b_listener, b.local_peer_id()).await;
        assert_eq!(s2.remote_addr().port(), a_port);

        // A second listener gets a socket of its own; dials stay on the first one.
        let mut second = a.listen(loopback()).await.expect("second listen");
        let second_port = second.local_endpoint().addr().port();
        assert_ne!(second_port, a_port);
        let (_c3, s3) = connect(&b, &mut second, a.local_peer_id()).await;
        assert_eq!(s3.peer_id(), b.local_peer_id());
        assert_eq!(a.local_addr().map(|x| x.port()), Some(a_port));

        // Listening again after the first listener is gone reuses its socket.
        drop(a_listener);
        let again = a.listen(loopback()).await.expect("listen again");
        assert_eq!(again.local_endpoint().addr().port(), a_port);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_makes_dial_time_out() {
    init_tracing();
    within(async {
        // A UDP socket that never answers.
        let silent = std::net::UdpSocket::bind(loopback()).expect("bind");
        let addr = silent.local_addr().expect("addr");
        let timeout = Duration::from_millis(300);
        let client =
            transport(RudpConfig::default().with_connection_config(
                ConnectionConfig::default().with_handshake_timeout(timeout),
            ));
        let started = Instant::now();
        match client.dial(addr, None).await {
            Err(Error::HandshakeTimeout(t)) => assert_eq!(t, timeout),
            other => panic!("expected HandshakeTimeout, got {other:?}"),
        }
        assert!(started.elapsed() >= timeout);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_listener_refuses_new_connections() {
    init_tracing();
    within(async {
        let server = transport(RudpConfig::default());
        let client = transport(RudpConfig::default());
        let mut listener = server.listen(loopback()).await.expect("listen");
        let addr = listener.local_endpoint().addr();
        let (mut conn, incoming) = connect(&client, &mut listener, server.local_peer_id()).await;
        drop(listener);
        let err = client
            .dial(addr, Some(server.local_peer_id()))
            .await
            .expect_err("listener is gone");
        assert!(matches!(err, Error::Handshake(_)), "{err:?}");
        // The established connection is unaffected.
        incoming
            .send(Bytes::from_static(b"still here"))
            .await
            .expect("send");
        assert_eq!(&conn.recv().await.expect("recv")[..], b"still here");
    })
    .await
}

/// `close()` right after queueing a lot of data, then dropping everything (connection and
/// transport), still delivers every byte: the write half waits for the acknowledgement, and
/// acknowledged data stays readable after the peer's connection close arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_everything_queued() {
    init_tracing();
    within(async {
        const N: u32 = 200;
        let server = transport(RudpConfig::default());
        let mut listener = server.listen(loopback()).await.expect("listen");
        let client = transport(RudpConfig::default());
        let (conn, mut incoming) = connect(&client, &mut listener, server.local_peer_id()).await;
        let reader = tokio::spawn(async move {
            for i in 0..N {
                let msg = incoming.recv().await.expect("queued message");
                assert_eq!(&msg[..4], &i.to_be_bytes()[..]);
                assert_eq!(msg.len(), 64 * 1024);
            }
            incoming.recv().await
        });
        for i in 0..N {
            let mut msg = i.to_be_bytes().to_vec();
            msg.resize(64 * 1024, i as u8);
            conn.send(msg.into()).await.expect("send");
        }
        conn.close().await;
        drop(conn);
        drop(client);
        let end = reader.await.expect("reader");
        assert!(matches!(end, Err(Error::ConnectionClosed)), "{end:?}");
    })
    .await
}

/// Less than a flow-control window is queued and the connection closed and dropped before
/// the peer reads anything: the peer still reads every message, then `ConnectionClosed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_survives_the_close() {
    init_tracing();
    within(async {
        const N: u32 = 10;
        let server = transport(RudpConfig::default());
        let mut listener = server.listen(loopback()).await.expect("listen");
        let client = transport(RudpConfig::default());
        let (conn, mut incoming) = connect(&client, &mut listener, server.local_peer_id()).await;
        for i in 0..N {
            let mut msg = i.to_be_bytes().to_vec();
            msg.resize(32 * 1024, i as u8);
            conn.send(msg.into()).await.expect("send");
        }
        conn.close().await;
        drop(conn);
        drop(client);
        for i in 0..N {
            let msg = incoming.recv().await.expect("queued message");
            assert_eq!(&msg[..4], &i.to_be_bytes()[..]);
        }
        assert!(matches!(
            incoming.recv().await,
            Err(Error::ConnectionClosed)
        ));
    })
    .await
}

/// A write half dropped without a graceful shutdown resets the QUIC stream: the peer sees
/// an error, not a clean end of stream, so its connection is closed for sending too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_dropped_without_shutdown_is_reset() {
    init_tracing();
    within(async {
        let server = transport(RudpConfig::default());
        let mut listener = server.listen(loopback()).await.expect("listen");
        let addr = listener.local_endpoint().addr();
        let client = transport(RudpConfig::default());
        let (raw, accepted) = tokio::join!(
            client.dial_stream(addr, Some(server.local_peer_id())),
            listener.accept()
        );
        let raw = raw.expect("dial_stream");
        let mut incoming = accepted.expect("accept");
        // Drop only the write half; the QUIC connection stays up.
        let crust_core::SecureStream {
            writer,
            reader: _reader,
            keep_alive: _keep_alive,
            ..
        } = raw;
        drop(writer);
        let err = incoming.recv().await.expect_err("reset");
        assert!(matches!(err, Error::ConnectionClosed), "{err:?}");
        let err = incoming
            .send(Bytes::from_static(b"too late"))
            .await
            .expect_err("connection is closed");
        assert!(matches!(err, Error::ConnectionClosed), "{err:?}");
    })
    .await
}

/// With one handshake slot, a peer that completes QUIC but never opens the Crust stream
/// holds the slot only until the handshake timeout; an honest dialer queued behind it then
/// gets through, and the stalling peer is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_is_bounded_and_frees_its_slot() {
    use crust_rudp::quinn;
    use std::sync::Arc;

    init_tracing();
    within(async {
        let handshake_timeout = Duration::from_millis(500);
        let server = transport(
            RudpConfig::default()
                .with_max_concurrent_handshakes(1)
                .with_connection_config(
                    ConnectionConfig::default().with_handshake_timeout(handshake_timeout),
                ),
        );
        let mut listener = server.listen(loopback()).await.expect("listen");
        let addr = listener.local_endpoint().addr();

        // A raw QUIC client with a valid Crust certificate that never opens the stream.
        let staller = Identity::generate().expect("identity");
        let (tls, _) = crust_core::tls::client_config(
            &staller,
            crust_core::tls::default_crypto_provider(),
            None,
            &[crust_core::wire::ALPN],
        )
        .expect("tls");
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic");
        let endpoint = quinn::Endpoint::client(loopback()).expect("endpoint");
        let stalled = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(quic)), addr, "crust")
            .expect("connect")
            .await
            .expect("quic handshake");

        let client = transport(RudpConfig::default());
        let started = Instant::now();
        let (dialled, accepted) = tokio::join!(
            client.dial(addr, Some(server.local_peer_id())),
            listener.accept()
        );
        dialled.expect("honest dial");
        assert_eq!(accepted.expect("accept").peer_id(), client.local_peer_id());
        // It had to wait for the stalled handshake's slot.
        assert!(
            started.elapsed() >= handshake_timeout / 2,
            "{:?}",
            started.elapsed()
        );
        // The staller was dropped.
        let reason = stalled.closed().await;
        tracing::debug!(%reason, "staller closed");
    })
    .await
}

/// A peer that goes silent (all its datagrams lost) is detected by the idle timeout and
/// surfaces as `ConnectionClosed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_peer_is_connection_closed_after_idle_timeout() {
    init_tracing();
    within(async {
        let config = RudpConfig::default()
            .with_keep_alive_interval(Duration::from_millis(200))
            .with_idle_timeout(Duration::from_secs(1));
        let server = transport(config.clone());
        let mut listener = server.listen(loopback()).await.expect("listen");
        let (client, socket) = lossy_transport(config, 0, 7);
        let (conn, mut incoming) = connect(&client, &mut listener, server.local_peer_id()).await;
        conn.send(Bytes::from_static(b"hello")).await.expect("send");
        assert_eq!(&incoming.recv().await.expect("recv")[..], b"hello");
        // The client vanishes: nothing it sends arrives any more.
        socket.set_loss_ppm(1_000_000);
        let started = Instant::now();
        let err = incoming.recv().await.expect_err("peer vanished");
        assert!(matches!(err, Error::ConnectionClosed), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(500));
        drop(conn);
    })
    .await
}

#[test]
fn config_rejects_keep_alive_not_below_idle_timeout() {
    let config = RudpConfig::default()
        .with_keep_alive_interval(Duration::from_secs(30))
        .with_idle_timeout(Duration::from_secs(30));
    let err = RudpTransport::new(Identity::generate().expect("identity"), config)
        .expect_err("invalid config");
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
}

#[test]
fn with_socket_outside_a_runtime_is_an_error() {
    let socket = std::net::UdpSocket::bind(loopback()).expect("bind");
    let result = RudpTransport::with_socket(
        Identity::generate().expect("identity"),
        RudpConfig::default(),
        socket,
    );
    assert!(matches!(result, Err(Error::Io(_))));
}

#[test]
fn defaults_are_documented_values() {
    let config = RudpConfig::default();
    assert_eq!(config.keep_alive_interval, Duration::from_secs(10));
    assert_eq!(config.idle_timeout, Duration::from_secs(30));
    assert_eq!(config.max_concurrent_handshakes, 64);
    assert_eq!(config.connection, ConnectionConfig::default());
}

/// The dialler does not wait for the acceptor's preamble (pipelined); an acceptor that
/// answers with an unacceptable one is refused on the first read: the connection reports
/// `ConnectionClosed` and the QUIC connection is closed with a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_acceptor_preamble_fails_the_first_read() {
    use crust_rudp::quinn;
    use std::sync::Arc;

    init_tracing();
    within(async {
        for theirs in [crust_core::wire::preamble(7, 5), *b"GET / HT"] {
            let identity = Identity::generate().expect("identity");
            let server_id = identity.peer_id();
            let tls = crust_core::tls::server_config(
                &identity,
                crust_core::tls::default_crypto_provider(),
                &[crust_core::wire::ALPN],
            )
            .expect("tls");
            let quic =
                quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).expect("quic");
            let server = quinn::Endpoint::server(
                quinn::ServerConfig::with_crypto(Arc::new(quic)),
                loopback(),
            )
            .expect("endpoint");
            let addr = server.local_addr().expect("addr");
            let acceptor = tokio::spawn(async move {
                let conn = server
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("handshake");
                let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
                let mut ours = [0u8; crust_core::wire::PREAMBLE_LEN];
                recv.read_exact(&mut ours)
                    .await
                    .expect("dialler's preamble");
                assert_eq!(
                    ours,
                    crust_core::wire::preamble(
                        crust_core::wire::PROTOCOL_VERSION,
                        crust_core::wire::MIN_PROTOCOL_VERSION
                    )
                );
                send.write_all(&theirs).await.expect("write");
                conn.closed().await
            });

            let client = transport(RudpConfig::default());
            let mut conn = client
                .dial(addr, Some(server_id))
                .await
                .expect("dial returns before the acceptor's preamble is read");
            match conn.recv().await {
                Err(Error::ConnectionClosed) => {}
                other => panic!("expected ConnectionClosed, got {other:?}"),
            }
            match acceptor.await.expect("acceptor") {
                quinn::ConnectionError::ApplicationClosed(close) => {
                    assert_eq!(close.error_code, quinn::VarInt::from_u32(1));
                }
                other => panic!("expected an application close, got {other:?}"),
            }
        }
    })
    .await
}
