//! Coordination messages as they arrive: relaying them as the coordinator, taking the
//! replies to our own requests, answering offers as the responder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crust_core::{Endpoint, PeerId};
use tokio::sync::oneshot;

use super::PUNCH_FRAME;
use super::driver::{GO_TIMEOUT, Reply, random_u64};
use super::messages::{PunchInfo, PunchMessage, RefuseReason};
use super::plan::attempts;
use crate::node::{ConnHandle, Node};

impl Node {
    /// A coordination message from `peer` (on `conn`).
    pub(crate) fn handle_punch_frame(
        self: &Arc<Self>,
        peer: PeerId,
        conn: &ConnHandle,
        payload: &[u8],
    ) {
        let Ok(message) = PunchMessage::decode(payload) else {
            tracing::debug!(%peer, "ignoring a malformed hole-punch message");
            return;
        };
        let now = Instant::now();
        let observed = conn.sender.info().remote_endpoint();
        match message {
            // As the coordinator.
            PunchMessage::Request { id, target, info } => {
                let connected = self.registry().contains(target);
                let verdict = self
                    .punch_state()
                    .coordinator
                    .request(peer, id, target, connected, now);
                let forwarded = verdict.and_then(|()| {
                    let offer = PunchMessage::Offer {
                        id,
                        origin: peer,
                        observed,
                        info,
                    };
                    if self.send_punch(target, &offer) {
                        Ok(())
                    } else {
                        Err(RefuseReason::TargetNotConnected)
                    }
                });
                if let Err(reason) = forwarded {
                    tracing::debug!(%peer, %target, reason = reason.name(), "hole-punch request refused");
                    conn.sender.try_send_frame(
                        PUNCH_FRAME,
                        PunchMessage::Refused {
                            id,
                            by: self.peer_id(),
                            reason,
                        }
                        .encode(),
                    );
                } else {
                    tracing::debug!(initiator = %peer, %target, "relaying a hole-punch request");
                }
            }
            PunchMessage::Answer { id, origin, info } => {
                if self.punch_state().coordinator.answer(peer, origin, id, now) {
                    let answered = PunchMessage::Answered {
                        id,
                        responder: peer,
                        observed,
                        info,
                    };
                    self.send_punch(origin, &answered);
                }
            }
            PunchMessage::Decline { id, origin, reason } => {
                if self
                    .punch_state()
                    .coordinator
                    .decline(peer, origin, id, now)
                {
                    let refused = PunchMessage::Refused {
                        id,
                        by: peer,
                        reason,
                    };
                    self.send_punch(origin, &refused);
                }
            }
            PunchMessage::Sync { id, target } => {
                if self.punch_state().coordinator.sync(peer, id, target, now) {
                    self.send_punch(target, &PunchMessage::Go { id, origin: peer });
                }
            }
            // As the initiator.
            PunchMessage::Answered {
                id,
                responder,
                observed,
                info,
            } => self.deliver_reply(peer, id, responder, Reply::Answered { observed, info }),
            PunchMessage::Refused { id, by, reason } => {
                // The coordinator speaks for itself or for the target.
                let mut state = self.punch_state();
                let ours = state
                    .outgoing
                    .get(&id)
                    .is_some_and(|o| o.coordinator == peer && (by == peer || by == o.target));
                if ours {
                    if let Some(outgoing) = state.outgoing.remove(&id) {
                        let _ = outgoing.reply.send(Reply::Refused { by, reason });
                    }
                }
            }
            // As the responder.
            PunchMessage::Offer {
                id,
                origin,
                observed,
                info,
            } => self.on_offer(peer, conn, id, origin, observed, info),
            PunchMessage::Go { id, origin } => {
                // Only the coordinator that relayed the offer may say go.
                let mut state = self.punch_state();
                if state
                    .awaiting_go
                    .get(&(origin, id))
                    .is_some_and(|(coordinator, _)| *coordinator == peer)
                {
                    if let Some((_, go)) = state.awaiting_go.remove(&(origin, id)) {
                        let _ = go.send(());
                    }
                }
            }
        }
    }

    fn deliver_reply(&self, coordinator: PeerId, id: u64, responder: PeerId, reply: Reply) {
        let mut state = self.punch_state();
        let ours = state
            .outgoing
            .get(&id)
            .is_some_and(|o| o.coordinator == coordinator && o.target == responder);
        if ours {
            if let Some(outgoing) = state.outgoing.remove(&id) {
                let _ = outgoing.reply.send(reply);
            }
        }
    }

    /// `origin` wants to punch to us, introduced by `coordinator`.
    fn on_offer(
        self: &Arc<Self>,
        coordinator: PeerId,
        conn: &ConnHandle,
        id: u64,
        origin: PeerId,
        observed: Endpoint,
        theirs: PunchInfo,
    ) {
        let decline = |reason: RefuseReason| {
            tracing::debug!(%origin, reason = reason.name(), "declining a hole punch");
            conn.sender.try_send_frame(
                PUNCH_FRAME,
                PunchMessage::Decline { id, origin, reason }.encode(),
            );
        };
        if origin == self.peer_id() {
            return;
        }
        if !self
            .punch_state()
            .limits
            .admit_offer(coordinator, Instant::now())
        {
            return decline(RefuseReason::TargetBusy);
        }
        // Connected through a relay: a punch is what replaces that connection.
        if self.registry().connected_directly(origin) {
            return decline(RefuseReason::AlreadyConnected);
        }
        let crossing = self
            .punch_state()
            .outgoing
            .values()
            .any(|o| o.target == origin);
        if crossing && self.peer_id() < origin {
            // Both asked at once: the attempt of the lower id goes on.
            return decline(RefuseReason::Crossed);
        }
        let ours = self.punch_info(random_u64());
        let plan = match attempts(&ours, &theirs, observed, false) {
            Ok(plan) => plan,
            Err(_) => return decline(RefuseReason::BothSymmetric),
        };
        let Some(slot) = self.punch_slot(origin, crossing) else {
            return decline(RefuseReason::TargetBusy);
        };
        let (go_tx, go_rx) = oneshot::channel();
        self.punch_state()
            .awaiting_go
            .insert((origin, id), (coordinator, go_tx));
        conn.sender.try_send_frame(
            PUNCH_FRAME,
            PunchMessage::Answer {
                id,
                origin,
                info: ours.clone(),
            }
            .encode(),
        );
        tracing::debug!(%origin, %coordinator, "answered a hole-punch offer");
        let node = self.clone();
        self.tasks.spawn(async move {
            let _slot = slot;
            let go = tokio::select! {
                go = tokio::time::timeout(GO_TIMEOUT, go_rx) => matches!(go, Ok(Ok(()))),
                _ = node.shutdown.cancelled() => false,
            };
            node.punch_state().awaiting_go.remove(&(origin, id));
            if !go {
                tracing::debug!(%origin, "no go for an answered hole punch");
                return;
            }
            let classes = (ours.nat.class, theirs.nat.class);
            match node
                .run_attempts(
                    origin,
                    plan,
                    (ours.nonce, theirs.nonce),
                    classes,
                    Duration::ZERO,
                )
                .await
            {
                Ok(_) => tracing::info!(peer = %origin, "hole punch succeeded (responder)"),
                Err(e) => {
                    tracing::info!(peer = %origin, error = %e, "hole punch failed (responder)")
                }
            }
        });
    }
}
