//! [`LeaseState`]: the port-mapping lease policy as a plain state machine, free of I/O and
//! clocks.
//!
//! The tokio glue ([`PortMapper`](crate::PortMapper)) asks [`LeaseState::poll_action`]
//! what to do, does it (a probe, a mapping request, a removal), feeds the outcome back
//! (`handle_probe`, `handle_map`), sleeps until [`LeaseState::poll_timeout`] and calls
//! [`LeaseState::handle_timeout`]. Every decision — when to renew, how long to back off,
//! when a mapping is lost and re-created, which external port to try next, when "no
//! gateway" is reported — is made here, with `now` passed in, so the unit tests at the
//! bottom run it deterministically.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crust_core::Protocol;

use crate::error::FailureClass;
use crate::{
    Error, LostReason, MAX_REQUESTS, Mapping, MappingMethod, MappingRequest, PortMapConfig,
    PortMapEvent, is_reserved_address,
};

/// The most events queued inside the state; older ones are dropped first.
const MAX_QUEUED_EVENTS: usize = 256;

/// The order methods are tried in: PCP answers in one round trip, NAT-PMP is its
/// predecessor on the same port, UPnP needs a multicast search and HTTP.
const METHOD_ORDER: [MappingMethod; 3] = [
    MappingMethod::Pcp,
    MappingMethod::NatPmp,
    MappingMethod::Upnp,
];

/// Work the glue should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Look for gateways: a NAT-PMP external-address request to the PCP/NAT-PMP gateway
    /// (PCP servers answer it too, RFC 6887 §9) and an SSDP search, concurrently.
    Probe,
    /// Create or renew a mapping.
    Map {
        /// Which request.
        slot: usize,
        /// The protocol to use.
        method: MappingMethod,
        /// What to map.
        request: MappingRequest,
        /// The external port to ask for (a suggestion for PCP/NAT-PMP).
        external_port: u16,
        /// The lease to ask for; zero asks for a permanent one.
        lease: Duration,
        /// Whether this renews a mapping we hold (PCP/NAT-PMP reuse its nonce).
        renewal: bool,
    },
    /// Remove a mapping from the gateway.
    Unmap {
        /// Which request.
        slot: usize,
        /// The mapping to remove.
        mapping: Mapping,
    },
}

/// What a PCP/NAT-PMP probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PmpProbe {
    /// Nothing answered (or no gateway address is known).
    Absent,
    /// A NAT-PMP answer with the external address (the server may speak PCP as well).
    NatPmp {
        /// The gateway's external address.
        external_ip: IpAddr,
    },
    /// A PCP server that does not speak NAT-PMP.
    PcpOnly,
    /// Something answered but refused the request (e.g. its WAN is down).
    Failing,
}

/// What an SSDP search found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpnpProbe {
    /// Where the device's control service lives; a new value means a new device or a
    /// restarted one.
    pub(crate) identity: String,
    /// Its external address, if it told us.
    pub(crate) external_ip: Option<IpAddr>,
}

/// The outcome of an [`Action::Probe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProbeOutcome {
    /// PCP/NAT-PMP.
    pub(crate) pmp: PmpProbe,
    /// UPnP.
    pub(crate) upnp: Option<UpnpProbe>,
}

/// A gateway's positive answer to an [`Action::Map`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Granted {
    /// The external endpoint.
    pub(crate) external: SocketAddr,
    /// The gateway that granted it.
    pub(crate) gateway: IpAddr,
    /// The granted lease; `None` for a permanent one.
    pub(crate) lifetime: Option<Duration>,
    /// The PCP/NAT-PMP server epoch (seconds since it started), if the protocol has one.
    pub(crate) epoch: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A probe is due at the instant.
    ProbeDue(Instant),
    /// A probe is under way.
    Probing,
    /// A gateway answered the last probe.
    Found,
    /// No gateway answered; probe again at the instant.
    Absent(Instant),
}

