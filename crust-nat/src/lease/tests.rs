//! Deterministic tests of the lease policy: time is an explicit `Instant`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crust_core::Protocol;

use super::*;

const EXT: &str = "198.51.100.7";
const GW: &str = "10.0.0.1";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn tcp(port: u16) -> MappingRequest {
    MappingRequest::new(Protocol::Tcp, SocketAddr::new(ip("0.0.0.0"), port))
}

fn udp(port: u16) -> MappingRequest {
    MappingRequest::new(Protocol::Rudp, SocketAddr::new(ip("0.0.0.0"), port))
}

fn grant(ext_ip: &str, port: u16, lifetime: Option<u64>, epoch: Option<u32>) -> Granted {
    Granted {
        external: SocketAddr::new(ip(ext_ip), port),
        gateway: ip(GW),
        lifetime: lifetime.map(secs),
        epoch,
    }
}

fn pmp_found() -> ProbeOutcome {
    ProbeOutcome {
        pmp: PmpProbe::NatPmp {
            external_ip: ip(EXT),
        },
        upnp: Some(UpnpProbe {
            identity: "http://10.0.0.1:5000/ctl".to_owned(),
            external_ip: Some(ip(EXT)),
        }),
    }
}

fn upnp_only(identity: &str) -> ProbeOutcome {
    ProbeOutcome {
        pmp: PmpProbe::Absent,
        upnp: Some(UpnpProbe {
            identity: identity.to_owned(),
            external_ip: Some(ip(EXT)),
        }),
    }
}

fn nothing() -> ProbeOutcome {
    ProbeOutcome {
        pmp: PmpProbe::Absent,
        upnp: None,
    }
}

fn events(state: &mut LeaseState) -> Vec<PortMapEvent> {
    std::iter::from_fn(|| state.poll_event()).collect()
}

/// Polls one action the way the glue does (an expired deadline first goes to
/// `handle_timeout`), checking that "nothing to do" always comes with a deadline in the
/// future (or none), so the glue never spins.
fn next(state: &mut LeaseState, now: Instant) -> Option<Action> {
    if let Some(action) = state.poll_action(now) {
        return Some(action);
    }
    if state.poll_timeout().is_some_and(|t| t <= now) {
        state.handle_timeout(now);
        if let Some(action) = state.poll_action(now) {
            return Some(action);
        }
    }
    if let Some(t) = state.poll_timeout() {
        assert!(t > now, "idle with a deadline in the past: {state:?}");
    }
    None
}

fn expect_probe(state: &mut LeaseState, now: Instant) {
    assert_eq!(next(state, now), Some(Action::Probe));
}

/// Expects a `Map` action and returns (slot, method, port, lease, renewal).
fn expect_map(state: &mut LeaseState, now: Instant) -> (usize, MappingMethod, u16, Duration, bool) {
    match next(state, now) {
        Some(Action::Map {
            slot,
            method,
            external_port,
            lease,
            renewal,
            ..
        }) => (slot, method, external_port, lease, renewal),
        other => panic!("expected a Map action, got {other:?}"),
    }
}

/// A state with both requests mapped by `method` at t0 (lifetime 3600 s, epoch 100).
fn mapped(method: MappingMethod) -> (LeaseState, Instant) {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000), udp(4001)], t0, 7);
    expect_probe(&mut s, t0);
    let outcome = if method == MappingMethod::Upnp {
        upnp_only("a")
    } else {
        pmp_found()
    };
    s.handle_probe(t0, outcome);
    if method == MappingMethod::NatPmp {
        let (slot, m, ..) = expect_map(&mut s, t0);
        assert_eq!(m, MappingMethod::Pcp);
        s.handle_map(
            t0,
            slot,
            m,
            Err(Error::Unsupported {
                method: m,
                detail: "version".into(),
            }),
        );
    }
    for port in [4000, 4001] {
        let (slot, m, ext, lease, renewal) = expect_map(&mut s, t0);
        assert_eq!((m, ext, lease, renewal), (method, port, secs(3600), false));
        s.handle_map(t0, slot, m, Ok(grant(EXT, port, Some(3600), Some(100))));
    }
    let evs = events(&mut s);
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(
        evs.iter()
            .all(|e| matches!(e, PortMapEvent::Mapped(m) if m.method == method))
    );
    assert_eq!(s.mappings().len(), 2);
    assert_eq!(next(&mut s, t0), None);
    (s, t0)
}

