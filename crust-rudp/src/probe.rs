//! Probe datagrams on the QUIC socket: small non-QUIC datagrams that other nodes send to
//! our listening socket's external address to learn how a NAT filters (does a packet from
//! a port or host we never sent to get through?) and, later, to punch holes.
//!
//! A [`ProbeSocket`] wraps the UDP socket quinn uses: datagrams that carry the probe magic
//! are taken out of the stream before quinn sees them and handed to a bounded queue
//! ([`ProbeReceiver`]); everything else goes to quinn untouched. The magic starts with a
//! zero byte: every QUIC v1 packet has the fixed bit (`0x40`) set in its first byte (RFC
//! 9000, 17.2 and 17.3), so a QUIC packet is never taken for a probe unless a peer greases
//! that bit *and* its next seven bytes match the magic (a 2^-56 chance).
//!
//! Wire format: `00 'C' 'R' 'S' 'T' 'P' 'R' 'B'` (8 bytes) then an 8-byte big-endian nonce;
//! nothing else. Anything else after the magic is dropped as malformed.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

/// The first eight bytes of every probe datagram.
pub const PROBE_MAGIC: [u8; 8] = *b"\0CRSTPRB";
/// The length of a probe datagram.
pub const PROBE_LEN: usize = 16;
/// Probes queued for the receiver; beyond this they are dropped (and counted).
pub const PROBE_QUEUE: usize = 64;

/// A probe datagram that reached our socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Who sent it (as our socket sees the source).
    pub from: SocketAddr,
    /// The sender's nonce.
    pub nonce: u64,
}

/// Encodes a probe datagram carrying `nonce`.
pub fn encode_probe(nonce: u64) -> [u8; PROBE_LEN] {
    let mut out = [0u8; PROBE_LEN];
    out[..8].copy_from_slice(&PROBE_MAGIC);
    out[8..].copy_from_slice(&nonce.to_be_bytes());
    out
}

/// What a datagram is: a probe (with its nonce), a malformed probe, or not a probe.
fn classify(datagram: &[u8]) -> Option<Option<u64>> {
    if datagram.len() < PROBE_MAGIC.len() || datagram[..8] != PROBE_MAGIC {
        return None;
    }
    let nonce: Option<[u8; 8]> = datagram.get(8..).and_then(|rest| rest.try_into().ok());
    Some(nonce.map(u64::from_be_bytes))
}

/// The receiving end of the probes that reached a [`ProbeSocket`].
#[derive(Debug)]
pub struct ProbeReceiver {
    rx: mpsc::Receiver<Probe>,
    dropped: Arc<AtomicU64>,
}

impl ProbeReceiver {
    /// The next probe; `None` once the socket is gone.
    pub async fn recv(&mut self) -> Option<Probe> {
        self.rx.recv().await
    }

    /// Probes dropped because the queue was full, or malformed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A UDP socket for quinn that takes probe datagrams out of the stream. See the module docs.
pub struct ProbeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    probes: mpsc::Sender<Probe>,
    dropped: Arc<AtomicU64>,
}

impl ProbeSocket {
    /// Wraps `inner`; probes go to the returned receiver.
    pub fn wrap(inner: Arc<dyn AsyncUdpSocket>) -> (Arc<ProbeSocket>, ProbeReceiver) {
        let (tx, rx) = mpsc::channel(PROBE_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        (
            Arc::new(ProbeSocket {
                inner,
                probes: tx,
                dropped: dropped.clone(),
            }),
            ProbeReceiver { rx, dropped },
        )
    }

    fn deliver(&self, from: SocketAddr, nonce: Option<u64>) {
        let delivered =
            nonce.is_some_and(|nonce| self.probes.try_send(Probe { from, nonce }).is_ok());
        if !delivered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the probes out of a batch of `n` received buffers, moving the rest forward.
    /// Returns how many buffers remain for quinn.
    fn filter(&self, n: usize, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut kept = 0;
        for i in 0..n {
            let len = meta[i].len;
            let stride = meta[i].stride.max(1);
            let is_probe = classify(&bufs[i][..len.min(bufs[i].len())]).is_some();
            if is_probe {
                // Segments of one buffer come from one source with one size: all probes.
                for segment in bufs[i][..len.min(bufs[i].len())].chunks(stride) {
                    self.deliver(meta[i].addr, classify(segment).flatten());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec() {
        let probe = encode_probe(0x0102_0304_0506_0708);
        assert_eq!(classify(&probe), Some(Some(0x0102_0304_0506_0708)));
        assert_eq!(
            classify(&probe[..12]),
            Some(None),
            "truncated probe is malformed"
        );
        assert_eq!(classify(b"\x40quic short header"), None);
        assert_eq!(classify(&[0xc0; 1200]), None, "a long-header QUIC packet");
        assert_eq!(classify(&[]), None);
    }
}
