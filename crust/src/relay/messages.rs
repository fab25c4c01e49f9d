//! The relay messages (frame kind 19): a pure codec, every field bounds-checked.
//!
//! A circuit is named on each link (a connection between two nodes) by the id its opener
//! chose and by who opened it: `Connect` and `Incoming` open one (the sender is the
//! opener); `Accept`, `Connected` and `Refuse` answer one the receiver opened; `Data`,
//! `Credit` and `Close` say in a flag whether the sender opened it. Ids chosen by the two
//! sides of a link never collide that way.

use bytes::{BufMut, Bytes, BytesMut};
use crust_core::PeerId;

use crate::codec::{Malformed, Reader, put_peer};

/// Most circuit bytes in one `Data` message.
pub(crate) const MAX_DATA: usize = 32 * 1024;

/// A circuit as one side of a link knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct CircuitKey {
    /// We opened the circuit on this link.
    pub(crate) ours: bool,
    /// The id its opener chose.
    pub(crate) id: u32,
}

/// Why a relay or the target refused a circuit (stable names in [`RefuseReason::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RefuseReason {
    /// The relay does not relay for others.
    Disabled,
    /// The relay is not connected to the target.
    TargetNotConnected,
    /// The relay runs as many circuits as it allows in total.
    TooManyCircuits,
    /// The relay runs as many circuits for this peer as it allows.
    TooManyForPeer,
    /// The target does not accept relayed connections (or not from this peer now).
    TargetRefused,
    /// The target did not answer the relay in time.
    TargetTimeout,
    /// Asked to relay to oneself, or to the relay itself.
    Invalid,
    /// A reason this build does not know.
    Unknown,
}

impl RefuseReason {
    const ALL: [RefuseReason; 7] = [
        RefuseReason::Disabled,
        RefuseReason::TargetNotConnected,
        RefuseReason::TooManyCircuits,
        RefuseReason::TooManyForPeer,
        RefuseReason::TargetRefused,
        RefuseReason::TargetTimeout,
        RefuseReason::Invalid,
    ];

    fn code(self) -> u8 {
        match self {
            RefuseReason::Disabled => 1,
            RefuseReason::TargetNotConnected => 2,
            RefuseReason::TooManyCircuits => 3,
            RefuseReason::TooManyForPeer => 4,
            RefuseReason::TargetRefused => 5,
            RefuseReason::TargetTimeout => 6,
            RefuseReason::Invalid => 7,
            RefuseReason::Unknown => 0,
        }
    }

    fn from_code(code: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.code() == code)
            .unwrap_or(RefuseReason::Unknown)
    }

    /// A stable name for scripts and errors.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RefuseReason::Disabled => "relay_disabled",
            RefuseReason::TargetNotConnected => "target_not_connected",
            RefuseReason::TooManyCircuits => "too_many_circuits",
            RefuseReason::TooManyForPeer => "too_many_circuits_for_peer",
            RefuseReason::TargetRefused => "target_refused",
            RefuseReason::TargetTimeout => "target_timeout",
            RefuseReason::Invalid => "invalid",
            RefuseReason::Unknown => "unknown",
        }
    }
}

/// Why a circuit (or one direction of it) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CloseReason {
    /// The sender sends no more (its direction is finished; it keeps reading). The
    /// circuit is over when both ends said so.
    Finished,
    /// The sender stopped using the circuit altogether (its connection ended or was
    /// aborted): no more bytes either way.
    Reset,
    /// The circuit carried as many bytes as the relay allows.
    ByteLimit,
    /// The circuit lasted as long as the relay allows.
    TimeLimit,
    /// A side sent more than the other had room for.
    FlowControl,
    /// A link of the circuit was lost.
    LinkLost,
    /// A side broke the protocol.
    Protocol,
    /// A reason this build does not know.
    Unknown,
}

impl CloseReason {
    const ALL: [CloseReason; 7] = [
        CloseReason::Finished,
        CloseReason::Reset,
        CloseReason::ByteLimit,
        CloseReason::TimeLimit,
        CloseReason::FlowControl,
        CloseReason::LinkLost,
        CloseReason::Protocol,
    ];

    fn code(self) -> u8 {
        match self {
            CloseReason::Finished => 0,
            CloseReason::Reset => 6,
            CloseReason::ByteLimit => 1,
            CloseReason::TimeLimit => 2,
            CloseReason::FlowControl => 3,
            CloseReason::LinkLost => 4,
            CloseReason::Protocol => 5,
            CloseReason::Unknown => 255,
        }
    }