#[test]
fn pcp_is_tried_first_and_renewed_at_half_life() {
    let (mut s, t0) = mapped(MappingMethod::Pcp);
    let m = &s.mappings()[0];
    assert_eq!(m.external, SocketAddr::new(ip(EXT), 4000));
    assert_eq!(m.lifetime, Some(secs(3600)));
    assert_eq!(s.poll_timeout(), Some(t0 + secs(1800)));
    assert_eq!(next(&mut s, t0 + secs(1799)), None);
    let t = t0 + secs(1800);
    let (slot, method, port, _, renewal) = expect_map(&mut s, t);
    assert_eq!(
        (slot, method, port, renewal),
        (0, MappingMethod::Pcp, 4000, true)
    );
    // Renewals are handed out once each, the second slot is due as well.
    let (slot1, ..) = expect_map(&mut s, t);
    assert_eq!(slot1, 1);
    assert_eq!(next(&mut s, t), None);
    s.handle_map(t, 0, method, Ok(grant(EXT, 4000, Some(3600), Some(1900))));
    s.handle_map(t, 1, method, Ok(grant(EXT, 4001, Some(3600), Some(1900))));
    let evs = events(&mut s);
    assert!(
        evs.iter().all(|e| matches!(e, PortMapEvent::Renewed(_))),
        "{evs:?}"
    );
    assert_eq!(s.poll_timeout(), Some(t + secs(1800)));
}

#[test]
fn natpmp_when_pcp_is_not_spoken() {
    let (s, _) = mapped(MappingMethod::NatPmp);
    assert!(
        s.mappings()
            .iter()
            .all(|m| m.method == MappingMethod::NatPmp)
    );
}

#[test]
fn upnp_when_no_pmp_server_asks_for_the_local_port_first() {
    let (s, _) = mapped(MappingMethod::Upnp);
    assert!(s.mappings().iter().all(|m| m.method == MappingMethod::Upnp));
}

#[test]
fn disabled_methods_are_not_used() {
    let t0 = Instant::now();
    let config = PortMapConfig::default().with_pcp(false).with_natpmp(false);
    let mut s = LeaseState::new(&config, vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, pmp_found());
    let (_, method, ..) = expect_map(&mut s, t0);
    assert_eq!(method, MappingMethod::Upnp);
}

#[test]
fn no_gateway_is_reported_once_and_reprobed_with_capped_backoff() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    let mut t = t0;
    let mut gaps = Vec::new();
    for _ in 0..8 {
        expect_probe(&mut s, t);
        // While probing, nothing else happens.
        assert_eq!(next(&mut s, t), None);
        s.handle_probe(t, nothing());
        let due = s.poll_timeout().expect("a re-probe is scheduled");
        gaps.push((due - t).as_secs());
        assert_eq!(next(&mut s, due - Duration::from_millis(1)), None);
        t = due;
    }
    assert_eq!(gaps, [30, 60, 120, 240, 300, 300, 300, 300]);
    let evs = events(&mut s);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(matches!(evs[0], PortMapEvent::NoGateway));
    assert!(s.mappings().is_empty());
}

#[test]
fn no_gateway_again_after_a_gateway_was_seen() {
    let (mut s, t0) = mapped(MappingMethod::Upnp);
    // Renewal cannot reach the gateway: re-probe at once, keep the mappings.
    let t = t0 + secs(1800);
    let (slot, method, ..) = expect_map(&mut s, t);
    s.handle_map(
        t,
        slot,
        method,
        Err(Error::Timeout {
            method,
            timeout: secs(3),
        }),
    );
    expect_probe(&mut s, t);
    s.handle_probe(t, nothing());
    assert_eq!(s.mappings().len(), 2);
    let evs = events(&mut s);
    assert!(matches!(evs[..], [PortMapEvent::NoGateway]), "{evs:?}");
    // With no gateway the mappings run out at their expiry.
    let end = t0 + secs(3600);
    while let Some(due) = s.poll_timeout().filter(|d| *d <= end) {
        if next(&mut s, due) == Some(Action::Probe) {
            s.handle_probe(due, nothing());
        }
        s.handle_timeout(due);
    }
    assert!(s.mappings().is_empty());
    let evs = events(&mut s);
    assert_eq!(
        evs.iter()
            .filter(|e| matches!(
                e,
                PortMapEvent::Lost {
                    reason: LostReason::Expired,
                    ..
                }
            ))
            .count(),
        2,
        "{evs:?}"
    );
    assert!(!evs.iter().any(|e| matches!(e, PortMapEvent::NoGateway)));
}

