//! The async side of hole punching: asking a common peer, relaying for others, answering
//! offers, then running the punches through the transports.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use crust_core::punch::PunchPlan;
use crust_core::{Connection, ConnectionPath, Endpoint, PeerId};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;

use super::coordinator::Coordinator;
use super::messages::{
    Candidate, CandidateKind, MAX_CANDIDATES, NatClass, NatSummary, PunchInfo, PunchMessage,
    RefuseReason,
};
use super::plan::{Attempt, PunchLimits, attempts};
use super::{PUNCH_FRAME, PunchFailure};
use crate::conn_task::Cause;
use crate::node::Node;
use crate::{Error, Result};

/// How long we wait for the coordinator's answer (it relays to the peer and back).
pub(crate) const COORDINATION_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an answered offer waits for the initiator's go.
pub(super) const GO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the punches themselves run.
pub(crate) const PUNCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a dial to one of the peer's mapped endpoints may take before we punch instead.
const MAPPED_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Connected peers asked in turn to introduce us, at most.
const MAX_COORDINATORS: usize = 4;

/// The answer to one of our requests.
#[derive(Debug)]
pub(super) enum Reply {
    Answered { observed: Endpoint, info: PunchInfo },
    Refused { by: PeerId, reason: RefuseReason },
}

#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) coordinator: PeerId,
    pub(super) target: PeerId,
    pub(super) reply: oneshot::Sender<Reply>,
}

/// Hole-punch state of a node: as coordinator, initiator and responder.
#[derive(Debug, Default)]
pub(crate) struct PunchState {
    pub(super) coordinator: Coordinator,
    pub(super) limits: PunchLimits,
    /// Our requests waiting for the coordinator's reply, by id.
    pub(super) outgoing: HashMap<u64, Outgoing>,
    /// Offers we answered, waiting for the go from their coordinator, by (initiator, id).
    pub(super) awaiting_go: HashMap<(PeerId, u64), (PeerId, oneshot::Sender<()>)>,
    /// Punches running per peer (either side).
    pub(super) active: HashMap<PeerId, usize>,
}

/// Takes part in one punch with a peer: released (limits, active set) when dropped.
pub(super) struct Slot {
    node: Arc<Node>,
    peer: PeerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.node.punch_state();
        state.limits.release();
        if let Some(n) = state.active.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                state.active.remove(&self.peer);
            }
        }
    }
}

/// An unpredictable 64-bit value (request ids, probe nonces), from the standard library's
/// randomly keyed SipHash.
pub(super) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

impl Node {
    pub(crate) fn punch_state(&self) -> MutexGuard<'_, PunchState> {
        self.punch.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn send_punch(&self, to: PeerId, message: &PunchMessage) -> bool {
        let sender = self
            .registry()
            .active(to)
            .map(|(_, handle)| handle.sender.clone());
        match sender {
            Some(sender) => sender.try_send_frame(PUNCH_FRAME, message.encode()),
            None => false,
        }
    }

    /// A slot for a punch with `peer`, unless the limits say no or one runs already
    /// (`crossing`: ours runs, but the peer's goes on instead).
    pub(super) fn punch_slot(self: &Arc<Self>, peer: PeerId, crossing: bool) -> Option<Slot> {
        let mut state = self.punch_state();
        let running = state.active.get(&peer).copied().unwrap_or(0);
        if running > usize::from(crossing) || !state.limits.admit(peer, Instant::now()) {
            return None;
        }
        *state.active.entry(peer).or_insert(0) += 1;
        Some(Slot {
            node: self.clone(),
            peer,
        })
    }

    /// What we tell a peer about ourselves for a punch.
    pub(super) fn punch_info(&self, nonce: u64) -> PunchInfo {
        let (reachability, mapped) = {
            let state = self.reachability();
            (
                state.classifier.classify(),
                state.classifier.mapped().to_vec(),
            )
        };
        let class = NatClass::from_name(reachability.nat_class());
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut add = |kind, endpoint: Endpoint| {
            if candidates.len() < MAX_CANDIDATES
                && !candidates.iter().any(|c| c.endpoint == endpoint)
            {
                candidates.push(Candidate { kind, endpoint });
            }
        };
        for endpoint in mapped {
            add(CandidateKind::Mapped, endpoint);
        }
        for endpoint in reachability.external {
            add(CandidateKind::Observed, endpoint);
        }
        // What single observers saw is no public claim, but worth a punch packet; behind
        // a symmetric NAT it only names mappings towards others.
        if class != NatClass::Symmetric {
            for (endpoint, _) in self.observed_tally() {
                add(CandidateKind::Observed, endpoint);
            }
        }
        for endpoint in self.interface_endpoints() {
            add(CandidateKind::Local, endpoint);
        }
        PunchInfo {
            nat: NatSummary {
                class,
                port_delta: reachability.port_delta.and_then(|d| i16::try_from(d).ok()),
            },
            nonce,
            candidates,
        }
    }

