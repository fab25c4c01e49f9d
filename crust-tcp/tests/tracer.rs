//! Tracer mode: frames in clear text after an authenticated exchange. Two tracer nodes talk;
//! a tracer node and a normal node refuse each other (both sides, both directions) with
//! `Error::ModeMismatch`; impostors and replayed proofs are refused; and the TLS key log
//! records the secrets of both sides.

use std::net::SocketAddr;
use std::time::Duration;

use crust_core::tracer::{self, TracerAuth};
use crust_core::wire::{self, TransportMode};
use crust_core::{Error, Identity, PeerId, PunchRole, Transport, tls};
use crust_tcp::{TcpConfig, TcpTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SAFETY_NET: Duration = Duration::from_secs(60);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback")
}

fn node(tracer: bool) -> TcpTransport {
    TcpTransport::new(
        Identity::generate().expect("identity"),
        TcpConfig::default().with_tracer(tracer),
    )
    .expect("transport")
}

/// A connected pair of plain TCP streams on loopback.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (dialled.expect("connect"), accepted.expect("accept").0)
}

#[tokio::test]
async fn two_tracer_nodes_talk_in_clear_text_and_authenticate() {
    let (alice, bob) = (node(true), node(true));
    assert_eq!(alice.mode(), TransportMode::Tracer);
    let mut listener = bob.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    let (dialled, accepted) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(
            alice.dial(addr, Some(bob.local_peer_id())),
            listener.accept()
        )
    })
    .await
    .expect("safety net");
    let (mut to_bob, mut to_alice) = (dialled.expect("dial"), accepted.expect("accept"));
    assert_eq!(to_bob.peer_id(), bob.local_peer_id());
    assert_eq!(to_alice.peer_id(), alice.local_peer_id());
    to_bob.send("hello bob".into()).await.expect("send");
    let big = vec![7u8; 200 * 1024];
    to_alice.send(big.clone().into()).await.expect("send big");
    assert_eq!(to_alice.recv().await.expect("recv"), "hello bob");
    assert_eq!(to_bob.recv().await.expect("recv big"), big);
}

/// The dialler learns of the mismatch from the listener's preamble, in both pairings.
#[tokio::test]
async fn tracer_and_normal_nodes_refuse_each_others_dials() {
    for (dialler_tracer, listener_tracer) in [(true, false), (false, true)] {
        let (dialler, listening) = (node(dialler_tracer), node(listener_tracer));
        let listener = listening.listen(loopback()).await.expect("listen");
        let addr = listener.local_endpoint().addr();
        let err = tokio::time::timeout(SAFETY_NET, dialler.dial(addr, None))
            .await
            .expect("safety net")
            .expect_err("a mode mismatch must fail the dial");
        let expected = if dialler_tracer {
            (TransportMode::Tracer, TransportMode::Tls)
        } else {
            (TransportMode::Tls, TransportMode::Tracer)
        };
        match err {
            Error::ModeMismatch { ours, theirs } => assert_eq!((ours, theirs), expected),
            other => panic!("dialler tracer={dialler_tracer}: {other:?}"),
        }
        assert!(
            err_text(expected).contains("mode mismatch"),
            "{}",
            err_text(expected)
        );
    }
}

fn err_text((ours, theirs): (TransportMode, TransportMode)) -> String {
    Error::ModeMismatch { ours, theirs }.to_string()
}

