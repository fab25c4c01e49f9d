//! Runs the NAT filtering test of `filtering.rs`: asks a peer for probes, answers peers'
//! requests (rate-limited), and feeds the verdict to the NAT classification.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crust_core::probe::{Probe, ProbeReceiver, encode_probe};
use crust_core::wire::FrameKind;
use crust_core::{PeerId, Protocol};

use crate::Event;
use crate::filtering::{FilterTest, FilteringBehaviour, PROBES_PER_TEST, ProbeMessage};
use crate::node::{ConnHandle, Node};

/// The frame kind of filtering-test messages (reserved for Crust; see `docs/protocol.md`).
pub(crate) const PROBE_FRAME: FrameKind = FrameKind::Unknown(16);

/// The window in which a peer's requests (and forwards) are counted.
const ANSWER_INTERVAL: Duration = Duration::from_secs(10);
/// Requests for a test we answer per peer and window (a node asks once per test).
const REQUESTS_PER_WINDOW: u32 = 1;
/// Forwards we carry out per peer and window: a helper forwards for each node that asks
/// it, so a few; each costs three 16-byte datagrams.
const FORWARDS_PER_WINDOW: u32 = 8;
/// Peers remembered for rate limiting; older entries are swept beyond this.
const MAX_ANSWERED: usize = 1024;
/// An inconclusive test is retried after this long, at most `MAX_ATTEMPTS` times.
const RETRY_AFTER: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 3;

/// The filtering test's state on one node.
#[derive(Debug, Default)]
pub(crate) struct ProbeState {
    /// Probe datagrams reach us (the rUDP transport's socket is wrapped).
    enabled: bool,
    test: Option<FilterTest>,
    last_started: Option<Instant>,
    attempts: u32,
    /// Per peer: when its window started and how many requests / forwards it used.
    requests: HashMap<PeerId, (Instant, u32)>,
    forwards: HashMap<PeerId, (Instant, u32)>,
    nonce_key: std::collections::hash_map::RandomState,
    nonce_counter: u64,
}

impl ProbeState {
    fn next_nonce(&mut self) -> u64 {
        self.nonce_counter += 2;
        // Unpredictable to others (random SipHash keys), so spoofed probes cannot fake a
        // verdict; even, so that `nonce + 1` (the forwarded probes) never collides.
        self.nonce_key.hash_one(self.nonce_counter) & !1
    }

    /// Whether `peer`'s request may be answered now (and counts it).
    fn may_answer_request(&mut self, peer: PeerId, now: Instant) -> bool {
        within_budget(&mut self.requests, peer, now, REQUESTS_PER_WINDOW)
    }

    /// Whether `peer`'s forward may be carried out now (and counts it).
    fn may_forward(&mut self, peer: PeerId, now: Instant) -> bool {
        within_budget(&mut self.forwards, peer, now, FORWARDS_PER_WINDOW)
    }
}