#[derive(Debug)]
enum SlotState {
    /// Waiting to be mapped from the instant on (once a gateway is known).
    Idle { at: Instant },
    /// A create request is under way.
    Creating,
    /// Mapped.
    Active {
        mapping: Mapping,
        renew_at: Instant,
        /// When we consider it gone if no renewal succeeded (permanent leases: one lease
        /// duration after the last confirmation).
        expires_at: Instant,
        renewing: bool,
    },
    /// A granted mapping we do not want (unusable external address): remove it, then wait.
    Unmapping { mapping: Mapping, retry_at: Instant },
    /// Refused by every method; try again from the instant on.
    Failed { retry_at: Instant },
    /// Never mappable (bad protocol or address); reported once.
    Invalid,
    /// Removed during shutdown.
    Removed,
}

#[derive(Debug)]
struct Slot {
    request: MappingRequest,
    state: SlotState,
    /// Methods that refused this request (for this gateway).
    rejected: [bool; 3],
    /// Ports tried since the last success.
    port_attempts: u32,
    /// The external port to ask for next.
    next_port: u16,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// The last refusal, reported when every method refused.
    last_error: Option<Error>,
}

#[derive(Clone, Copy, Debug)]
struct EpochMark {
    epoch: u32,
    at: Instant,
}

/// The lease policy of a [`PortMapper`](crate::PortMapper), without sockets or clocks.
///
/// - **Probing.** Probes at start; when nothing answers, [`PortMapEvent::NoGateway`] once
///   and re-probes after [`reprobe_initial`](PortMapConfig::reprobe_initial), doubling up
///   to [`reprobe_max`](PortMapConfig::reprobe_max). A mapping request that cannot reach
///   its gateway triggers one early re-probe.
/// - **Methods.** PCP, then NAT-PMP, then UPnP, among those enabled and found. A method
///   that does not answer or does not support the operation is dropped until the next
///   probe; one that refuses a request (402, 606, …) is not asked again for that request
///   until it is retried after [`retry_max`](PortMapConfig::retry_max).
/// - **Leases.** Renewed at half the granted lifetime (permanent ones at half the lease
///   asked for), never more often than [`min_renew_interval`](PortMapConfig::min_renew_interval).
///   A failing renewal is retried with backoff until the lease runs out: then
///   [`LostReason::Expired`] and a new mapping is sought.
/// - **Restarts.** A NAT-PMP/PCP epoch that went back (RFC 6886 §3.6) or a UPnP device at
///   a new control URL means the gateway forgot our mappings: each is reported lost
///   ([`LostReason::GatewayRestarted`]) and re-created at once.
/// - **Ports.** The local port first, then pseudo-random ports (seeded) after each 718
///   conflict, at most [`max_port_attempts`](PortMapConfig::max_port_attempts).
/// - **725.** A gateway that only grants permanent leases is asked again with lease 0.
pub(crate) struct LeaseState {
    config: PortMapConfig,
    slots: Vec<Slot>,
    phase: Phase,
    /// Whether each method of [`METHOD_ORDER`] is usable on the current gateway.
    usable: [bool; 3],
    reprobe_delay: Duration,
    no_gateway_reported: bool,
    external_ip: Option<IpAddr>,
    epoch: Option<EpochMark>,
    upnp_identity: Option<String>,
    permanent_only: bool,
    shutting_down: bool,
    events: VecDeque<PortMapEvent>,
    rng: u64,
}

impl std::fmt::Debug for LeaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseState")
            .field("phase", &self.phase)
            .field("usable", &self.usable)
            .field("slots", &self.slots)
            .field("external_ip", &self.external_ip)
            .finish_non_exhaustive()
    }
}

fn method_index(method: MappingMethod) -> usize {
    match method {
        MappingMethod::Pcp => 0,
        MappingMethod::NatPmp => 1,
        MappingMethod::Upnp => 2,
    }
}

/// Why a request can never be mapped, if it cannot.
fn validate(request: &MappingRequest) -> Option<Error> {
    if !matches!(request.protocol, Protocol::Tcp | Protocol::Rudp) {
        return Some(Error::UnsupportedProtocol(request.protocol));
    }
    let ip = request.local.ip();
    let v6_specific =
        matches!(ip, IpAddr::V6(v6) if !v6.is_unspecified() && v6.to_ipv4_mapped().is_none());
    if request.local.port() == 0 || ip.is_loopback() || ip.is_multicast() || v6_specific {
        return Some(Error::InvalidLocal(request.local));
    }
    None
}

