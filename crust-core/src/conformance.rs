//! The transport conformance kit: cases every [`Transport`] implementation must pass.
//!
//! Enable the `test-kit` feature in your dev-dependencies and invoke
//! [`conformance_tests!`](crate::conformance_tests) in `tests/conformance.rs` with a
//! [`TransportFactory`]; it expands to one `#[tokio::test]` per case:
//!
//! ```ignore
//! crust_core::conformance_tests!(|identity, config| {
//!     Box::new(MyTransport::new(identity, config)) as Box<dyn crust_core::Transport>
//! });
//! ```
//!
//! Every case talks to loopback only, binds port 0, and is bounded by [`CASE_DEADLINE`] so a
//! broken transport fails instead of hanging. Cases panic (like `assert!`) on failure.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::wire::FrameKind;
use crate::{Connection, ConnectionConfig, Error, Identity, Listener, PeerId, Transport};

/// Upper bound on any single case: a safety net against hangs, never a performance assertion.
pub const CASE_DEADLINE: Duration = Duration::from_secs(120);

/// Maximum message size the kit configures, so max-size cases stay quick in debug builds.
pub const KIT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Creates transports for the kit.
pub trait TransportFactory: Send + Sync {
    /// A transport with the given identity and connection limits.
    fn create(&self, identity: Identity, config: ConnectionConfig) -> Box<dyn Transport>;

    /// The address listeners bind (default `127.0.0.1:0`).
    fn listen_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
}

impl<F> TransportFactory for F
where
    F: Fn(Identity, ConnectionConfig) -> Box<dyn Transport> + Send + Sync,
{
    fn create(&self, identity: Identity, config: ConnectionConfig) -> Box<dyn Transport> {
        self(identity, config)
    }
}

/// Expands to one `#[tokio::test]` per conformance case for the given factory expression.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            echo_of_various_sizes,
            thousand_messages_arrive_in_order,
            send_after_close_fails,
            peer_vanishing_mid_message_is_connection_closed,
            wrong_expected_peer_id_is_refused,
            oversized_message_refused_on_both_sides,
            four_gib_frame_header_is_refused,
            hundred_concurrent_connections,
            both_sides_see_authenticated_peer_ids,
            batched_send_and_receive_keep_order,
            control_frames_pass_a_large_message,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::init_tracing();
                $crate::conformance::$case(&$factory).await;
            }
        )*
    };
}

/// Installs a `tracing` subscriber for test output (`RUST_LOG` filters); idempotent.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CASE_DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("conformance: {what} did not finish within {CASE_DEADLINE:?}"),
    }
}

fn kit_config() -> ConnectionConfig {
    ConnectionConfig::default().with_max_message_size(KIT_MAX_MESSAGE_SIZE)
}

struct Pair {
    dialer: Box<dyn Transport>,
    listener_transport: Box<dyn Transport>,
    listener: Box<dyn Listener>,
}

async fn pair(
    factory: &dyn TransportFactory,
    dialer_config: ConnectionConfig,
    listener_config: ConnectionConfig,
) -> Pair {
    let dialer = factory.create(Identity::generate().expect("identity"), dialer_config);
    let listener_transport =
        factory.create(Identity::generate().expect("identity"), listener_config);
    let listener = listener_transport
        .listen(factory.listen_addr())
        .await
        .expect("listen");
    assert_ne!(
        listener.local_endpoint().addr().port(),
        0,
        "listener reports port 0"
    );
    Pair {
        dialer,
        listener_transport,
        listener,
    }
}

impl Pair {
    fn addr(&self) -> SocketAddr {
        self.listener.local_endpoint().addr()
    }

    async fn connect(&mut self) -> (Connection, Connection) {
        let addr = self.addr();
        let expected = Some(self.listener_transport.local_peer_id());
        let (dialed, accepted) =
            tokio::join!(self.dialer.dial(addr, expected), self.listener.accept());
        (dialed.expect("dial"), accepted.expect("accept"))
    }

