//! The gossip messages (frame kind 4, `PeerExchange`), a pure codec. Byte by byte in
//! `docs/protocol.md`:
//!
//! ```text
//! Request:  [1] [want: u8]
//! Records:  [2] [count: u8] then count × ([peer: 32] [age_secs: u32] [n: u8] n × endpoint)
//! endpoint: [protocol: u8 (1 TCP, 2 rUDP)] [family: u8 (4, 6)] [ip: 4 or 16] [port: u16]
//! ```
//!
//! Integers are big-endian. A count above [`MAX_RECORDS_PER_MESSAGE`], a record without an
//! endpoint or with more than [`MAX_ENDPOINTS_PER_RECORD`], an unknown type or trailing
//! bytes make the message malformed.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use crust_core::{Endpoint, PeerId};

use super::{MAX_ENDPOINTS_PER_RECORD, MAX_RECORDS_PER_MESSAGE};
use crate::codec::{Malformed, Reader, put_endpoint, put_peer};

const REQUEST: u8 = 1;
const RECORDS: u8 = 2;

/// What one peer says about where another (or itself) may be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerRecord {
    pub(crate) peer: PeerId,
    /// How long ago the sender last heard this from the peer itself (whole seconds).
    pub(crate) age: Duration,
    /// 1 to [`MAX_ENDPOINTS_PER_RECORD`] endpoints.
    pub(crate) endpoints: Vec<Endpoint>,
}

/// A gossip message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GossipMessage {
    /// "Send me up to `want` records" (answered; this implementation sends none itself).
    Request { want: u8 },
    /// Records, the sender's own first when it has endpoints.
    Records(Vec<PeerRecord>),
}

impl GossipMessage {
    /// The message's bytes. Records beyond [`MAX_RECORDS_PER_MESSAGE`] and endpoints beyond
    /// [`MAX_ENDPOINTS_PER_RECORD`] are left out; records without endpoints too.
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            GossipMessage::Request { want } => {
                out.put_u8(REQUEST);
                out.put_u8(*want);
            }
            GossipMessage::Records(records) => {
                out.put_u8(RECORDS);
                let records: Vec<&PeerRecord> = records
                    .iter()
                    .filter(|r| !r.endpoints.is_empty())
                    .take(MAX_RECORDS_PER_MESSAGE)
                    .collect();
                out.put_u8(records.len() as u8);
                for record in records {
                    put_peer(&mut out, record.peer);
                    out.put_u32(u32::try_from(record.age.as_secs()).unwrap_or(u32::MAX));
                    let endpoints =
                        &record.endpoints[..record.endpoints.len().min(MAX_ENDPOINTS_PER_RECORD)];
                    out.put_u8(endpoints.len() as u8);
                    for endpoint in endpoints {
                        put_endpoint(&mut out, *endpoint);
                    }
                }
            }
        }
        out.freeze()
    }

    /// Parses a message; anything malformed is an error, never a panic.
    pub(crate) fn decode(payload: &[u8]) -> Result<Self, Malformed> {
        let mut reader = Reader(payload);
        let message = match reader.u8()? {
            REQUEST => GossipMessage::Request { want: reader.u8()? },
            RECORDS => {
                let count = usize::from(reader.u8()?);
                if count > MAX_RECORDS_PER_MESSAGE {
                    return Err(Malformed);
                }
                let mut records = Vec::with_capacity(count);
                for _ in 0..count {
                    let peer = reader.peer()?;
                    let age = Duration::from_secs(u64::from(reader.u32()?));
                    let n = usize::from(reader.u8()?);
                    if n == 0 || n > MAX_ENDPOINTS_PER_RECORD {
                        return Err(Malformed);
                    }
                    let mut endpoints = Vec::with_capacity(n);
                    for _ in 0..n {
                        endpoints.push(reader.endpoint()?);
                    }
                    records.push(PeerRecord {
                        peer,
                        age,
                        endpoints,
                    });
                }
                GossipMessage::Records(records)
            }
            _ => return Err(Malformed),
        };
        if !reader.is_empty() {
            return Err(Malformed);
        }
        Ok(message)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, SocketAddr};

    use crust_core::Protocol;
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
        let ip = prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ];
        (any::<bool>(), ip, any::<u16>()).prop_map(|(tcp, ip, port)| {
            let protocol = if tcp { Protocol::Tcp } else { Protocol::Rudp };
            Endpoint::new(protocol, SocketAddr::new(ip, port))
        })
    }

    pub(crate) fn arb_record() -> impl Strategy<Value = PeerRecord> {
        (
            any::<[u8; 32]>(),
            any::<u32>(),
            proptest::collection::vec(arb_endpoint(), 1..=MAX_ENDPOINTS_PER_RECORD),
        )
            .prop_map(|(id, age, endpoints)| PeerRecord {
                peer: PeerId::from_bytes(id),
                age: Duration::from_secs(u64::from(age)),
                endpoints,
            })
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = GossipMessage> {
        prop_oneof![
            any::<u8>().prop_map(|want| GossipMessage::Request { want }),
            proptest::collection::vec(arb_record(), 0..=MAX_RECORDS_PER_MESSAGE)
                .prop_map(GossipMessage::Records),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(message in arb_message()) {
            let bytes = message.encode();
            prop_assert_eq!(GossipMessage::decode(&bytes), Ok(message));
        }

        #[test]
        fn truncated_or_extended_is_malformed(message in arb_message(), cut in any::<prop::sample::Index>()) {
            let bytes = message.encode();
            let at = cut.index(bytes.len());
            prop_assert_eq!(GossipMessage::decode(&bytes[..at]), Err(Malformed));
            let mut longer = bytes.to_vec();
            longer.push(0);
            prop_assert_eq!(GossipMessage::decode(&longer), Err(Malformed));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = GossipMessage::decode(&bytes);
        }
    }

    #[test]
    fn bounds_are_enforced_on_both_sides() {
        let record = PeerRecord {
            peer: PeerId::from_bytes([7; 32]),
            age: Duration::from_secs(3),
            endpoints: (1..=10)
                .map(|p| Endpoint::new(Protocol::Tcp, SocketAddr::from(([10, 0, 0, 1], p))))
                .collect(),
        };
        let many = GossipMessage::Records(vec![record; 50]);
        let Ok(GossipMessage::Records(decoded)) = GossipMessage::decode(&many.encode()) else {
            panic!("decodes");
        };
        assert_eq!(decoded.len(), MAX_RECORDS_PER_MESSAGE);
        assert!(
            decoded
                .iter()
                .all(|r| r.endpoints.len() == MAX_ENDPOINTS_PER_RECORD)
        );
        // A count byte above the maximum is refused before anything is read.
        assert_eq!(GossipMessage::decode(&[RECORDS, 33]), Err(Malformed));
        // A record without endpoints is refused.
        let mut empty = vec![RECORDS, 1];
        empty.extend_from_slice(&[0; 32]);
        empty.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert_eq!(GossipMessage::decode(&empty), Err(Malformed));
        assert_eq!(GossipMessage::decode(&[9]), Err(Malformed));
        assert_eq!(GossipMessage::decode(&[]), Err(Malformed));
    }
}