#[test]
fn unreachable_methods_fall_through_to_no_gateway_once() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, pmp_found());
    for expected in [
        MappingMethod::Pcp,
        MappingMethod::NatPmp,
        MappingMethod::Upnp,
    ] {
        let (slot, method, ..) = expect_map(&mut s, t0);
        assert_eq!(method, expected);
        s.handle_map(
            t0,
            slot,
            method,
            Err(Error::Timeout {
                method,
                timeout: secs(1),
            }),
        );
    }
    assert_eq!(next(&mut s, t0), None);
    assert_eq!(s.poll_timeout(), Some(t0 + secs(30)));
    let evs = events(&mut s);
    assert!(matches!(evs[..], [PortMapEvent::NoGateway]), "{evs:?}");
}

#[test]
fn conflicts_try_other_ports_then_give_up_for_a_while() {
    let t0 = Instant::now();
    let config = PortMapConfig::default().with_max_port_attempts(3);
    let mut s = LeaseState::new(&config, vec![tcp(4000)], t0, 42);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let mut ports = Vec::new();
    for _ in 0..3 {
        let (slot, method, port, ..) = expect_map(&mut s, t0);
        ports.push(port);
        s.handle_map(
            t0,
            slot,
            method,
            Err(Error::Conflict {
                method,
                external_port: port,
            }),
        );
    }
    assert_eq!(ports[0], 4000, "the local port first");
    assert!(
        ports[1..].iter().all(|p| *p >= 1024 && *p != 4000),
        "{ports:?}"
    );
    assert_ne!(ports[1], ports[2]);
    // Three conflicts: UPnP is out for this request, and nothing else is offered.
    assert_eq!(next(&mut s, t0), None);
    let evs = events(&mut s);
    assert!(
        matches!(
            &evs[..],
            [PortMapEvent::Failed {
                error: Error::Conflict { .. },
                ..
            }]
        ),
        "{evs:?}"
    );
    assert_eq!(s.poll_timeout(), Some(t0 + secs(300)));
    // After retry_max it is tried again, from scratch.
    let t = t0 + secs(300);
    let (_, method, ..) = expect_map(&mut s, t);
    assert_eq!(method, MappingMethod::Upnp);
}

#[test]
fn same_seed_same_ports() {
    let ports = |seed| {
        let t0 = Instant::now();
        let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, seed);
        (0..5).map(|_| s.random_port()).collect::<Vec<_>>()
    };
    assert_eq!(ports(9), ports(9));
    assert_ne!(ports(9), ports(10));
}

#[test]
fn only_permanent_leases_retry_with_zero_and_still_renew() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let (slot, method, _, lease, _) = expect_map(&mut s, t0);
    assert_eq!(lease, secs(3600));
    s.handle_map(t0, slot, method, Err(Error::OnlyPermanentLeases { method }));
    let (slot, method, port, lease, _) = expect_map(&mut s, t0);
    assert_eq!((lease, port), (Duration::ZERO, 4000));
    s.handle_map(t0, slot, method, Ok(grant(EXT, 4000, None, None)));
    assert_eq!(s.mappings()[0].lifetime, None);
    // Permanent: still re-asserted at half the lease we wanted.
    assert_eq!(s.poll_timeout(), Some(t0 + secs(1800)));
    let (.., lease, renewal) = expect_map(&mut s, t0 + secs(1800));
    assert_eq!((lease, renewal), (Duration::ZERO, true));
}

#[test]
fn invalid_args_is_reported_as_a_typed_failure() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let (slot, method, ..) = expect_map(&mut s, t0);
    s.handle_map(
        t0,
        slot,
        method,
        Err(Error::InvalidArgs {
            method,
            detail: "402 Invalid Args".into(),
        }),
    );
    assert_eq!(next(&mut s, t0), None);
    let evs = events(&mut s);
    assert!(
        matches!(
            &evs[..],
            [PortMapEvent::Failed {
                error: Error::InvalidArgs { .. },
                request,
            }] if *request == tcp(4000)
        ),
        "{evs:?}"
    );
}

#[test]
fn a_refusal_moves_the_request_to_the_next_method() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, pmp_found());
    let (slot, method, ..) = expect_map(&mut s, t0);
    assert_eq!(method, MappingMethod::Pcp);
    s.handle_map(t0, slot, method, Err(Error::NotAuthorized { method }));
    let (_, method, ..) = expect_map(&mut s, t0);
    assert_eq!(method, MappingMethod::NatPmp);
    assert!(events(&mut s).is_empty());
}

