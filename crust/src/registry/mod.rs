//! The peer registry: which connections exist to which peer, which one carries our sends,
//! and every admission rule (bans, the peer limit, one connection per pair of nodes).
//!
//! Pure state, quinn-proto style: no sockets, no tasks, no clock. The async code feeds it
//! what happened ([`Registry::admit`], [`Registry::mark_superseded`],
//! [`Registry::connection_ended`], …) and carries out the decisions it returns (abort this
//! connection, retire that one with a `Superseded` notice, report a lost peer). The handle
//! type `H` is whatever the caller needs to act on a connection; the tests use plain
//! numbers.
//!
//! ## The one-connection-per-pair rule
//!
//! When a second connection to a peer arrives:
//!
//! - dialled by different sides (simultaneous dial): both sides keep the one dialled by the
//!   smaller `PeerId`. Only the side that dialled the loser ends it, and only once it holds
//!   the winner, announcing `Superseded` first, so the other side never takes the end for a
//!   lost peer;
//! - dialled by the same side: the dialler keeps its active one and retires the new one the
//!   same way; the accepting side makes the newest active (a restarted peer's old
//!   connection is likely dead) and keeps the previous one as a standby.
//!
//! Retired connections are drained in both directions, so no message is lost.
//!
//! ## Relayed connections give way
//!
//! A connection of our own (a dial, an accept, a punch) always beats a relayed one, on both
//! sides: when it arrives while a relayed connection is active, it takes over at once
//! ([`Admission::Upgrade`]) and the side that opened the relayed connection retires it
//! (drained, `Superseded` first); a relayed connection arriving while one of our own is
//! active loses the same way.

use std::collections::{HashMap, HashSet};

use crust_core::{Direction, PeerId};

/// Identifies one connection for the lifetime of a service.
pub(crate) type ConnId = u64;

/// Extra connections (duplicates being drained, standbys) kept per peer beyond the active one.
pub(crate) const MAX_EXTRA_CONNECTIONS: usize = 4;

/// Why a connection was not admitted. The caller aborts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer is banned for this session.
    Banned,
    /// The connection leads to ourselves.
    SelfConnect,
    /// The peer limit is reached (the limit).
    PeerLimit(usize),
    /// The service is shutting down.
    ShuttingDown,
}

/// What the registry decided about a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission<H> {
    /// Refused: abort the connection.
    Refused(Refusal),
    /// A peer we had no connection to: report a new peer.
    NewPeer,
    /// The successor of a superseded connection: it simply takes over.
    Successor,
    /// A duplicate of an existing connection.
    Duplicate {
        /// The connection we end ourselves (with a `Superseded` notice first), if any.
        retire: Option<H>,
        /// When the resolution is worth reporting: the direction of the connection kept.
        kept: Option<Direction>,
        /// Extra connections beyond [`MAX_EXTRA_CONNECTIONS`], oldest first: abort them.
        abort: Vec<H>,
    },
    /// A connection of our own replaced the peer's active relayed connection.
    Upgrade {
        /// The relayed connection, when we opened it: we end it (`Superseded` first).
        retire: Option<H>,
        /// The relayed connection: what arrived on it comes first (the new connection's
        /// reader waits for its reader to end).
        relayed: H,
    },
}

/// What follows from a connection ending.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended<H> {
    /// Nothing to report: the connection was not registered, was an extra one, or a live
    /// standby took over.
    Nothing,
    /// The peer superseded this connection; its successor has not arrived yet. Call
    /// [`Registry::successor_overdue`] when the wait is over.
    AwaitSuccessor,
    /// The peer is gone: abort `abort` (extra connections) and report the loss.
    Lost {
        /// Remaining extra connections of the peer.
        abort: Vec<H>,
        /// No peer is connected any more.
        none_left: bool,
    },
}

/// What a ban did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BanOutcome<H> {
    /// The peer was not banned before.
    pub(crate) newly_banned: bool,
    /// The peer's connections, which must be aborted (empty when it was not connected).
    pub(crate) connections: Vec<H>,
    /// The peer was connected and no peer is connected any more.
    pub(crate) none_left: bool,
}

struct Slot<H> {
    id: ConnId,
    direction: Direction,
    /// Through a relay (gives way to any connection of our own).
    relayed: bool,
    /// The peer announced that it ends this connection in favour of another one.
    superseded: bool,
    handle: H,
}

/// The connections to one peer: `active` carries our sends; `others` are duplicates being
/// drained after a tie-break, or standbys the dialling side has not resolved yet.
struct PeerEntry<H> {
    active: Slot<H>,
    others: Vec<Slot<H>>,
    /// The active connection was superseded by the peer and has ended; its successor has
    /// not registered yet.
    awaiting_successor: bool,
}

