//! The beacon packet: what a node broadcasts about itself. Pure code, no I/O.
//!
//! # Wire format (version 1)
//!
//! All integers are big-endian.
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! | 0      | 4    | magic `CRBN` ([`MAGIC`])                                  |
//! | 4      | 1    | version, `1` ([`VERSION`])                                |
//! | 5      | 32   | sender's `PeerId`                                         |
//! | 37     | 8    | session: random, chosen once per running beacon           |
//! | 45     | 8    | sequence: counts the session's announcements, from 0      |
//! | 53     | 1    | endpoint count `n`, at most [`MAX_ENDPOINTS`]             |
//! | 54     | …    | `n` endpoints                                             |
//!
//! Each endpoint is a protocol byte (`1` = TCP, `2` = rUDP/QUIC), an address-family byte
//! (`4` or `6`), the address (4 or 16 bytes) and the port (2 bytes): 8 or 20 bytes. IPv6
//! scope ids and flow labels are not carried. A packet is therefore at most
//! 54 + 16 × 20 = 374 bytes, below [`MAX_PACKET_LEN`] (512). Nothing may follow the last
//! endpoint.
//!
//! Decoding checks, in order: length ≤ [`MAX_PACKET_LEN`], magic, version, the fixed
//! header, the endpoint count, each endpoint, and trailing bytes; every failure is a typed
//! [`Error`], never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crust_core::{Endpoint, PeerId, Protocol};

use crate::{Error, Result};

/// The four bytes every beacon starts with.
pub const MAGIC: [u8; 4] = *b"CRBN";
/// The beacon format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// The most endpoints one beacon may carry.
pub const MAX_ENDPOINTS: usize = 16;
/// The largest beacon packet accepted (larger datagrams are rejected unread).
pub const MAX_PACKET_LEN: usize = 512;

const HEADER_LEN: usize = 4 + 1 + PeerId::LEN + 8 + 8 + 1;
const PROTO_TCP: u8 = 1;
const PROTO_RUDP: u8 = 2;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// One beacon: who sent it, where it can be reached, and which announcement it is.
///
/// ```
/// use crust_beacon::BeaconPacket;
/// use crust_core::{Endpoint, PeerId};
/// let packet = BeaconPacket::new(
///     PeerId::from_bytes([7; 32]),
///     vec!["tcp://192.0.2.1:4000".parse::<Endpoint>()?],
///     42,
///     0,
/// );
/// let bytes = packet.encode()?;
/// assert_eq!(BeaconPacket::decode(&bytes)?, packet);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BeaconPacket {
    /// The sender's identity (claimed; a dial proves it).
    pub peer_id: PeerId,
    /// Where the sender listens, best first. An unspecified address (`0.0.0.0`, `::`)
    /// means "the address this beacon came from".
    pub endpoints: Vec<Endpoint>,
    /// Random per running beacon: a new session means the sender restarted.
    pub session: u64,
    /// Counts the session's announcements.
    pub sequence: u64,
}

impl BeaconPacket {
    /// A packet with the given fields.
    pub fn new(peer_id: PeerId, endpoints: Vec<Endpoint>, session: u64, sequence: u64) -> Self {
        BeaconPacket {
            peer_id,
            endpoints,
            session,
            sequence,
        }
    }