    /// Like [`Pair::connect`], but the dialling side gets the raw authenticated stream, so
    /// a case can misbehave below the framing layer.
    async fn connect_raw(&mut self) -> (crate::SecureStream, Connection) {
        let addr = self.addr();
        let expected = Some(self.listener_transport.local_peer_id());
        let (raw, accepted) = tokio::join!(
            self.dialer.dial_stream(addr, expected),
            self.listener.accept()
        );
        (raw.expect("dial_stream"), accepted.expect("accept"))
    }
}

/// Spawns a task that echoes every message on `conn` until it closes.
fn spawn_echo(conn: Connection) -> tokio::task::JoinHandle<Error> {
    tokio::spawn(async move {
        let (tx, mut rx) = conn.split();
        loop {
            match rx.recv().await {
                Ok(msg) => {
                    if let Err(e) = tx.send(msg).await {
                        return e;
                    }
                }
                Err(e) => return e,
            }
        }
    })
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// Echo of an empty, a 1-byte, a 1 MiB and a maximum-size message.
pub async fn echo_of_various_sizes(factory: &dyn TransportFactory) {
    within("echo", async {
        let mut p = pair(factory, kit_config(), kit_config()).await;
        let (client, server) = p.connect().await;
        let _echo = spawn_echo(server);
        let mut client = client;
        for (i, len) in [0, 1, 1024 * 1024, KIT_MAX_MESSAGE_SIZE]
            .into_iter()
            .enumerate()
        {
            let msg = pattern(len, i as u8);
            client.send(msg.clone()).await.expect("send");
            let back = client.recv().await.expect("recv echo");
            assert_eq!(back.len(), len, "echo of {len} bytes has the wrong length");
            assert!(back == msg, "echo of {len} bytes differs");
        }
        client.close().await;
    })
    .await
}

/// 1000 small messages arrive complete and in order.
pub async fn thousand_messages_arrive_in_order(factory: &dyn TransportFactory) {
    within("ordering", async {
        let mut p = pair(factory, kit_config(), kit_config()).await;
        let (client, mut server) = p.connect().await;
        let sender = tokio::spawn(async move {
            for i in 0u32..1000 {
                let mut msg = i.to_be_bytes().to_vec();
                msg.extend(std::iter::repeat_n(i as u8, (i % 97) as usize));
                client.send(msg.into()).await.expect("send");
            }
            client
        });
        for i in 0u32..1000 {
            let msg = server.recv().await.expect("recv");
            assert!(msg.len() >= 4, "message {i} truncated");
            let seq = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]);
            assert_eq!(seq, i, "message out of order");
            assert_eq!(msg.len(), 4 + (i % 97) as usize);
            assert!(
                msg[4..].iter().all(|b| *b == i as u8),
                "message {i} corrupted"
            );
        }
        let client = sender.await.expect("sender task");
        client.close().await;
    })
    .await
}

/// After `close()`, sending fails with `ConnectionClosed` on our side and the peer's
/// `recv()` ends with `ConnectionClosed`; messages sent before the close still arrive.
pub async fn send_after_close_fails(factory: &dyn TransportFactory) {
    within("send after close", async {
        let mut p = pair(factory, kit_config(), kit_config()).await;
        let (mut client, mut server) = p.connect().await;
        client
            .send(Bytes::from_static(b"last words"))
            .await
            .expect("send");
        client.close().await;
        let err = client
            .send(Bytes::from_static(b"too late"))
            .await
            .expect_err("send after close");
        assert!(
            matches!(err, Error::ConnectionClosed),
            "expected ConnectionClosed, got {err:?}"
        );
        let err = client.recv().await.expect_err("recv after close");
        assert!(
            matches!(err, Error::ConnectionClosed),
            "expected ConnectionClosed, got {err:?}"
        );
        assert_eq!(
            &server.recv().await.expect("queued message")[..],
            b"last words"
        );
        let err = server.recv().await.expect_err("peer closed");
        assert!(
            matches!(err, Error::ConnectionClosed),
            "expected ConnectionClosed, got {err:?}"
        );
    })
    .await
}

