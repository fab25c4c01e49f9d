//! One task per connection: registration (carrying out the registry's decision), then the
//! reader with rate metering, control-frame dispatch, pings and liveness, and the end of
//! the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use crust_core::wire::FrameKind;
use crust_core::{Connection, Direction, Endpoint, MessageReceiver, PeerId};
use tracing::Instrument;

use crate::config::FloodAction;
use crate::delivery::Closing;
use crate::liveness::{Liveness, LivenessAction, decode_nonce, encode_nonce};
use crate::node::{ConnHandle, DiscoveryReport, MANUAL_PING_BIT, Node};
use crate::observed::usable_observed_address;
use crate::rate::RateMeter;
use crate::reason::LostReason;
use crate::registry::{Admission, Ended, Refusal};
use crate::{Error, Event, Result};

/// Most events a connection's reader hands over in one batch.
pub(crate) const EVENT_BATCH: usize = crate::events::MAX_WAITING_BATCH;
/// Message bytes after which a reader hands its batch over (a batch holds less than this
/// plus one message).
const EVENT_BATCH_BYTES: usize = crate::events::MAX_WAITING_BATCH_BYTES;

/// The nonce of the pings a reader sends while the application makes it wait. Its pong
/// answers no outstanding ping and is ignored (the application's pings have the top bit
/// set; a liveness ping would have to carry exactly this nonce, a 1 in 2^62 chance, to
/// take its pong for a round-trip sample).
const KEEPALIVE_NONCE: u64 = 1 << 62;

/// Longest a connection that replaces a relayed one waits for the relayed one to drain
/// before reading (below the ping timeout, so the peer's liveness check never fires).
const UPGRADE_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who caused a registration: the application's own call (its events never wait for room
/// in the event queue) or a peer (they do: backpressure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    Application,
    Peer,
}

impl Node {
    /// Adds an authenticated connection to the registry, applying its decision, and starts
    /// the connection's task.
    pub(crate) async fn register(
        self: &Arc<Self>,
        conn: Connection,
        cause: Cause,
    ) -> Result<PeerId> {
        let peer = conn.peer_id();
        let (sender, receiver) = conn.split();
        let handle = ConnHandle {
            id: self.next_connection_id(),
            sender,
            rtt_micros: Arc::new(AtomicU64::new(0)),
            since: Instant::now(),
            manual_pings: Arc::default(),
            delivery: Arc::default(),
            reader_done: tokio_util::sync::CancellationToken::new(),
        };
        let info = handle.sender.info().clone();
        let relayed = matches!(info.path, crust_core::ConnectionPath::Relayed { .. });
        let admission = self.registry().admit_connection(
            peer,
            handle.id,
            info.direction,
            relayed,
            handle.clone(),
        );
        if let Admission::Refused(refusal) = admission {
            handle.sender.abort();
            return Err(match refusal {
                Refusal::Banned => Error::Banned(peer),
                Refusal::SelfConnect => Error::SelfConnect,
                Refusal::PeerLimit(max) => Error::TooManyPeers(max),
                Refusal::ShuttingDown => Error::Shutdown,
            });
        }
        self.registry_changed.notify_waiters();
        // A connection replacing a relayed one reads only once the relayed one's reader
        // has handed over everything: messages stay in order across the switch.
        let first = match &admission {
            Admission::Upgrade { relayed, .. } => Some(relayed.reader_done.clone()),
            _ => None,
        };
        // The task runs for every connection, also for duplicates being drained, so that
        // everything the peer sent before ending a connection is delivered.
        let span =
            tracing::info_span!("connection", %peer, id = handle.id, protocol = %info.protocol);
        self.tasks.spawn(
            self.clone()
                .run(handle.clone(), receiver, first)
                .instrument(span),
        );
        if relayed && info.direction == Direction::Outbound {
            if let Admission::NewPeer = admission {
                // We asked for this relayed connection: keep looking for a path of our own.
                self.tasks.spawn(self.clone().upgrade_relayed(peer));
            }
        }
        // Tell the peer where we see it (NAT traversal hint); a fresh connection has room.
        // Not through a relay: we do not see the peer's address then.
        if !relayed {
            handle.sender.try_send_frame(
                FrameKind::ObservedAddress,
                crust_core::wire::encode_observed_address(info.remote_addr),
            );
        }
        if info.direction == Direction::Outbound && !relayed {
            // Only a connection we dialled proves the peer is reachable at that endpoint.
            self.address_book()
                .confirm(peer, info.remote_endpoint(), Instant::now());
            self.report_to_discovery(DiscoveryReport::DirectConnection(
                peer,
                info.remote_endpoint(),
            ));
        }
        let event = match admission {
            Admission::Refused(_) => None,
            Admission::NewPeer => {
                self.gossip_peer_connected(peer, &handle.sender);
                tracing::info!(%peer, endpoint = %info.remote_endpoint(), direction = ?info.direction, "new peer");
                Some(Event::NewPeer {
                    peer,
                    endpoint: info.remote_endpoint(),
                    direction: info.direction,
                    protocol: info.protocol,
                    path: info.path,
                })
            }
            Admission::Upgrade { retire, .. } => {
                if let Some(retired) = retire {
                    self.retire_in_background(retired);
                }
                tracing::info!(%peer, path = %info.path, "relayed connection upgraded");
                Some(Event::ConnectionUpgraded {
                    peer,
                    endpoint: info.remote_endpoint(),
                    direction: info.direction,
                    protocol: info.protocol,
                    path: info.path,
                })
            }
            Admission::Successor => {
                tracing::debug!(%peer, "successor connection took over");
                Some(Event::DuplicateConnectionClosed {
                    peer,
                    kept: info.direction,
                })
            }
            Admission::Duplicate {
                retire,
                kept,
                abort,
            } => {
                for extra in abort {
                    tracing::warn!(%peer, "too many connections from one peer; aborting the oldest extra one");
                    extra.sender.abort();
                }
                if let Some(retired) = retire {
                    self.retire_in_background(retired);
                }
                kept.map(|kept| {
                    tracing::debug!(%peer, ?kept, "duplicate connection resolved");
                    Event::DuplicateConnectionClosed { peer, kept }
                })
            }
        };
        if let Some(event) = event {
            match cause {
                Cause::Application => self.emit_now(event),
                Cause::Peer => {
                    self.emit_wait(vec![event]).await;
                }
            }
        }
        Ok(peer)
    }

