//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crust_core::{Connection, Identity, Listener, Transport};
use crust_rudp::quinn::{self, AsyncUdpSocket, UdpPoller};
use crust_rudp::{RudpConfig, RudpTransport};

/// A safety net against hangs, never a performance assertion.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn transport(config: RudpConfig) -> RudpTransport {
    RudpTransport::new(Identity::generate().expect("identity"), config).expect("transport")
}

/// Dials `listener` (insisting on `listener_id`) and accepts concurrently.
pub async fn connect(
    dialer: &dyn Transport,
    listener: &mut Box<dyn Listener>,
    listener_id: crust_core::PeerId,
) -> (Connection, Connection) {
    let addr = listener.local_endpoint().addr();
    let (dialled, accepted) = tokio::join!(dialer.dial(addr, Some(listener_id)), listener.accept());
    (dialled.expect("dial"), accepted.expect("accept"))
}

/// A UDP socket that drops a share of its outgoing datagrams, chosen by a seeded
/// pseudo-random generator (`loss_ppm` datagrams per million; 1_000_000 drops everything).
pub struct LossySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    loss_ppm: AtomicU32,
    rng: Mutex<u64>,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl LossySocket {
    /// Binds a real UDP socket on `addr` and wraps it.
    pub fn bind(addr: SocketAddr, loss_ppm: u32, seed: u64) -> Arc<Self> {
        let socket = std::net::UdpSocket::bind(addr).expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let inner = runtime.wrap_udp_socket(socket).expect("wrap socket");
        Arc::new(LossySocket {
            inner,
            loss_ppm: AtomicU32::new(loss_ppm),
            rng: Mutex::new(seed),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn set_loss_ppm(&self, loss_ppm: u32) {
        self.loss_ppm.store(loss_ppm, Ordering::Relaxed);
    }

    /// (datagrams sent, datagrams dropped)
    pub fn stats(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    fn drop_next(&self) -> bool {
        let mut state = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        // splitmix64
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % 1_000_000) < u64::from(self.loss_ppm.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for LossySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossySocket")
            .field("loss_ppm", &self.loss_ppm)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for LossySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> io::Result<()> {
        // `max_transmit_segments` is 1, so every transmit is exactly one datagram.
        if self.drop_next() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.inner.try_send(transmit)?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A transport on a lossy socket bound to loopback.
pub fn lossy_transport(
    config: RudpConfig,
    loss_ppm: u32,
    seed: u64,
) -> (RudpTransport, Arc<LossySocket>) {
    let socket = LossySocket::bind(loopback(), loss_ppm, seed);
    let transport = RudpTransport::with_abstract_socket(
        Identity::generate().expect("identity"),
        config,
        socket.clone(),
    )
    .expect("transport");
    (transport, socket)
}
