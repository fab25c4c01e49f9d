//! The registry's rules, every ordering of simultaneous dials, crashes, bans and the
//! peer limit; no runtime, no sockets.

use super::*;
use Direction::{Inbound, Outbound};

/// Two ids with a known order, and a third node.
fn ids() -> (PeerId, PeerId) {
    let a = PeerId::from_bytes([1; 32]);
    let b = PeerId::from_bytes([2; 32]);
    assert!(a < b);
    (a, b)
}

fn registry(us: PeerId) -> Registry<ConnId> {
    Registry::new(us, 10)
}

#[test]
fn new_peer_then_lost() {
    let (us, peer) = ids();
    let mut r = registry(us);
    assert_eq!(r.admit(peer, 1, Outbound, 1), Admission::NewPeer);
    assert_eq!(r.active(peer), Some((1, &1)));
    assert_eq!(
        r.connection_ended(peer, 1),
        Ended::Lost {
            abort: vec![],
            none_left: true
        }
    );
    assert!(!r.contains(peer));
    // A late end report changes nothing.
    assert_eq!(r.connection_ended(peer, 1), Ended::Nothing);
}

/// Simultaneous dial, seen from both nodes, in both arrival orders: both keep the
/// connection dialled by the smaller id, and only the dialler of the loser retires it.
#[test]
fn simultaneous_dial_every_order() {
    let (small, big) = ids();
    // Connection 1 dialled by `small`, connection 2 dialled by `big`.
    for (us, peer) in [(small, big), (big, small)] {
        let dir_of = |dialler: PeerId| if dialler == us { Outbound } else { Inbound };
        let winner_dir = dir_of(small);
        let loser_dir = dir_of(big);
        for order in [[1u64, 2], [2, 1]] {
            let mut r = registry(us);
            let dir = |id: u64| if id == 1 { winner_dir } else { loser_dir };
            assert_eq!(
                r.admit(peer, order[0], dir(order[0]), order[0]),
                Admission::NewPeer
            );
            let second = r.admit(peer, order[1], dir(order[1]), order[1]);
            let we_dialled_loser = loser_dir == Outbound;
            assert_eq!(
                second,
                Admission::Duplicate {
                    retire: we_dialled_loser.then_some(2),
                    kept: Some(winner_dir),
                    abort: vec![],
                },
                "us={us:?} order={order:?}"
            );
            assert_eq!(r.active(peer).map(|(id, _)| id), Some(1));
            // The loser drains and ends: nothing to report.
            assert_eq!(r.connection_ended(peer, 2), Ended::Nothing);
            assert_eq!(r.active(peer).map(|(id, _)| id), Some(1));
        }
    }
}

#[test]
fn same_side_duplicates() {
    let (us, peer) = ids();
    // We dialled twice: keep the first, retire the second.
    let mut r = registry(us);
    r.admit(peer, 1, Outbound, 1);
    assert_eq!(
        r.admit(peer, 2, Outbound, 2),
        Admission::Duplicate {
            retire: Some(2),
            kept: None,
            abort: vec![]
        }
    );
    assert_eq!(r.active(peer).map(|(id, _)| id), Some(1));
    // The peer dialled twice: the newest becomes active, the old one a standby.
    let mut r = registry(us);
    r.admit(peer, 1, Inbound, 1);
    assert_eq!(
        r.admit(peer, 2, Inbound, 2),
        Admission::Duplicate {
            retire: None,
            kept: None,
            abort: vec![]
        }
    );
    assert_eq!(r.active(peer).map(|(id, _)| id), Some(2));
    // The new active one dies (restarted peer's old socket, or crash): the standby
    // takes over, no loss reported.
    assert_eq!(r.connection_ended(peer, 2), Ended::Nothing);
    assert_eq!(r.active(peer).map(|(id, _)| id), Some(1));
}

#[test]
fn superseded_waits_for_successor() {
    let (us, peer) = ids();
    let mut r = registry(us);
    r.admit(peer, 1, Inbound, 1);
    r.mark_superseded(peer, 1);
    assert_eq!(r.connection_ended(peer, 1), Ended::AwaitSuccessor);
    assert!(r.contains(peer), "still registered while waiting");
    assert_eq!(r.admit(peer, 2, Inbound, 2), Admission::Successor);
    assert_eq!(r.active(peer).map(|(id, _)| id), Some(2));
    // The timer for connection 1 fires late: nothing happens.
    assert_eq!(r.successor_overdue(peer, 1), None);
    assert!(r.contains(peer));
}

#[test]
fn superseded_never_replaced_is_lost() {
    let (us, peer) = ids();
    let mut r = registry(us);
    r.admit(peer, 1, Inbound, 1);
    r.mark_superseded(peer, 1);
    assert_eq!(r.connection_ended(peer, 1), Ended::AwaitSuccessor);
    assert_eq!(r.successor_overdue(peer, 1), Some(vec![1]));
    assert!(!r.contains(peer));
}

