//! The connect race: TCP first, reliable UDP after a head start or as soon as every TCP
//! attempt failed (happy eyeballs); the first authenticated connection wins, attempts still
//! in flight run to their end and are retired as duplicates rather than abandoned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crust_core::{Endpoint, PeerAddr, PeerId, Protocol};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::conn_task::Cause;
use crate::node::Node;
use crate::reason::DialFailure;
use crate::{Error, Result};

impl Node {
    /// Connects to whatever node answers at `endpoints` (only `expected`, when given).
    pub(crate) async fn connect(
        self: &Arc<Self>,
        endpoints: Vec<Endpoint>,
        expected: Option<PeerId>,
        cause: Cause,
    ) -> Result<PeerId> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Shutdown);
        }
        if let Some(peer) = expected {
            if peer == self.peer_id() {
                return Err(Error::SelfConnect);
            }
            let registry = self.registry();
            if registry.is_banned(peer) {
                return Err(Error::Banned(peer));
            }
            // A relayed connection does not count: a dial may replace it.
            if registry.connected_directly(peer) {
                return Ok(peer);
            }
        }
        let mut first: Vec<Endpoint> = Vec::new();
        let mut fallback: Vec<Endpoint> = Vec::new();
        for ep in endpoints {
            if self.transport_for(ep.protocol()).is_none()
                || first.contains(&ep)
                || fallback.contains(&ep)
            {
                continue;
            }
            if ep.protocol() == Protocol::Tcp {
                first.push(ep);
            } else {
                fallback.push(ep);
            }
        }
        if first.is_empty() && fallback.is_empty() {
            return Err(Error::NoUsableEndpoint(
                self.transports.iter().map(|t| t.protocol()).collect(),
            ));
        }
        let (result_tx, mut result_rx) = oneshot::channel();
        let span = tracing::info_span!("connect", expected = ?expected);
        // The race runs inside this call (no task hop on the way to the first connection);
        // whatever is still in flight once the outcome is known moves to a background task.
        let mut race = DetachOnDrop {
            future: Some(Box::pin(
                self.clone()
                    .race(first, fallback, expected, cause, result_tx)
                    .instrument(span),
            )),
            tasks: self.tasks.clone(),
        };
        let mut race_done = false;
        let timeout = self.config.connect_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let outcome = loop {
            tokio::select! {
                biased;
                result = &mut result_rx => break result.unwrap_or(Err(Error::Shutdown)),
                _ = race.run(), if !race_done => race_done = true,
                _ = &mut deadline => break Err(Error::ConnectTimeout(timeout)),
                _ = self.shutdown.cancelled() => break Err(Error::Shutdown),
            }
        };
        if race_done {
            race.future = None;
        }
        // Dropping `race` moves unfinished attempts to a background task.
        drop(race);
        outcome
    }

    /// Connects to `addr.peer_id`: the endpoints given, then the ones the address book knows.
    pub(crate) async fn connect_addr(
        self: &Arc<Self>,
        addr: PeerAddr,
        cause: Cause,
    ) -> Result<PeerId> {
        let peer = addr.peer_id;
        if self.registry().contains(peer) {
            return Ok(peer);
        }
        let mut endpoints = addr.endpoints;
        if let Some(known) = self.address_book().lookup(peer) {
            for endpoint in known.endpoints {
                if !endpoints.contains(&endpoint) {
                    endpoints.push(endpoint);
                }
            }
        } else if !endpoints.is_empty() {
            self.address_book().insert(
                &PeerAddr::new(peer).with_endpoints(endpoints.iter().copied()),
                Instant::now(),
            );
        }
        let traversal = self.config.hole_punching || self.config.relay.use_relays;
        let can_punch = traversal && self.active_peers().iter().any(|p| *p != peer);
        if endpoints.is_empty() {
            if can_punch {
                return self.punch_or_relay(peer, cause).await;
            }
            return Err(Error::UnknownPeer(peer));
        }
        if !can_punch {
            return self.connect(endpoints, Some(peer), cause).await;
        }
        // Direct dials first; a punch joins them after a head start, or at once when they
        // all failed. The first connection wins.
        let direct = self.connect(endpoints, Some(peer), cause);
        tokio::pin!(direct);
        let direct_failed = tokio::select! {
            outcome = &mut direct => match outcome {
                Ok(peer) => return Ok(peer),
                Err(e) => Some(e),
            },
            _ = tokio::time::sleep(self.config.punch_head_start) => None,
        };
        let punch = self.punch_or_relay(peer, cause);
        tokio::pin!(punch);
        let direct_error = match direct_failed {
            Some(e) => e,
            None => tokio::select! {
                outcome = &mut direct => match outcome {
                    Ok(peer) => return Ok(peer),
                    Err(e) => e,
                },
                outcome = &mut punch => match outcome {
                    Ok(peer) => return Ok(peer),
                    Err(punch_error) => {
                        return direct.await.map_err(|direct_error| prefer(direct_error, punch_error));
                    }
                },
            },
        };
        punch
            .await
            .map_err(|punch_error| prefer(direct_error, punch_error))
    }

    /// Connects to `peer` by a hole punch (when enabled), else or then through a relay
    /// (when enabled): what is left when no direct dial works.
    async fn punch_or_relay(self: &Arc<Self>, peer: PeerId, cause: Cause) -> Result<PeerId> {
        let punch = if self.config.hole_punching {
            match self.punch_connect(peer).await {
                Ok(peer) => return Ok(peer),
                Err(Error::PunchFailed(failure)) if self.config.relay.use_relays => {
                    Some(Box::new(failure))
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        match self.relay_connect(peer, cause).await {
            Ok(peer) => Ok(peer),
            Err(relay) => Err(Error::RelayFailed { relay, punch }),
        }
    }

    /// Runs the happy-eyeballs race and reports the first outcome on `result`. Keeps
    /// driving the remaining attempts afterwards so that late winners are registered (and
    /// closed gracefully as duplicates) instead of being abandoned half-open.
    async fn race(
        self: Arc<Self>,
        first: Vec<Endpoint>,
        fallback: Vec<Endpoint>,
        expected: Option<PeerId>,
        cause: Cause,
        result: oneshot::Sender<Result<PeerId>>,
    ) {
        let mut result = Some(result);
        let mut attempts = FuturesUnordered::new();
        let dial = |ep: Endpoint| {
            let transport = self.transport_for(ep.protocol());
            async move {
                let outcome = match transport {
                    Some(t) => t.dial(ep.addr(), expected).await,
                    None => Err(crust_core::Error::Parse(format!("no transport for {ep}"))),
                };
                (ep, outcome)
            }
        };
        for ep in &first {
            attempts.push(dial(*ep));
        }
        let mut fallback = Some(fallback);
        if attempts.is_empty() {
            for ep in fallback.take().unwrap_or_default() {
                attempts.push(dial(ep));
            }
        }
        let head_start = tokio::time::sleep(self.config.tcp_head_start);
        tokio::pin!(head_start);
        let mut failures = Vec::new();
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = &mut head_start, if fallback.is_some() => {
                    tracing::debug!("tcp head start over; racing reliable udp");
                    for ep in fallback.take().unwrap_or_default() {
                        attempts.push(dial(ep));
                    }
                    continue;
                }
                next = attempts.next(), if !attempts.is_empty() => next,
            };
            let Some((ep, outcome)) = next else { break };
            match outcome {
                Ok(conn) => match self.register(conn, cause).await {
                    Ok(peer) => {
                        if let Some(tx) = result.take() {
                            tracing::debug!(%peer, endpoint = %ep, "connect won");
                            let _ = tx.send(Ok(peer));
                        }
                        // A winner exists: attempts in flight finish, no new ones start.
                        fallback = None;
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %ep, error = %e, "connection not registered");
                        if result.is_some()
                            && matches!(
                                e,
                                Error::Banned(_)
                                    | Error::SelfConnect
                                    | Error::TooManyPeers(_)
                                    | Error::Shutdown
                            )
                        {
                            if let Some(tx) = result.take() {
                                let _ = tx.send(Err(e));
                            }
                            // The outcome is decided: start no fallback dials.
                            fallback = None;
                        }
                    }
                },
                Err(e) => {
                    tracing::debug!(endpoint = %ep, error = %e, "attempt failed");
                    failures.push((ep, DialFailure::from_core(&e)));
                    if attempts.is_empty() {
                        if let Some(eps) = fallback.take() {
                            // Every TCP attempt failed before the head start ended: go now.
                            for ep in eps {
                                attempts.push(dial(ep));
                            }
                        }
                    }
                }
            }
            if attempts.is_empty() && fallback.is_none() {
                break;
            }
        }
        if let Some(tx) = result.take() {
            let _ = tx.send(Err(Error::ConnectFailed(failures)));
        }
    }
}

