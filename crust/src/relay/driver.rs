//! The async side of relaying: asking a relay for a circuit (A), relaying (R), accepting a
//! circuit (B), and the TLS session A and B run inside it.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crust_core::{
    Connection, ConnectionInfo, ConnectionPath, Direction, PeerId, SecureStream, tls,
};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::circuits::{CircuitTable, End, Forward, Limits};
use super::messages::{CircuitKey, CloseReason, RefuseReason, RelayMessage};
use super::stream::{EndHandle, Incoming, RelayStream, circuit_end};
use super::{RELAY_FRAME, RelayConfig, RelayFailure};
use crate::conn_task::Cause;
use crate::node::Node;
use crate::{Error, Result};

/// The ALPN of the TLS session inside a circuit (never valid on a plain TCP connection).
const RELAY_ALPN: &[u8] = b"crust-relay/1";

/// Most relays asked in turn for one connection.
const MAX_RELAYS_TRIED: usize = 4;

/// How long we wait for a relay's answer (it waits up to
/// [`ANSWER_TIMEOUT`](super::circuits::ANSWER_TIMEOUT) for the target).
const RELAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Relaying state of a node: as a relay, and as an end of circuits.
#[derive(Debug)]
pub(crate) struct RelayState {
    table: CircuitTable,
    /// One ordered writer per link that carries relay messages.
    writers: HashMap<PeerId, mpsc::UnboundedSender<Bytes>>,
    /// Circuits we are an end of.
    ends: HashMap<End, EndHandle>,
    /// Our `Connect`s waiting for the relay's answer.
    pending: HashMap<End, oneshot::Sender<std::result::Result<(), RefuseReason>>>,
    next_id: u32,
}

impl RelayState {
    pub(crate) fn new(config: &RelayConfig) -> Self {
        RelayState {
            table: CircuitTable::new(Limits {
                enabled: config.serve,
                max_circuits: config.max_circuits,
                max_circuits_per_peer: config.max_circuits_per_peer,
                max_bytes_per_circuit: config.max_bytes_per_circuit,
                max_duration: config.max_duration,
            }),
            writers: HashMap::new(),
            ends: HashMap::new(),
            pending: HashMap::new(),
            next_id: 0,
        }
    }

    /// A fresh name for a circuit we open on the link to `link`.
    fn allocate_key(&mut self, link: PeerId) -> CircuitKey {
        loop {
            let key = CircuitKey {
                ours: true,
                id: self.next_id,
            };
            self.next_id = self.next_id.wrapping_add(1);
            let end = (link, key);
            if !self.table.contains(end)
                && !self.ends.contains_key(&end)
                && !self.pending.contains_key(&end)
            {
                return key;
            }
        }
    }

    /// Circuits relayed now.
    pub(crate) fn circuits(&self) -> usize {
        self.table.len()
    }
}

/// `Close` as sent to an end (named as it is on that end's link, by us).
fn close_to(end: End, reason: CloseReason) -> RelayMessage {
    RelayMessage::Close {
        id: end.1.id,
        sender_opened: end.1.ours,
        reason,
    }
}

impl Node {
    pub(crate) fn relay_state(&self) -> MutexGuard<'_, RelayState> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when `peer` is connected by a connection of its own (not through a relay):
    /// circuits never run over circuits.
    fn direct_link(&self, peer: PeerId) -> bool {
        self.registry().active(peer).is_some_and(|(_, handle)| {
            !matches!(handle.sender.info().path, ConnectionPath::Relayed { .. })
        })
    }

    /// Queues `message` for `link`, starting the link's writer when needed.
    fn relay_send(self: &Arc<Self>, state: &mut RelayState, link: PeerId, message: &RelayMessage) {
        let writer = self.relay_writer(state, link);
        let _ = writer.send(message.encode());
    }