    /// Connects to `target` by a hole punch, asking our connected peers in turn to
    /// introduce us.
    pub(crate) async fn punch_connect(self: &Arc<Self>, target: PeerId) -> Result<PeerId> {
        let coordinators: Vec<PeerId> = self
            .active_peers()
            .into_iter()
            .filter(|p| *p != target)
            .take(MAX_COORDINATORS)
            .collect();
        let mut last = PunchFailure::NoCoordinator(target);
        for coordinator in coordinators {
            match self.punch_via(coordinator, target).await {
                Ok(peer) => return Ok(peer),
                Err(
                    e @ PunchFailure::Refused {
                        reason: "target_not_connected" | "coordinator_busy",
                        ..
                    },
                ) => {
                    tracing::debug!(%coordinator, %target, error = %e, "trying another coordinator");
                    if matches!(last, PunchFailure::NoCoordinator(_)) {
                        last = PunchFailure::NoCoordinator(target);
                    }
                }
                Err(e @ PunchFailure::CoordinationTimeout { .. }) => last = e,
                Err(
                    e @ PunchFailure::Refused {
                        reason: "crossed", ..
                    },
                ) => {
                    // The peer punches towards us at this moment: its attempt goes on.
                    return self
                        .wait_for_peer(target, COORDINATION_TIMEOUT + PUNCH_TIMEOUT)
                        .await
                        .ok_or(Error::PunchFailed(e));
                }
                Err(e) => return Err(Error::PunchFailed(e)),
            }
        }
        Err(Error::PunchFailed(last))
    }

    /// Waits until `peer` is connected (by someone else's doing), at most `within`.
    async fn wait_for_peer(&self, peer: PeerId, within: Duration) -> Option<PeerId> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.registry_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.registry().connected_directly(peer) {
                return Some(peer);
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// One punch with `target`, introduced by `coordinator`.
    async fn punch_via(
        self: &Arc<Self>,
        coordinator: PeerId,
        target: PeerId,
    ) -> Result<PeerId, PunchFailure> {
        let slot = self.punch_slot(target, false).ok_or(PunchFailure::Busy)?;
        let id = random_u64();
        let ours = self.punch_info(random_u64());
        let (reply_tx, reply_rx) = oneshot::channel();
        self.punch_state().outgoing.insert(
            id,
            Outgoing {
                coordinator,
                target,
                reply: reply_tx,
            },
        );
        let started = Instant::now();
        let request = PunchMessage::Request {
            id,
            target,
            info: ours.clone(),
        };
        if !self.send_punch(coordinator, &request) {
            self.punch_state().outgoing.remove(&id);
            return Err(PunchFailure::Refused {
                by: coordinator,
                reason: RefuseReason::TargetNotConnected.name(),
            });
        }
        let reply = tokio::time::timeout(COORDINATION_TIMEOUT, reply_rx).await;
        self.punch_state().outgoing.remove(&id);
        let (observed, theirs) = match reply {
            Ok(Ok(Reply::Answered { observed, info })) => (observed, info),
            Ok(Ok(Reply::Refused { by, reason })) => {
                return Err(match reason {
                    RefuseReason::BothSymmetric => PunchFailure::BothSymmetric {
                        ours: ours.nat.class.name(),
                        theirs: NatClass::Symmetric.name(),
                    },
                    reason => PunchFailure::Refused {
                        by,
                        reason: reason.name(),
                    },
                });
            }
            Ok(Err(_)) | Err(_) => {
                return Err(PunchFailure::CoordinationTimeout {
                    coordinator,
                    within: COORDINATION_TIMEOUT,
                });
            }
        };
        let round_trip = started.elapsed();
        let plan = attempts(&ours, &theirs, observed, true).map_err(|hopeless| {
            PunchFailure::BothSymmetric {
                ours: hopeless.ours.name(),
                theirs: hopeless.theirs.name(),
            }
        })?;
        // Endpoints a gateway maps for the peer need no punch: dialled first, and the peer
        // is told to punch only if none answers (it waits for the go meanwhile).
        let mapped: Vec<Endpoint> = theirs
            .candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::Mapped)
            .map(|c| c.endpoint)
            .collect();
        if let Some(peer) = self.dial_mapped(target, &mapped).await {
            return Ok(peer);
        }
        self.send_punch(coordinator, &PunchMessage::Sync { id, target });
        // The go reaches the peer about half a round trip from now: start together (the
        // transports take what the peer sends before that).
        let outcome = self
            .run_attempts(
                target,
                plan,
                (ours.nonce, theirs.nonce),
                (ours.nat.class, theirs.nat.class),
                round_trip / 2,
            )
            .await;
        drop(slot);
        outcome
    }

