//! The gossip codec's side of [`crate::fuzzing`] (feature `fuzzing`).

use std::time::Duration;

use super::messages::{GossipMessage, PeerRecord};
use crate::fuzzing::sample_peer;

/// Decodes `payload`; when it is well formed, checks that it round-trips.
pub(crate) fn gossip_round_trip(payload: &[u8]) -> bool {
    let Ok(message) = GossipMessage::decode(payload) else {
        return false;
    };
    let again = GossipMessage::decode(&message.encode());
    assert_eq!(again, Ok(message), "gossip message does not round-trip");
    true
}

/// One encoding of every message type.
pub(crate) fn gossip_samples() -> Vec<Vec<u8>> {
    let endpoint = |s: &str| s.parse().expect("sample endpoint");
    [
        GossipMessage::Request { want: 16 },
        GossipMessage::Records(vec![
            PeerRecord {
                peer: sample_peer(1),
                age: Duration::ZERO,
                endpoints: vec![
                    endpoint("tcp://192.0.2.1:5483"),
                    endpoint("rudp://[2001:db8::1]:5484"),
                ],
            },
            PeerRecord {
                peer: sample_peer(2),
                age: Duration::from_secs(30),
                endpoints: vec![endpoint("tcp://198.51.100.7:40000")],
            },
        ]),
    ]
    .iter()
    .map(|m| m.encode().to_vec())
    .collect()
}
