//! The probe-aware QUIC socket: a [`ProbeSocket`] wraps the UDP socket quinn uses;
//! datagrams that carry the probe magic ([`crust_core::probe`]) are taken out of the stream
//! before quinn sees them and handed to a bounded queue; everything else goes to quinn
//! untouched. The transport hands the queue out through
//! [`Transport::take_probe_receiver`](crust_core::Transport::take_probe_receiver).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crust_core::probe::{ProbeDatagram, ProbeReceiver, ProbeSender, decode_probe, probe_channel};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// A UDP socket for quinn that takes probe datagrams out of the stream.
pub(crate) struct ProbeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    probes: ProbeSender,
}

impl ProbeSocket {
    /// Wraps `inner`; probes go to the returned receiver.
    pub(crate) fn wrap(inner: Arc<dyn AsyncUdpSocket>) -> (Arc<ProbeSocket>, ProbeReceiver) {
        let (probes, receiver) = probe_channel();
        (Arc::new(ProbeSocket { inner, probes }), receiver)
    }

    fn deliver(&self, from: SocketAddr, datagram: &[u8]) {
        let nonce = match decode_probe(datagram) {
            ProbeDatagram::Probe(nonce) => Some(nonce),
            _ => None,
        };
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