    /// Dials the peer's mapped endpoints (all at once, each for at most
    /// [`MAPPED_DIAL_TIMEOUT`]); the first that answers is registered with the path
    /// `mapped`.
    async fn dial_mapped(self: &Arc<Self>, peer: PeerId, mapped: &[Endpoint]) -> Option<PeerId> {
        let mut dials = FuturesUnordered::new();
        for endpoint in mapped {
            let Some(transport) = self.transport_for(endpoint.protocol()) else {
                continue;
            };
            let endpoint = *endpoint;
            tracing::debug!(%peer, %endpoint, "dialling a mapped endpoint before punching");
            dials.push(async move {
                let dial = transport.dial_stream(endpoint.addr(), Some(peer));
                let outcome = tokio::time::timeout(MAPPED_DIAL_TIMEOUT, dial).await;
                (
                    endpoint,
                    outcome.map(|r| {
                        r.map(|mut stream| {
                            stream.info.path = ConnectionPath::Mapped;
                            Connection::new(stream, transport.connection_config())
                        })
                    }),
                )
            });
        }
        while let Some((endpoint, outcome)) = dials.next().await {
            match outcome {
                Ok(Ok(conn)) => match self.register(conn, Cause::Application).await {
                    Ok(peer) => return Some(peer),
                    Err(e) => {
                        tracing::debug!(%endpoint, error = %e, "mapped connection not registered")
                    }
                },
                Ok(Err(e)) => {
                    tracing::debug!(%endpoint, error = %e, "mapped endpoint did not answer")
                }
                Err(_) => tracing::debug!(%endpoint, "mapped endpoint did not answer in time"),
            }
        }
        self.registry().connected_directly(peer).then_some(peer)
    }

    /// Runs the punches of a plan side by side; the first connection wins and is
    /// registered, the others are stopped.
    pub(super) async fn run_attempts(
        self: &Arc<Self>,
        peer: PeerId,
        plan: Vec<Attempt>,
        nonces: (u64, u64),
        classes: (NatClass, NatClass),
        start_delay: Duration,
    ) -> Result<PeerId, PunchFailure> {
        let mut punches = FuturesUnordered::new();
        for attempt in plan {
            let Some(transport) = self.transport_for(attempt.protocol) else {
                continue;
            };
            let punch_plan = PunchPlan::new(
                peer,
                attempt.candidates.clone(),
                attempt.role,
                attempt.strategy.clone(),
                nonces,
            )
            .with_start_delay(start_delay)
            .with_timeout(PUNCH_TIMEOUT + start_delay);
            tracing::debug!(%peer, protocol = %attempt.protocol, role = ?attempt.role, strategy = ?attempt.strategy, candidates = ?attempt.candidates, "punching");
            punches.push(async move { (attempt.protocol, transport.punch(punch_plan).await) });
        }
        if punches.is_empty() {
            return Err(PunchFailure::NoMethod {
                ours: classes.0.name(),
                theirs: classes.1.name(),
            });
        }
        let no_path = PunchFailure::NoPath {
            ours: classes.0.name(),
            theirs: classes.1.name(),
            within: PUNCH_TIMEOUT,
        };
        loop {
            let next = tokio::select! {
                next = punches.next() => next,
                _ = self.shutdown.cancelled() => return Err(no_path),
            };
            let Some((protocol, outcome)) = next else {
                return Err(no_path);
            };
            match outcome {
                Ok(conn) => {
                    let path = conn.info().path;
                    match self.register(conn, Cause::Application).await {
                        Ok(peer) => {
                            tracing::info!(%peer, %protocol, %path, "hole punch won");
                            return Ok(peer);
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "punched connection not registered")
                        }
                    }
                }
                Err(e) => tracing::debug!(%peer, %protocol, error = %e, "punch failed"),
            }
            if self.registry().connected_directly(peer) {
                return Ok(peer);
            }
        }
    }
}