#[test]
fn superseded_standby_is_not_promoted() {
    let (us, peer) = ids();
    let mut r = registry(us);
    r.admit(peer, 1, Inbound, 1);
    r.admit(peer, 2, Inbound, 2); // 2 active, 1 standby
    r.mark_superseded(peer, 1);
    assert_eq!(
        r.connection_ended(peer, 2),
        Ended::Lost {
            abort: vec![1],
            none_left: true
        }
    );
}

/// A crash mid-handshake never reaches the registry; a connection that ends right after
/// admission (crash just after the handshake) is a plain loss, and a second peer is not
/// affected.
#[test]
fn crash_after_handshake() {
    let (us, peer) = ids();
    let other = PeerId::from_bytes([3; 32]);
    let mut r = registry(us);
    r.admit(other, 7, Outbound, 7);
    r.admit(peer, 1, Inbound, 1);
    assert_eq!(
        r.connection_ended(peer, 1),
        Ended::Lost {
            abort: vec![],
            none_left: false
        }
    );
    assert!(r.contains(other));
}

#[test]
fn ban_during_dial() {
    let (us, peer) = ids();
    let mut r = registry(us);
    // Banned while the dial is in flight: the connection it yields is refused.
    let outcome = r.ban(peer);
    assert!(outcome.newly_banned);
    assert!(outcome.connections.is_empty());
    assert!(!outcome.none_left);
    assert_eq!(
        r.admit(peer, 1, Outbound, 1),
        Admission::Refused(Refusal::Banned)
    );
    assert!(!r.ban(peer).newly_banned);
}

#[test]
fn ban_connected_peer_returns_every_connection() {
    let (us, peer) = ids();
    let mut r = registry(us);
    r.admit(peer, 1, Inbound, 1);
    r.admit(peer, 2, Inbound, 2);
    let outcome = r.ban(peer);
    assert_eq!(outcome.connections, vec![2, 1]);
    assert!(outcome.none_left);
    // The readers' end reports come later and change nothing.
    assert_eq!(r.connection_ended(peer, 1), Ended::Nothing);
    assert!(r.is_banned(peer));
}

#[test]
fn peer_limit() {
    let us = PeerId::from_bytes([0; 32]);
    let mut r = Registry::new(us, 2);
    let p = |n: u8| PeerId::from_bytes([n; 32]);
    assert_eq!(r.admit(p(1), 1, Inbound, 1), Admission::NewPeer);
    assert_eq!(r.admit(p(2), 2, Inbound, 2), Admission::NewPeer);
    assert_eq!(
        r.admit(p(3), 3, Inbound, 3),
        Admission::Refused(Refusal::PeerLimit(2))
    );
    // A duplicate of a known peer is not a new peer: not refused by the limit.
    assert!(matches!(
        r.admit(p(1), 4, Inbound, 4),
        Admission::Duplicate { .. }
    ));
    r.connection_ended(p(2), 2);
    assert_eq!(r.admit(p(3), 5, Inbound, 5), Admission::NewPeer);
    assert_eq!(r.len(), 2);
}

#[test]
fn self_and_shutdown() {
    let (us, peer) = ids();
    let mut r = registry(us);
    assert_eq!(
        r.admit(us, 1, Outbound, 1),
        Admission::Refused(Refusal::SelfConnect)
    );
    r.admit(peer, 2, Outbound, 2);
    assert_eq!(r.shut_down(), vec![2]);
    assert_eq!(
        r.admit(peer, 3, Outbound, 3),
        Admission::Refused(Refusal::ShuttingDown)
    );
}

