//! The hole-punch coordination messages (pure codec; see `docs/protocol.md`).
//!
//! A (the initiator) asks R (a peer connected to both) to introduce it to B:
//!
//! ```text
//! A -> R  Request  { id, target: B, info(A) }
//! R -> B  Offer    { id, origin: A, observed(A by R), info(A) }
//! B -> R  Answer   { id, origin: A, info(B) }        (or Decline { id, origin: A, reason })
//! R -> A  Answered { id, responder: B, observed(B by R), info(B) }   (or Refused)
//! A -> R  Sync     { id, target: B }                 A waits half the measured round trip,
//! R -> B  Go       { id, origin: A }                 B starts when Go arrives: both punch.
//! ```
//!
//! Every message travels on an authenticated connection, so R knows who sent it and
//! stamps the origin itself; R forwards an `Answer`, `Decline` or `Sync` only for a request
//! it relayed between exactly those two peers.

use bytes::{BufMut, Bytes, BytesMut};
use crust_core::{Endpoint, PeerId};

use crate::codec::{Malformed, Reader, put_endpoint, put_peer};

/// Candidates one side may list (observed, mapped and LAN endpoints of both protocols).
pub(crate) const MAX_CANDIDATES: usize = 16;

/// What a side says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PunchInfo {
    /// Its NAT, as its classifier sees it.
    pub(crate) nat: NatSummary,
    /// The nonce its probe datagrams will carry.
    pub(crate) nonce: u64,
    /// Where it may be reached: observed external endpoints, mapped ones, LAN addresses.
    pub(crate) candidates: Vec<Candidate>,
}

/// A side's NAT in a few bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NatSummary {
    pub(crate) class: NatClass,
    /// The step between ports an endpoint-dependent NAT allocated, when constant.
    pub(crate) port_delta: Option<i16>,
}

/// The NAT classes as they travel (the names are [`crate::Reachability::nat_class`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NatClass {
    Unknown = 0,
    Public = 1,
    Mapped = 2,
    Cone = 3,
    FullCone = 4,
    AddressRestricted = 5,
    PortRestricted = 6,
    Symmetric = 7,
}

impl NatClass {
    pub(crate) fn from_name(name: &str) -> Self {
        match name {
            "public" => NatClass::Public,
            "mapped" => NatClass::Mapped,
            "cone" => NatClass::Cone,
            "full_cone" => NatClass::FullCone,
            "address_restricted" => NatClass::AddressRestricted,
            "port_restricted" => NatClass::PortRestricted,
            "symmetric" => NatClass::Symmetric,
            _ => NatClass::Unknown,
        }
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            NatClass::Unknown => "unknown",
            NatClass::Public => "public",
            NatClass::Mapped => "mapped",
            NatClass::Cone => "cone",
            NatClass::FullCone => "full_cone",
            NatClass::AddressRestricted => "address_restricted",
            NatClass::PortRestricted => "port_restricted",
            NatClass::Symmetric => "symmetric",
        }
    }

    fn from_byte(b: u8) -> Result<Self, Malformed> {
        Ok(match b {
            0 => NatClass::Unknown,
            1 => NatClass::Public,
            2 => NatClass::Mapped,
            3 => NatClass::Cone,
            4 => NatClass::FullCone,
            5 => NatClass::AddressRestricted,
            6 => NatClass::PortRestricted,
            7 => NatClass::Symmetric,
            _ => return Err(Malformed),
        })
    }
}

/// Where a candidate endpoint comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CandidateKind {
    /// A gateway maps it for us: dialable as it is.
    Mapped = 1,
    /// Observers agree on it (our NAT's mapping of a listening socket).
    Observed = 2,
    /// An interface address (reachable on a shared LAN).
    Local = 3,
}

/// One candidate endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) kind: CandidateKind,
    pub(crate) endpoint: Endpoint,
}

/// Why a punch was refused (by the coordinator or the target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefuseReason {
    /// The coordinator is not connected to the target.
    TargetNotConnected = 1,
    /// The coordinator relays no more coordinations for now (its limits).
    CoordinatorBusy = 2,
    /// The target accepts no more punches for now (its limits).
    TargetBusy = 3,
    /// The target is already connected to the initiator.
    AlreadyConnected = 4,
    /// The target punches towards the initiator itself (the lower `PeerId`'s attempt goes on).
    Crossed = 5,
    /// Both sides are behind symmetric NATs: no punch can work.
    BothSymmetric = 6,
}

