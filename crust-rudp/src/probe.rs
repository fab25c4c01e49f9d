//! The probe-aware QUIC socket: a [`ProbeSocket`] wraps the UDP socket quinn uses;
//! datagrams that carry the probe magic ([`crust_core::probe`]) are taken out of the stream
//! before quinn sees them and handed to a bounded queue; everything else goes to quinn
//! untouched. The transport hands the queue out through
//! [`Transport::take_probe_receiver`](crust_core::Transport::take_probe_receiver).
//!
//! A hole punch in progress ([`crate::punch`]) registers the nonce its peer's probes carry
//! ([`ProbeSocket::route`]): probes with that nonce go to the punch instead of the general
//! queue, everything else goes on as before.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use crust_core::probe::{
    ProbeDatagram, ProbeReceiver, ProbeSender, decode_probe, encode_probe, probe_channel,
};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

/// Probe sources queued for a punch; beyond this they are dropped (the punch needs one).
const ROUTE_QUEUE: usize = 16;

/// Punches in progress: the nonce their peer's probes carry, and where to send the
/// probes' sources.
type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<SocketAddr>>>>;

/// A UDP socket for quinn that takes probe datagrams out of the stream.
pub(crate) struct ProbeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    probes: ProbeSender,
    routes: Routes,
}

impl ProbeSocket {
    /// Wraps `inner`; probes go to the returned receiver.
    pub(crate) fn wrap(inner: Arc<dyn AsyncUdpSocket>) -> (Arc<ProbeSocket>, ProbeReceiver) {
        let (probes, receiver) = probe_channel();
        let routes = Routes::default();
        (
            Arc::new(ProbeSocket {
                inner,
                probes,
                routes,
            }),
            receiver,
        )
    }

    /// Sends a probe carrying `nonce` to `to` from this very socket (see [`send_probe`]).
    pub(crate) fn send_probe(&self, to: SocketAddr, nonce: u64) -> io::Result<()> {
        send_probe(&*self.inner, to, nonce)
    }

    /// Routes the probes carrying `nonce` to the returned receiver (their source addresses)
    /// instead of the general queue, until the guard is dropped. Fails if that nonce is
    /// routed already.
    pub(crate) fn route(&self, nonce: u64) -> io::Result<(RouteGuard, mpsc::Receiver<SocketAddr>)> {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        let mut routes = lock(&self.routes);
        if routes.contains_key(&nonce) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a hole punch with this peer nonce is already running",
            ));
        }
        routes.insert(nonce, tx);
        let guard = RouteGuard {
            routes: self.routes.clone(),
            nonce,
        };
        Ok((guard, rx))
    }

    fn deliver(&self, from: SocketAddr, datagram: &[u8]) {
        let nonce = match decode_probe(datagram) {
            ProbeDatagram::Probe(nonce) => Some(nonce),
            _ => None,
        };
        if let Some(nonce) = nonce {
            if let Some(route) = lock(&self.routes).get(&nonce) {
                // Full: the punch has plenty of sources queued already.
                let _ = route.try_send(from);
                return;
            }
        }
        self.probes.deliver(from, nonce);
    }
    /// Takes the probes out of a batch of `n` received buffers, moving the rest forward.
    /// Returns how many buffers remain for quinn.
    fn filter(&self, n: usize, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut kept = 0;
        for i in 0..n {
            let len = meta[i].len;
            let stride = meta[i].stride.max(1);
            let is_probe =
                decode_probe(&bufs[i][..len.min(bufs[i].len())]) != ProbeDatagram::NotProbe;
            if is_probe {
                // Segments of one buffer come from one source with one size: all probes.
                for segment in bufs[i][..len.min(bufs[i].len())].chunks(stride) {
                    self.deliver(meta[i].addr, segment);
                }
                continue;
            }
            if kept != i {
                meta[kept] = meta[i];
                let (head, tail) = bufs.split_at_mut(i);
                let copy = len.min(head[kept].len()).min(tail[0].len());
                head[kept][..copy].copy_from_slice(&tail[0][..copy]);
            }
            kept += 1;
        }
        kept
    }
}

/// Removes a punch's route from its [`ProbeSocket`] when dropped.
#[derive(Debug)]
pub(crate) struct RouteGuard {
    routes: Routes,
    nonce: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        lock(&self.routes).remove(&self.nonce);
    }
}

fn lock(routes: &Routes) -> MutexGuard<'_, HashMap<u64, mpsc::Sender<SocketAddr>>> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends a probe datagram carrying `nonce` to `to` through `socket`, without waiting: a
/// full socket buffer fails with [`io::ErrorKind::WouldBlock`] (the probe is not sent).
pub(crate) fn send_probe(
    socket: &dyn AsyncUdpSocket,
    to: SocketAddr,
    nonce: u64,
) -> io::Result<()> {
    let contents = encode_probe(nonce);
    socket.try_send(&Transmit {
        destination: to,
        ecn: None,
        contents: &contents,
        segment_size: None,
        src_ip: None,
    })
}

impl fmt::Debug for ProbeSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeSocket")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for ProbeSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Bounded: each round consumes datagrams; a batch of probes only means another read.
        for _ in 0..64 {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => {
                    let kept = self.filter(n, bufs, meta);
                    if kept > 0 {
                        return Poll::Ready(Ok(kept));
                    }
                }
                other => return other,
            }
        }
        // Only probes for a long while: let quinn's task yield and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
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
