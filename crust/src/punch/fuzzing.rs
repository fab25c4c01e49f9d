//! The hole-punch codec's side of [`crate::fuzzing`] (feature `fuzzing`).

use super::messages::{
    Candidate, CandidateKind, NatClass, NatSummary, PunchInfo, PunchMessage, RefuseReason,
};
use crate::fuzzing::{sample_endpoint, sample_peer};

/// Decodes `payload`; when it is well formed, checks that it round-trips.
pub(crate) fn punch_round_trip(payload: &[u8]) -> bool {
    let Ok(message) = PunchMessage::decode(payload) else {
        return false;
    };
    let again = PunchMessage::decode(&message.encode());
    assert_eq!(again, Ok(message), "punch message does not round-trip");
    true
}

/// One encoding of every message type.
pub(crate) fn punch_samples() -> Vec<Vec<u8>> {
    let info = PunchInfo {
        nat: NatSummary {
            class: NatClass::Symmetric,
            port_delta: Some(-2),
        },
        nonce: 0xdead_beef,
        candidates: vec![
            Candidate {
                kind: CandidateKind::Observed,
                endpoint: sample_endpoint("rudp://198.51.100.7:4000"),
            },
            Candidate {
                kind: CandidateKind::Local,
                endpoint: sample_endpoint("tcp://[2001:db8::1]:4001"),
            },
        ],
    };
    let observed = sample_endpoint("tcp://203.0.113.9:555");
    let (a, b) = (sample_peer(1), sample_peer(2));
    let reason = RefuseReason::TargetBusy;
    [
        PunchMessage::Request {
            id: 1,
            target: b,
            info: info.clone(),
        },
        PunchMessage::Offer {
            id: 1,
            origin: a,
            observed,
            info: info.clone(),
        },
        PunchMessage::Answer {
            id: 1,
            origin: a,
            info: info.clone(),
        },
        PunchMessage::Decline {
            id: 1,
            origin: a,
            reason,
        },
        PunchMessage::Answered {
            id: 1,
            responder: b,
            observed,
            info,
        },
        PunchMessage::Refused {
            id: 1,
            by: b,
            reason,
        },
        PunchMessage::Sync { id: 1, target: b },
        PunchMessage::Go { id: 1, origin: a },
    ]
    .iter()
    .map(|m| m.encode().to_vec())
    .collect()
}
