//! What a relay (R) remembers about the circuits it carries, and what it allows: a pure
//! table with time passed in.
//!
//! A circuit joins a link to its initiator (A) and a link to its target (B). The table
//! checks every `Data` against the circuit's byte and time limits and the flow-control
//! window (a side may have at most [`WINDOW`] bytes on their way that the other end has
//! not credited back), so a relay never buffers more than a window per direction.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crust_core::PeerId;

use super::messages::{CircuitKey, CloseReason, RefuseReason};

/// Bytes one end may send on a circuit before the other end credits them back (each
/// direction; protocol constant).
pub(crate) const WINDOW: u64 = 256 * 1024;

/// How long a relay waits for the target to accept a circuit.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A circuit end: the link (the peer at the other end of it) and the circuit's name there.
pub(crate) type End = (PeerId, CircuitKey);

/// What a relay allows (see [`RelayConfig`](crate::RelayConfig) for the public knobs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) enabled: bool,
    pub(crate) max_circuits: usize,
    pub(crate) max_circuits_per_peer: usize,
    pub(crate) max_bytes_per_circuit: u64,
    pub(crate) max_duration: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Initiator,
    Target,
}

#[derive(Debug)]
struct Circuit {
    initiator: End,
    target: End,
    opened: Instant,
    established: bool,
    bytes: u64,
    /// Bytes sent by the initiator (0) and the target (1) not yet credited back.
    in_flight: [u64; 2],
    /// The initiator (0) and the target (1) finished sending.
    finished: [bool; 2],
}

impl Circuit {
    fn end(&self, side: Side) -> End {
        match side {
            Side::Initiator => self.initiator,
            Side::Target => self.target,
        }
    }

    fn other(&self, side: Side) -> End {
        match side {
            Side::Initiator => self.target,
            Side::Target => self.initiator,
        }
    }
}

/// What to do with a `Data` or `Credit` that came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Send it on to this end.
    To(End),
    /// The circuit is over: tell both ends (the sender's end first).
    Close { ends: [End; 2], reason: CloseReason },
    /// No such circuit (it may just have closed): drop it.
    Unknown,
}

/// The circuits a relay carries.
#[derive(Debug)]
pub(crate) struct CircuitTable {
    limits: Limits,
    circuits: HashMap<u64, Circuit>,
    index: HashMap<End, (u64, Side)>,
    next_circuit: u64,
}

impl CircuitTable {
    pub(crate) fn new(limits: Limits) -> Self {
        CircuitTable {
            limits,
            circuits: HashMap::new(),
            index: HashMap::new(),
            next_circuit: 0,
        }
    }

    /// True when `end` names a circuit we carry.
    pub(crate) fn contains(&self, end: End) -> bool {
        self.index.contains_key(&end)
    }

    /// Circuits carried (pending ones included).
    pub(crate) fn len(&self) -> usize {
        self.circuits.len()
    }

    fn per_peer(&self, peer: PeerId) -> usize {
        self.circuits
            .values()
            .filter(|c| c.initiator.0 == peer || c.target.0 == peer)
            .count()
    }

    /// `from` asks (naming the circuit `key` on its link) for a circuit to `target`, which
    /// we would name `target_key` on the target's link (a name not in use there).
    pub(crate) fn open(
        &mut self,
        from: PeerId,
        key: CircuitKey,
        target: PeerId,
        target_connected: bool,
        now: Instant,
        target_key: CircuitKey,
    ) -> Result<(), RefuseReason> {
        if !self.limits.enabled {
            return Err(RefuseReason::Disabled);
        }
        if from == target || self.index.contains_key(&(from, key)) {
            return Err(RefuseReason::Invalid);
        }
        if !target_connected {
            return Err(RefuseReason::TargetNotConnected);
        }
        if self.circuits.len() >= self.limits.max_circuits {
            return Err(RefuseReason::TooManyCircuits);
        }
        if self.per_peer(from) >= self.limits.max_circuits_per_peer
            || self.per_peer(target) >= self.limits.max_circuits_per_peer
        {
            return Err(RefuseReason::TooManyForPeer);
        }
        if self.index.contains_key(&(target, target_key)) {
            return Err(RefuseReason::Invalid);
        }
        let number = self.next_circuit;
        self.next_circuit += 1;
        self.circuits.insert(
            number,
            Circuit {
                initiator: (from, key),
                target: (target, target_key),
                opened: now,
                established: false,
                bytes: 0,
                in_flight: [0, 0],
                finished: [false, false],
            },
        );
        self.index.insert((from, key), (number, Side::Initiator));
        self.index
            .insert((target, target_key), (number, Side::Target));
        Ok(())
    }