impl RefuseReason {
    fn from_byte(b: u8) -> Result<Self, Malformed> {
        Ok(match b {
            1 => RefuseReason::TargetNotConnected,
            2 => RefuseReason::CoordinatorBusy,
            3 => RefuseReason::TargetBusy,
            4 => RefuseReason::AlreadyConnected,
            5 => RefuseReason::Crossed,
            6 => RefuseReason::BothSymmetric,
            _ => return Err(Malformed),
        })
    }

    /// A stable name for scripts.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            RefuseReason::TargetNotConnected => "target_not_connected",
            RefuseReason::CoordinatorBusy => "coordinator_busy",
            RefuseReason::TargetBusy => "target_busy",
            RefuseReason::AlreadyConnected => "already_connected",
            RefuseReason::Crossed => "crossed",
            RefuseReason::BothSymmetric => "both_symmetric",
        }
    }
}

/// A coordination message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PunchMessage {
    /// A → R: introduce me to `target`.
    Request {
        id: u64,
        target: PeerId,
        info: PunchInfo,
    },
    /// R → B: `origin` wants to punch to you; R sees it at `observed`.
    Offer {
        id: u64,
        origin: PeerId,
        observed: Endpoint,
        info: PunchInfo,
    },
    /// B → R: my side, for `origin`'s request `id`.
    Answer {
        id: u64,
        origin: PeerId,
        info: PunchInfo,
    },
    /// B → R: no, for `origin`'s request `id`.
    Decline {
        id: u64,
        origin: PeerId,
        reason: RefuseReason,
    },
    /// R → A: `responder`'s side; R sees it at `observed`.
    Answered {
        id: u64,
        responder: PeerId,
        observed: Endpoint,
        info: PunchInfo,
    },
    /// R → A: request `id` refused by `by` (R itself or the target).
    Refused {
        id: u64,
        by: PeerId,
        reason: RefuseReason,
    },
    /// A → R: start the punch with `target` (A starts half a round trip later).
    Sync { id: u64, target: PeerId },
    /// R → B: start now.
    Go { id: u64, origin: PeerId },
}

const REQUEST: u8 = 1;
const OFFER: u8 = 2;
const ANSWER: u8 = 3;
const DECLINE: u8 = 4;
const ANSWERED: u8 = 5;
const REFUSED: u8 = 6;
const SYNC: u8 = 7;
const GO: u8 = 8;

impl PunchMessage {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(256);
        match self {
            PunchMessage::Request { id, target, info } => {
                head(&mut out, REQUEST, *id, *target);
                put_info(&mut out, info);
            }
            PunchMessage::Offer {
                id,
                origin,
                observed,
                info,
            } => {
                head(&mut out, OFFER, *id, *origin);
                put_endpoint(&mut out, *observed);
                put_info(&mut out, info);
            }
            PunchMessage::Answer { id, origin, info } => {
                head(&mut out, ANSWER, *id, *origin);
                put_info(&mut out, info);
            }
            PunchMessage::Decline { id, origin, reason } => {
                head(&mut out, DECLINE, *id, *origin);
                out.put_u8(*reason as u8);
            }
            PunchMessage::Answered {
                id,
                responder,
                observed,
                info,
            } => {
                head(&mut out, ANSWERED, *id, *responder);
                put_endpoint(&mut out, *observed);
                put_info(&mut out, info);
            }
            PunchMessage::Refused { id, by, reason } => {
                head(&mut out, REFUSED, *id, *by);
                out.put_u8(*reason as u8);
            }
            PunchMessage::Sync { id, target } => head(&mut out, SYNC, *id, *target),
            PunchMessage::Go { id, origin } => head(&mut out, GO, *id, *origin),
        }
        out.freeze()
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader(payload);
        let kind = r.u8()?;
        let id = r.u64()?;
        let peer = r.peer()?;
        let message = match kind {
            REQUEST => PunchMessage::Request {
                id,
                target: peer,
                info: read_info(&mut r)?,
            },
            OFFER => PunchMessage::Offer {
                id,
                origin: peer,
                observed: r.endpoint()?,
                info: read_info(&mut r)?,
            },
            ANSWER => PunchMessage::Answer {
                id,
                origin: peer,
                info: read_info(&mut r)?,
            },
            DECLINE => PunchMessage::Decline {
                id,
                origin: peer,
                reason: RefuseReason::from_byte(r.u8()?)?,
            },
            ANSWERED => PunchMessage::Answered {
                id,
                responder: peer,
                observed: r.endpoint()?,
                info: read_info(&mut r)?,
            },
            REFUSED => PunchMessage::Refused {
                id,
                by: peer,
                reason: RefuseReason::from_byte(r.u8()?)?,
            },
            SYNC => PunchMessage::Sync { id, target: peer },
            GO => PunchMessage::Go { id, origin: peer },
            _ => return Err(Malformed),
        };
        if !r.is_empty() {
            return Err(Malformed);
        }
        Ok(message)
    }
}