/// A peer that vanishes in the middle of a message makes `recv()` return
/// `ConnectionClosed` instead of hanging or returning a partial message.
pub async fn peer_vanishing_mid_message_is_connection_closed(factory: &dyn TransportFactory) {
    within("vanishing peer", async {
        let mut p = pair(factory, kit_config(), kit_config()).await;
        let (mut raw, mut server) = p.connect_raw().await;
        // Announce a 1 MiB message, deliver a tenth of it, then vanish.
        let mut partial = Vec::new();
        partial.extend_from_slice(&(1024u32 * 1024).to_be_bytes());
        partial.push(0);
        partial.extend(std::iter::repeat_n(7u8, 100 * 1024));
        raw.writer.write_all(&partial).await.expect("write partial");
        raw.writer.flush().await.expect("flush");
        drop(raw);
        let err = server
            .recv()
            .await
            .expect_err("must not yield a partial message");
        assert!(
            matches!(err, Error::ConnectionClosed),
            "expected ConnectionClosed, got {err:?}"
        );
    })
    .await
}

/// Dialling with an expected `PeerId` that the listener does not hold fails with
/// `PeerIdMismatch`, naming both ids; the listener keeps serving honest dialers.
pub async fn wrong_expected_peer_id_is_refused(factory: &dyn TransportFactory) {
    within("wrong peer id", async {
        let mut p = pair(factory, kit_config(), kit_config()).await;
        let addr = p.addr();
        let wrong = Identity::generate().expect("identity").peer_id();
        let err = p
            .dialer
            .dial(addr, Some(wrong))
            .await
            .expect_err("impostor accepted");
        match err {
            Error::PeerIdMismatch { expected, actual } => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, p.listener_transport.local_peer_id());
            }
            other => panic!("expected PeerIdMismatch, got {other:?}"),
        }
        let (mut client, server) = p.connect().await;
        let _echo = spawn_echo(server);
        client
            .send(Bytes::from_static(b"still fine"))
            .await
            .expect("send");
        assert_eq!(&client.recv().await.expect("echo")[..], b"still fine");
    })
    .await
}

/// A message over the maximum is refused by the sender without harming the connection, and
/// a receiver with a smaller maximum refuses it with `MessageTooLarge` and closes the
/// connection; the process and the listener carry on.
pub async fn oversized_message_refused_on_both_sides(factory: &dyn TransportFactory) {
    within("oversized", async {
        let small = 64 * 1024;
        // Sender side: refused locally, connection still usable.
        let mut p = pair(factory, ConnectionConfig::default().with_max_message_size(small), kit_config()).await;
        let (mut client, server) = p.connect().await;
        let _echo = spawn_echo(server);
        let err = client.send(pattern(small + 1, 1)).await.expect_err("oversized send");
        assert!(matches!(err, Error::MessageTooLarge { size, max } if size == small as u64 + 1 && max == small), "{err:?}");
        client.send(pattern(small, 2)).await.expect("max-size send");
        assert_eq!(client.recv().await.expect("echo").len(), small);

        // Receiver side: the dialer allows more than the listener accepts.
        let mut p = pair(factory, kit_config(), ConnectionConfig::default().with_max_message_size(small)).await;
        let (mut client, mut server) = p.connect().await;
        client.send(pattern(small + 1, 3)).await.expect("send is allowed by the dialer's limit");
        let err = server.recv().await.expect_err("receiver must refuse");
        assert!(matches!(err, Error::MessageTooLarge { size, max } if size == small as u64 + 1 && max == small), "{err:?}");
        let err = client.recv().await.expect_err("connection is closed after the refusal");
        assert!(matches!(err, Error::ConnectionClosed), "expected ConnectionClosed, got {err:?}");
        // The listener still accepts.
        let (mut client, server) = p.connect().await;
        let _echo = spawn_echo(server);
        client.send(Bytes::from_static(b"ok")).await.expect("send");
        assert_eq!(&client.recv().await.expect("echo")[..], b"ok");
    })
    .await
}