impl LeaseState {
    /// A state for `requests`, probing at once; `seed` drives the external-port choice.
    pub(crate) fn new(
        config: &PortMapConfig,
        requests: Vec<MappingRequest>,
        now: Instant,
        seed: u64,
    ) -> Self {
        let mut state = LeaseState {
            config: config.clone(),
            slots: Vec::new(),
            phase: Phase::ProbeDue(now),
            usable: [false; 3],
            reprobe_delay: config.reprobe_initial,
            no_gateway_reported: false,
            external_ip: None,
            epoch: None,
            upnp_identity: None,
            permanent_only: false,
            shutting_down: false,
            events: VecDeque::new(),
            // xorshift needs a non-zero state.
            rng: seed | 1,
        };
        for (i, request) in requests.into_iter().enumerate() {
            let invalid = if i >= MAX_REQUESTS {
                Some(Error::TooManyRequests { max: MAX_REQUESTS })
            } else {
                validate(&request)
            };
            let state_of_slot = if let Some(error) = invalid {
                state.push(PortMapEvent::Failed { request, error });
                SlotState::Invalid
            } else {
                SlotState::Idle { at: now }
            };
            state.slots.push(Slot {
                request,
                state: state_of_slot,
                rejected: [false; 3],
                port_attempts: 0,
                next_port: request.local.port(),
                failures: 0,
                last_error: None,
            });
        }
        if !state
            .slots
            .iter()
            .any(|s| !matches!(s.state, SlotState::Invalid))
        {
            // Nothing to map: no reason to talk to a gateway at all.
            state.phase = Phase::Found;
        }
        state
    }