#[test]
fn transient_failures_back_off() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let mut t = t0;
    let mut gaps = Vec::new();
    for _ in 0..10 {
        let (slot, method, ..) = expect_map(&mut s, t);
        s.handle_map(
            t,
            slot,
            method,
            Err(Error::Gateway {
                method,
                code: Some(501),
                detail: "Action Failed".into(),
            }),
        );
        let due = s.poll_timeout().expect("retry scheduled");
        gaps.push((due - t).as_secs());
        t = due;
    }
    assert_eq!(gaps, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
}

#[test]
fn failing_renewals_retry_until_the_lease_expires_then_recreate() {
    let (mut s, t0) = mapped(MappingMethod::Pcp);
    let mut t = t0 + secs(1800);
    let mut renewals = 0;
    loop {
        match next(&mut s, t) {
            Some(Action::Map {
                slot,
                method,
                renewal: true,
                ..
            }) => {
                renewals += 1;
                s.handle_map(
                    t,
                    slot,
                    method,
                    Err(Error::Gateway {
                        method,
                        code: None,
                        detail: "network failure".into(),
                    }),
                );
            }
            Some(Action::Map { renewal: false, .. }) => break,
            other => {
                assert_eq!(other, None);
                t = s.poll_timeout().expect("scheduled");
                s.handle_timeout(t);
            }
        }
    }
    assert!(t >= t0 + secs(3600), "re-created only after expiry");
    // Backoff 2, 4, … 256 s, then every 300 s for the rest of the 1800 s: ≤ 14 per slot.
    assert!(renewals <= 2 * 14, "bounded renewals: {renewals}");
    let evs = events(&mut s);
    assert_eq!(
        evs.iter()
            .filter(|e| matches!(
                e,
                PortMapEvent::Lost {
                    reason: LostReason::Expired,
                    ..
                }
            ))
            .count(),
        2,
        "{evs:?}"
    );
}

#[test]
fn epoch_going_back_means_restart_and_recreates_everything() {
    let (mut s, t0) = mapped(MappingMethod::Pcp);
    // Renew both at half-life: epoch advanced normally (100 → 1900).
    let t = t0 + secs(1800);
    for _ in 0..2 {
        let (slot, method, port, ..) = expect_map(&mut s, t);
        s.handle_map(
            t,
            slot,
            method,
            Ok(grant(EXT, port, Some(3600), Some(1900))),
        );
    }
    events(&mut s);
    // Next renewal of slot 0: the server epoch is 3 s — it restarted.
    let t = t0 + secs(3600);
    let (slot, method, port, ..) = expect_map(&mut s, t);
    assert_eq!(slot, 0);
    s.handle_map(t, slot, method, Ok(grant(EXT, port, Some(3600), Some(3))));
    let evs = events(&mut s);
    let lost: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            PortMapEvent::Lost { mapping, reason } => Some((mapping.local.port(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        lost,
        [
            (4000, LostReason::GatewayRestarted),
            (4001, LostReason::GatewayRestarted)
        ],
        "{evs:?}"
    );
    // Slot 0 is back already; slot 1 is re-created at once.
    assert!(
        evs.iter()
            .any(|e| matches!(e, PortMapEvent::Mapped(m) if m.local.port() == 4000))
    );
    let (slot, _, _, _, renewal) = expect_map(&mut s, t);
    assert_eq!((slot, renewal), (1, false));
}

#[test]
fn epoch_slack_follows_rfc_6886() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    assert!(!s.check_epoch(t0, 1000));
    // 100 s later the server says 1090: 7/8 of 100 is 87.5, minus 2 s slack: fine.
    assert!(!s.check_epoch(t0 + secs(100), 1090));
    // 100 s later again it says 1170: expected ≥ 1090 + 87.5 - 2 = 1175.5: restarted.
    assert!(s.check_epoch(t0 + secs(200), 1170));
    // Any step back is a restart.
    assert!(s.check_epoch(t0 + secs(201), 1169));
}

#[test]
fn new_upnp_control_url_means_restart() {
    let (mut s, t0) = mapped(MappingMethod::Upnp);
    let t = t0 + secs(1800);
    let (slot, method, ..) = expect_map(&mut s, t);
    s.handle_map(
        t,
        slot,
        method,
        Err(Error::Unreachable {
            method,
            source: "connection refused".into(),
        }),
    );
    // The renewal of the other slot waits for the probe.
    expect_probe(&mut s, t);
    assert_eq!(next(&mut s, t), None);
    s.handle_probe(t, upnp_only("b"));
    let evs = events(&mut s);
    // A new device: both mappings are gone and re-created at once, same ports first.
    let lost: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            PortMapEvent::Lost {
                mapping,
                reason: LostReason::GatewayRestarted,
            } => Some(mapping.local.port()),
            _ => None,
        })
        .collect();
    assert_eq!(lost, [4000, 4001], "{evs:?}");
    for expected in [(0, 4000), (1, 4001)] {
        let (slot, _, port, _, renewal) = expect_map(&mut s, t);
        assert_eq!((slot, port, renewal), (expected.0, expected.1, false));
        s.handle_map(t, slot, method, Ok(grant(EXT, port, Some(3600), None)));
    }
    assert_eq!(s.mappings().len(), 2);
    let evs = events(&mut s);
    assert!(
        evs.iter().all(|e| matches!(e, PortMapEvent::Mapped(_))),
        "{evs:?}"
    );
}

