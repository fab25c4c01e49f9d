//! The relay codec's side of [`crate::fuzzing`] (feature `fuzzing`).

use bytes::Bytes;

use super::messages::{CloseReason, RefuseReason, RelayMessage};
use crate::fuzzing::sample_peer;

/// Decodes `payload`; when it is well formed, checks that it round-trips.
pub(crate) fn relay_round_trip(payload: &[u8]) -> bool {
    let Ok(message) = RelayMessage::decode(&Bytes::copy_from_slice(payload)) else {
        return false;
    };
    let again = RelayMessage::decode(&message.encode());
    assert_eq!(again, Ok(message), "relay message does not round-trip");
    true
}

/// One encoding of every message type.
pub(crate) fn relay_samples() -> Vec<Vec<u8>> {
    [
        RelayMessage::Connect {
            id: 1,
            target: sample_peer(2),
        },
        RelayMessage::Incoming {
            id: 2,
            from: sample_peer(1),
        },
        RelayMessage::Accept { id: 2 },
        RelayMessage::Connected { id: 1 },
        RelayMessage::Refuse {
            id: 1,
            reason: RefuseReason::TooManyCircuits,
        },
        RelayMessage::Data {
            id: 1,
            sender_opened: true,
            data: Bytes::from_static(b"\x16\x03\x01 tls bytes"),
        },
        RelayMessage::Credit {
            id: 1,
            sender_opened: false,
            bytes: 65536,
        },
        RelayMessage::Close {
            id: 1,
            sender_opened: true,
            reason: CloseReason::Finished,
        },
    ]
    .iter()
    .map(|m| m.encode().to_vec())
    .collect()
}