/// A frame header announcing 4 GiB is refused with `MessageTooLarge` (without allocating).
pub async fn four_gib_frame_header_is_refused(factory: &dyn TransportFactory) {
    within("4 GiB header", async {
        let mut p = pair(factory, kit_config(), kit_config()).await;
        let (mut raw, mut server) = p.connect_raw().await;
        raw.writer
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0])
            .await
            .expect("write header");
        raw.writer.flush().await.expect("flush");
        let err = server.recv().await.expect_err("must refuse");
        assert!(
            matches!(
                err,
                Error::MessageTooLarge {
                    size: 0xffff_ffff,
                    max: KIT_MAX_MESSAGE_SIZE
                }
            ),
            "expected MessageTooLarge, got {err:?}"
        );
    })
    .await
}

/// 100 connections dialled at once to one listener all complete and exchange a message.
pub async fn hundred_concurrent_connections(factory: &dyn TransportFactory) {
    within("100 connections", async {
        const N: usize = 100;
        let p = pair(factory, kit_config(), kit_config()).await;
        let addr = p.addr();
        let expected = Some(p.listener_transport.local_peer_id());
        let mut listener = p.listener;
        let acceptor = tokio::spawn(async move {
            let mut echoes = Vec::with_capacity(N);
            for _ in 0..N {
                echoes.push(spawn_echo(listener.accept().await.expect("accept")));
            }
            (listener, echoes)
        });
        let dialer: std::sync::Arc<dyn Transport> = std::sync::Arc::from(p.dialer);
        let mut clients = Vec::with_capacity(N);
        for i in 0..N {
            let dialer = dialer.clone();
            clients.push(tokio::spawn(async move {
                let mut conn = dialer.dial(addr, expected).await.expect("dial");
                let msg = Bytes::from(format!("connection {i}"));
                conn.send(msg.clone()).await.expect("send");
                assert_eq!(conn.recv().await.expect("echo"), msg);
                conn
            }));
        }
        let mut conns = Vec::with_capacity(N);
        for c in clients {
            conns.push(c.await.expect("client task"));
        }
        let (_listener, _echoes) = acceptor.await.expect("acceptor task");
        assert_eq!(conns.len(), N);
        for c in &conns {
            c.close().await;
        }
    })
    .await
}

/// Both sides report the other's real `PeerId`, and consistent addresses.
pub async fn both_sides_see_authenticated_peer_ids(factory: &dyn TransportFactory) {
    within("peer ids", async {
        let mut p = pair(factory, kit_config(), kit_config()).await;
        let dialer_id: PeerId = p.dialer.local_peer_id();
        let listener_id = p.listener_transport.local_peer_id();
        let (client, server) = p.connect().await;
        assert_eq!(client.peer_id(), listener_id);
        assert_eq!(server.peer_id(), dialer_id);
        assert_eq!(client.remote_addr(), p.addr());
        assert_eq!(server.remote_addr(), client.local_addr());
        assert_eq!(client.info().direction, crate::Direction::Outbound);
        assert_eq!(server.info().direction, crate::Direction::Inbound);
        assert_eq!(client.info().protocol, p.dialer.protocol());
    })
    .await
}