/// Both sides of one connection fail with the mismatch named from their own point of
/// view, whichever side is the tracer and whichever is the client.
#[tokio::test]
async fn both_sides_of_a_mixed_connection_report_the_mismatch() {
    for client_is_tracer in [true, false] {
        let (client, server) = (node(client_is_tracer), node(!client_is_tracer));
        let (a, b) = tcp_pair().await;
        let (client_result, server_result) = tokio::time::timeout(SAFETY_NET, async {
            tokio::join!(
                client.upgrade(a, PunchRole::Client, server.local_peer_id()),
                server.upgrade(b, PunchRole::Server, client.local_peer_id()),
            )
        })
        .await
        .expect("safety net");
        for (result, ours) in [
            (client_result, client.mode()),
            (server_result, server.mode()),
        ] {
            match result {
                Err(Error::ModeMismatch {
                    ours: reported,
                    theirs,
                }) => {
                    assert_eq!(reported, ours);
                    assert_ne!(theirs, ours);
                }
                Err(other) => panic!("client tracer={client_is_tracer}: {other:?}"),
                Ok(_) => {
                    panic!("client tracer={client_is_tracer}: a mixed connection was accepted")
                }
            }
        }
    }
}

#[tokio::test]
async fn tracer_dial_to_an_unexpected_peer_is_refused() {
    let (alice, bob) = (node(true), node(true));
    let listener = bob.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    let wanted = Identity::generate().expect("carol").peer_id();
    let err = tokio::time::timeout(SAFETY_NET, alice.dial(addr, Some(wanted)))
        .await
        .expect("safety net")
        .expect_err("must fail");
    match err {
        Error::PeerIdMismatch { expected, actual } => {
            assert_eq!((expected, actual), (wanted, bob.local_peer_id()));
        }
        other => panic!("{other:?}"),
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    s.read_exact(&mut header).await.expect("header");
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.expect("payload");
    (header[4], payload)
}

/// What a fake tracer listener sends as its proof, given the dialler's hello.
enum Forgery {
    /// Signs with its own key while presenting the victim's certificate.
    WrongKey(Identity),
    /// Replays a genuine proof of the victim recorded in another session.
    Replay(Vec<u8>),
}

/// A raw tracer listener that presents `victim`'s certificate and then `forgery` as its
/// proof; the dialler must refuse it with `Error::Authentication`.
async fn impostor_listener(victim: Identity, forgery: Forgery) -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut out = wire::mode_preamble(
            TransportMode::Tracer,
            wire::PROTOCOL_VERSION,
            wire::MIN_PROTOCOL_VERSION,
        )
        .to_vec();
        let mut hello = [9u8; tracer::NONCE_LEN].to_vec();
        hello.extend_from_slice(victim.certificate());
        out.extend(frame(tracer::HELLO_KIND, &hello));
        let _ = s.write_all(&out).await;
        let mut preamble = [0u8; 8];
        let _ = s.read_exact(&mut preamble).await;
        let (_, their_hello) = read_frame(&mut s).await;
        let proof = match forgery {
            Forgery::WrongKey(key) => {
                let mut auth = TracerAuth::with_nonce(
                    &key,
                    tls::default_crypto_provider(),
                    PunchRole::Server,
                    None,
                    [9u8; tracer::NONCE_LEN],
                );
                auth.on_hello(&their_hello).expect("forged proof")
            }
            Forgery::Replay(recorded) => recorded,
        };
        let _ = s.write_all(&frame(tracer::PROOF_KIND, &proof)).await;
        // Wait for the dialler to hang up.
        let mut sink = [0u8; 256];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    addr
}

async fn dial_impostor(addr: SocketAddr, victim: PeerId) -> Error {
    let alice = node(true);
    tokio::time::timeout(SAFETY_NET, alice.dial(addr, Some(victim)))
        .await
        .expect("safety net")
        .expect_err("an impostor must be refused")
}

#[tokio::test]
async fn impostor_with_the_victims_certificate_is_refused() {
    let victim = Identity::generate().expect("victim");
    let impostor = Identity::generate().expect("impostor");
    let addr = impostor_listener(victim.clone(), Forgery::WrongKey(impostor)).await;
    let err = dial_impostor(addr, victim.peer_id()).await;
    assert!(matches!(err, Error::Authentication(_)), "{err:?}");
}

