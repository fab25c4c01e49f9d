//! **Not API.** Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by
//! default): the decoders of the facade's own control payloads are crate-private, so the
//! fuzzers reach them through these functions. Anything here may change or go away in any
//! release; do not use it outside fuzzing.
//!
//! Each `decode_*` function decodes one payload as received from a peer and returns whether
//! it was well formed. It panics only on a bug: when a payload that decoded re-encodes to
//! something that does not decode to the same message. Each `*_seeds` function returns
//! valid encodings, the starting corpus of the matching target.

use std::net::SocketAddr;

use crust_core::{Endpoint, PeerId};

use crate::delivery::Delivered;
use crate::filtering::ProbeMessage;
use crate::liveness::{decode_nonce, encode_nonce};
use crate::punch::fuzzing::{punch_round_trip, punch_samples};

/// Decodes a hole-punch coordination payload (frame kind 17); `true` when well formed.
///
/// # Panics
///
/// When a decoded message does not survive re-encoding (a codec bug).
pub fn decode_punch_message(payload: &[u8]) -> bool {
    punch_round_trip(payload)
}

/// Valid hole-punch coordination payloads, one per message type.
pub fn punch_message_seeds() -> Vec<Vec<u8>> {
    punch_samples()
}

/// Decodes a relay payload (frame kind 19); `true` when well formed.
///
/// # Panics
///
/// When a decoded message does not survive re-encoding (a codec bug).
pub fn decode_relay_message(payload: &[u8]) -> bool {
    crate::relay::fuzzing::relay_round_trip(payload)
}

/// Valid relay payloads, one per message type.
pub fn relay_message_seeds() -> Vec<Vec<u8>> {
    crate::relay::fuzzing::relay_samples()
}

/// Decodes a gossip payload (frame kind 4, peer records); `true` when well formed.
///
/// # Panics
///
/// When a decoded message does not survive re-encoding (a codec bug).
pub fn decode_gossip_message(payload: &[u8]) -> bool {
    crate::gossip::fuzzing::gossip_round_trip(payload)
}

/// Valid gossip payloads, one per message type.
pub fn gossip_message_seeds() -> Vec<Vec<u8>> {
    crate::gossip::fuzzing::gossip_samples()
}

/// Decodes a NAT filtering-test payload (request, forward, report); `true` when well formed.
///
/// # Panics
///
/// When a decoded message does not survive re-encoding (a codec bug).
pub fn decode_probe_message(payload: &[u8]) -> bool {
    let Ok(message) = ProbeMessage::decode(payload) else {
        return false;
    };
    let again = ProbeMessage::decode(&message.encode());
    assert_eq!(
        again,
        Ok(message),
        "filtering-test message does not round-trip"
    );
    true
}

/// Valid NAT filtering-test payloads, one per message type.
pub fn probe_message_seeds() -> Vec<Vec<u8>> {
    let target: SocketAddr = ([198, 51, 100, 7], 4000).into();
    [
        ProbeMessage::Request {
            nonce: 7,
            exclude: vec![[192, 0, 2, 1].into(), "2001:db8::1".parse().expect("ip")],
        },
        ProbeMessage::Forward { nonce: 8, target },
        ProbeMessage::Report {
            nonce: 9,
            other_port: true,
            other_host: false,
        },
    ]
    .iter()
    .map(|m| m.encode().to_vec())
    .collect()
}

/// Decodes a ping or pong payload (the nonce); `true` when well formed.
///
/// # Panics
///
/// When a decoded nonce does not survive re-encoding (a codec bug).
pub fn decode_ping_nonce(payload: &[u8]) -> bool {
    let Some(nonce) = decode_nonce(payload) else {
        return false;
    };
    assert_eq!(decode_nonce(&encode_nonce(nonce)), Some(nonce));
    true
}

/// Valid ping/pong payloads.
pub fn ping_nonce_seeds() -> Vec<Vec<u8>> {
    vec![
        encode_nonce(0).to_vec(),
        encode_nonce(0x0123_4567_89ab_cdef).to_vec(),
    ]
}

/// Decodes a delivery acknowledgement payload (frame kind 18); `true` when well formed.
///
/// # Panics
///
/// When a decoded acknowledgement does not re-encode to the input (a codec bug; reserved
/// flag bits are the one thing not kept).
pub fn decode_delivered(payload: &[u8]) -> bool {
    let Some(delivered) = Delivered::decode(payload) else {
        return false;
    };
    let again = delivered.encode();
    assert_eq!(again[..8], payload[..8], "count does not round-trip");
    assert_eq!(again[8], payload[8] & 1, "closing flag does not round-trip");
    assert_eq!(Delivered::decode(&again), Some(delivered));
    true
}

/// Valid delivery acknowledgement payloads.
pub fn delivered_seeds() -> Vec<Vec<u8>> {
    [(0, false), (300, false), (u64::MAX, true)]
        .into_iter()
        .map(|(count, closing)| Delivered { count, closing }.encode().to_vec())
        .collect()
}

/// Sample values the seed functions build messages from.
pub(crate) fn sample_peer(b: u8) -> PeerId {
    PeerId::from_bytes([b; 32])
}

/// A sample endpoint of the given text.
pub(crate) fn sample_endpoint(text: &str) -> Endpoint {
    text.parse().expect("valid sample endpoint")
}