    /// The ordered writer of relay messages to `link`: a task that writes them to the
    /// peer's active connection (waiting for room; a window per circuit bounds what waits).
    fn relay_writer(
        self: &Arc<Self>,
        state: &mut RelayState,
        link: PeerId,
    ) -> mpsc::UnboundedSender<Bytes> {
        if let Some(writer) = state.writers.get(&link).filter(|w| !w.is_closed()) {
            return writer.clone();
        }
        let (writer, mut frames) = mpsc::unbounded_channel::<Bytes>();
        state.writers.insert(link, writer.clone());
        let node = self.clone();
        self.tasks.spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = frames.recv() => match frame {
                        Some(frame) => frame,
                        None => break,
                    },
                    _ = node.shutdown.cancelled() => break,
                };
                let sender = node
                    .registry()
                    .active(link)
                    .map(|(_, handle)| handle.sender.clone());
                let Some(sender) = sender else { break };
                if sender.send_frame(RELAY_FRAME, frame).await.is_err() {
                    break;
                }
            }
        });
        writer
    }

    /// A relay message from `link`.
    pub(crate) fn handle_relay_frame(self: &Arc<Self>, link: PeerId, payload: &Bytes) {
        let message = match RelayMessage::decode(payload) {
            Ok(message) => message,
            Err(_) => {
                tracing::debug!(peer = %link, "ignoring a malformed relay message");
                return;
            }
        };
        let key = message.key_at_receiver();
        let end = (link, key);
        match message {
            RelayMessage::Connect { target, .. } => self.relay_open(link, key, target),
            RelayMessage::Incoming { from, .. } => self.relay_incoming(link, key, from),
            RelayMessage::Accept { .. } => {
                let mut state = self.relay_state();
                if let Some(initiator) = state.table.answer(link, key, true) {
                    let connected = RelayMessage::Connected { id: initiator.1.id };
                    self.relay_send(&mut state, initiator.0, &connected);
                }
            }
            RelayMessage::Connected { .. } => {
                if let Some(waiter) = self.relay_state().pending.remove(&end) {
                    let _ = waiter.send(Ok(()));
                }
            }
            RelayMessage::Refuse { reason, .. } => {
                let mut state = self.relay_state();
                if let Some(waiter) = state.pending.remove(&end) {
                    let _ = waiter.send(Err(reason));
                } else if let Some(initiator) = state.table.answer(link, key, false) {
                    let refuse = RelayMessage::Refuse {
                        id: initiator.1.id,
                        reason: RefuseReason::TargetRefused,
                    };
                    self.relay_send(&mut state, initiator.0, &refuse);
                }
            }
            RelayMessage::Data { data, .. } => {
                let mut state = self.relay_state();
                if let Some(handle) = state.ends.get(&end) {
                    if handle.shared.arrived(data.len()) {
                        let _ = handle.incoming.send(Incoming::Data(data));
                    } else {
                        tracing::debug!(peer = %link, "relay circuit: data beyond the window");
                        self.end_circuit(&mut state, end, CloseReason::FlowControl);
                    }
                    return;
                }
                let len = data.len();
                let forward = state.table.data(link, key, len, Instant::now());
                self.apply_forward(&mut state, forward, |to| RelayMessage::Data {
                    id: to.1.id,
                    sender_opened: to.1.ours,
                    data,
                });
            }
            RelayMessage::Credit { bytes, .. } => {
                let mut state = self.relay_state();
                if let Some(handle) = state.ends.get(&end) {
                    handle.shared.credit(bytes);
                    return;
                }
                let forward = state.table.credit(link, key, bytes);
                self.apply_forward(&mut state, forward, |to| RelayMessage::Credit {
                    id: to.1.id,
                    sender_opened: to.1.ours,
                    bytes,
                });
            }
            RelayMessage::Close { reason, .. } => {
                let mut state = self.relay_state();
                if let Some(handle) = state.ends.get(&end) {
                    if reason == CloseReason::Finished {
                        let _ = handle.incoming.send(Incoming::Finished);
                    } else if let Some(handle) = state.ends.remove(&end) {
                        handle.shared.closed(reason);
                        let _ = handle.incoming.send(Incoming::Closed(reason));
                    }
                    return;
                }
                if let Some(other) = state.table.close(link, key, reason) {
                    self.relay_send(&mut state, other.0, &close_to(other, reason));
                }
            }
        }
    }

    /// Sends a forwarded message on, or closes the circuit at both ends.
    fn apply_forward(
        self: &Arc<Self>,
        state: &mut RelayState,
        forward: Forward,
        message: impl FnOnce(End) -> RelayMessage,
    ) {
        match forward {
            Forward::To(to) => self.relay_send(state, to.0, &message(to)),
            Forward::Close { ends, reason } => {
                tracing::debug!(
                    reason = reason.as_str(),
                    "relay circuit closed by its limits"
                );
                for end in ends {
                    self.relay_send(state, end.0, &close_to(end, reason));
                }
            }
            Forward::Unknown => {}
        }
    }

    /// Ends a circuit we are an end of, telling the relay.
    fn end_circuit(self: &Arc<Self>, state: &mut RelayState, end: End, reason: CloseReason) {
        if let Some(handle) = state.ends.remove(&end) {
            handle.shared.closed(reason);
            let _ = handle.incoming.send(Incoming::Closed(reason));
        }
        self.relay_send(state, end.0, &close_to(end, reason));
    }

    /// As a relay: `link` asks for a circuit to `target`.
    fn relay_open(self: &Arc<Self>, link: PeerId, key: CircuitKey, target: PeerId) {
        let reachable =
            target != self.peer_id() && self.direct_link(target) && self.direct_link(link);
        let now = Instant::now();
        let mut state = self.relay_state();
        let expired = state.table.expire(now);
        for (initiator, target_end) in expired.unanswered {
            let refuse = RelayMessage::Refuse {
                id: initiator.1.id,
                reason: RefuseReason::TargetTimeout,
            };
            self.relay_send(&mut state, initiator.0, &refuse);
            self.relay_send(
                &mut state,
                target_end.0,
                &close_to(target_end, CloseReason::Reset),
            );
        }
        for ends in expired.closed {
            for end in ends {
                self.relay_send(&mut state, end.0, &close_to(end, CloseReason::TimeLimit));
            }
        }
        let target_key = state.allocate_key(target);
        match state
            .table
            .open(link, key, target, reachable, now, target_key)
        {
            Ok(()) => {
                tracing::debug!(from = %link, %target, "relaying a circuit");
                let incoming = RelayMessage::Incoming {
                    id: target_key.id,
                    from: link,
                };
                self.relay_send(&mut state, target, &incoming);
            }
            Err(reason) => {
                tracing::debug!(from = %link, %target, reason = reason.as_str(), "refusing to relay");
                let refuse = RelayMessage::Refuse { id: key.id, reason };
                self.relay_send(&mut state, link, &refuse);
            }
        }
    }

    /// A circuit end for `end`, registered so that arriving messages reach its stream;
    /// forgotten when the stream is dropped.
    fn open_end(self: &Arc<Self>, state: &mut RelayState, end: End) -> RelayStream {
        let writer = self.relay_writer(state, end.0);
        let node: Weak<Node> = Arc::downgrade(self);
        let forget = Box::new(move || {
            if let Some(node) = node.upgrade() {
                node.relay_state().ends.remove(&end);
            }
        });
        let (stream, handle) = circuit_end(end.1, writer, forget);
        state.ends.insert(end, handle);
        stream
    }

    /// As a target: `from` asks, through `link`, for a circuit to us.
    fn relay_incoming(self: &Arc<Self>, link: PeerId, key: CircuitKey, from: PeerId) {
        let refused = !self.config.relay.accept
            || from == self.peer_id()
            || from == link
            || !self.direct_link(link)
            || {
                let registry = self.registry();
                registry.is_banned(from) || registry.contains(from)
            };
        let mut state = self.relay_state();
        if refused {
            let refuse = RelayMessage::Refuse {
                id: key.id,
                reason: RefuseReason::TargetRefused,
            };
            self.relay_send(&mut state, link, &refuse);
            return;
        }
        let stream = self.open_end(&mut state, (link, key));
        self.relay_send(&mut state, link, &RelayMessage::Accept { id: key.id });
        drop(state);
        let node = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = node.accept_relayed(link, from, stream).await {
                tracing::info!(%from, relay = %link, error = %e, "relayed connection refused");
            }
        });
    }

    /// As a target: the TLS server side inside the circuit; the client must be `from`.
    async fn accept_relayed(
        self: &Arc<Self>,
        relay: PeerId,
        from: PeerId,
        stream: RelayStream,
    ) -> Result<PeerId> {
        let provider = tls::default_crypto_provider();
        let server = tls::server_config(&self.identity, provider, &[RELAY_ALPN])?;
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let within = self.config.connection.handshake_timeout;
        let tls = tokio::time::timeout(within, acceptor.accept(stream))
            .await
            .map_err(|_| crust_core::Error::Handshake("relayed handshake timed out".into()))?
            .map_err(|e| crust_core::Error::Handshake(e.to_string()))?;
        let peer = tls::peer_id_from_certificates(tls.get_ref().1.peer_certificates())?;
        if peer != from {
            return Err(crust_core::Error::PeerIdMismatch {
                expected: from,
                actual: peer,
            }
            .into());
        }
        let conn = self.relayed_connection(
            relay,
            peer,
            Direction::Inbound,
            tokio_rustls::TlsStream::Server(tls),
        )?;
        self.register(conn, Cause::Peer).await
    }

    /// A connection over a TLS session inside a circuit through `relay`.
    fn relayed_connection(
        &self,
        relay: PeerId,
        peer: PeerId,
        direction: Direction,
        tls: tokio_rustls::TlsStream<RelayStream>,
    ) -> Result<Connection> {
        let link = self
            .registry()
            .active(relay)
            .map(|(_, handle)| handle.sender.info().clone())
            .ok_or(Error::NotConnected(relay))?;
        let info = ConnectionInfo {
            peer_id: peer,
            local_addr: link.local_addr,
            remote_addr: link.remote_addr,
            protocol: link.protocol,
            direction,
            path: ConnectionPath::Relayed { via: relay },
        };
        let (reader, writer) = tokio::io::split(tls);
        let stream = SecureStream {
            info,
            reader: Box::new(reader),
            writer: Box::new(writer),
            keep_alive: None,
        };
        Ok(Connection::new(stream, &self.config.connection))
    }

    /// As an initiator: connects to `target` through one of our peers, asking them in
    /// turn.
    pub(crate) async fn relay_connect(
        self: &Arc<Self>,
        target: PeerId,
        cause: Cause,
    ) -> std::result::Result<PeerId, RelayFailure> {
        if !self.config.relay.use_relays {
            return Err(RelayFailure::Disabled);
        }
        let relays: Vec<PeerId> = self
            .active_peers()
            .into_iter()
            .filter(|p| *p != target && self.direct_link(*p))
            .take(MAX_RELAYS_TRIED)
            .collect();
        let mut failure: Option<RelayFailure> = None;
        for relay in relays {
            let (key, answer) = {
                let mut state = self.relay_state();
                let key = state.allocate_key(relay);
                let (tx, rx) = oneshot::channel();
                state.pending.insert((relay, key), tx);
                self.relay_send(
                    &mut state,
                    relay,
                    &RelayMessage::Connect { id: key.id, target },
                );
                (key, rx)
            };
            match tokio::time::timeout(RELAY_ANSWER_TIMEOUT, answer).await {
                Ok(Ok(Ok(()))) => return self.relay_session(relay, key, target, cause).await,
                Ok(Ok(Err(reason))) => {
                    tracing::debug!(%relay, %target, reason = reason.as_str(), "relay refused");
                    if !matches!(
                        reason,
                        RefuseReason::TargetNotConnected | RefuseReason::Disabled
                    ) {
                        failure = Some(RelayFailure::Refused {
                            by: relay,
                            reason: reason.as_str(),
                        });
                    }
                }
                // The link to the relay went away.
                Ok(Err(_)) => {}
                Err(_) => {
                    self.relay_state().pending.remove(&(relay, key));
                    failure = Some(RelayFailure::Timeout {
                        relay,
                        within: RELAY_ANSWER_TIMEOUT,
                    });
                }
            }
            if self.registry().contains(target) {
                return Ok(target);
            }
        }
        Err(failure.unwrap_or(RelayFailure::NoRelay(target)))
    }

    /// As an initiator: the TLS client side inside the circuit `key` through `relay`.
    async fn relay_session(
        self: &Arc<Self>,
        relay: PeerId,
        key: CircuitKey,
        target: PeerId,
        cause: Cause,
    ) -> std::result::Result<PeerId, RelayFailure> {
        let session_failed = |error: String| RelayFailure::Session {
            relay,
            peer: target,
            error,
        };
        let stream = {
            let mut state = self.relay_state();
            self.open_end(&mut state, (relay, key))
        };
        let provider = tls::default_crypto_provider();
        let (config, verifier) =
            tls::client_config(&self.identity, provider, Some(target), &[RELAY_ALPN])
                .map_err(|e| session_failed(e.to_string()))?;
        let connector = TlsConnector::from(Arc::new(config));
        let within = self.config.connection.handshake_timeout;
        let tls = tokio::time::timeout(within, connector.connect(tls::server_name(), stream))
            .await
            .map_err(|_| session_failed(format!("no handshake within {within:?}")))?
            .map_err(|e| session_failed(tls::dial_handshake_error(&verifier, e).to_string()))?;
        let conn = self
            .relayed_connection(
                relay,
                target,
                Direction::Outbound,
                tokio_rustls::TlsStream::Client(tls),
            )
            .map_err(|e| session_failed(e.to_string()))?;
        tracing::info!(peer = %target, %relay, "relayed connection established");
        self.register(conn, cause)
            .await
            .map_err(|e| session_failed(e.to_string()))
    }

    /// The link to `peer` is gone: circuits through it end, at both ends.
    pub(crate) fn relay_link_lost(&self, peer: PeerId) {
        let mut state = self.relay_state();
        for other in state.table.link_lost(peer) {
            // The relay wrote to the other end before (`Incoming` or `Connected`): its
            // writer exists unless that link is going too.
            if let Some(writer) = state.writers.get(&other.0) {
                let _ = writer.send(close_to(other, CloseReason::LinkLost).encode());
            }
        }
        let ends: Vec<End> = state.ends.keys().filter(|e| e.0 == peer).copied().collect();
        for end in ends {
            if let Some(handle) = state.ends.remove(&end) {
                handle.shared.closed(CloseReason::LinkLost);
                let _ = handle
                    .incoming
                    .send(Incoming::Closed(CloseReason::LinkLost));
            }
        }
        state.pending.retain(|end, _| end.0 != peer);
        state.writers.remove(&peer);
    }
}
