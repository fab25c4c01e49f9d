//! Which punches to run once both sides' information is known, and how many punches a
//! node takes part in. Pure: time is passed in.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crust_core::punch::{PunchRole, PunchStrategy};
use crust_core::{Endpoint, PeerId, Protocol};

use super::messages::{CandidateKind, NatClass, PunchInfo};

/// Sockets the symmetric side opens for the birthday search.
pub(crate) const BIRTHDAY_SOCKETS: usize = 256;
/// Random ports the other side probes in the birthday search.
pub(crate) const BIRTHDAY_PROBES: usize = 1_000;
/// Ports predicted from a constant allocation step, probed before random ones.
pub(crate) const PREDICTED_PORTS: i32 = 16;
/// Punches one node takes part in per peer per [`ATTEMPT_WINDOW`].
pub(crate) const MAX_ATTEMPTS_PER_PEER: usize = 6;
/// The window of [`MAX_ATTEMPTS_PER_PEER`].
pub(crate) const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);
/// Punches one node runs at once.
pub(crate) const MAX_CONCURRENT_PUNCHES: usize = 8;
/// Offers one node accepts from one coordinator per [`ATTEMPT_WINDOW`] (whatever origins
/// it names), so a hostile coordinator cannot keep us punching at addresses of its choice.
pub(crate) const MAX_OFFERS_PER_COORDINATOR: usize = 10;

/// One punch to run: a protocol, our role, the strategy and where to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) protocol: Protocol,
    pub(crate) role: PunchRole,
    pub(crate) strategy: PunchStrategy,
    pub(crate) candidates: Vec<SocketAddr>,
}

/// No punch can work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hopeless {
    pub(crate) ours: NatClass,
    pub(crate) theirs: NatClass,
}

fn is_symmetric(class: NatClass) -> bool {
    class == NatClass::Symmetric
}

/// The peer's addresses for `protocol`: the one the coordinator saw first (when it is of
/// this protocol), then mapped, observed and local candidates, without repeats.
fn candidates_for(protocol: Protocol, observed: Endpoint, theirs: &PunchInfo) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    if observed.protocol() == protocol {
        out.push(observed.addr());
    }
    for kind in [
        CandidateKind::Mapped,
        CandidateKind::Observed,
        CandidateKind::Local,
    ] {
        for c in &theirs.candidates {
            if c.kind == kind
                && c.endpoint.protocol() == protocol
                && !out.contains(&c.endpoint.addr())
            {
                out.push(c.endpoint.addr());
            }
        }
    }
    out
}

/// The punches to run, given both sides' information, the endpoint at which the
/// coordinator sees the peer, and whether we initiated. Both sides compute the same roles:
/// the initiator is the client, except that a symmetric-NAT side searching with many
/// sockets is always the client (it is the one that knows which socket won).
pub(crate) fn attempts(
    ours: &PunchInfo,
    theirs: &PunchInfo,
    observed_peer: Endpoint,
    initiator: bool,
) -> Result<Vec<Attempt>, Hopeless> {
    let (us, them) = (ours.nat.class, theirs.nat.class);
    let default_role = if initiator {
        PunchRole::Client
    } else {
        PunchRole::Server
    };
    let udp = candidates_for(Protocol::Rudp, observed_peer, theirs);
    let tcp = candidates_for(Protocol::Tcp, observed_peer, theirs);
    match (is_symmetric(us), is_symmetric(them)) {
        (true, true) => Err(Hopeless {
            ours: us,
            theirs: them,
        }),
        (true, false) => Ok(vec![Attempt {
            protocol: Protocol::Rudp,
            role: PunchRole::Client,
            strategy: PunchStrategy::BirthdayOpen {
                sockets: BIRTHDAY_SOCKETS,
            },
            candidates: udp,
        }]),
        (false, true) => {
            // The symmetric side's address as the coordinator sees it: its public IP, and
            // the port its NAT gave its latest mapping (prediction starts from there).
            let base = observed_peer.addr();
            let predicted = match theirs.nat.port_delta {
                Some(delta) if delta != 0 => (1..=PREDICTED_PORTS)
                    .filter_map(|k| {
                        u16::try_from(i32::from(base.port()) + k * i32::from(delta)).ok()
                    })
                    .filter(|p| *p != 0)
                    .collect(),
                _ => Vec::new(),
            };
            let mut candidates = vec![SocketAddr::new(base.ip(), base.port())];
            candidates.extend(
                udp.into_iter()
                    .filter(|a| a.ip() == base.ip() && *a != base),
            );
            Ok(vec![Attempt {
                protocol: Protocol::Rudp,
                role: PunchRole::Server,
                strategy: PunchStrategy::BirthdayProbe {
                    predicted,
                    probes: BIRTHDAY_PROBES,
                    port_range: (1024, u16::MAX),
                },
                candidates,
            }])
        }
        (false, false) => {
            let mut out = Vec::new();
            if !udp.is_empty() {
                out.push(Attempt {
                    protocol: Protocol::Rudp,
                    role: default_role,
                    strategy: PunchStrategy::Direct,
                    candidates: udp,
                });
            }
            if !tcp.is_empty() {
                out.push(Attempt {
                    protocol: Protocol::Tcp,
                    role: default_role,
                    strategy: PunchStrategy::Direct,
                    candidates: tcp,
                });
            }
            Ok(out)
        }
    }
}

