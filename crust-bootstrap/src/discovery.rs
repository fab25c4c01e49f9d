//! [`BootstrapDiscovery`]: the cache and the config's contacts as a [`Discovery`] source.

use async_trait::async_trait;
use crust_core::{Discovery, Endpoint, PeerCandidate, PeerId};
use tokio::time::Instant;

use crate::{Backoff, BootstrapCache, BootstrapConfig, Contact, LoadOutcome};

/// The bootstrap as a [`Discovery`] source: cached peers first (most recently reached first),
/// then the config's hard-coded contacts, offered again and again with exponential backoff
/// until a direct connection succeeds.
///
/// # Semantics
///
/// - **Rounds.** Each [`next_candidates`](Discovery::next_candidates) call yields one *round*:
///   the whole current list ([`candidates`](Self::candidates)). Round 0 is yielded at once;
///   round `n + 1` no earlier than [`Backoff::next_delay`]`(n)` after round `n` was yielded
///   (measured with `tokio::time`, so paused-time tests need no real sleeps). The call is
///   cancel safe: dropping it while it waits loses nothing, the next call waits for the same
///   deadline.
/// - **Success.** [`direct_connection`](Discovery::direct_connection) (call it whenever a dial
///   to some peer succeeded directly, passing the endpoint that was dialled) records the peer
///   at the front of the cache, saves the cache synchronously (a small atomic file write; a
///   failed save is logged with `tracing::warn!`, the peer stays cached in memory) and marks the bootstrap as succeeded.
///   From then on `next_candidates` returns `None`: the source stops re-yielding the list.
///   Keep the source around anyway: later direct connections are still recorded and saved.
///   [`restart`](Self::restart) starts over from round 0 (e.g. after losing every connection).
/// - **End.** `next_candidates` also returns `None` when there is nothing to offer (empty cache
///   and no contacts) or after [`BackoffConfig::max_rounds`](crate::BackoffConfig::max_rounds)
///   rounds.
/// - **Candidates.** Cached peers carry their [`PeerId`]; a contact whose `PeerId` is cached is
///   merged into that peer's candidate, and a contact without a `PeerId` whose endpoints are all
///   already offered is left out.
///
/// ```
/// use std::time::Duration;
/// use crust_bootstrap::{BackoffConfig, BootstrapDiscovery, Contact};
/// use crust_core::{Discovery, PeerId};
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
/// # rt.block_on(async {
/// let contact = Contact::new(None, vec!["tcp://192.0.2.1:5483".parse()?]);
/// let backoff = BackoffConfig::default().with_initial_delay(Duration::from_secs(1));
/// let mut bootstrap = BootstrapDiscovery::new(vec![contact], None, backoff).with_jitter_seed(1);
/// let first = bootstrap.next_candidates().await.expect("round 0");
/// assert_eq!(first.len(), 1);
/// // ... dialling succeeded:
/// bootstrap.direct_connection(PeerId::from_bytes([1; 32]), first[0].endpoints[0]);
/// assert!(bootstrap.is_bootstrapped());
/// assert_eq!(bootstrap.next_candidates().await, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BootstrapDiscovery {
    contacts: Vec<Contact>,
    cache: Option<BootstrapCache>,
    load_outcome: Option<LoadOutcome>,
    backoff: Backoff,
    round: u32,
    next_due: Option<Instant>,
    bootstrapped: bool,
}

impl BootstrapDiscovery {
    /// A source offering `cache` (if any) and `contacts`, retrying on the `backoff` schedule
    /// with jitter seeded from the operating system. Does no I/O.
    pub fn new(
        contacts: Vec<Contact>,
        cache: Option<BootstrapCache>,
        backoff: crate::BackoffConfig,
    ) -> Self {
        BootstrapDiscovery {
            contacts,
            cache,
            load_outcome: None,
            backoff: Backoff::new(backoff),
            round: 0,
            next_due: None,
            bootstrapped: false,
        }
    }

    /// A source built from the config: its contacts, its backoff, and (when
    /// [`use_cache`](BootstrapConfig::use_cache) is set) the cache loaded from
    /// [`resolved_cache_path`](BootstrapConfig::resolved_cache_path). Loading the cache never
    /// fails; see [`cache_load_outcome`](Self::cache_load_outcome).
    pub fn from_config(config: &BootstrapConfig) -> Self {
        let mut load_outcome = None;
        let cache = if config.use_cache {
            match config.resolved_cache_path() {
                Some(path) => {
                    let (cache, outcome) = BootstrapCache::load(path, config.max_cache_entries);
                    load_outcome = Some(outcome);
                    Some(cache)
                }
                None => {
                    tracing::warn!("no cache directory on this platform; bootstrap cache disabled");
                    None
                }
            }
        } else {
            None
        };
        let mut discovery = Self::new(config.contacts.clone(), cache, config.backoff.clone());
        discovery.load_outcome = load_outcome;
        discovery
    }

