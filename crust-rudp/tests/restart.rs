//! A node that crashes and comes back on the same port with the same identity makes its
//! peers drop their stale connections at once (a QUIC stateless reset whose key comes from
//! the identity), instead of letting them send into a dead connection until the idle
//! timeout.

mod common;

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::init_tracing;
use crust_core::{Identity, Transport};
use crust_rudp::quinn::{self, AsyncUdpSocket, UdpPoller};
use crust_rudp::{RudpConfig, RudpTransport};

/// Far above what a reset takes: without one, only the 30 s idle timeout ends the
/// connection.
const SAFETY_NET: Duration = Duration::from_secs(20);

/// A UDP socket that can "crash": from then on it sends nothing and reads nothing, as if
/// the process were gone (without the CONNECTION_CLOSE a clean drop would send).
struct CrashableSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    crashed: AtomicBool,
}

impl CrashableSocket {
    fn wrap(socket: std::net::UdpSocket) -> Arc<Self> {
        socket.set_nonblocking(true).expect("nonblocking");
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        Arc::new(CrashableSocket {
            inner: runtime.wrap_udp_socket(socket).expect("wrap"),
            crashed: AtomicBool::new(false),
        })
    }

    fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }
}

impl fmt::Debug for CrashableSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashableSocket").finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for CrashableSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> io::Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.crashed.load(Ordering::SeqCst) {
            // A dead process reads nothing; the restarted one (on a clone of the socket)
            // gets every datagram.
            return Poll::Pending;
        }
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Runs the crash-and-restart scenario (the restarted node keeps the identity or not).
/// Returns how long the peer took to see its connection end, or `None` when it did not
/// within `patience`.
async fn peer_notices_restart(same_identity: bool, patience: Duration) -> Option<Duration> {
    let node = Identity::generate().expect("identity");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let clone = socket.try_clone().expect("clone");

    let first_run = CrashableSocket::wrap(socket);
    let before =
        RudpTransport::with_abstract_socket(node.clone(), RudpConfig::default(), first_run.clone())
            .expect("transport");
    let mut listener = before.listen(addr).await.expect("listen");
    let peer =
        RudpTransport::new(Identity::generate().expect("id"), RudpConfig::default()).expect("peer");
    let (dialled, accepted) =
        tokio::join!(peer.dial(addr, Some(node.peer_id())), listener.accept());
    let (mut to_node, mut at_node) = (dialled.expect("dial"), accepted.expect("accept"));
    to_node.send("before the crash".into()).await.expect("send");
    assert_eq!(at_node.recv().await.expect("recv"), "before the crash");

    // Crash, and restart on the same port.
    first_run.crash();
    let restarted_as = if same_identity {
        node.clone()
    } else {
        Identity::generate().expect("identity")
    };
    let after = RudpTransport::with_abstract_socket(
        restarted_as,
        RudpConfig::default(),
        CrashableSocket::wrap(clone),
    )
    .expect("restarted transport");
    let _listener_after = after.listen(addr).await.expect("listen again");

    // The peer still believes in its connection; its next packet meets the new run.
    let started = Instant::now();
    to_node
        .send("after the crash".into())
        .await
        .expect("queued locally");
    let ended = tokio::time::timeout(patience, to_node.recv()).await;
    drop((at_node, listener, before));
    match ended {
        Ok(outcome) => {
            assert!(outcome.is_err(), "nothing may arrive: got {outcome:?}");
            Some(started.elapsed())
        }
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resets_stale_connections_at_once() {
    init_tracing();
    let took = peer_notices_restart(true, SAFETY_NET)
        .await
        .expect("the peer never noticed the restart (no stateless reset)");
    assert!(took < Duration::from_secs(2), "noticed after {took:?}");
    tracing::info!(?took, "stale connection reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_identity_on_the_port_cannot_reset_our_connections() {
    init_tracing();
    // A different node cannot produce the tokens: the connection is not reset by it (it
    // ends later, by the idle timeout). A reset takes milliseconds (see above): 3 s of
    // silence tells.
    let took = peer_notices_restart(false, Duration::from_secs(3)).await;
    assert!(took.is_none(), "reset by a stranger after {took:?}");
}