/// The peer table with its rules. See the module docs.
pub(crate) struct Registry<H> {
    us: PeerId,
    max_peers: usize,
    peers: HashMap<PeerId, PeerEntry<H>>,
    banned: HashSet<PeerId>,
    shutting_down: bool,
}

impl<H: Clone> Registry<H> {
    /// An empty registry for the node `us`, admitting at most `max_peers` peers.
    pub(crate) fn new(us: PeerId, max_peers: usize) -> Self {
        Registry {
            us,
            max_peers,
            peers: HashMap::new(),
            banned: HashSet::new(),
            shutting_down: false,
        }
    }

    /// Decides about an authenticated direct (not relayed) connection `id` to `peer`.
    #[cfg(test)]
    pub(crate) fn admit(
        &mut self,
        peer: PeerId,
        id: ConnId,
        direction: Direction,
        handle: H,
    ) -> Admission<H> {
        self.admit_connection(peer, id, direction, false, handle)
    }

    /// Decides about an authenticated connection `id` to `peer`, `relayed` or not.
    pub(crate) fn admit_connection(
        &mut self,
        peer: PeerId,
        id: ConnId,
        direction: Direction,
        relayed: bool,
        handle: H,
    ) -> Admission<H> {
        if self.shutting_down {
            return Admission::Refused(Refusal::ShuttingDown);
        }
        if peer == self.us {
            return Admission::Refused(Refusal::SelfConnect);
        }
        if self.banned.contains(&peer) {
            return Admission::Refused(Refusal::Banned);
        }
        let slot = Slot {
            id,
            direction,
            relayed,
            superseded: false,
            handle,
        };
        let peers_len = self.peers.len();
        match self.peers.get_mut(&peer) {
            None if peers_len >= self.max_peers => {
                Admission::Refused(Refusal::PeerLimit(self.max_peers))
            }
            None => {
                self.peers.insert(
                    peer,
                    PeerEntry {
                        active: slot,
                        others: Vec::new(),
                        awaiting_successor: false,
                    },
                );
                Admission::NewPeer
            }
            Some(entry) if entry.awaiting_successor => {
                entry.awaiting_successor = false;
                let upgrade = entry.active.relayed && !slot.relayed;
                let old = std::mem::replace(&mut entry.active, slot);
                if upgrade {
                    // The peer retired its relayed connection before ours arrived here.
                    Admission::Upgrade {
                        retire: None,
                        relayed: old.handle,
                    }
                } else {
                    Admission::Successor
                }
            }
            Some(entry) if entry.active.relayed && !slot.relayed => {
                let old = std::mem::replace(&mut entry.active, slot);
                let retire = (old.direction == Direction::Outbound).then(|| old.handle.clone());
                let relayed = old.handle.clone();
                entry.others.push(old);
                Admission::Upgrade { retire, relayed }
            }
            Some(entry) if slot.relayed && !entry.active.relayed => {
                let retire = (slot.direction == Direction::Outbound).then(|| slot.handle.clone());
                entry.others.push(slot);
                Admission::Duplicate {
                    retire,
                    kept: None,
                    abort: Vec::new(),
                }
            }
            Some(entry) => {
                let (retire, kept) = resolve_duplicate(entry, slot, self.us, peer);
                let mut abort = Vec::new();
                while entry.others.len() > MAX_EXTRA_CONNECTIONS {
                    abort.push(entry.others.remove(0).handle);
                }
                Admission::Duplicate {
                    retire,
                    kept,
                    abort,
                }
            }
        }
    }

    /// The peer announced on connection `id` that it ends it in favour of another one.
    pub(crate) fn mark_superseded(&mut self, peer: PeerId, id: ConnId) {
        if let Some(entry) = self.peers.get_mut(&peer) {
            for slot in std::iter::once(&mut entry.active).chain(entry.others.iter_mut()) {
                if slot.id == id {
                    slot.superseded = true;
                }
            }
        }
    }

