//! TCP hole punching by simultaneous open, on loopback: both sides connect from their
//! listening ports at once; whichever way the kernel completes it (simultaneous open or an
//! accept handed to the punch), the roles of the plan decide the TLS sides.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crust_core::punch::{PunchPlan, PunchRole, PunchStrategy};
use crust_core::{Connection, ConnectionPath, Direction, Error, Identity, PeerId, Transport};
use crust_tcp::{TcpConfig, TcpTransport};

const SAFETY_NET: Duration = Duration::from_secs(60);

fn transport() -> TcpTransport {
    TcpTransport::new(
        Identity::generate().expect("identity"),
        TcpConfig::default().with_dial_from_listen_port(true),
    )
    .expect("transport")
}

async fn listening() -> (TcpTransport, Box<dyn crust_core::Listener>, SocketAddr) {
    let t = transport();
    let listener = t
        .listen("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let addr = listener.local_endpoint().addr();
    (t, listener, addr)
}

fn plan(peer: PeerId, to: SocketAddr, role: PunchRole) -> PunchPlan {
    PunchPlan::new(peer, vec![to], role, PunchStrategy::Direct, (1, 2))
}

#[tokio::test]
async fn both_sides_punching_at_once_get_one_authenticated_connection() {
    for _ in 0..5 {
        let (alice, _la, alice_addr) = listening().await;
        let (bob, _lb, bob_addr) = listening().await;
        let (a, b) = tokio::time::timeout(
            SAFETY_NET,
            futures_join(
                alice.punch(plan(bob.local_peer_id(), bob_addr, PunchRole::Client)),
                bob.punch(plan(alice.local_peer_id(), alice_addr, PunchRole::Server)),
            ),
        )
        .await
        .expect("safety net");
        let (mut a, mut b): (Connection, Connection) = (a.expect("alice"), b.expect("bob"));
        assert_eq!(a.peer_id(), bob.local_peer_id());
        assert_eq!(b.peer_id(), alice.local_peer_id());
        assert_eq!(a.info().path, ConnectionPath::PunchedTcp);
        assert_eq!(b.info().path, ConnectionPath::PunchedTcp);
        assert_eq!(a.info().direction, Direction::Outbound);
        assert_eq!(b.info().direction, Direction::Inbound);
        assert_eq!(
            a.info().local_addr.port(),
            alice_addr.port(),
            "from the listening port"
        );
        a.send("through the hole".into()).await.expect("send");
        assert_eq!(b.recv().await.expect("recv"), "through the hole");
        b.send("and back".into()).await.expect("send");
        assert_eq!(a.recv().await.expect("recv"), "and back");
    }
}

#[tokio::test]
async fn a_punch_pinned_to_another_identity_fails_with_a_mismatch() {
    let (alice, _la, alice_addr) = listening().await;
    let (bob, _lb, bob_addr) = listening().await;
    let stranger = Identity::generate().expect("identity").peer_id();
    let (a, b) = tokio::time::timeout(
        SAFETY_NET,
        futures_join(
            alice.punch(plan(bob.local_peer_id(), bob_addr, PunchRole::Client)),
            // Bob was told to expect someone else at Alice's address.
            bob.punch(plan(stranger, alice_addr, PunchRole::Server)),
        ),
    )
    .await
    .expect("safety net");
    let err = b.expect_err("bob must refuse alice");
    assert!(
        matches!(err, Error::PeerIdMismatch { expected, actual } if expected == stranger && actual == alice.local_peer_id()),
        "got {err:?}"
    );
    // TLS 1.3 clients finish before the server has checked their certificate: Alice may
    // see a connection, which Bob's refusal then closes.
    if let Ok(mut a) = a {
        let closed = tokio::time::timeout(SAFETY_NET, a.recv())
            .await
            .expect("safety net");
        assert!(closed.is_err(), "bob never accepted alice: got {closed:?}");
    }
}

#[tokio::test]
async fn nobody_punching_back_is_a_timeout_within_the_deadline() {
    let (alice, _la, _) = listening().await;
    // A port nobody listens on: every connect is refused and retried until the deadline.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let timeout = Duration::from_millis(600);
    let started = Instant::now();
    let err = tokio::time::timeout(
        SAFETY_NET,
        alice.punch(
            plan(
                Identity::generate().expect("id").peer_id(),
                closed,
                PunchRole::Client,
            )
            .with_timeout(timeout)
            .with_packet_limits(100, 8),
        ),
    )
    .await
    .expect("safety net")
    .expect_err("nobody there");
    assert!(
        matches!(err, Error::PunchTimeout(t) if t == timeout),
        "got {err:?}"
    );
    assert!(started.elapsed() >= timeout);
}

#[tokio::test]
async fn punching_needs_a_listening_socket() {
    let alice = transport();
    let err = alice
        .punch(plan(
            Identity::generate().expect("id").peer_id(),
            "127.0.0.1:9".parse().expect("addr"),
            PunchRole::Client,
        ))
        .await
        .expect_err("not listening");
    assert!(matches!(err, Error::Unsupported(_)), "got {err:?}");
}

#[tokio::test]
async fn ordinary_dials_still_use_the_listener_while_a_punch_waits_elsewhere() {
    let (alice, mut listener, alice_addr) = listening().await;
    let bob = Identity::generate().expect("identity").peer_id();
    let bob_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let carol = transport();
    // Alice waits for Bob (who is gone) while Carol dials her normally.
    let punch =
        alice.punch(plan(bob, bob_addr, PunchRole::Server).with_timeout(Duration::from_secs(1)));
    let dial = async {
        let (dialled, accepted) = tokio::join!(
            carol.dial(alice_addr, Some(alice.local_peer_id())),
            listener.accept()
        );
        (dialled.expect("dial"), accepted.expect("accept"))
    };
    let (punched, (_, accepted)) = tokio::time::timeout(SAFETY_NET, futures_join(punch, dial))
        .await
        .expect("safety net");
    assert_eq!(accepted.peer_id(), carol.local_peer_id());
    assert_eq!(accepted.info().path, ConnectionPath::Direct);
    assert!(
        matches!(punched, Err(Error::PunchTimeout(_))),
        "got {punched:?}"
    );
}

async fn futures_join<A, B>(a: A, b: B) -> (A::Output, B::Output)
where
    A: std::future::Future,
    B: std::future::Future,
{
    tokio::join!(a, b)
}