impl Node {
    fn probe_state(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts taking the probe datagrams of our rUDP socket.
    pub(crate) fn start_probe_receiver(self: &Arc<Self>, mut receiver: ProbeReceiver) {
        self.probe_state().enabled = true;
        let node = self.clone();
        self.tasks.spawn(async move {
            loop {
                let probe = tokio::select! {
                    _ = node.shutdown.cancelled() => return,
                    probe = receiver.recv() => probe,
                };
                match probe {
                    Some(probe) => node.on_probe_datagram(probe),
                    None => return,
                }
            }
        });
    }

    fn on_probe_datagram(self: &Arc<Self>, probe: Probe) {
        tracing::debug!(from = %probe.from, nonce = probe.nonce, "probe datagram");
        let verdict = {
            let mut state = self.probe_state();
            let Some(test) = state.test.as_mut() else {
                return;
            };
            test.on_probe(probe.nonce);
            test.verdict(Instant::now())
        };
        if let Some(verdict) = verdict {
            self.finish_filter_test(verdict);
        }
    }

    /// Starts a filtering test when one is worth running: probes reach us, filtering is
    /// unknown, none runs, and a peer is connected to our rUDP listening socket.
    pub(crate) fn maybe_start_filter_test(self: &Arc<Self>, rudp_listen_port: Option<u16>) {
        let Some(port) = rudp_listen_port else { return };
        let now = Instant::now();
        {
            let state = self.probe_state();
            let recently = state
                .last_started
                .is_some_and(|at| now.saturating_duration_since(at) < RETRY_AFTER);
            if !state.enabled || state.test.is_some() || recently || state.attempts >= MAX_ATTEMPTS
            {
                return;
            }
        }
        if self.reachability().classifier.filtering() != FilteringBehaviour::Unknown {
            return;
        }
        let connections = self.active_connections();
        let helper = connections.iter().find(|(_, handle)| {
            let info = handle.sender.info();
            info.protocol == Protocol::Rudp && info.local_addr.port() == port
        });
        let Some((helper, handle)) = helper else {
            return;
        };
        let exclude: Vec<IpAddr> = connections
            .iter()
            .map(|(_, h)| h.sender.info().remote_addr.ip())
            .collect();
        let nonce = {
            let mut state = self.probe_state();
            if state.test.is_some() {
                return;
            }
            let nonce = state.next_nonce();
            state.test = Some(FilterTest::new(nonce, now));
            state.last_started = Some(now);
            state.attempts += 1;
            nonce
        };
        tracing::debug!(helper = %helper, "asking a peer for a NAT filtering test");
        let request = ProbeMessage::Request { nonce, exclude };
        handle.sender.try_send_frame(PROBE_FRAME, request.encode());
        let node = self.clone();
        self.tasks.spawn(async move {
            // Bounded: the deadline only moves once (when the report arrives).
            for _ in 0..4 {
                let deadline = match node.probe_state().test.as_ref() {
                    Some(test) if test.nonce == nonce => test.deadline(),
                    _ => return,
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                    _ = node.shutdown.cancelled() => return,
                }
                let verdict = match node.probe_state().test.as_ref() {
                    Some(test) if test.nonce == nonce => test.verdict(Instant::now()),
                    _ => return,
                };
                if let Some(verdict) = verdict {
                    node.finish_filter_test(verdict);
                    return;
                }
            }
            node.finish_filter_test(FilteringBehaviour::Unknown);
        });
    }

    fn finish_filter_test(self: &Arc<Self>, verdict: FilteringBehaviour) {
        if self.probe_state().test.take().is_none() {
            return;
        }
        tracing::info!(filtering = verdict.as_str(), "NAT filtering test finished");
        if verdict == FilteringBehaviour::Unknown {
            return;
        }
        let changed = {
            let mut reachability = self.reachability();
            reachability.classifier.set_filtering(verdict);
            reachability.update()
        };
        if let Some(reachability) = changed {
            self.emit_now(Event::ReachabilityChanged { reachability });
        }
    }

    /// A filtering-test message from `peer` on connection `conn`.
    pub(crate) fn handle_probe_frame(
        self: &Arc<Self>,
        peer: PeerId,
        conn: &ConnHandle,
        payload: &[u8],
    ) {
        let message = match ProbeMessage::decode(payload) {
            Ok(message) => message,
            Err(_) => {
                tracing::debug!(%peer, "ignoring a malformed probe message");
                return;
            }
        };
        let now = Instant::now();
        match message {
            ProbeMessage::Report {
                nonce,
                other_port,
                other_host,
            } => {
                let verdict = {
                    let mut state = self.probe_state();
                    let Some(test) = state.test.as_mut() else {
                        return;
                    };
                    test.on_report(nonce, other_port, other_host, now);
                    test.verdict(now)
                };
                if let Some(verdict) = verdict {
                    self.finish_filter_test(verdict);
                }
            }
            ProbeMessage::Request { nonce, exclude } => {
                if !self.probe_state().may_answer_request(peer, now) {
                    return;
                }
                let info = conn.sender.info();
                // Only ever the address we see for this very connection: no reflection.
                let target = (info.protocol == Protocol::Rudp).then_some(info.remote_addr);
                let other = target.and_then(|target| {
                    self.active_connections().into_iter().find(|(id, h)| {
                        let ip = h.sender.info().remote_addr.ip();
                        *id != peer && ip != target.ip() && !exclude.contains(&ip)
                    })
                });
                let sender = conn.sender.clone();
                // From the address A talked to, on another port.
                let source = info.local_addr.ip();
                self.tasks.spawn(async move {
                    let other_port = match target {
                        Some(target) => send_probes(source, target, nonce).await,
                        None => false,
                    };
                    let other_host = match (target, other) {
                        (Some(target), Some((_, helper))) => {
                            let forward = ProbeMessage::Forward {
                                nonce: nonce.wrapping_add(1),
                                target,
                            };
                            helper.sender.try_send_frame(PROBE_FRAME, forward.encode())
                        }
                        _ => false,
                    };
                    let report = ProbeMessage::Report {
                        nonce,
                        other_port,
                        other_host,
                    };
                    sender.try_send_frame(PROBE_FRAME, report.encode());
                });
            }
            ProbeMessage::Forward { nonce, target } => {
                if !self.probe_state().may_forward(peer, now) {
                    return;
                }
                // From our address on the connection P knows: one A never talked to.
                let source = conn.sender.info().local_addr.ip();
                self.tasks.spawn(async move {
                    send_probes(source, target, nonce).await;
                });
            }
        }
    }
}

/// Counts one use of `peer`'s budget of `per_window` uses per [`ANSWER_INTERVAL`]; false
/// when it is spent (or the table of peers is full of live windows).
fn within_budget(
    table: &mut HashMap<PeerId, (Instant, u32)>,
    peer: PeerId,
    now: Instant,
    per_window: u32,
) -> bool {
    let live = |start: &Instant| now.saturating_duration_since(*start) < ANSWER_INTERVAL;
    if !table.contains_key(&peer) && table.len() >= MAX_ANSWERED {
        table.retain(|_, (start, _)| live(start));
        if table.len() >= MAX_ANSWERED {
            return false;
        }
    }
    let entry = table.entry(peer).or_insert((now, 0));
    if !live(&entry.0) {
        *entry = (now, 0);
    }
    if entry.1 >= per_window {
        return false;
    }
    entry.1 += 1;
    true
}

/// Sends the probe datagrams of one test to `target` from a fresh socket on `source` (so
/// another port than our QUIC socket's, at the address the test is about). Returns
/// whether they went out.
async fn send_probes(source: IpAddr, target: SocketAddr, nonce: u64) -> bool {
    let ip = if source.is_ipv4() == target.is_ipv4() && !source.is_unspecified() {
        source
    } else if target.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let bind = SocketAddr::new(ip, 0);
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(error = %e, "cannot bind a probe socket");
            return false;
        }
    };
    let datagram = encode_probe(nonce);
    let mut sent = false;
    for _ in 0..PROBES_PER_TEST {
        sent |= socket.send_to(&datagram, target).await.is_ok();
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_per_peer_and_window() {
        let t0 = Instant::now();
        let mut table = HashMap::new();
        let (a, b) = (PeerId::from_bytes([1; 32]), PeerId::from_bytes([2; 32]));
        assert!(within_budget(&mut table, a, t0, 2));
        assert!(within_budget(&mut table, a, t0, 2));
        assert!(!within_budget(&mut table, a, t0, 2), "spent");
        assert!(within_budget(&mut table, b, t0, 2), "per peer");
        assert!(
            within_budget(&mut table, a, t0 + ANSWER_INTERVAL, 2),
            "a new window"
        );
    }
}
