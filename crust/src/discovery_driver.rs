//! Drives discovery sources: takes their candidates, records them in the address book,
//! connects to the ones not connected, and passes every report back to the source.

use std::sync::Arc;
use std::time::Instant;

use crust_core::{Discovery, PeerAddr, PeerCandidate};
use futures::stream::StreamExt;
use tokio::sync::mpsc;

use crate::Event;
use crate::conn_task::Cause;
use crate::node::{DiscoveryReport, Node};

/// Candidates of one discovery source dialled at the same time.
pub const DISCOVERY_CONCURRENCY: usize = 8;

impl Node {
    /// Drives one discovery source: takes its candidates (while it has any), connects to
    /// them, and passes it every report, for as long as the service runs.
    pub(crate) async fn discovery_loop(
        self: Arc<Self>,
        mut discovery: Box<dyn Discovery>,
        mut reports: mpsc::Receiver<DiscoveryReport>,
    ) {
        let source = discovery.name().to_owned();
        let mut exhausted = false;
        loop {
            let candidates = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    // Connections made just before the end still reach the source.
                    apply_discovery_reports(&mut *discovery, &mut reports);
                    return;
                }
                report = reports.recv() => {
                    match report {
                        Some(DiscoveryReport::DirectConnection(peer, endpoint)) => {
                            discovery.direct_connection(peer, endpoint);
                        }
                        Some(DiscoveryReport::AllPeersLost) => {
                            discovery.all_peers_lost();
                            exhausted = false;
                        }
                        None => return,
                    }
                    continue;
                }
                candidates = discovery.next_candidates(), if !exhausted => candidates,
            };
            let Some(candidates) = candidates else {
                tracing::debug!(%source, "discovery source has nothing more for now");
                exhausted = true;
                continue;
            };
            let wanted = self.take_candidates(candidates);
            let mut attempts = futures::stream::iter(wanted)
                .map(|candidate| {
                    let node = self.clone();
                    async move {
                        let outcome = node
                            .connect(candidate.endpoints.clone(), candidate.peer_id, Cause::Peer)
                            .await;
                        (candidate, outcome)
                    }
                })
                .buffer_unordered(DISCOVERY_CONCURRENCY);
            loop {
                let next = tokio::select! {
                    _ = self.shutdown.cancelled() => {
                        drop(attempts);
                        apply_discovery_reports(&mut *discovery, &mut reports);
                        return;
                    }
                    next = attempts.next() => next,
                };
                let Some((candidate, outcome)) = next else {
                    break;
                };
                match outcome {
                    Ok(peer) => {
                        // The source hears of the connection before the application does.
                        apply_discovery_reports(&mut *discovery, &mut reports);
                        let endpoint = self
                            .registry()
                            .active(peer)
                            .map(|(_, handle)| handle.sender.info().remote_endpoint());
                        if let Some(endpoint) = endpoint {
                            self.emit_wait(vec![Event::BootstrapConnected {
                                peer,
                                endpoint,
                                source: source.clone(),
                            }])
                            .await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%source, endpoints = ?candidate.endpoints, error = %e, "candidate not reached");
                    }
                }
            }
        }
    }

    /// Records candidates that name their peer in the address book and returns the ones
    /// worth dialling now (not ourselves, not connected, not banned, with an endpoint).
    fn take_candidates(&self, candidates: Vec<PeerCandidate>) -> Vec<PeerCandidate> {
        let now = Instant::now();
        {
            let mut book = self.address_book();
            for candidate in &candidates {
                if let Some(peer) = candidate.peer_id {
                    if peer != self.peer_id() {
                        book.insert(
                            &PeerAddr::new(peer)
                                .with_endpoints(candidate.endpoints.iter().copied()),
                            now,
                        );
                    }
                }
            }
        }
        let registry = self.registry();
        candidates
            .into_iter()
            .filter(|c| {
                !c.endpoints.is_empty()
                    && c.peer_id.is_none_or(|id| {
                        id != self.peer_id() && !registry.contains(id) && !registry.is_banned(id)
                    })
            })
            .collect()
    }
}

/// Passes a discovery source every report already queued for it, without waiting.
fn apply_discovery_reports(
    discovery: &mut dyn Discovery,
    reports: &mut mpsc::Receiver<DiscoveryReport>,
) {
    while let Ok(report) = reports.try_recv() {
        match report {
            DiscoveryReport::DirectConnection(peer, endpoint) => {
                discovery.direct_connection(peer, endpoint)
            }
            DiscoveryReport::AllPeersLost => discovery.all_peers_lost(),
        }
    }
}