    fn remove(&mut self, number: u64) -> Option<Circuit> {
        let circuit = self.circuits.remove(&number)?;
        self.index.remove(&circuit.initiator);
        self.index.remove(&circuit.target);
        Some(circuit)
    }

    /// The target answered the circuit it knows as `key` on `link`: the initiator's end,
    /// to tell (`Connected` or `Refuse`). A refused circuit is gone.
    pub(crate) fn answer(&mut self, link: PeerId, key: CircuitKey, accepted: bool) -> Option<End> {
        let &(number, side) = self.index.get(&(link, key))?;
        let circuit = self.circuits.get_mut(&number)?;
        if side != Side::Target || circuit.established {
            return None;
        }
        let initiator = circuit.initiator;
        if accepted {
            circuit.established = true;
        } else {
            self.remove(number);
        }
        Some(initiator)
    }

    /// `len` circuit bytes came from `link` on the circuit it names `key`.
    pub(crate) fn data(
        &mut self,
        link: PeerId,
        key: CircuitKey,
        len: usize,
        now: Instant,
    ) -> Forward {
        let Some(&(number, side)) = self.index.get(&(link, key)) else {
            return Forward::Unknown;
        };
        let Some(circuit) = self.circuits.get_mut(&number) else {
            return Forward::Unknown;
        };
        let sender = match side {
            Side::Initiator => 0,
            Side::Target => 1,
        };
        circuit.bytes = circuit.bytes.saturating_add(len as u64);
        circuit.in_flight[sender] = circuit.in_flight[sender].saturating_add(len as u64);
        let verdict = if !circuit.established || circuit.finished[sender] {
            Some(CloseReason::Protocol)
        } else if now.saturating_duration_since(circuit.opened) > self.limits.max_duration {
            Some(CloseReason::TimeLimit)
        } else if circuit.bytes > self.limits.max_bytes_per_circuit {
            Some(CloseReason::ByteLimit)
        } else if circuit.in_flight[sender] > WINDOW {
            Some(CloseReason::FlowControl)
        } else {
            None
        };
        match verdict {
            None => Forward::To(circuit.other(side)),
            Some(reason) => {
                let ends = [circuit.end(side), circuit.other(side)];
                self.remove(number);
                Forward::Close { ends, reason }
            }
        }
    }

    /// `link` credits `bytes` back on the circuit it names `key`.
    pub(crate) fn credit(&mut self, link: PeerId, key: CircuitKey, bytes: u32) -> Forward {
        let Some(&(number, side)) = self.index.get(&(link, key)) else {
            return Forward::Unknown;
        };
        let Some(circuit) = self.circuits.get_mut(&number) else {
            return Forward::Unknown;
        };
        // The credit is for what the other side sent.
        let other = match side {
            Side::Initiator => 1,
            Side::Target => 0,
        };
        if !circuit.established || u64::from(bytes) > circuit.in_flight[other] {
            let ends = [circuit.end(side), circuit.other(side)];
            self.remove(number);
            return Forward::Close {
                ends,
                reason: CloseReason::Protocol,
            };
        }
        circuit.in_flight[other] -= u64::from(bytes);
        Forward::To(circuit.other(side))
    }

    /// `link` ended (`reason`) the circuit it names `key`: the other end, to tell. A
    /// [`CloseReason::Finished`] ends only the sender's direction; the circuit is gone once
    /// both directions finished. Any other reason ends it at once.
    pub(crate) fn close(
        &mut self,
        link: PeerId,
        key: CircuitKey,
        reason: CloseReason,
    ) -> Option<End> {
        let &(number, side) = self.index.get(&(link, key))?;
        let circuit = self.circuits.get_mut(&number)?;
        let other = circuit.other(side);
        if reason == CloseReason::Finished {
            let sender = match side {
                Side::Initiator => 0,
                Side::Target => 1,
            };
            circuit.finished[sender] = true;
            if !circuit.finished.iter().all(|f| *f) {
                return Some(other);
            }
        }
        self.remove(number);
        Some(other)
    }

    /// The link to `peer` is gone: every circuit through it ends; the other ends, to tell.
    pub(crate) fn link_lost(&mut self, peer: PeerId) -> Vec<End> {
        let numbers: Vec<(u64, Side)> = self
            .index
            .iter()
            .filter(|((link, _), _)| *link == peer)
            .map(|(_, v)| *v)
            .collect();
        numbers
            .into_iter()
            .filter_map(|(number, side)| self.remove(number).map(|c| c.other(side)))
            .filter(|end| end.0 != peer)
            .collect()
    }