    /// The current mappings (external endpoints known to work).
    pub(crate) fn mappings(&self) -> Vec<Mapping> {
        self.slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Active { mapping, .. } => Some(mapping.clone()),
                _ => None,
            })
            .collect()
    }

    /// The next queued event.
    pub(crate) fn poll_event(&mut self) -> Option<PortMapEvent> {
        self.events.pop_front()
    }

    /// Stops mapping: the following [`poll_action`](Self::poll_action)s remove every
    /// mapping we hold, then return `None`.
    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// The next thing to do at `now`, if any. An action is handed out once; its outcome
    /// must be fed back before the same slot is handed out again.
    pub(crate) fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if self.shutting_down {
            return self.poll_shutdown();
        }
        match self.phase {
            Phase::ProbeDue(at) | Phase::Absent(at) if at <= now => {
                self.phase = Phase::Probing;
                return Some(Action::Probe);
            }
            Phase::Probing => return None,
            _ => {}
        }
        for i in 0..self.slots.len() {
            if let Some(action) = self.poll_slot(i, now) {
                return Some(action);
            }
        }
        None
    }

    fn poll_shutdown(&mut self) -> Option<Action> {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let mapping = match &slot.state {
                SlotState::Active { mapping, .. } | SlotState::Unmapping { mapping, .. } => {
                    mapping.clone()
                }
                _ => continue,
            };
            slot.state = SlotState::Removed;
            return Some(Action::Unmap { slot: i, mapping });
        }
        None
    }

    fn poll_slot(&mut self, i: usize, now: Instant) -> Option<Action> {
        let found = self.phase == Phase::Found;
        match &self.slots[i].state {
            SlotState::Failed { retry_at } if *retry_at <= now => {
                let slot = &mut self.slots[i];
                slot.rejected = [false; 3];
                slot.port_attempts = 0;
                slot.state = SlotState::Idle { at: now };
                self.poll_slot(i, now)
            }
            SlotState::Unmapping { mapping, retry_at } => {
                let mapping = mapping.clone();
                let retry_at = *retry_at;
                self.slots[i].state = SlotState::Failed { retry_at };
                Some(Action::Unmap { slot: i, mapping })
            }
            SlotState::Active {
                mapping,
                renew_at,
                renewing: false,
                ..
            } if *renew_at <= now && found => {
                let method = mapping.method;
                if !self.usable[method_index(method)] {
                    // The gateway answered the last probe but no longer offers this
                    // method: look for another way.
                    let mapping = mapping.clone();
                    self.lose(i, mapping, LostReason::MethodGone, now);
                    return self.poll_slot(i, now);
                }
                let request = self.slots[i].request;
                let external_port = mapping.external.port();
                if let SlotState::Active { renewing, .. } = &mut self.slots[i].state {
                    *renewing = true;
                }
                Some(Action::Map {
                    slot: i,
                    method,
                    request,
                    external_port,
                    lease: self.lease(),
                    renewal: true,
                })
            }
            SlotState::Idle { at } if *at <= now && found => {
                let Some(method) = self.choose_method(i) else {
                    if !self.usable.iter().any(|u| *u) {
                        // Every method of this gateway failed: as good as no gateway.
                        self.no_gateway(now);
                        return None;
                    }
                    let slot = &mut self.slots[i];
                    slot.state = SlotState::Failed {
                        retry_at: now + self.config.retry_max,
                    };
                    let request = slot.request;
                    tracing::debug!(local = %request.local, protocol = %request.protocol, "no method can map this port; retrying later");
                    // A method is only ever ruled out for a request with an error.
                    if let Some(error) = slot.last_error.take() {
                        self.push(PortMapEvent::Failed { request, error });
                    }
                    return None;
                };
                let slot = &mut self.slots[i];
                slot.state = SlotState::Creating;
                Some(Action::Map {
                    slot: i,
                    method,
                    request: slot.request,
                    external_port: slot.next_port,
                    lease: self.lease(),
                    renewal: false,
                })
            }
            _ => None,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) or [`poll_action`](Self::poll_action)
    /// has something to do next; `None` when nothing is scheduled.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.shutting_down {
            return None;
        }
        let found = self.phase == Phase::Found;
        let mut next = match self.phase {
            Phase::ProbeDue(at) | Phase::Absent(at) => Some(at),
            Phase::Probing | Phase::Found => None,
        };
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for slot in &self.slots {
            match &slot.state {
                SlotState::Idle { at } if found => consider(*at),
                SlotState::Active {
                    renew_at,
                    expires_at,
                    renewing: false,
                    ..
                } => {
                    consider(*expires_at);
                    if found {
                        consider(*renew_at);
                    }
                }
                SlotState::Failed { retry_at } => consider(*retry_at),
                _ => {}
            }
        }
        next
    }

    /// Expires mappings whose lease ran out without a successful renewal.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if let SlotState::Active {
                mapping,
                expires_at,
                renewing: false,
                ..
            } = &self.slots[i].state
            {
                if *expires_at <= now {
                    let mapping = mapping.clone();
                    tracing::debug!(mapping = %mapping, "mapping expired without renewal");
                    self.lose(i, mapping, LostReason::Expired, now);
                }
            }
        }
    }

    /// Feeds the outcome of an [`Action::Probe`].
    pub(crate) fn handle_probe(&mut self, now: Instant, outcome: ProbeOutcome) {
        if self.phase != Phase::Probing {
            return;
        }
        let pmp_present = !matches!(outcome.pmp, PmpProbe::Absent);
        let natpmp_answers = matches!(outcome.pmp, PmpProbe::NatPmp { .. } | PmpProbe::Failing);
        self.usable = [
            self.config.pcp && pmp_present,
            self.config.natpmp && natpmp_answers,
            self.config.upnp && outcome.upnp.is_some(),
        ];
        if !self.usable.iter().any(|u| *u) {
            self.no_gateway(now);
            return;
        }
        self.phase = Phase::Found;
        self.reprobe_delay = self.config.reprobe_initial;
        self.no_gateway_reported = false;
        if let Some(upnp) = &outcome.upnp {
            let restarted = self
                .upnp_identity
                .as_ref()
                .is_some_and(|old| *old != upnp.identity);
            self.upnp_identity = Some(upnp.identity.clone());
            if restarted {
                tracing::debug!(identity = %upnp.identity, "UPnP gateway restarted or replaced");
                self.permanent_only = false;
                self.lose_all(MappingMethod::Upnp, None, LostReason::GatewayRestarted, now);
            }
        }
        let pmp_in_use = self.usable[0] || self.usable[1];
        let external = match (&outcome.pmp, &outcome.upnp) {
            (PmpProbe::NatPmp { external_ip }, _) if pmp_in_use => Some(*external_ip),
            (_, Some(upnp)) if self.usable[2] => upnp.external_ip,
            _ => None,
        };
        if let Some(ip) = external {
            self.observe_external_ip(now, ip);
        }
    }

    /// Feeds the outcome of an [`Action::Map`] for `slot`.
    pub(crate) fn handle_map(
        &mut self,
        now: Instant,
        slot: usize,
        method: MappingMethod,
        result: Result<Granted, Error>,
    ) {
        let Some(s) = self.slots.get(slot) else {
            return;
        };
        let previous = match &s.state {
            SlotState::Creating => None,
            SlotState::Active {
                mapping,
                renewing: true,
                ..
            } => Some(mapping.clone()),
            // Not waiting for this answer (e.g. lost meanwhile): ignore it.
            _ => return,
        };
        match result {
            Ok(granted) => self.granted(now, slot, method, previous, granted),
            Err(error) => self.failed(now, slot, method, previous, error),
        }
    }

    /// Feeds the outcome of an [`Action::Unmap`] (only logged: nothing more to do).
    pub(crate) fn handle_unmap(&mut self, mapping: &Mapping, result: Result<(), Error>) {
        match result {
            Ok(()) => tracing::debug!(mapping = %mapping, "mapping removed"),
            Err(e) => tracing::debug!(mapping = %mapping, error = %e, "cannot remove mapping"),
        }
    }

    fn granted(
        &mut self,
        now: Instant,
        i: usize,
        method: MappingMethod,
        previous: Option<Mapping>,
        granted: Granted,
    ) {
        let ip = granted.external.ip();
        let request = self.slots[i].request;
        let mapping = Mapping {
            protocol: request.protocol,
            local: request.local,
            external: granted.external,
            method,
            gateway: granted.gateway,
            lifetime: granted.lifetime,
        };
        let unusable = if ip.is_unspecified() {
            Some(Error::NoExternalAddress { method })
        } else if !self.config.allow_reserved_external && is_reserved_address(ip) {
            Some(Error::ReservedExternal(ip))
        } else {
            None
        };
        if let Some(error) = unusable {
            if let Some(old) = previous {
                self.push(PortMapEvent::Lost {
                    mapping: old,
                    reason: LostReason::Refused,
                });
            }
            tracing::debug!(mapping = %mapping, error = %error, "granted mapping is unusable; removing it");
            self.slots[i].state = SlotState::Unmapping {
                mapping,
                retry_at: now + self.config.retry_max,
            };
            self.push(PortMapEvent::Failed { request, error });
            return;
        }
        let restarted = match granted.epoch {
            Some(epoch) => self.check_epoch(now, epoch),
            None => false,
        };
        let renew_in = self.renew_interval(granted.lifetime);
        // Never consider it lost before two renewal attempts had their chance (leases
        // shorter than twice the renewal floor).
        let expires_in = granted
            .lifetime
            .unwrap_or(self.config.lease_duration)
            .max(renew_in * 2);
        let slot = &mut self.slots[i];
        slot.failures = 0;
        slot.port_attempts = 0;
        slot.next_port = granted.external.port();
        slot.last_error = None;
        slot.state = SlotState::Active {
            mapping: mapping.clone(),
            renew_at: now + renew_in,
            expires_at: now + expires_in,
            renewing: false,
        };
        // After the slot holds its new mapping, so only the others are "moved".
        self.observe_external_ip(now, ip);
        match previous {
            Some(old) if restarted => {
                self.push(PortMapEvent::Lost {
                    mapping: old,
                    reason: LostReason::GatewayRestarted,
                });
                self.push(PortMapEvent::Mapped(mapping));
            }
            Some(old) if old.external != mapping.external => {
                self.push(PortMapEvent::Mapped(mapping))
            }
            Some(_) => self.push(PortMapEvent::Renewed(mapping)),
            None => {
                tracing::debug!(mapping = %mapping, "port mapped");
                self.push(PortMapEvent::Mapped(mapping));
            }
        }
        if restarted {
            tracing::debug!(gateway = %granted.gateway, "gateway epoch went back: it restarted");
            self.lose_all(
                MappingMethod::Pcp,
                Some(i),
                LostReason::GatewayRestarted,
                now,
            );
            self.lose_all(
                MappingMethod::NatPmp,
                Some(i),
                LostReason::GatewayRestarted,
                now,
            );
        }
    }

    fn failed(
        &mut self,
        now: Instant,
        i: usize,
        method: MappingMethod,
        previous: Option<Mapping>,
        error: Error,
    ) {
        let m = method_index(method);
        tracing::debug!(local = %self.slots[i].request.local, %method, renewal = previous.is_some(), error = %error, "mapping request failed");
        match error.class() {
            FailureClass::Unreachable => {
                // Not asked again until a probe finds the gateway anew.
                self.usable[m] = false;
                if previous.is_some() {
                    // The gateway that granted it may have restarted elsewhere or gone:
                    // look again (once per failed renewal, and those back off).
                    if self.phase == Phase::Found {
                        self.phase = Phase::ProbeDue(now);
                    }
                    self.retry_later(i, previous, now, false);
                } else {
                    // Try the next method at once; none left means no gateway.
                    self.slots[i].state = SlotState::Idle { at: now };
                }
            }
            FailureClass::Unsupported => {
                self.usable[m] = false;
                self.give_up_method(i, previous, LostReason::MethodGone, now);
            }
            FailureClass::Conflict => {
                let slot = &mut self.slots[i];
                slot.port_attempts += 1;
                if slot.port_attempts >= self.config.max_port_attempts {
                    slot.rejected[m] = true;
                    slot.last_error = Some(error);
                } else {
                    let port = self.random_port();
                    self.slots[i].next_port = port;
                }
                self.give_up_method(i, previous, LostReason::Conflict, now);
            }
            FailureClass::OnlyPermanent if !self.permanent_only => {
                self.permanent_only = true;
                self.retry_later(i, previous, now, true);
            }
            FailureClass::OnlyPermanent | FailureClass::Rejected => {
                let slot = &mut self.slots[i];
                slot.rejected[m] = true;
                slot.last_error = Some(error);
                self.give_up_method(i, previous, LostReason::Refused, now);
            }
            FailureClass::Transient => {
                self.slots[i].last_error = Some(error);
                self.retry_later(i, previous, now, false);
            }
        }
    }

    /// Keeps a renewing mapping (until it expires) or an idle request, and tries again
    /// after the backoff (or at once).
    fn retry_later(&mut self, i: usize, previous: Option<Mapping>, now: Instant, at_once: bool) {
        let delay = if at_once {
            Duration::ZERO
        } else {
            let slot = &mut self.slots[i];
            slot.failures = slot.failures.saturating_add(1);
            backoff(
                self.config.retry_initial,
                self.config.retry_max,
                slot.failures,
            )
        };
        let slot = &mut self.slots[i];
        match (&mut slot.state, previous) {
            (
                SlotState::Active {
                    renew_at, renewing, ..
                },
                Some(_),
            ) => {
                *renew_at = now + delay;
                *renewing = false;
            }
            _ => slot.state = SlotState::Idle { at: now + delay },
        }
    }

    /// The mapping (if any) is gone for this method; the request goes back to idle to be
    /// mapped again (another port or method) at once.
    fn give_up_method(
        &mut self,
        i: usize,
        previous: Option<Mapping>,
        reason: LostReason,
        now: Instant,
    ) {
        if let Some(old) = previous {
            self.push(PortMapEvent::Lost {
                mapping: old,
                reason,
            });
        }
        self.slots[i].state = SlotState::Idle { at: now };
    }

    fn lose(&mut self, i: usize, mapping: Mapping, reason: LostReason, now: Instant) {
        self.push(PortMapEvent::Lost { mapping, reason });
        self.slots[i].state = SlotState::Idle { at: now };
    }

    /// Every idle-renewal mapping of `method` (but slot `except`) is lost.
    fn lose_all(
        &mut self,
        method: MappingMethod,
        except: Option<usize>,
        reason: LostReason,
        now: Instant,
    ) {
        for i in 0..self.slots.len() {
            if Some(i) == except {
                continue;
            }
            if let SlotState::Active {
                mapping,
                renewing: false,
                ..
            } = &self.slots[i].state
            {
                if mapping.method == method {
                    let mapping = mapping.clone();
                    self.lose(i, mapping, reason, now);
                }
            }
        }
    }

    fn no_gateway(&mut self, now: Instant) {
        self.phase = Phase::Absent(now + self.reprobe_delay);
        self.reprobe_delay = (self.reprobe_delay.saturating_mul(2)).min(self.config.reprobe_max);
        if !self.no_gateway_reported {
            self.no_gateway_reported = true;
            tracing::debug!("no port-mapping gateway found");
            self.push(PortMapEvent::NoGateway);
        }
    }

    fn choose_method(&self, i: usize) -> Option<MappingMethod> {
        let slot = &self.slots[i];
        METHOD_ORDER.into_iter().find(|m| {
            let k = method_index(*m);
            self.usable[k] && !slot.rejected[k]
        })
    }

    fn observe_external_ip(&mut self, now: Instant, ip: IpAddr) {
        if ip.is_unspecified() {
            return;
        }
        let old = self.external_ip.replace(ip);
        let Some(old) = old.filter(|old| *old != ip) else {
            return;
        };
        tracing::debug!(%old, new = %ip, "external address changed");
        self.push(PortMapEvent::ExternalAddressChanged { old, new: ip });
        let mut moved = Vec::new();
        for slot in &mut self.slots {
            if let SlotState::Active {
                mapping, renew_at, ..
            } = &mut slot.state
            {
                if mapping.external.ip() != ip {
                    mapping.external.set_ip(ip);
                    // Confirm (or re-create) it under the new address at once.
                    *renew_at = now;
                    moved.push(mapping.clone());
                }
            }
        }
        for mapping in moved {
            self.push(PortMapEvent::Mapped(mapping));
        }
    }

    /// RFC 6886 §3.6: the server restarted if its epoch went back, or advanced by
    /// clearly less than our clock (7/8 of it, less 2 s of slack).
    fn check_epoch(&mut self, now: Instant, epoch: u32) -> bool {
        let restarted = self.epoch.is_some_and(|mark| {
            let client_ms = now.saturating_duration_since(mark.at).as_millis();
            let expected_ms = u128::from(mark.epoch) * 1000 + client_ms * 7 / 8;
            epoch < mark.epoch || u128::from(epoch) * 1000 + 2000 < expected_ms
        });
        self.epoch = Some(EpochMark { epoch, at: now });
        restarted
    }

    fn lease(&self) -> Duration {
        if self.permanent_only {
            Duration::ZERO
        } else {
            self.config.lease_duration
        }
    }

    fn renew_interval(&self, lifetime: Option<Duration>) -> Duration {
        let lease = lifetime.unwrap_or(self.config.lease_duration);
        (lease / 2).max(self.config.min_renew_interval)
    }

    /// A pseudo-random port in 1024..=65535 (xorshift64).
    fn random_port(&mut self) -> u16 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let span = u64::from(u16::MAX - 1024) + 1;
        u16::try_from(1024 + x % span).unwrap_or(u16::MAX)
    }

    fn push(&mut self, event: PortMapEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// `initial · 2^(failures−1)`, at most `max`.
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    initial.saturating_mul(1 << exp).min(max)
}

#[cfg(test)]
mod tests;