    /// Ends our side of a duplicate gracefully, telling the peer a successor exists; the
    /// reader keeps draining until the peer ends its side, bounded by the handshake timeout.
    fn retire_in_background(&self, handle: ConnHandle) {
        let deadline = self.config.connection.handshake_timeout;
        self.tasks.spawn(async move {
            let _ = handle
                .sender
                .send_frame(FrameKind::Superseded, Bytes::new())
                .await;
            Node::close_gracefully(&handle, Closing::Drain, deadline).await;
        });
    }

    /// The connection's task: reads until the connection ends, then reports the end. With
    /// `first`, reading starts once that token is cancelled (the relayed connection this
    /// one replaces has handed over what it read), or after [`UPGRADE_DRAIN_LIMIT`].
    async fn run(
        self: Arc<Self>,
        handle: ConnHandle,
        receiver: MessageReceiver,
        first: Option<tokio_util::sync::CancellationToken>,
    ) {
        if let Some(first) = first {
            tokio::select! {
                _ = first.cancelled() => {}
                _ = tokio::time::sleep(UPGRADE_DRAIN_LIMIT) => {
                    tracing::warn!(peer = %receiver.info().peer_id, "the relayed connection did not drain in time; reading the new one anyway");
                }
            }
        }
        let reason = self.read_loop(&handle, receiver).await;
        handle.reader_done.cancel();
        self.connection_ended(&handle, reason).await;
    }