    fn from_code(code: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.code() == code)
            .unwrap_or(CloseReason::Unknown)
    }

    /// A stable name for logs.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Finished => "finished",
            CloseReason::Reset => "reset",
            CloseReason::ByteLimit => "byte_limit",
            CloseReason::TimeLimit => "time_limit",
            CloseReason::FlowControl => "flow_control",
            CloseReason::LinkLost => "link_lost",
            CloseReason::Protocol => "protocol",
            CloseReason::Unknown => "unknown",
        }
    }
}

/// One relay message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RelayMessage {
    /// To a relay: open circuit `id` (ours) to `target`.
    Connect { id: u32, target: PeerId },
    /// From a relay: `from` asks for a circuit, named `id` (the relay's) on this link.
    Incoming { id: u32, from: PeerId },
    /// To a relay: we accept its circuit `id`.
    Accept { id: u32 },
    /// From a relay: our circuit `id` reaches its target.
    Connected { id: u32 },
    /// The circuit `id` that the receiver opened is refused.
    Refuse { id: u32, reason: RefuseReason },
    /// Circuit bytes (1 to [`MAX_DATA`]).
    Data {
        id: u32,
        sender_opened: bool,
        data: Bytes,
    },
    /// The sender consumed `bytes` more of what came on the circuit: the other end may send
    /// that much more.
    Credit {
        id: u32,
        sender_opened: bool,
        bytes: u32,
    },
    /// The circuit ended.
    Close {
        id: u32,
        sender_opened: bool,
        reason: CloseReason,
    },
}

const CONNECT: u8 = 1;
const INCOMING: u8 = 2;
const ACCEPT: u8 = 3;
const CONNECTED: u8 = 4;
const REFUSE: u8 = 5;
const DATA: u8 = 6;
const CREDIT: u8 = 7;
const CLOSE: u8 = 8;