    /// Replaces the jitter source by a PRNG seeded with `seed`, for reproducible schedules.
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.backoff = Backoff::with_seed(self.backoff.config().clone(), seed);
        self
    }

    /// The current list a round would yield: cached peers (most recent first), then contacts.
    pub fn candidates(&self) -> Vec<PeerCandidate> {
        let mut out: Vec<PeerCandidate> = self
            .cache
            .iter()
            .flat_map(|c| c.peers().entries())
            .map(|e| PeerCandidate::new(Some(e.peer_id), e.endpoints.clone()))
            .collect();
        for contact in &self.contacts {
            let known = contact
                .peer_id
                .and_then(|id| out.iter().position(|c| c.peer_id == Some(id)));
            match known {
                Some(i) => {
                    let eps = &mut out[i].endpoints;
                    for ep in &contact.endpoints {
                        if !eps.contains(ep) {
                            eps.push(*ep);
                        }
                    }
                }
                None => {
                    let offered = |ep: &Endpoint| out.iter().any(|c| c.endpoints.contains(ep));
                    if contact.peer_id.is_some() || !contact.endpoints.iter().all(offered) {
                        out.push(PeerCandidate::new(
                            contact.peer_id,
                            contact.endpoints.clone(),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Whether a direct connection was reported since creation (or the last [`restart`](Self::restart)).
    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// Number of rounds yielded since creation (or the last [`restart`](Self::restart)).
    pub fn rounds(&self) -> u32 {
        self.round
    }

    /// Starts over: the next [`next_candidates`](Discovery::next_candidates) yields round 0 at
    /// once, and the source keeps going until the next direct connection.
    pub fn restart(&mut self) {
        self.round = 0;
        self.next_due = None;
        self.bootstrapped = false;
    }

    /// The cache, when this source uses one.
    pub fn cache(&self) -> Option<&BootstrapCache> {
        self.cache.as_ref()
    }

    /// What loading the cache found, when [`from_config`](Self::from_config) loaded one.
    pub fn cache_load_outcome(&self) -> Option<&LoadOutcome> {
        self.load_outcome.as_ref()
    }

    /// The hard-coded contacts.
    pub fn contacts(&self) -> &[Contact] {
        &self.contacts
    }
}

#[async_trait]
impl Discovery for BootstrapDiscovery {
    fn name(&self) -> &str {
        "bootstrap"
    }

    async fn next_candidates(&mut self) -> Option<Vec<PeerCandidate>> {
        if self.bootstrapped {
            return None;
        }
        if self
            .backoff
            .config()
            .max_rounds
            .is_some_and(|max| self.round >= max)
        {
            return None;
        }
        if let Some(due) = self.next_due {
            tokio::time::sleep_until(due).await;
        }
        let candidates = self.candidates();
        if candidates.is_empty() {
            tracing::debug!("bootstrap has no cached peers and no contacts");
            return None;
        }
        let delay = self.backoff.next_delay(self.round);
        tracing::debug!(round = self.round, candidates = candidates.len(), next_in = ?delay, "bootstrap round");
        self.round = self.round.saturating_add(1);
        self.next_due = Some(Instant::now() + delay);
        Some(candidates)
    }

    /// Starts bootstrapping over (see [`BootstrapDiscovery::restart`]).
    fn all_peers_lost(&mut self) {
        tracing::info!("all peers lost; bootstrapping again");
        self.restart();
    }

    fn direct_connection(&mut self, peer: PeerId, endpoint: Endpoint) {
        if !self.bootstrapped {
            tracing::info!(peer = %peer, endpoint = %endpoint, rounds = self.round, "bootstrap succeeded");
        }
        self.bootstrapped = true;
        if let Some(cache) = &mut self.cache {
            cache.record(peer, endpoint);
            if let Err(e) = cache.save() {
                tracing::warn!(peer = %peer, error = %e, "cannot save the bootstrap cache");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackoffConfig;
    use std::time::Duration;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::tcp(std::net::SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn cache_first_then_contacts_merged_and_deduplicated() {
        let mut cache = BootstrapCache::new("unused.json", 10);
        cache.peers_mut().record(peer(1), ep(1), 1);
        cache.peers_mut().record(peer(2), ep(2), 2);
        let contacts = vec![
            Contact::new(Some(peer(1)), vec![ep(1), ep(11)]),
            Contact::new(None, vec![ep(2)]),
            Contact::new(None, vec![ep(3)]),
            Contact::new(Some(peer(4)), vec![ep(4)]),
        ];
        let d = BootstrapDiscovery::new(contacts, Some(cache), BackoffConfig::default());
        let got = d.candidates();
        assert_eq!(
            got,
            [
                PeerCandidate::new(Some(peer(2)), vec![ep(2)]),
                PeerCandidate::new(Some(peer(1)), vec![ep(1), ep(11)]),
                PeerCandidate::new(None, vec![ep(3)]),
                PeerCandidate::new(Some(peer(4)), vec![ep(4)]),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_to_offer_ends_at_once() {
        let mut d = BootstrapDiscovery::new(Vec::new(), None, BackoffConfig::default());
        assert_eq!(d.next_candidates().await, None);
        assert_eq!(d.name(), "bootstrap");
    }

    #[tokio::test(start_paused = true)]
    async fn max_rounds_bounds_the_loop() {
        let cfg = BackoffConfig::default()
            .with_max_rounds(Some(2))
            .with_jitter(0.0);
        let mut d = BootstrapDiscovery::new(vec![Contact::new(None, vec![ep(1)])], None, cfg);
        assert!(d.next_candidates().await.is_some());
        assert!(d.next_candidates().await.is_some());
        assert_eq!(d.next_candidates().await, None);
        assert_eq!(d.rounds(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn restart_yields_at_once_again() {
        let cfg = BackoffConfig::default().with_initial_delay(Duration::from_secs(5));
        let mut d = BootstrapDiscovery::new(vec![Contact::new(None, vec![ep(1)])], None, cfg)
            .with_jitter_seed(3);
        assert!(d.next_candidates().await.is_some());
        d.direct_connection(peer(1), ep(1));
        assert_eq!(d.next_candidates().await, None);
        d.restart();
        let start = Instant::now();
        assert!(d.next_candidates().await.is_some());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