    async fn read_loop(
        self: &Arc<Self>,
        handle: &ConnHandle,
        mut receiver: MessageReceiver,
    ) -> LostReason {
        let peer = receiver.info().peer_id;
        let direction = receiver.info().direction;
        let protocol = receiver.info().protocol;
        let local_addr = receiver.info().local_addr;
        let remote_ip = receiver.info().remote_addr.ip();
        let start = Instant::now();
        let mut meter = RateMeter::new(&self.config.rate_limit, start);
        let mut liveness = Liveness::new(
            self.config.ping_interval,
            self.config.ping_timeout,
            start,
            handle.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) & !MANUAL_PING_BIT,
        );
        let timer = tokio::time::sleep_until(start.into());
        tokio::pin!(timer);
        let mut batch = Vec::new();
        // A connection carries one observed address; later ones are ignored, and so are
        // any on a relayed connection (its addresses are those of the link to the relay).
        let mut observation_seen = false;
        let relayed = matches!(
            receiver.info().path,
            crust_core::ConnectionPath::Relayed { .. }
        );
        loop {
            // Shutdown aborts every connection, which ends this wait too.
            let first = tokio::select! {
                biased;
                frame = receiver.recv_frame() => frame,
                _ = &mut timer => {
                    let now = Instant::now();
                    loop {
                        match liveness.poll(now) {
                            LivenessAction::Ping(nonce) => {
                                // Never wait: a full control lane means traffic is flowing.
                                handle.sender.try_send_frame(FrameKind::Ping, encode_nonce(nonce));
                            }
                            LivenessAction::Dead(silent_for) => {
                                tracing::info!(%peer, ?silent_for, "peer silent; giving up on it");
                                handle.sender.abort();
                                return LostReason::PingTimeout { silent_for };
                            }
                            LivenessAction::WaitUntil(at) => {
                                let ack = handle.delivery.poll(&handle.sender, now);
                                let at = ack.map_or(at, |ack| ack.min(at));
                                timer.as_mut().reset(at.into());
                                break;
                            }
                        }
                    }
                    continue;
                }
            };
            let mut next = first.map(Some);
            let mut batch_bytes = 0;
            // Application messages in this batch, for the delivery acknowledgements.
            let mut messages = 0u64;
            let discard = handle.delivery.discards();
            // Then take whatever else already arrived, and hand it over as one batch.
            loop {
                let frame = match next {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        self.emit_wait(std::mem::take(&mut batch)).await;
                        return LostReason::from_read_error(&e);
                    }
                };
                // Circuit bytes are application data on their way (bounded by the circuits'
                // windows and limits), and an acknowledgement that confirms new messages
                // was earned by our sending: neither is control work.
                let earned = frame.kind == crate::relay::RELAY_FRAME
                    || (frame.kind == crate::delivery::DELIVERED_FRAME
                        && handle.delivery.advances(&frame.payload));
                let metered = if earned {
                    FrameKind::Message
                } else {
                    frame.kind
                };
                if let Err(limit) = meter.on_frame(metered, frame.payload.len()) {
                    let ban = self.config.flood_action == FloodAction::Ban;
                    tracing::warn!(%peer, %limit, ban, "peer exceeds the rate limit");
                    batch.push(Event::FloodDetected {
                        peer,
                        limit,
                        banned: ban,
                    });
                    self.emit_wait(std::mem::take(&mut batch)).await;
                    if ban {
                        self.ban([peer], LostReason::Flood(limit));
                        return LostReason::Flood(limit);
                    }
                    // Reported once per burst: start a fresh meter.
                    meter = RateMeter::new(&self.config.rate_limit, Instant::now());
                }
                match frame.kind {
                    FrameKind::Message if discard => {
                        tracing::trace!(%peer, "closing: discarding a message");
                    }
                    FrameKind::Message => {
                        messages += 1;
                        batch_bytes += frame.payload.len();
                        batch.push(Event::Message {
                            peer,
                            payload: frame.payload,
                        });
                    }
                    crate::delivery::DELIVERED_FRAME => {
                        handle.delivery.on_frame(peer, &frame.payload);
                    }
                    FrameKind::Ping => {
                        // Never wait on a peer that pings faster than it reads.
                        handle.sender.try_send_frame(FrameKind::Pong, frame.payload);
                    }
                    FrameKind::Pong => {
                        if let Some(nonce) = decode_nonce(&frame.payload)
                            .filter(|nonce| nonce & MANUAL_PING_BIT != 0)
                        {
                            answer_manual_ping(handle, nonce);
                        } else if let Some(nonce) = decode_nonce(&frame.payload) {
                            if liveness.on_pong(nonce, Instant::now()).is_some() {
                                if let Some(rtt) = liveness.rtt() {
                                    let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                                    handle.rtt_micros.store(micros.max(1), Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    FrameKind::Superseded => {
                        self.registry().mark_superseded(peer, handle.id);
                    }
                    FrameKind::ObservedAddress if observation_seen || relayed => {
                        tracing::debug!(%peer, "ignoring a repeated observed address");
                    }
                    FrameKind::ObservedAddress => {
                        observation_seen = true;
                        match crust_core::wire::decode_observed_address(&frame.payload) {
                            Ok(addr) if !usable_observed_address(addr) => {
                                tracing::debug!(%peer, %addr, "ignoring an unusable observed address");
                            }
                            Ok(addr) => {
                                let endpoint = Endpoint::new(protocol, addr);
                                let changed = {
                                    let mut reachability = self.reachability();
                                    let may_change = reachability.classifier.observe(
                                        peer,
                                        protocol,
                                        local_addr,
                                        addr,
                                        remote_ip,
                                        Instant::now(),
                                    );
                                    if may_change {
                                        reachability.update()
                                    } else {
                                        None
                                    }
                                };
                                if direction == Direction::Inbound && self.registry().contains(peer)
                                {
                                    self.observed().record(peer, endpoint);
                                }
                                batch.push(Event::AddressObserved {
                                    peer,
                                    endpoint,
                                    direction,
                                });
                                if let Some(reachability) = changed {
                                    tracing::info!(nat = %reachability.nat_type, external = ?reachability.external, "reachability changed");
                                    batch.push(Event::ReachabilityChanged { reachability });
                                }
                                if protocol == crust_core::Protocol::Rudp {
                                    self.maybe_start_filter_test(self.rudp_listen_port());
                                }
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "ignoring a bad observed address")
                            }
                        }
                    }
                    crate::probe_driver::PROBE_FRAME => {
                        self.handle_probe_frame(peer, handle, &frame.payload);
                    }
                    crate::punch::PUNCH_FRAME => {
                        self.handle_punch_frame(peer, handle, &frame.payload);
                    }
                    crate::relay::RELAY_FRAME => {
                        self.handle_relay_frame(peer, &frame.payload);
                    }
                    crate::gossip::GOSSIP_FRAME if self.config.gossip.enabled => {
                        self.handle_gossip_frame(peer, handle, &frame.payload);
                    }
                    other => {
                        if !self.control.dispatch(other, peer, frame.payload) {
                            tracing::trace!(%peer, kind = ?other, "skipping a control frame nobody claimed");
                        }
                    }
                }
                if batch.len() >= EVENT_BATCH || batch_bytes >= EVENT_BATCH_BYTES {
                    break;
                }
                next = receiver.try_recv_frame();
            }
            self.emit_wait_alive(std::mem::take(&mut batch), handle)
                .await;
            let now = Instant::now();
            let handed_over = !self.shutdown.is_cancelled();
            if let Some(at) = handle.delivery.delivered(
                &handle.sender,
                messages,
                batch_bytes as u64,
                handed_over,
                now,
            ) {
                if at < timer.deadline().into_std() {
                    timer.as_mut().reset(at.into());
                }
            }
            // Heard from the peer now; time spent waiting for our application to take
            // events is not held against the peer either.
            liveness.heard(now);
        }
    }

    /// Hands a batch to the application like [`Node::emit_wait`], pinging the peer every
    /// `ping_interval` while the application makes us wait. While we wait we do not read,
    /// so the peer hears nothing from us (not even pongs) and would take a slow
    /// application for a dead peer after its `ping_timeout`; our pings prove us alive (any
    /// frame does), while flow control keeps slowing the peer down.
    async fn emit_wait_alive(&self, events: Vec<Event>, handle: &ConnHandle) -> bool {
        let wait = self.emit_wait(events);
        tokio::pin!(wait);
        let interval = self.config.ping_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                waited = &mut wait => return waited,
                _ = tick.tick() => {
                    // The pong comes back answering no ping of ours and is ignored.
                    handle
                        .sender
                        .try_send_frame(FrameKind::Ping, encode_nonce(KEEPALIVE_NONCE));
                }
            }
        }
    }