fn head(out: &mut BytesMut, kind: u8, id: u64, peer: PeerId) {
    out.put_u8(kind);
    out.put_u64(id);
    put_peer(out, peer);
}

fn put_info(out: &mut BytesMut, info: &PunchInfo) {
    out.put_u8(info.nat.class as u8);
    match info.nat.port_delta {
        Some(delta) => {
            out.put_u8(1);
            out.put_i16(delta);
        }
        None => out.put_u8(0),
    }
    out.put_u64(info.nonce);
    let candidates = &info.candidates[..info.candidates.len().min(MAX_CANDIDATES)];
    out.put_u8(candidates.len() as u8);
    for candidate in candidates {
        out.put_u8(candidate.kind as u8);
        put_endpoint(out, candidate.endpoint);
    }
}

fn read_info(r: &mut Reader<'_>) -> Result<PunchInfo, Malformed> {
    let class = NatClass::from_byte(r.u8()?)?;
    let port_delta = match r.u8()? {
        0 => None,
        1 => Some(i16::from_be_bytes(r.take::<2>()?)),
        _ => return Err(Malformed),
    };
    let nonce = r.u64()?;
    let n = usize::from(r.u8()?);
    if n > MAX_CANDIDATES {
        return Err(Malformed);
    }
    let mut candidates = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = match r.u8()? {
            1 => CandidateKind::Mapped,
            2 => CandidateKind::Observed,
            3 => CandidateKind::Local,
            _ => return Err(Malformed),
        };
        candidates.push(Candidate {
            kind,
            endpoint: r.endpoint()?,
        });
    }
    Ok(PunchInfo {
        nat: NatSummary { class, port_delta },
        nonce,
        candidates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32])
    }

    fn info() -> PunchInfo {
        PunchInfo {
            nat: NatSummary {
                class: NatClass::Symmetric,
                port_delta: Some(-2),
            },
            nonce: 0xdead_beef,
            candidates: vec![
                Candidate {
                    kind: CandidateKind::Observed,
                    endpoint: "rudp://198.51.100.7:4000".parse().expect("ep"),
                },
                Candidate {
                    kind: CandidateKind::Local,
                    endpoint: "tcp://[2001:db8::1]:4001".parse().expect("ep"),
                },
            ],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let observed: Endpoint = "tcp://203.0.113.9:555".parse().expect("ep");
        let messages = [
            PunchMessage::Request {
                id: 1,
                target: peer(2),
                info: info(),
            },
            PunchMessage::Offer {
                id: 1,
                origin: peer(1),
                observed,
                info: info(),
            },
            PunchMessage::Answer {
                id: 1,
                origin: peer(1),
                info: info(),
            },
            PunchMessage::Decline {
                id: 1,
                origin: peer(1),
                reason: RefuseReason::TargetBusy,
            },
            PunchMessage::Answered {
                id: 1,
                responder: peer(2),
                observed,
                info: info(),
            },
            PunchMessage::Refused {
                id: 1,
                by: peer(3),
                reason: RefuseReason::BothSymmetric,
            },
            PunchMessage::Sync {
                id: 1,
                target: peer(2),
            },
            PunchMessage::Go {
                id: 1,
                origin: peer(1),
            },
        ];
        for message in messages {
            let bytes = message.encode();
            assert_eq!(PunchMessage::decode(&bytes), Ok(message.clone()));
            // Every strict prefix and any trailing byte is refused.
            for cut in 0..bytes.len() {
                assert_eq!(PunchMessage::decode(&bytes[..cut]), Err(Malformed));
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert_eq!(PunchMessage::decode(&longer), Err(Malformed));
        }
    }

    #[test]
    fn too_many_candidates_are_cut_on_encode_and_refused_on_decode() {
        let mut many = info();
        many.candidates = vec![many.candidates[0]; MAX_CANDIDATES + 5];
        let message = PunchMessage::Answer {
            id: 9,
            origin: peer(1),
            info: many,
        };
        let decoded = PunchMessage::decode(&message.encode()).expect("decodes");
        let PunchMessage::Answer { info, .. } = decoded else {
            panic!("not an answer");
        };
        assert_eq!(info.candidates.len(), MAX_CANDIDATES);
        let mut forged = message.encode().to_vec();
        // The count byte sits after kind, id, peer, class, delta flag + delta, nonce.
        let count_at = 1 + 8 + 32 + 1 + 3 + 8;
        forged[count_at] = (MAX_CANDIDATES + 1) as u8;
        assert_eq!(PunchMessage::decode(&forged), Err(Malformed));
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = PunchMessage::decode(&bytes);
        }
    }
}