/// How many punches a node takes part in: per peer per window, and at once.
#[derive(Debug, Default)]
pub(crate) struct PunchLimits {
    recent: HashMap<PeerId, VecDeque<Instant>>,
    offers: HashMap<PeerId, VecDeque<Instant>>,
    active: usize,
}

/// Forgets times older than the window; true when `times` is now empty.
fn forget_old(times: &mut VecDeque<Instant>, now: Instant) -> bool {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= ATTEMPT_WINDOW)
    {
        times.pop_front();
    }
    times.is_empty()
}

impl PunchLimits {
    /// Counts an offer `coordinator` relays to us, or says no (beyond
    /// [`MAX_OFFERS_PER_COORDINATOR`] per window).
    pub(crate) fn admit_offer(&mut self, coordinator: PeerId, now: Instant) -> bool {
        self.offers.retain(|_, times| !forget_old(times, now));
        let times = self.offers.entry(coordinator).or_default();
        if times.len() >= MAX_OFFERS_PER_COORDINATOR {
            return false;
        }
        times.push_back(now);
        true
    }

    /// Takes a slot for a punch with `peer`, or says no.
    pub(crate) fn admit(&mut self, peer: PeerId, now: Instant) -> bool {
        self.recent.retain(|_, times| !forget_old(times, now));
        let recent = self.recent.get(&peer).map_or(0, VecDeque::len);
        if recent >= MAX_ATTEMPTS_PER_PEER || self.active >= MAX_CONCURRENT_PUNCHES {
            return false;
        }
        self.recent.entry(peer).or_default().push_back(now);
        self.active += 1;
        true
    }

