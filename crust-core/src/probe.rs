//! Probe datagrams: small non-QUIC, non-Crust-stream datagrams that nodes send to each
//! other's UDP sockets to learn how a NAT filters (does a packet from a port or host we
//! never sent to get through?) and, later, to punch holes.
//!
//! A transport whose socket can carry them (reliable UDP: `crust-rudp` takes them out of
//! its QUIC socket's stream before quinn sees them) hands them out through
//! [`Transport::take_probe_receiver`](crate::Transport::take_probe_receiver).
//!
//! Wire format: `00 'C' 'R' 'S' 'T' 'P' 'R' 'B'` (8 bytes) then an 8-byte big-endian nonce;
//! nothing else. The leading zero byte tells a probe from QUIC: every QUIC v1 packet has
//! the fixed bit (`0x40`) set in its first byte (RFC 9000, 17.2 and 17.3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// What a received datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeDatagram {
    /// Not a probe (QUIC or anything else): leave it alone.
    NotProbe,
    /// Starts with the probe magic but is not a well-formed probe: drop it.
    Malformed,
    /// A probe with this nonce.
    Probe(u64),
}

/// Classifies a received datagram.
pub fn decode_probe(datagram: &[u8]) -> ProbeDatagram {
    if datagram.len() < PROBE_MAGIC.len() || datagram[..8] != PROBE_MAGIC {
        return ProbeDatagram::NotProbe;
    }
    let nonce: Option<[u8; 8]> = datagram.get(8..).and_then(|rest| rest.try_into().ok());
    match nonce {
        Some(nonce) => ProbeDatagram::Probe(u64::from_be_bytes(nonce)),
        None => ProbeDatagram::Malformed,
    }
}

/// A bounded channel for probes: the socket side delivers, the node side receives.
pub fn probe_channel() -> (ProbeSender, ProbeReceiver) {
    let (tx, rx) = mpsc::channel(PROBE_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        ProbeSender {
            tx,
            dropped: dropped.clone(),
        },
        ProbeReceiver { rx, dropped },
    )
}

/// The socket side of a [`probe_channel`]: never waits.
#[derive(Clone, Debug)]
pub struct ProbeSender {
    tx: mpsc::Sender<Probe>,
    dropped: Arc<AtomicU64>,
}

impl ProbeSender {
    /// Hands over a probe from `from` (`None`: a malformed one, only counted). When the
    /// queue is full the probe is dropped and counted.
    pub fn deliver(&self, from: SocketAddr, nonce: Option<u64>) {
        let delivered = nonce.is_some_and(|nonce| self.tx.try_send(Probe { from, nonce }).is_ok());
        if !delivered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The receiving end of the probes that reached a socket.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec() {
        let probe = encode_probe(0x0102_0304_0506_0708);
        assert_eq!(
            decode_probe(&probe),
            ProbeDatagram::Probe(0x0102_0304_0506_0708)
        );
        assert_eq!(decode_probe(&probe[..12]), ProbeDatagram::Malformed);
        assert_eq!(
            decode_probe(b"\x40quic short header"),
            ProbeDatagram::NotProbe
        );
        assert_eq!(decode_probe(&[0xc0; 1200]), ProbeDatagram::NotProbe);
        assert_eq!(decode_probe(&[]), ProbeDatagram::NotProbe);
    }

    proptest::proptest! {
        #[test]
        fn decoding_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let _ = decode_probe(&bytes);
        }
    }
}