#[test]
fn failed_renewal_with_the_same_gateway_keeps_the_mapping_and_retries() {
    let (mut s, t0) = mapped(MappingMethod::Upnp);
    let t = t0 + secs(1800);
    let (slot, method, ..) = expect_map(&mut s, t);
    s.handle_map(
        t,
        slot,
        method,
        Err(Error::Unreachable {
            method,
            source: "connection reset".into(),
        }),
    );
    expect_probe(&mut s, t);
    s.handle_probe(t, upnp_only("a"));
    assert!(events(&mut s).is_empty());
    // Slot 1's renewal is due; slot 0 retries after the 2 s backoff.
    let (slot, .., renewal) = expect_map(&mut s, t);
    assert_eq!((slot, renewal), (1, true));
    s.handle_map(t, 1, method, Ok(grant(EXT, 4001, Some(3600), None)));
    assert_eq!(s.poll_timeout(), Some(t + secs(2)));
    let (slot, _, port, _, renewal) = expect_map(&mut s, t + secs(2));
    assert_eq!((slot, port, renewal), (0, 4000, true));
    assert_eq!(s.mappings().len(), 2);
}

#[test]
fn external_address_change_moves_every_mapping() {
    let (mut s, t0) = mapped(MappingMethod::Pcp);
    let t = t0 + secs(1800);
    let (slot, method, port, ..) = expect_map(&mut s, t);
    s.handle_map(
        t,
        slot,
        method,
        Ok(grant("203.0.113.9", port, Some(3600), Some(1900))),
    );
    let evs = events(&mut s);
    assert!(
        matches!(
            &evs[..],
            [
                PortMapEvent::ExternalAddressChanged { old, new },
                PortMapEvent::Mapped(other),
                PortMapEvent::Mapped(this),
            ] if *old == ip(EXT) && *new == ip("203.0.113.9")
                && other.local.port() == 4001 && this.local.port() == 4000
        ),
        "{evs:?}"
    );
    assert!(
        s.mappings()
            .iter()
            .all(|m| m.external.ip() == ip("203.0.113.9"))
    );
    // The other one is confirmed under the new address at once.
    let (slot, .., renewal) = expect_map(&mut s, t);
    assert_eq!((slot, renewal), (1, true));
}

#[test]
fn reserved_external_addresses_are_kept_by_default() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let (slot, method, ..) = expect_map(&mut s, t0);
    s.handle_map(
        t0,
        slot,
        method,
        Ok(grant("198.18.0.1", 4000, Some(60), None)),
    );
    assert_eq!(s.mappings().len(), 1);
}

#[test]
fn reserved_external_addresses_are_removed_when_not_allowed() {
    let t0 = Instant::now();
    let config = PortMapConfig::default().with_allow_reserved_external(false);
    let mut s = LeaseState::new(&config, vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let (slot, method, ..) = expect_map(&mut s, t0);
    s.handle_map(
        t0,
        slot,
        method,
        Ok(grant("198.18.0.1", 4000, Some(60), None)),
    );
    assert!(s.mappings().is_empty());
    match next(&mut s, t0) {
        Some(Action::Unmap { slot: 0, mapping }) => {
            assert_eq!(mapping.external, SocketAddr::new(ip("198.18.0.1"), 4000))
        }
        other => panic!("expected Unmap, got {other:?}"),
    }
    assert_eq!(next(&mut s, t0), None);
    let evs = events(&mut s);
    assert!(
        matches!(
            &evs[..],
            [PortMapEvent::Failed {
                error: Error::ReservedExternal(_),
                ..
            }]
        ),
        "{evs:?}"
    );
    assert_eq!(s.poll_timeout(), Some(t0 + secs(300)));
}

#[test]
fn unspecified_external_address_is_unusable() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let (slot, method, ..) = expect_map(&mut s, t0);
    s.handle_map(t0, slot, method, Ok(grant("0.0.0.0", 4000, Some(60), None)));
    assert!(s.mappings().is_empty());
    assert!(matches!(next(&mut s, t0), Some(Action::Unmap { .. })));
    let evs = events(&mut s);
    assert!(
        matches!(
            &evs[..],
            [PortMapEvent::Failed {
                error: Error::NoExternalAddress { .. },
                ..
            }]
        ),
        "{evs:?}"
    );
}