    /// Applies the end of a connection to the registry and reports what follows.
    async fn connection_ended(self: &Arc<Self>, handle: &ConnHandle, reason: LostReason) {
        let peer = handle.sender.info().peer_id;
        // Before the peer's `LostPeer`: what the peer did not confirm on this connection.
        self.report_unconfirmed(handle, handle.sender.peer_finished());
        let ended = self.registry().connection_ended(peer, handle.id);
        match ended {
            Ended::Nothing => self.registry_changed.notify_waiters(),
            Ended::AwaitSuccessor => {
                tracing::debug!(%peer, "connection superseded; waiting for its successor");
                self.registry_changed.notify_waiters();
                let node = self.clone();
                let wait = self.config.connection.handshake_timeout;
                let id = handle.id;
                self.tasks.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = node.shutdown.cancelled() => return,
                    }
                    let overdue = {
                        let mut registry = node.registry();
                        registry
                            .successor_overdue(peer, id)
                            .map(|rest| (rest, registry.is_empty()))
                    };
                    if let Some((rest, none_left)) = overdue {
                        for connection in rest {
                            connection.sender.abort();
                            node.report_unconfirmed(&connection, false);
                        }
                        node.peer_removed(peer, LostReason::SupersededNotReplaced, none_left);
                    }
                });
            }
            Ended::Lost { abort, none_left } => {
                for connection in abort {
                    connection.sender.abort();
                    self.report_unconfirmed(&connection, false);
                }
                self.peer_removed(peer, reason, none_left);
            }
        }
    }
}

/// Hands the round-trip time to the application ping waiting for `nonce`, if any.
fn answer_manual_ping(handle: &ConnHandle, nonce: u64) {
    let mut pings = handle
        .manual_pings
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(i) = pings.iter().position(|ping| ping.nonce == nonce) {
        let ping = pings.swap_remove(i);
        let _ = ping.answer.send(ping.sent.elapsed());
    }
}