#[test]
fn extra_connections_are_capped() {
    let (us, peer) = ids();
    let mut r = registry(us);
    r.admit(peer, 0, Inbound, 0);
    let mut aborted = Vec::new();
    for id in 1..=10 {
        match r.admit(peer, id, Inbound, id) {
            Admission::Duplicate { abort, .. } => aborted.extend(abort),
            other => panic!("unexpected {other:?}"),
        }
    }
    // 11 connections, one active, at most 4 extra: the 6 oldest were aborted.
    assert_eq!(aborted, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(r.active(peer).map(|(id, _)| id), Some(10));
}

/// Every interleaving of: our dial completes, their dial is accepted, either ends.
/// Invariant: while any live connection exists the peer stays registered with a live
/// active connection; once none is left it is reported lost exactly once.
#[test]
fn every_interleaving_keeps_invariants() {
    let (small, big) = ids();
    for us in [small, big] {
        let peer = if us == small { big } else { small };
        // Events: A = admit conn 1 (outbound), B = admit conn 2 (inbound),
        // a = conn 1 ends, b = conn 2 ends. Each end happens after its admit.
        let sequences = ["ABab", "ABba", "AaBb", "BAab", "BAba", "BbAa", "AB", "BA"];
        for seq in sequences {
            let mut r = registry(us);
            let mut live: Vec<ConnId> = Vec::new();
            let mut lost = 0;
            for step in seq.chars() {
                match step {
                    'A' => {
                        r.admit(peer, 1, Outbound, 1);
                        live.push(1);
                    }
                    'B' => {
                        r.admit(peer, 2, Inbound, 2);
                        live.push(2);
                    }
                    'a' | 'b' => {
                        let id = if step == 'a' { 1 } else { 2 };
                        live.retain(|l| *l != id);
                        if let Ended::Lost { .. } = r.connection_ended(peer, id) {
                            lost += 1;
                        }
                    }
                    _ => unreachable!(),
                }
                if live.is_empty() {
                    assert!(!r.contains(peer), "{seq}: registered with no connection");
                } else {
                    let (active, _) = r.active(peer).expect("registered");
                    assert!(live.contains(&active), "{seq}: dead connection active");
                }
            }
            let expected_lost = usize::from(live.is_empty() && seq.len() == 4)
                + usize::from(seq == "AaBb" || seq == "BbAa");
            assert_eq!(lost, expected_lost, "{seq}");
        }
    }
}

/// Issue #11: a connection of our own replaces an active relayed one on both sides, and
/// the side that opened the relayed connection is the one that retires it.
#[test]
fn a_direct_connection_takes_over_from_a_relayed_one() {
    let (a, b) = ids();
    for (direct_a, direct_b) in [(Outbound, Inbound), (Inbound, Outbound)] {
        // A opened the relayed connection (through a relay: A outbound, B inbound).
        let mut at_a = registry(a);
        let mut at_b = registry(b);
        assert_eq!(
            at_a.admit_connection(b, 1, Outbound, true, 1),
            Admission::NewPeer
        );
        assert_eq!(
            at_b.admit_connection(a, 1, Inbound, true, 1),
            Admission::NewPeer
        );
        assert!(at_a.connected_by_relay(b) && !at_a.connected_directly(b));
        assert_eq!(
            at_a.admit_connection(b, 2, direct_a, false, 2),
            Admission::Upgrade {
                retire: Some(1),
                relayed: 1
            }
        );
        assert_eq!(
            at_b.admit_connection(a, 2, direct_b, false, 2),
            Admission::Upgrade {
                retire: None,
                relayed: 1
            }
        );
        for (r, peer) in [(&mut at_a, b), (&mut at_b, a)] {
            assert_eq!(r.active(peer), Some((2, &2)));
            assert!(r.connected_directly(peer));
            // The drained relayed connection ends: nothing to report.
            r.mark_superseded(peer, 1);
            assert_eq!(r.connection_ended(peer, 1), Ended::Nothing);
            assert_eq!(r.active(peer), Some((2, &2)));
        }
    }
}

#[test]
fn a_relayed_connection_never_displaces_a_direct_one() {
    let (us, peer) = ids();
    let mut r = registry(us);
    assert_eq!(r.admit(peer, 1, Inbound, 1), Admission::NewPeer);
    assert_eq!(
        r.admit_connection(peer, 2, Outbound, true, 2),
        Admission::Duplicate {
            retire: Some(2),
            kept: None,
            abort: vec![]
        }
    );
    assert_eq!(r.active(peer), Some((1, &1)));
    assert_eq!(
        r.admit_connection(peer, 3, Inbound, true, 3),
        Admission::Duplicate {
            retire: None,
            kept: None,
            abort: vec![]
        }
    );
    assert!(r.connected_directly(peer));
}

/// The accepting side may see the relayed connection superseded and ended before the
/// direct one registers: still an upgrade.
#[test]
fn an_upgrade_after_the_relayed_connection_drained_is_still_an_upgrade() {
    let (a, b) = ids();
    let mut at_b = registry(b);
    assert_eq!(
        at_b.admit_connection(a, 1, Inbound, true, 1),
        Admission::NewPeer
    );
    at_b.mark_superseded(a, 1);
    assert_eq!(at_b.connection_ended(a, 1), Ended::AwaitSuccessor);
    assert_eq!(
        at_b.admit_connection(a, 2, Inbound, false, 2),
        Admission::Upgrade {
            retire: None,
            relayed: 1
        }
    );
    assert!(at_b.connected_directly(a));
    // A plain successor stays a successor.
    let mut r = registry(b);
    r.admit(a, 1, Inbound, 1);
    r.mark_superseded(a, 1);
    assert_eq!(r.connection_ended(a, 1), Ended::AwaitSuccessor);
    assert_eq!(r.admit(a, 2, Inbound, 2), Admission::Successor);
}