#[test]
fn shutdown_removes_every_mapping_once() {
    let (mut s, t0) = mapped(MappingMethod::Upnp);
    s.begin_shutdown();
    let mut removed = Vec::new();
    while let Some(action) = s.poll_action(t0) {
        match action {
            Action::Unmap { mapping, .. } => removed.push(mapping.local.port()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(removed, [4000, 4001]);
    assert!(s.mappings().is_empty());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_mapping_granted_during_shutdown_is_removed_too() {
    let t0 = Instant::now();
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let (slot, method, ..) = expect_map(&mut s, t0);
    s.begin_shutdown();
    s.handle_map(t0, slot, method, Ok(grant(EXT, 4000, Some(60), None)));
    assert!(matches!(s.poll_action(t0), Some(Action::Unmap { .. })));
    assert_eq!(s.poll_action(t0), None);
}

#[test]
fn invalid_requests_are_reported_and_never_mapped() {
    let t0 = Instant::now();
    let loopback = MappingRequest::new(Protocol::Tcp, "127.0.0.1:4000".parse().expect("addr"));
    let mut s = LeaseState::new(&PortMapConfig::default(), vec![tcp(0), loopback], t0, 1);
    let evs = events(&mut s);
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| matches!(
        e,
        PortMapEvent::Failed {
            error: Error::InvalidLocal(_),
            ..
        }
    )));
    // Nothing valid to map: no probe at all.
    assert_eq!(next(&mut s, t0), None);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn requests_beyond_the_maximum_are_refused() {
    let t0 = Instant::now();
    let requests = (0..MAX_REQUESTS as u16 + 2)
        .map(|i| tcp(4000 + i))
        .collect();
    let mut s = LeaseState::new(&PortMapConfig::default(), requests, t0, 1);
    let evs = events(&mut s);
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| matches!(
        e,
        PortMapEvent::Failed {
            error: Error::TooManyRequests { .. },
            ..
        }
    )));
}

#[test]
fn answers_nobody_waits_for_are_ignored() {
    let (mut s, t0) = mapped(MappingMethod::Pcp);
    // Slot 0 is Active and not renewing: a stray answer changes nothing.
    s.handle_map(
        t0,
        0,
        MappingMethod::Pcp,
        Ok(grant("203.0.113.1", 1, Some(1), None)),
    );
    s.handle_map(t0, 99, MappingMethod::Pcp, Err(Error::PunchUnsupported));
    s.handle_probe(t0, nothing());
    assert!(events(&mut s).is_empty());
    assert_eq!(s.mappings()[0].external.port(), 4000);
}

#[test]
fn renew_interval_has_a_floor() {
    let t0 = Instant::now();
    let config = PortMapConfig::default().with_min_renew_interval(secs(5));
    let mut s = LeaseState::new(&config, vec![tcp(4000)], t0, 1);
    expect_probe(&mut s, t0);
    s.handle_probe(t0, upnp_only("a"));
    let (slot, method, ..) = expect_map(&mut s, t0);
    s.handle_map(t0, slot, method, Ok(grant(EXT, 4000, Some(2), None)));
    // Granted 2 s: renewing at 1 s would be below the floor; renewed at 5 s, and not
    // considered lost before 10 s.
    assert_eq!(s.poll_timeout(), Some(t0 + secs(5)));
    s.handle_timeout(t0 + secs(5));
    assert_eq!(s.mappings().len(), 1);
}

#[test]
fn backoff_doubles_and_caps() {
    let b = |n| backoff(secs(2), secs(60), n).as_secs();
    assert_eq!([b(0), b(1), b(2), b(3), b(6), b(100)], [2, 2, 4, 8, 60, 60]);
}