/// `send_many`/`recv_many` move 20,000 small messages (and some large ones) in order, and a
/// batch holding one oversized message is refused whole.
pub async fn batched_send_and_receive_keep_order(factory: &dyn TransportFactory) {
    within("batches", async {
        let mut p = pair(factory, kit_config(), kit_config()).await;
        let (client, mut server) = p.connect().await;
        let oversized = vec![
            Bytes::from_static(b"never sent"),
            pattern(KIT_MAX_MESSAGE_SIZE + 1, 9),
        ];
        let err = client
            .send_many(&oversized)
            .await
            .expect_err("oversized batch");
        assert!(matches!(err, Error::MessageTooLarge { .. }), "{err:?}");
        const N: u32 = 20_000;
        let sender = tokio::spawn(async move {
            let mut next = 0u32;
            while next < N {
                let batch: Vec<Bytes> = (next..(next + 997).min(N))
                    .map(|i| {
                        let len = if i % 5000 == 0 {
                            100_000
                        } else {
                            (i % 61) as usize
                        };
                        let mut msg = i.to_be_bytes().to_vec();
                        msg.resize(4 + len, i as u8);
                        Bytes::from(msg)
                    })
                    .collect();
                next += batch.len() as u32;
                client.send_many(&batch).await.expect("send_many");
            }
            client
        });
        let mut got = Vec::new();
        let mut expected = 0u32;
        while expected < N {
            got.clear();
            let n = server.recv_many(&mut got, 512).await.expect("recv_many");
            assert!((1..=512).contains(&n) && n == got.len());
            for msg in &got {
                let seq = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]);
                assert_eq!(seq, expected, "batched messages out of order");
                let len = if seq % 5000 == 0 {
                    100_000
                } else {
                    (seq % 61) as usize
                };
                assert_eq!(msg.len(), 4 + len);
                assert!(msg[4..].iter().all(|b| *b == seq as u8));
                expected += 1;
            }
        }
        let client = sender.await.expect("sender task");
        client.close().await;
        let err = server.recv().await.expect_err("closed");
        assert!(matches!(err, Error::ConnectionClosed), "{err:?}");
    })
    .await
}

/// With a 16 MiB message in flight, control frames queued after it (with
/// `try_send_control`, and with `send_control` for a plug-in's own kind) reach the peer
/// before the message ends: the receiver, reading with `recv_frame`, gets both before the
/// `Message`, which then arrives whole. Deterministic: the receiver starts reading only once
/// both control frames are queued, and a fresh connection's transport buffers (socket
/// buffers, QUIC flow-control window) hold far less than 16 MiB, so the message cannot have
/// been written completely by then.
pub async fn control_frames_pass_a_large_message(factory: &dyn TransportFactory) {
    within("control frames vs a 16 MiB message", async {
        const BIG: usize = 16 * 1024 * 1024;
        let config = ConnectionConfig::default().with_max_message_size(BIG);
        let mut p = pair(factory, config.clone(), config).await;
        let (client, server) = p.connect().await;
        let (_server_sender, mut server) = server.split();
        let big = pattern(BIG, 42);
        client
            .send(big.clone())
            .await
            .expect("queue the large message");
        let sender = client.sender();
        assert!(
            sender.try_send_control(FrameKind::Ping, Bytes::from_static(b"ping")),
            "the control lane is empty"
        );
        sender
            .send_control(FrameKind::Unknown(0xc0), Bytes::from_static(b"plug-in"))
            .await
            .expect("queue a plug-in control frame");
        let mut before = Vec::new();
        let message = loop {
            let frame = server.recv_frame().await.expect("recv_frame");
            match frame.kind {
                FrameKind::Message => break frame.payload,
                kind => before.push((kind, frame.payload)),
            }
        };
        assert_eq!(
            before,
            [
                (FrameKind::Ping, Bytes::from_static(b"ping")),
                (FrameKind::Unknown(0xc0), Bytes::from_static(b"plug-in")),
            ],
            "control frames must arrive before the 16 MiB message ends"
        );
        assert_eq!(message.len(), BIG, "the message arrives whole");
        assert!(message == big, "the message arrives intact");
        // The connection carries on normally.
        client
            .send(Bytes::from_static(b"after"))
            .await
            .expect("send");
        assert_eq!(&server.recv().await.expect("recv")[..], b"after");
        client.close().await;
    })
    .await
}