    /// Connection `id` to `peer` has ended (for whatever reason).
    pub(crate) fn connection_ended(&mut self, peer: PeerId, id: ConnId) -> Ended<H> {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return Ended::Nothing;
        };
        if entry.active.id != id {
            entry.others.retain(|slot| slot.id != id);
            return Ended::Nothing;
        }
        if entry.awaiting_successor {
            return Ended::AwaitSuccessor;
        }
        if let Some(i) = entry.others.iter().position(|slot| !slot.superseded) {
            // Promote a live standby.
            entry.active = entry.others.remove(i);
            return Ended::Nothing;
        }
        if entry.active.superseded {
            entry.awaiting_successor = true;
            return Ended::AwaitSuccessor;
        }
        // The active connection has ended already: only the others are left to abort.
        let abort = self
            .remove(peer)
            .map(|all| all.into_iter().skip(1).collect())
            .unwrap_or_default();
        Ended::Lost {
            abort,
            none_left: self.peers.is_empty(),
        }
    }

    /// The wait for the successor of superseded connection `id` is over. Returns the peer's
    /// remaining connections (to abort) if the peer is now lost, `None` if a successor
    /// arrived in time (or the peer was removed otherwise).
    pub(crate) fn successor_overdue(&mut self, peer: PeerId, id: ConnId) -> Option<Vec<H>> {
        let waiting = matches!(
            self.peers.get(&peer),
            Some(entry) if entry.awaiting_successor && entry.active.id == id
        );
        if waiting { self.remove(peer) } else { None }
    }

    /// Removes `peer` (disconnect): returns every connection to it, active first.
    pub(crate) fn remove(&mut self, peer: PeerId) -> Option<Vec<H>> {
        let entry = self.peers.remove(&peer)?;
        let mut all = vec![entry.active.handle];
        all.extend(entry.others.into_iter().map(|slot| slot.handle));
        Some(all)
    }

    /// Bans `peer` for the rest of the session and removes it.
    pub(crate) fn ban(&mut self, peer: PeerId) -> BanOutcome<H> {
        let newly_banned = self.banned.insert(peer);
        let connections = self.remove(peer).unwrap_or_default();
        BanOutcome {
            newly_banned,
            none_left: !connections.is_empty() && self.peers.is_empty(),
            connections,
        }
    }

    /// Refuses every new connection from now on and returns every connection, to close.
    pub(crate) fn shut_down(&mut self) -> Vec<H> {
        self.shutting_down = true;
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        peers
            .into_iter()
            .flat_map(|peer| self.remove(peer).unwrap_or_default())
            .collect()
    }

    /// Every connection of every peer (for an abort on drop).
    pub(crate) fn all_connections(&self) -> impl Iterator<Item = &H> {
        self.peers.values().flat_map(|entry| {
            std::iter::once(&entry.active.handle).chain(entry.others.iter().map(|s| &s.handle))
        })
    }

    /// The connection that carries our sends to `peer`, with its id.
    pub(crate) fn active(&self, peer: PeerId) -> Option<(ConnId, &H)> {
        self.peers
            .get(&peer)
            .map(|entry| (entry.active.id, &entry.active.handle))
    }

    /// The active connection of every peer.
    pub(crate) fn active_connections(&self) -> impl Iterator<Item = (PeerId, &H)> {
        self.peers
            .iter()
            .map(|(peer, entry)| (*peer, &entry.active.handle))
    }

    /// True when `peer` is registered (connected, or waiting for a successor connection).
    pub(crate) fn contains(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// True when `peer`'s active connection is one of our own (not relayed).
    pub(crate) fn connected_directly(&self, peer: PeerId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|entry| !entry.active.relayed)
    }

    /// True when `peer`'s active connection goes through a relay.
    pub(crate) fn connected_by_relay(&self, peer: PeerId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|entry| entry.active.relayed)
    }

    /// True when `peer` is banned.
    pub(crate) fn is_banned(&self, peer: PeerId) -> bool {
        self.banned.contains(&peer)
    }

    /// True when no peer is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// How many peers are registered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

/// The side that dialled a connection of `direction` (from our side) with `peer`.
fn dialer(direction: Direction, us: PeerId, peer: PeerId) -> PeerId {
    match direction {
        Direction::Outbound => us,
        Direction::Inbound => peer,
    }
}

/// Applies the one-connection-per-pair rule to `new` (see the module docs). Returns the
/// connection to retire ourselves, and the kept direction when worth reporting.
fn resolve_duplicate<H: Clone>(
    entry: &mut PeerEntry<H>,
    new: Slot<H>,
    us: PeerId,
    peer: PeerId,
) -> (Option<H>, Option<Direction>) {
    let active_dialer = dialer(entry.active.direction, us, peer);
    let new_dialer = dialer(new.direction, us, peer);
    if active_dialer != new_dialer {
        let loser = if new_dialer < active_dialer {
            std::mem::replace(&mut entry.active, new)
        } else {
            new
        };
        let retire = (loser.direction == Direction::Outbound).then(|| loser.handle.clone());
        entry.others.push(loser);
        (retire, Some(entry.active.direction))
    } else if new_dialer == us {
        let retire = new.handle.clone();
        entry.others.push(new);
        (Some(retire), None)
    } else {
        let old = std::mem::replace(&mut entry.active, new);
        entry.others.push(old);
        (None, None)
    }
}

#[cfg(test)]
mod tests;