impl RelayMessage {
    /// The circuit as the receiver of this message names it.
    pub(crate) fn key_at_receiver(&self) -> CircuitKey {
        match *self {
            RelayMessage::Connect { id, .. } | RelayMessage::Incoming { id, .. } => {
                CircuitKey { ours: false, id }
            }
            RelayMessage::Accept { id }
            | RelayMessage::Connected { id }
            | RelayMessage::Refuse { id, .. } => CircuitKey { ours: true, id },
            RelayMessage::Data {
                id, sender_opened, ..
            }
            | RelayMessage::Credit {
                id, sender_opened, ..
            }
            | RelayMessage::Close {
                id, sender_opened, ..
            } => CircuitKey {
                ours: !sender_opened,
                id,
            },
        }
    }

    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(40);
        match self {
            RelayMessage::Connect { id, target } => {
                out.put_u8(CONNECT);
                out.put_u32(*id);
                put_peer(&mut out, *target);
            }
            RelayMessage::Incoming { id, from } => {
                out.put_u8(INCOMING);
                out.put_u32(*id);
                put_peer(&mut out, *from);
            }
            RelayMessage::Accept { id } => {
                out.put_u8(ACCEPT);
                out.put_u32(*id);
            }
            RelayMessage::Connected { id } => {
                out.put_u8(CONNECTED);
                out.put_u32(*id);
            }
            RelayMessage::Refuse { id, reason } => {
                out.put_u8(REFUSE);
                out.put_u32(*id);
                out.put_u8(reason.code());
            }
            RelayMessage::Data {
                id,
                sender_opened,
                data,
            } => {
                out.reserve(data.len() + 6);
                out.put_u8(DATA);
                out.put_u32(*id);
                out.put_u8(u8::from(*sender_opened));
                out.put_slice(data);
            }
            RelayMessage::Credit {
                id,
                sender_opened,
                bytes,
            } => {
                out.put_u8(CREDIT);
                out.put_u32(*id);
                out.put_u8(u8::from(*sender_opened));
                out.put_u32(*bytes);
            }
            RelayMessage::Close {
                id,
                sender_opened,
                reason,
            } => {
                out.put_u8(CLOSE);
                out.put_u32(*id);
                out.put_u8(u8::from(*sender_opened));
                out.put_u8(reason.code());
            }
        }
        out.freeze()
    }

    /// Decodes a payload; `Data` shares the payload's memory.
    pub(crate) fn decode(payload: &Bytes) -> Result<Self, Malformed> {
        let mut r = Reader(payload);
        let kind = r.u8()?;
        let id = r.u32()?;
        let flag = |r: &mut Reader<'_>| match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed),
        };
        let message = match kind {
            CONNECT => RelayMessage::Connect {
                id,
                target: r.peer()?,
            },
            INCOMING => RelayMessage::Incoming {
                id,
                from: r.peer()?,
            },
            ACCEPT => RelayMessage::Accept { id },
            CONNECTED => RelayMessage::Connected { id },
            REFUSE => RelayMessage::Refuse {
                id,
                reason: RefuseReason::from_code(r.u8()?),
            },
            DATA => {
                let sender_opened = flag(&mut r)?;
                let len = r.0.len();
                if len == 0 || len > MAX_DATA {
                    return Err(Malformed);
                }
                return Ok(RelayMessage::Data {
                    id,
                    sender_opened,
                    data: payload.slice(payload.len() - len..),
                });
            }
            CREDIT => RelayMessage::Credit {
                id,
                sender_opened: flag(&mut r)?,
                bytes: r.u32()?,
            },
            CLOSE => RelayMessage::Close {
                id,
                sender_opened: flag(&mut r)?,
                reason: CloseReason::from_code(r.u8()?),
            },
            _ => return Err(Malformed),
        };
        if !r.is_empty() {
            return Err(Malformed);
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Vec<RelayMessage> {
        let peer = PeerId::from_bytes([7; 32]);
        vec![
            RelayMessage::Connect {
                id: 1,
                target: peer,
            },
            RelayMessage::Incoming {
                id: u32::MAX,
                from: peer,
            },
            RelayMessage::Accept { id: 3 },
            RelayMessage::Connected { id: 4 },
            RelayMessage::Refuse {
                id: 5,
                reason: RefuseReason::TooManyForPeer,
            },
            RelayMessage::Data {
                id: 6,
                sender_opened: true,
                data: Bytes::from(vec![9u8; MAX_DATA]),
            },
            RelayMessage::Credit {
                id: 7,
                sender_opened: false,
                bytes: 65536,
            },
            RelayMessage::Close {
                id: 8,
                sender_opened: true,
                reason: CloseReason::ByteLimit,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in all() {
            assert_eq!(RelayMessage::decode(&message.encode()), Ok(message.clone()));
        }
    }

    #[test]
    fn keys_name_the_circuit_as_the_receiver_knows_it() {
        let theirs = RelayMessage::Connect {
            id: 1,
            target: PeerId::from_bytes([1; 32]),
        };
        assert_eq!(theirs.key_at_receiver(), CircuitKey { ours: false, id: 1 });
        assert_eq!(
            RelayMessage::Accept { id: 2 }.key_at_receiver(),
            CircuitKey { ours: true, id: 2 }
        );
        let data = |sender_opened| RelayMessage::Data {
            id: 3,
            sender_opened,
            data: Bytes::from_static(b"x"),
        };
        assert_eq!(
            data(true).key_at_receiver(),
            CircuitKey { ours: false, id: 3 }
        );
        assert_eq!(
            data(false).key_at_receiver(),
            CircuitKey { ours: true, id: 3 }
        );
    }

    #[test]
    fn bad_payloads_are_malformed() {
        let cases: [&[u8]; 7] = [
            b"",
            &[CONNECT, 0, 0, 0, 1],
            &[DATA, 0, 0, 0, 1, 1],
            &[DATA, 0, 0, 0, 1, 2, 9],
            &[ACCEPT, 0, 0, 0, 1, 0],
            &[99, 0, 0, 0, 1],
            &[CLOSE, 0, 0, 0, 1, 1],
        ];
        for case in cases {
            assert_eq!(
                RelayMessage::decode(&Bytes::copy_from_slice(case)),
                Err(Malformed),
                "{case:?}"
            );
        }
        let mut big = vec![DATA, 0, 0, 0, 1, 1];
        big.extend(std::iter::repeat_n(0, MAX_DATA + 1));
        assert_eq!(RelayMessage::decode(&Bytes::from(big)), Err(Malformed));
        // Unknown reasons decode, as `Unknown`.
        assert_eq!(
            RelayMessage::decode(&Bytes::from_static(&[REFUSE, 0, 0, 0, 1, 200])),
            Ok(RelayMessage::Refuse {
                id: 1,
                reason: RefuseReason::Unknown
            })
        );
    }

    proptest! {
        #[test]
        fn decoding_never_panics_and_reencodes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(message) = RelayMessage::decode(&Bytes::from(bytes)) {
                let again = RelayMessage::decode(&message.encode());
                prop_assert_eq!(again, Ok(message));
            }
        }
    }
}