#[tokio::test]
async fn replayed_proof_from_another_session_is_refused() {
    let victim = Identity::generate().expect("victim");
    // A genuine proof of the victim, recorded in a session with another dialler nonce.
    let provider = tls::default_crypto_provider();
    let someone = Identity::generate().expect("someone");
    let old_client = TracerAuth::with_nonce(
        &someone,
        provider.clone(),
        PunchRole::Client,
        None,
        [1u8; tracer::NONCE_LEN],
    );
    let mut old_victim = TracerAuth::with_nonce(
        &victim,
        provider,
        PunchRole::Server,
        None,
        [9u8; tracer::NONCE_LEN],
    );
    let recorded = old_victim.on_hello(&old_client.hello()).expect("recorded");
    let addr = impostor_listener(victim.clone(), Forgery::Replay(recorded)).await;
    let err = dial_impostor(addr, victim.peer_id()).await;
    assert!(matches!(err, Error::Authentication(_)), "{err:?}");
}

/// The listener's side: an impostor client that presents the victim's certificate is
/// refused by `upgrade` as the server (as a punched connection expecting the victim).
#[tokio::test]
async fn impostor_client_is_refused_by_the_server_side() {
    let bob = node(true);
    let victim = Identity::generate().expect("victim");
    let victim_id = victim.peer_id();
    let impostor = Identity::generate().expect("impostor");
    let (mut a, b) = tcp_pair().await;
    let bob_id = bob.local_peer_id();
    let fake = tokio::spawn(async move {
        let mut out = wire::mode_preamble(
            TransportMode::Tracer,
            wire::PROTOCOL_VERSION,
            wire::MIN_PROTOCOL_VERSION,
        )
        .to_vec();
        let mut hello = [5u8; tracer::NONCE_LEN].to_vec();
        hello.extend_from_slice(victim.certificate());
        out.extend(frame(tracer::HELLO_KIND, &hello));
        a.write_all(&out).await.expect("write");
        let mut preamble = [0u8; 8];
        a.read_exact(&mut preamble).await.expect("preamble");
        let (kind, their_hello) = read_frame(&mut a).await;
        assert_eq!(kind, tracer::HELLO_KIND);
        let mut auth = TracerAuth::with_nonce(
            &impostor,
            tls::default_crypto_provider(),
            PunchRole::Client,
            Some(bob_id),
            [5u8; tracer::NONCE_LEN],
        );
        let proof = auth.on_hello(&their_hello).expect("forged proof");
        let _ = a.write_all(&frame(tracer::PROOF_KIND, &proof)).await;
        a
    });
    let result = tokio::time::timeout(SAFETY_NET, bob.upgrade(b, PunchRole::Server, victim_id))
        .await
        .expect("safety net");
    assert!(
        matches!(result, Err(Error::Authentication(_))),
        "{:?}",
        result.err()
    );
    drop(fake.await.expect("fake client"));
}

#[tokio::test]
async fn key_log_records_the_secrets_of_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.log");
    let log = tls::KeyLogWriter::create(&path).expect("key log");
    let config = TcpConfig::default().with_key_log(log);
    let alice = TcpTransport::new(Identity::generate().expect("a"), config.clone()).expect("a");
    let bob = TcpTransport::new(Identity::generate().expect("b"), config).expect("b");
    let mut listener = bob.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    let (dialled, accepted) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(alice.dial(addr, None), listener.accept())
    })
    .await
    .expect("safety net");
    let (to_bob, mut to_alice) = (dialled.expect("dial"), accepted.expect("accept"));
    to_bob.send("secret".into()).await.expect("send");
    assert_eq!(to_alice.recv().await.expect("recv"), "secret");
    let text = std::fs::read_to_string(&path).expect("read key log");
    // Client and server each log the handshake and traffic secrets of the one session.
    for label in [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
    ] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{label} ")))
            .collect();
        assert_eq!(lines.len(), 2, "{label} in {text}");
        assert_eq!(lines[0], lines[1], "both sides log the same secret");
    }
}