    /// Ends circuits whose target never answered (the initiator gets `Refuse`) and those
    /// past their time limit (both ends get `Close`).
    pub(crate) fn expire(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        let numbers: Vec<u64> = self
            .circuits
            .iter()
            .filter(|(_, c)| {
                let age = now.saturating_duration_since(c.opened);
                (!c.established && age > ANSWER_TIMEOUT) || age > self.limits.max_duration
            })
            .map(|(n, _)| *n)
            .collect();
        for number in numbers {
            if let Some(circuit) = self.remove(number) {
                if circuit.established {
                    expired.closed.push([circuit.initiator, circuit.target]);
                } else {
                    expired.unanswered.push((circuit.initiator, circuit.target));
                }
            }
        }
        expired
    }
}

/// Circuits [`CircuitTable::expire`] ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// (initiator, target) of circuits the target never answered.
    pub(crate) unanswered: Vec<(End, End)>,
    /// Both ends of circuits past their time limit.
    pub(crate) closed: Vec<[End; 2]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn limits() -> Limits {
        Limits {
            enabled: true,
            max_circuits: 3,
            max_circuits_per_peer: 2,
            max_bytes_per_circuit: 1_000_000,
            max_duration: Duration::from_secs(60),
        }
    }

    fn theirs(id: u32) -> CircuitKey {
        CircuitKey { ours: false, id }
    }

    fn ours(id: u32) -> CircuitKey {
        CircuitKey { ours: true, id }
    }

    /// Opens and accepts a circuit; the target's key is `ours(1000 + id)`.
    fn open(table: &mut CircuitTable, a: u8, id: u32, b: u8, now: Instant) -> CircuitKey {
        let key = ours(1000 + id);
        table
            .open(peer(a), theirs(id), peer(b), true, now, key)
            .expect("open");
        assert_eq!(
            table.answer(peer(b), key, true),
            Some((peer(a), theirs(id)))
        );
        key
    }

    #[test]
    fn a_circuit_forwards_both_ways_and_closes() {
        let t0 = Instant::now();
        let mut table = CircuitTable::new(limits());
        let b_key = open(&mut table, 1, 7, 2, t0);
        assert_eq!(
            table.data(peer(1), theirs(7), 100, t0),
            Forward::To((peer(2), b_key))
        );
        assert_eq!(
            table.data(peer(2), b_key, 50, t0),
            Forward::To((peer(1), theirs(7)))
        );
        assert_eq!(
            table.credit(peer(2), b_key, 100),
            Forward::To((peer(1), theirs(7)))
        );
        // Half-closed: the target finished, the initiator may still send.
        assert_eq!(
            table.close(peer(2), b_key, CloseReason::Finished),
            Some((peer(1), theirs(7)))
        );
        assert_eq!(
            table.data(peer(1), theirs(7), 10, t0),
            Forward::To((peer(2), b_key))
        );
        assert!(
            matches!(
                table.data(peer(2), b_key, 1, t0),
                Forward::Close {
                    reason: CloseReason::Protocol,
                    ..
                }
            ),
            "no data after finishing"
        );
        let b_key = open(&mut table, 1, 8, 2, t0);
        table.close(peer(2), b_key, CloseReason::Finished);
        assert_eq!(
            table.close(peer(1), theirs(8), CloseReason::Finished),
            Some((peer(2), b_key))
        );
        assert_eq!(table.len(), 0);
        assert_eq!(table.data(peer(1), theirs(7), 1, t0), Forward::Unknown);
    }

    #[test]
    fn refusals_are_typed() {
        let t0 = Instant::now();
        let mut table = CircuitTable::new(Limits {
            enabled: false,
            ..limits()
        });
        assert_eq!(
            table.open(peer(1), theirs(1), peer(2), true, t0, ours(1)),
            Err(RefuseReason::Disabled)
        );
        let mut table = CircuitTable::new(limits());
        assert_eq!(
            table.open(peer(1), theirs(1), peer(1), true, t0, ours(1)),
            Err(RefuseReason::Invalid)
        );
        assert_eq!(
            table.open(peer(1), theirs(1), peer(2), false, t0, ours(1)),
            Err(RefuseReason::TargetNotConnected)
        );
        open(&mut table, 1, 1, 2, t0);
        open(&mut table, 1, 2, 3, t0);
        assert_eq!(
            table.open(peer(1), theirs(3), peer(4), true, t0, ours(3)),
            Err(RefuseReason::TooManyForPeer),
            "two per peer"
        );
        assert_eq!(
            table.open(peer(5), theirs(1), peer(1), true, t0, ours(1)),
            Err(RefuseReason::TooManyForPeer),
            "targets count too"
        );
        open(&mut table, 5, 1, 6, t0);
        assert_eq!(
            table.open(peer(7), theirs(1), peer(8), true, t0, ours(1)),
            Err(RefuseReason::TooManyCircuits)
        );
        assert_eq!(
            table.open(peer(1), theirs(1), peer(9), true, t0, ours(1)),
            Err(RefuseReason::Invalid),
            "a key in use"
        );
    }

    #[test]
    fn byte_time_and_window_limits_close_the_circuit() {
        let t0 = Instant::now();
        let mut table = CircuitTable::new(Limits {
            max_bytes_per_circuit: 300_000,
            ..limits()
        });
        let b = open(&mut table, 1, 1, 2, t0);
        // Within the window, credited back as the target reads.
        for _ in 0..2 {
            assert!(matches!(
                table.data(peer(1), theirs(1), 100_000, t0),
                Forward::To(_)
            ));
            assert!(matches!(table.credit(peer(2), b, 100_000), Forward::To(_)));
        }
        assert_eq!(
            table.data(peer(1), theirs(1), 100_001, t0),
            Forward::Close {
                ends: [(peer(1), theirs(1)), (peer(2), b)],
                reason: CloseReason::ByteLimit
            }
        );
        let b = open(&mut table, 1, 2, 2, t0);
        assert!(matches!(
            table.data(peer(1), theirs(2), WINDOW as usize, t0),
            Forward::To(_)
        ));
        assert!(matches!(
            table.data(peer(1), theirs(2), 1, t0),
            Forward::Close {
                reason: CloseReason::FlowControl,
                ..
            }
        ));
        assert_eq!(
            table.close(peer(2), b, CloseReason::Reset),
            None,
            "already gone"
        );
        let b = open(&mut table, 1, 3, 2, t0);
        assert!(matches!(
            table.data(peer(2), b, 1, t0 + Duration::from_secs(61)),
            Forward::Close {
                reason: CloseReason::TimeLimit,
                ..
            }
        ));
    }

    #[test]
    fn credits_beyond_what_was_sent_and_data_before_the_answer_are_violations() {
        let t0 = Instant::now();
        let mut table = CircuitTable::new(limits());
        let b = open(&mut table, 1, 1, 2, t0);
        assert!(matches!(
            table.data(peer(1), theirs(1), 10, t0),
            Forward::To(_)
        ));
        assert!(matches!(
            table.credit(peer(2), b, 11),
            Forward::Close {
                reason: CloseReason::Protocol,
                ..
            }
        ));
        let b = ours(2);
        table
            .open(peer(1), theirs(2), peer(2), true, t0, b)
            .expect("open");
        assert!(matches!(
            table.data(peer(1), theirs(2), 10, t0),
            Forward::Close {
                reason: CloseReason::Protocol,
                ..
            }
        ));
        assert_eq!(table.answer(peer(2), b, true), None, "gone");
    }

    #[test]
    fn a_lost_link_ends_its_circuits_and_expiry_answers_for_silent_targets() {
        let t0 = Instant::now();
        let mut table = CircuitTable::new(limits());
        let b = open(&mut table, 1, 1, 2, t0);
        let pending = ours(1);
        table
            .open(peer(3), theirs(1), peer(4), true, t0, pending)
            .expect("open");
        assert_eq!(table.link_lost(peer(1)), vec![(peer(2), b)]);
        let expired = table.expire(t0 + ANSWER_TIMEOUT + Duration::from_secs(1));
        assert_eq!(
            expired.unanswered,
            vec![((peer(3), theirs(1)), (peer(4), pending))]
        );
        assert_eq!(table.len(), 0);
        let b = open(&mut table, 1, 2, 2, t0);
        let expired = table.expire(t0 + Duration::from_secs(61));
        assert_eq!(expired.closed, vec![[(peer(1), theirs(2)), (peer(2), b)]]);
    }

    #[test]
    fn refused_circuits_are_forgotten() {
        let t0 = Instant::now();
        let mut table = CircuitTable::new(limits());
        let b = ours(1);
        table
            .open(peer(1), theirs(1), peer(2), true, t0, b)
            .expect("open");
        assert_eq!(table.answer(peer(2), b, false), Some((peer(1), theirs(1))));
        assert_eq!(table.len(), 0);
    }
}