    /// A punch admitted earlier ended.
    pub(crate) fn release(&mut self) {
        self.active = self.active.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::messages::{Candidate, NatSummary};
    use super::*;

    fn info(class: NatClass, candidates: &[(CandidateKind, &str)]) -> PunchInfo {
        PunchInfo {
            nat: NatSummary {
                class,
                port_delta: None,
            },
            nonce: 1,
            candidates: candidates
                .iter()
                .map(|(kind, ep)| Candidate {
                    kind: *kind,
                    endpoint: ep.parse().expect("endpoint"),
                })
                .collect(),
        }
    }

    fn ep(s: &str) -> Endpoint {
        s.parse().expect("endpoint")
    }

    #[test]
    fn cones_punch_both_protocols_with_the_initiator_as_client() {
        let theirs = info(
            NatClass::PortRestricted,
            &[
                (CandidateKind::Local, "tcp://10.0.2.5:4000"),
                (CandidateKind::Observed, "rudp://198.18.0.20:4001"),
                (CandidateKind::Observed, "tcp://198.18.0.20:4000"),
            ],
        );
        let ours = info(NatClass::FullCone, &[]);
        let observed = ep("tcp://198.18.0.20:4000");
        let plan = attempts(&ours, &theirs, observed, true).expect("plan");
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].protocol, Protocol::Rudp);
        assert_eq!(
            plan[0].candidates,
            vec!["198.18.0.20:4001".parse().expect("a")]
        );
        assert_eq!(plan[1].protocol, Protocol::Tcp);
        assert_eq!(
            plan[1].candidates,
            vec![
                "198.18.0.20:4000".parse().expect("a"),
                "10.0.2.5:4000".parse().expect("a")
            ],
            "the coordinator's view first, no repeats, local last"
        );
        assert!(plan.iter().all(|a| a.role == PunchRole::Client));
        let responder = attempts(&theirs, &ours, ep("tcp://198.18.0.30:4000"), false);
        assert!(
            responder
                .expect("plan")
                .iter()
                .all(|a| a.role == PunchRole::Server)
        );
    }

    #[test]
    fn a_symmetric_side_opens_many_sockets_and_the_other_probes_its_ports() {
        let sym = info(NatClass::Symmetric, &[]);
        let mut cone = info(
            NatClass::PortRestricted,
            &[(CandidateKind::Observed, "rudp://198.18.0.20:4001")],
        );
        cone.nat.port_delta = None;
        let from_sym = attempts(&sym, &cone, ep("rudp://198.18.0.20:4001"), false).expect("plan");
        assert_eq!(from_sym.len(), 1, "udp only");
        assert_eq!(from_sym[0].role, PunchRole::Client, "even as the responder");
        assert!(matches!(
            from_sym[0].strategy,
            PunchStrategy::BirthdayOpen {
                sockets: BIRTHDAY_SOCKETS
            }
        ));
        let mut sym_seq = sym.clone();
        sym_seq.nat.port_delta = Some(2);
        let from_cone =
            attempts(&cone, &sym_seq, ep("rudp://198.18.0.30:5000"), true).expect("plan");
        assert_eq!(
            from_cone[0].role,
            PunchRole::Server,
            "even as the initiator"
        );
        let PunchStrategy::BirthdayProbe {
            predicted, probes, ..
        } = &from_cone[0].strategy
        else {
            panic!("not a birthday probe: {from_cone:?}");
        };
        assert_eq!(*probes, BIRTHDAY_PROBES);
        assert_eq!(&predicted[..3], &[5002, 5004, 5006]);
        assert_eq!(predicted.len(), PREDICTED_PORTS as usize);
        assert_eq!(
            from_cone[0].candidates,
            vec!["198.18.0.30:5000".parse().expect("a")]
        );
    }

    #[test]
    fn symmetric_on_both_sides_is_hopeless_and_names_both_classes() {
        let sym = info(NatClass::Symmetric, &[]);
        assert_eq!(
            attempts(&sym, &sym, ep("rudp://198.18.0.30:5000"), true),
            Err(Hopeless {
                ours: NatClass::Symmetric,
                theirs: NatClass::Symmetric
            })
        );
    }

    #[test]
    fn punches_per_peer_and_at_once_are_bounded() {
        let now = Instant::now();
        let mut limits = PunchLimits::default();
        let peer = PeerId::from_bytes([1; 32]);
        for _ in 0..MAX_ATTEMPTS_PER_PEER {
            assert!(limits.admit(peer, now));
            limits.release();
        }
        assert!(!limits.admit(peer, now), "per peer per minute");
        assert!(limits.admit(peer, now + ATTEMPT_WINDOW), "a minute later");
        limits.release();
        for i in 0..MAX_CONCURRENT_PUNCHES {
            assert!(limits.admit(PeerId::from_bytes([i as u8 + 10; 32]), now));
        }
        assert!(!limits.admit(PeerId::from_bytes([99; 32]), now), "at once");
        limits.release();
        assert!(limits.admit(PeerId::from_bytes([99; 32]), now));
    }

    #[test]
    fn offers_from_one_coordinator_are_bounded_whatever_origins_it_names() {
        let now = Instant::now();
        let mut limits = PunchLimits::default();
        let coordinator = PeerId::from_bytes([7; 32]);
        for _ in 0..MAX_OFFERS_PER_COORDINATOR {
            assert!(limits.admit_offer(coordinator, now));
        }
        assert!(!limits.admit_offer(coordinator, now));
        assert!(
            limits.admit_offer(PeerId::from_bytes([8; 32]), now),
            "others still"
        );
        assert!(limits.admit_offer(coordinator, now + ATTEMPT_WINDOW));
    }
}