    /// Encodes the packet. Fails with [`Error::TooManyEndpoints`] beyond
    /// [`MAX_ENDPOINTS`] and [`Error::UnknownProtocol`] for a protocol without a beacon
    /// encoding. The result is never longer than [`MAX_PACKET_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(Error::TooManyEndpoints {
                count: self.endpoints.len(),
                max: MAX_ENDPOINTS,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.endpoints.len() * 20);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(self.peer_id.as_bytes());
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        // Cannot truncate: checked against MAX_ENDPOINTS above.
        out.push(u8::try_from(self.endpoints.len()).unwrap_or(u8::MAX));
        for ep in &self.endpoints {
            out.push(match ep.protocol() {
                Protocol::Tcp => PROTO_TCP,
                Protocol::Rudp => PROTO_RUDP,
                _ => return Err(Error::UnknownProtocol(0)),
            });
            match ep.addr().ip() {
                IpAddr::V4(ip) => {
                    out.push(FAMILY_V4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(FAMILY_V6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&ep.addr().port().to_be_bytes());
        }
        debug_assert!(out.len() <= MAX_PACKET_LEN);
        Ok(out)
    }

    /// Decodes a packet, rejecting every malformed input with a typed [`Error`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_PACKET_LEN {
            return Err(Error::TooLong {
                len: bytes.len(),
                max: MAX_PACKET_LEN,
            });
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take::<4>()? != MAGIC {
            return Err(Error::BadMagic);
        }
        let [version] = r.take::<1>()?;
        if version != VERSION {
            return Err(Error::UnknownVersion(version));
        }
        let peer_id = PeerId::from_bytes(r.take::<32>()?);
        let session = u64::from_be_bytes(r.take::<8>()?);
        let sequence = u64::from_be_bytes(r.take::<8>()?);
        let [count] = r.take::<1>()?;
        let count = usize::from(count);
        if count > MAX_ENDPOINTS {
            return Err(Error::TooManyEndpoints {
                count,
                max: MAX_ENDPOINTS,
            });
        }
        let mut endpoints = Vec::with_capacity(count);
        for _ in 0..count {
            let [proto] = r.take::<1>()?;
            let protocol = match proto {
                PROTO_TCP => Protocol::Tcp,
                PROTO_RUDP => Protocol::Rudp,
                other => return Err(Error::UnknownProtocol(other)),
            };
            let [family] = r.take::<1>()?;
            let ip = match family {
                FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(r.take::<4>()?)),
                FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(r.take::<16>()?)),
                other => return Err(Error::UnknownAddressFamily(other)),
            };
            let port = u16::from_be_bytes(r.take::<2>()?);
            endpoints.push(Endpoint::new(protocol, SocketAddr::new(ip, port)));
        }
        let rest = bytes.len() - r.at;
        if rest != 0 {
            return Err(Error::TrailingBytes(rest));
        }
        Ok(BeaconPacket {
            peer_id,
            endpoints,
            session,
            sequence,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let field = self
            .bytes
            .get(self.at..)
            .and_then(|rest| rest.get(..N))
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(Error::TooShort {
                at: self.at,
                needed: N - self.bytes.len().saturating_sub(self.at).min(N),
            })?;
        self.at += N;
        Ok(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> BeaconPacket {
        BeaconPacket::new(
            PeerId::from_bytes([9; 32]),
            vec![
                "tcp://192.0.2.1:4000".parse().expect("ep"),
                "rudp://[2001:db8::1]:4001".parse().expect("ep"),
            ],
            0x0102_0304_0506_0708,
            3,
        )
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = sample().encode().expect("encode");
        assert_eq!(&bytes[..4], b"CRBN");
        assert_eq!(bytes[4], 1);
        assert_eq!(&bytes[5..37], &[9; 32]);
        assert_eq!(&bytes[37..45], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&bytes[45..53], &[0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(bytes[53], 2);
        assert_eq!(&bytes[54..62], &[1, 4, 192, 0, 2, 1, 0x0f, 0xa0]);
        assert_eq!(bytes.len(), 54 + 8 + 20);
    }

    #[test]
    fn largest_packet_fits() {
        let eps = vec!["rudp://[2001:db8::1]:1".parse().expect("ep"); MAX_ENDPOINTS];
        let packet = BeaconPacket::new(PeerId::from_bytes([1; 32]), eps, 0, 0);
        let bytes = packet.encode().expect("encode");
        assert_eq!(bytes.len(), 374);
        assert!(bytes.len() <= MAX_PACKET_LEN);
        assert_eq!(BeaconPacket::decode(&bytes).expect("decode"), packet);
    }

    #[test]
    fn encode_refuses_too_many_endpoints() {
        let eps = vec!["tcp://192.0.2.1:1".parse().expect("ep"); MAX_ENDPOINTS + 1];
        let packet = BeaconPacket::new(PeerId::from_bytes([1; 32]), eps, 0, 0);
        assert!(matches!(
            packet.encode(),
            Err(Error::TooManyEndpoints { count: 17, max: 16 })
        ));
    }

    #[test]
    fn every_malformed_input_has_its_error() {
        let good = sample().encode().expect("encode");
        assert!(matches!(
            BeaconPacket::decode(&[]),
            Err(Error::TooShort { at: 0, needed: 4 })
        ));
        assert!(matches!(
            BeaconPacket::decode(&good[..40]),
            Err(Error::TooShort { at: 37, needed: 5 })
        ));
        assert!(matches!(
            BeaconPacket::decode(&good[..good.len() - 1]),
            Err(Error::TooShort { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(BeaconPacket::decode(&bad), Err(Error::BadMagic)));
        let mut bad = good.clone();
        bad[4] = 2;
        assert!(matches!(
            BeaconPacket::decode(&bad),
            Err(Error::UnknownVersion(2))
        ));
        let mut bad = good.clone();
        bad[53] = 17;
        assert!(matches!(
            BeaconPacket::decode(&bad),
            Err(Error::TooManyEndpoints { count: 17, .. })
        ));
        let mut bad = good.clone();
        bad[54] = 3;
        assert!(matches!(
            BeaconPacket::decode(&bad),
            Err(Error::UnknownProtocol(3))
        ));
        let mut bad = good.clone();
        bad[55] = 5;
        assert!(matches!(
            BeaconPacket::decode(&bad),
            Err(Error::UnknownAddressFamily(5))
        ));
        let mut bad = good.clone();
        bad.extend_from_slice(&[0, 0]);
        assert!(matches!(
            BeaconPacket::decode(&bad),
            Err(Error::TrailingBytes(2))
        ));
        let huge = vec![0u8; MAX_PACKET_LEN + 1];
        assert!(matches!(
            BeaconPacket::decode(&huge),
            Err(Error::TooLong { len: 513, .. })
        ));
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<u16>(),
        )
            .prop_map(|(tcp, v4, raw, port)| {
                let ip = if v4 {
                    IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
                } else {
                    IpAddr::V6(Ipv6Addr::from(raw))
                };
                let proto = if tcp { Protocol::Tcp } else { Protocol::Rudp };
                Endpoint::new(proto, SocketAddr::new(ip, port))
            })
    }

    proptest! {
        #[test]
        fn any_packet_round_trips(
            id in any::<[u8; 32]>(),
            eps in proptest::collection::vec(endpoint(), 0..=MAX_ENDPOINTS),
            session in any::<u64>(),
            sequence in any::<u64>(),
        ) {
            let packet = BeaconPacket::new(PeerId::from_bytes(id), eps, session, sequence);
            let bytes = packet.encode().expect("encode");
            prop_assert!(bytes.len() <= MAX_PACKET_LEN);
            prop_assert_eq!(BeaconPacket::decode(&bytes).expect("decode"), packet);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = BeaconPacket::decode(&bytes);
        }

        #[test]
        fn mutated_packets_never_panic(
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..8),
            cut in 0usize..200,
        ) {
            let mut bytes = sample().encode().expect("encode");
            for (i, b) in flips {
                if let Some(x) = bytes.get_mut(i) { *x = b; }
            }
            bytes.truncate(cut.max(1));
            let _ = BeaconPacket::decode(&bytes);
        }
    }
}