/// The error to report when both direct dials and a punch failed: the punch's (it names
/// the NAT classes), unless no peer could even introduce us.
fn prefer(direct: Error, punch: Error) -> Error {
    match punch {
        Error::PunchFailed(crate::PunchFailure::NoCoordinator(_))
        | Error::RelayFailed {
            relay: crate::RelayFailure::NoRelay(_) | crate::RelayFailure::Disabled,
            punch: None,
        } => direct,
        Error::RelayFailed {
            relay: crate::RelayFailure::NoRelay(_) | crate::RelayFailure::Disabled,
            punch: Some(punch),
        } if matches!(*punch, crate::PunchFailure::NoCoordinator(_)) => direct,
        punch => punch,
    }
}

/// Owns a future that must run to completion: polled in place while its owner waits for
/// it, and moved to a background task if the owner stops waiting (returns early or is
/// cancelled), so connection attempts are never abandoned half-way.
struct DetachOnDrop<F: Future<Output = ()> + Send + 'static> {
    future: Option<Pin<Box<F>>>,
    tasks: TaskTracker,
}

impl<F: Future<Output = ()> + Send + 'static> DetachOnDrop<F> {
    /// Polls the future in place; completes when it does.
    async fn run(&mut self) {
        if let Some(future) = self.future.as_mut() {
            future.as_mut().await;
        }
        self.future = None;
    }
}

impl<F: Future<Output = ()> + Send + 'static> Drop for DetachOnDrop<F> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                self.tasks.spawn(future);
            }
        }
    }
}
