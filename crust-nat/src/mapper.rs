//! The tokio glue: [`PortMapper`], a background task that carries out what the
//! [`LeaseState`] decides with a [`GatewayClient`].

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use crust_core::{Endpoint, NatTraverser, PunchRequest, PunchedSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::gateway::GatewayClient;
use crate::lease::{Action, Granted, LeaseState, ProbeOutcome};
use crate::{Error, Mapping, MappingMethod, MappingRequest, PortMapConfig, PortMapEvent};

/// A running port mapper: a background task that finds the gateway, maps the requested
/// ports, renews the leases, re-creates lost mappings and reports [`PortMapEvent`]s (see
/// the [crate docs](crate) for the policy).
///
/// [`shutdown`](Self::shutdown) removes the mappings from the gateway within
/// [`shutdown_timeout`](PortMapConfig::shutdown_timeout). Dropping the mapper does the
/// same in the background, best effort: the task finishes the removal on its own while
/// the runtime keeps running.
pub struct PortMapper {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    config: PortMapConfig,
}

struct Shared {
    mappings: Mutex<Vec<Mapping>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Mapping>> {
        self.mappings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PortMapper {
    /// Starts mapping `requests` on the current tokio runtime and returns the mapper and
    /// its event channel (bounded by [`event_capacity`](PortMapConfig::event_capacity)).
    ///
    /// Returns at once, whatever the network: probing happens in the background, and a
    /// network without a gateway is reported as [`PortMapEvent::NoGateway`], never as an
    /// error. Requests that can never be mapped (port 0, loopback, more than
    /// [`MAX_REQUESTS`](crate::MAX_REQUESTS)) are reported as [`PortMapEvent::Failed`].
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (like `tokio::spawn`).
    pub fn start(
        config: PortMapConfig,
        requests: Vec<MappingRequest>,
    ) -> (PortMapper, mpsc::Receiver<PortMapEvent>) {
        let (events, receiver) = mpsc::channel(config.event_capacity.max(1));
        let seed = RandomState::new().build_hasher().finish();
        let state = LeaseState::new(&config, requests, Instant::now().into_std(), seed);
        let shared = Arc::new(Shared {
            mappings: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let driver = Driver {
            state,
            client: GatewayClient::new(&config),
            shared: shared.clone(),
            events,
            dropped_events: 0,
            shutdown_timeout: config.shutdown_timeout,
        };
        let task = tokio::spawn(driver.run(stopped));
        let mapper = PortMapper {
            shared,
            stop,
            task,
            config,
        };
        (mapper, receiver)
    }

    /// The mappings that currently work (external endpoints peers can use).
    pub fn mappings(&self) -> Vec<Mapping> {
        self.shared.lock().clone()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &PortMapConfig {
        &self.config
    }

    /// Stops the mapper and removes its mappings from the gateway. Returns within about
    /// [`shutdown_timeout`](PortMapConfig::shutdown_timeout) (a request under way is
    /// given that long to finish, then the removals share what is left), whether or not
    /// the gateway answers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        // The driver bounds itself by `shutdown_timeout`; this is the safety net.
        let limit = self
            .config
            .shutdown_timeout
            .saturating_mul(2)
            .saturating_add(std::time::Duration::from_millis(100));
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            tracing::warn!("port mapper did not stop in time; aborted");
            task.abort();
        }
    }
}

impl fmt::Debug for PortMapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortMapper")
            .field("mappings", &*self.shared.lock())
            .field("running", &!self.task.is_finished())
            .finish_non_exhaustive()
    }
}

/// The port mapper as a [`NatTraverser`] named `"portmap"`: it reports the external
/// endpoints of its current mappings and does not punch holes.
#[async_trait]
impl NatTraverser for PortMapper {
    fn name(&self) -> &str {
        "portmap"
    }

    /// The external endpoints mapped to `local` (same protocol and port; an unspecified
    /// address on either side matches any address). Empty when nothing is mapped (yet).
    async fn external_endpoints(&self, local: Endpoint) -> crust_core::Result<Vec<Endpoint>> {
        let wanted = local.addr();
        Ok(self
            .mappings()
            .into_iter()
            .filter(|m| {
                m.protocol == local.protocol()
                    && m.local.port() == wanted.port()
                    && (m.local.ip() == wanted.ip()
                        || m.local.ip().is_unspecified()
                        || wanted.ip().is_unspecified())
            })
            .map(|m| m.external_endpoint())
            .collect())
    }

    /// Always fails with [`Error::PunchUnsupported`] (wrapped in
    /// [`crust_core::Error::Transport`]).
    async fn punch(&self, _request: PunchRequest) -> crust_core::Result<PunchedSocket> {
        Err(crust_core::Error::Transport(Box::new(
            Error::PunchUnsupported,
        )))
    }
}

/// The outcome of one [`Action`].
enum Outcome {
    Probe(ProbeOutcome),
    Map {
        slot: usize,
        method: MappingMethod,
        result: Result<Granted, Error>,
    },
    Unmap {
        mapping: Mapping,
        result: Result<(), Error>,
    },
}

async fn perform(client: &mut GatewayClient, action: Action) -> Outcome {
    match action {
        Action::Probe => Outcome::Probe(client.probe().await),
        Action::Map {
            slot,
            method,
            request,
            external_port,
            lease,
            renewal,
        } => Outcome::Map {
            slot,
            method,
            result: client
                .map(slot, method, request, external_port, lease, renewal)
                .await,
        },
        Action::Unmap { slot, mapping } => {
            let result = client.unmap(slot, &mapping).await;
            Outcome::Unmap { mapping, result }
        }
    }
}

/// Resolves once a stop was asked for (or the [`PortMapper`] was dropped).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    loop {
        if *stopped.borrow_and_update() {
            return;
        }
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

struct Driver {
    state: LeaseState,
    client: GatewayClient,
    shared: Arc<Shared>,
    events: mpsc::Sender<PortMapEvent>,
    dropped_events: u64,
    shutdown_timeout: std::time::Duration,
}

impl Driver {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let deadline = self.run_until_stopped(&mut stopped).await;
        self.state.begin_shutdown();
        let removals = async {
            while let Some(action) = self.state.poll_action(Instant::now().into_std()) {
                let outcome = perform(&mut self.client, action).await;
                self.handle(outcome);
            }
        };
        if tokio::time::timeout_at(deadline, removals).await.is_err() {
            tracing::debug!(
                "port mapper shutdown timed out; some mappings may remain until their lease ends"
            );
        }
        self.shared.lock().clear();
        tracing::debug!("port mapper stopped");
    }

    /// Drives the state until a stop is asked for; returns the shutdown deadline.
    async fn run_until_stopped(&mut self, stopped: &mut watch::Receiver<bool>) -> Instant {
        loop {
            self.publish();
            if let Some(action) = self.state.poll_action(Instant::now().into_std()) {
                let shutdown_timeout = self.shutdown_timeout;
                let (outcome, stop_deadline) = {
                    let work = perform(&mut self.client, action);
                    tokio::pin!(work);
                    tokio::select! {
                        outcome = &mut work => (Some(outcome), None),
                        () = stop_requested(stopped) => {
                            // Let the request under way finish (a mapping it creates must
                            // be known to be removed), within the shutdown budget.
                            let deadline = Instant::now() + shutdown_timeout;
                            (tokio::time::timeout_at(deadline, work).await.ok(), Some(deadline))
                        }
                    }
                };
                if let Some(outcome) = outcome {
                    self.handle(outcome);
                }
                if let Some(deadline) = stop_deadline {
                    return deadline;
                }
                continue;
            }
            let wake = self.state.poll_timeout().map(Instant::from_std);
            tokio::select! {
                () = sleep_until(wake) => self.state.handle_timeout(Instant::now().into_std()),
                () = stop_requested(stopped) => return Instant::now() + self.shutdown_timeout,
            }
        }
    }

    fn handle(&mut self, outcome: Outcome) {
        let now = Instant::now().into_std();
        match outcome {
            Outcome::Probe(probe) => self.state.handle_probe(now, probe),
            Outcome::Map {
                slot,
                method,
                result,
            } => self.state.handle_map(now, slot, method, result),
            Outcome::Unmap { mapping, result } => self.state.handle_unmap(&mapping, result),
        }
        self.publish();
    }

    /// Hands queued events to the channel (dropping them when it is full: renewals must
    /// not wait for a slow reader) and publishes the current mappings.
    fn publish(&mut self) {
        while let Some(event) = self.state.poll_event() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.dropped_events += 1;
                    if self.dropped_events == 1 {
                        tracing::warn!(?event, "port-map event queue full; dropping events");
                    } else {
                        tracing::debug!(
                            ?event,
                            dropped = self.dropped_events,
                            "port-map event dropped"
                        );
                    }
                }
                // Nobody listens: fine, `mappings()` still works.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        *self.shared.lock() = self.state.mappings();
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
