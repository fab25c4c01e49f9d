//! Moving a relayed connection to a path of our own: the side that asked for the relayed
//! connection keeps trying a direct dial (endpoints the address book knows by now) and a
//! hole punch, with backoff; the registry makes a connection of our own take over
//! (`Admission::Upgrade`) and the relayed one is drained and closed, releasing the circuit.

use std::sync::Arc;
use std::time::Duration;

use crust_core::PeerId;

use crate::conn_task::Cause;
use crate::node::Node;

/// Delay before the first attempt; it doubles after each one.
const FIRST_ATTEMPT_AFTER: Duration = Duration::from_secs(1);
/// Longest delay between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Attempts before giving up (about 4 minutes in all): the relayed connection stays.
const ATTEMPTS: usize = 8;

/// The delay before attempt `n` (0-based): 1 s, 2 s, 4 s, … at most a minute.
pub(crate) fn delay_before(n: usize) -> Duration {
    let factor = 1u32 << n.min(16);
    FIRST_ATTEMPT_AFTER.saturating_mul(factor).min(MAX_DELAY)
}

impl Node {
    /// Tries, with backoff, to replace the relayed connection to `peer` by one of our own.
    /// Ends when that worked, when `peer` is gone, or after [`ATTEMPTS`]. (Boxed: it is
    /// started from `register`, which its attempts reach again.)
    pub(crate) fn upgrade_relayed(
        self: Arc<Self>,
        peer: PeerId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.upgrade_attempts(peer).await })
    }

    async fn upgrade_attempts(self: Arc<Self>, peer: PeerId) {
        for attempt in 0..ATTEMPTS {
            tokio::select! {
                _ = tokio::time::sleep(delay_before(attempt)) => {}
                _ = self.shutdown.cancelled() => return,
            }
            if !self.registry().connected_by_relay(peer) {
                return;
            }
            if self.try_direct_path(peer).await {
                tracing::info!(%peer, attempt, "found a path of our own to a relayed peer");
                return;
            }
            tracing::debug!(%peer, attempt, "no path of our own to the relayed peer yet");
        }
    }

    /// One attempt: the endpoints the address book knows, then a hole punch.
    async fn try_direct_path(self: &Arc<Self>, peer: PeerId) -> bool {
        let endpoints = self
            .address_book()
            .lookup(peer)
            .map(|addr| addr.endpoints)
            .unwrap_or_default();
        if !endpoints.is_empty()
            && self
                .connect(endpoints, Some(peer), Cause::Application)
                .await
                .is_ok()
            && self.registry().connected_directly(peer)
        {
            return true;
        }
        if self.config.hole_punching && self.registry().connected_by_relay(peer) {
            return self.punch_connect(peer).await.is_ok()
                && self.registry().connected_directly(peer);
        }
        self.registry().connected_directly(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_a_minute() {
        let delays: Vec<u64> = (0..ATTEMPTS).map(|n| delay_before(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(delay_before(usize::MAX), MAX_DELAY);
    }
}
