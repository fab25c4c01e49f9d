//! `BootstrapDiscovery` over paused tokio time: round order, the backoff schedule, and what a
//! direct connection changes.

use std::time::Duration;

use crust_bootstrap::{
    Backoff, BackoffConfig, BootstrapCache, BootstrapConfig, BootstrapDiscovery, Contact,
    LoadOutcome,
};
use crust_core::{Discovery, Endpoint, PeerId};
use tokio::time::Instant;

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn ep(port: u16) -> Endpoint {
    format!("tcp://192.0.2.1:{port}").parse().expect("endpoint")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn contacts() -> Vec<Contact> {
    vec![Contact::new(None, vec![ep(1)])]
}

/// Times at which rounds are yielded, relative to the first call.
async fn round_times(d: &mut BootstrapDiscovery, rounds: usize) -> Vec<Duration> {
    let start = Instant::now();
    let mut times = Vec::new();
    for _ in 0..rounds {
        assert!(d.next_candidates().await.is_some());
        times.push(start.elapsed());
    }
    times
}

#[tokio::test(start_paused = true)]
async fn rounds_follow_the_backoff_schedule_without_jitter() {
    let cfg = BackoffConfig::default()
        .with_initial_delay(ms(100))
        .with_max_delay(ms(1_000))
        .with_jitter(0.0);
    let mut d = BootstrapDiscovery::new(contacts(), None, cfg);
    let times = round_times(&mut d, 7).await;
    // Round 0 at once, then +100, +200, +400, +800, +1000 (capped), +1000.
    assert_eq!(
        times,
        [
            ms(0),
            ms(100),
            ms(300),
            ms(700),
            ms(1_500),
            ms(2_500),
            ms(3_500)
        ]
    );
    assert_eq!(d.rounds(), 7);
}

#[tokio::test(start_paused = true)]
async fn jittered_rounds_match_the_seeded_schedule() {
    let cfg = BackoffConfig::default()
        .with_initial_delay(ms(200))
        .with_max_delay(ms(5_000))
        .with_jitter(0.5);
    let mut d = BootstrapDiscovery::new(contacts(), None, cfg.clone()).with_jitter_seed(1234);
    let times = round_times(&mut d, 8).await;

    let mut reference = Backoff::with_seed(cfg, 1234);
    let mut expected = vec![Duration::ZERO];
    for round in 0..7 {
        let base = reference.base_delay(round);
        let delay = reference.next_delay(round);
        assert!(
            delay <= base && delay >= base / 2,
            "round {round}: {delay:?}"
        );
        expected.push(expected[expected.len() - 1] + delay);
    }
    assert_eq!(times, expected);

    // The same seed gives the same times again.
    let cfg = d.contacts().to_vec();
    let mut again = BootstrapDiscovery::new(
        cfg,
        None,
        BackoffConfig::default()
            .with_initial_delay(ms(200))
            .with_max_delay(ms(5_000))
            .with_jitter(0.5),
    )
    .with_jitter_seed(1234);
    assert_eq!(round_times(&mut again, 8).await, times);
}

#[tokio::test(start_paused = true)]
async fn waiting_is_cancel_safe() {
    let cfg = BackoffConfig::default()
        .with_initial_delay(ms(1_000))
        .with_jitter(0.0);
    let mut d = BootstrapDiscovery::new(contacts(), None, cfg);
    let start = Instant::now();
    assert!(d.next_candidates().await.is_some());
    // Give up waiting after 300 ms: nothing is yielded, nothing is lost.
    let timed_out = tokio::time::timeout(ms(300), d.next_candidates()).await;
    assert!(timed_out.is_err());
    assert_eq!(d.rounds(), 1);
    // The next call waits for the same deadline, not a fresh delay.
    assert!(d.next_candidates().await.is_some());
    assert_eq!(start.elapsed(), ms(1_000));
}

#[tokio::test(start_paused = true)]
async fn direct_connection_stops_the_rounds_and_saves_the_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_path = dir.path().join("cache.json");
    let config = BootstrapConfig::default()
        .with_contact(Contact::new(None, vec![ep(1)]))
        .with_cache_path(&cache_path)
        .with_backoff(BackoffConfig::default().with_jitter(0.0));

    let mut d = BootstrapDiscovery::from_config(&config);
    assert_eq!(d.cache_load_outcome(), Some(&LoadOutcome::Missing));
    let round = d.next_candidates().await.expect("round 0");
    assert_eq!(round.len(), 1);
    assert_eq!(round[0].peer_id, None);

    d.direct_connection(peer(9), ep(1));
    assert!(d.is_bootstrapped());
    let start = Instant::now();
    assert_eq!(d.next_candidates().await, None);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no waiting once bootstrapped"
    );

    // Later direct connections are still remembered.
    d.direct_connection(peer(8), ep(2));

    // The next session offers the cached peers first, most recent first, then the contact
    // (which is left out: its endpoint is already offered by a cached peer).
    let mut next = BootstrapDiscovery::from_config(&config);
    assert_eq!(
        next.cache_load_outcome(),
        Some(&LoadOutcome::Loaded { entries: 2 })
    );
    let round = next.next_candidates().await.expect("round 0");
    let ids: Vec<_> = round.iter().map(|c| c.peer_id).collect();
    assert_eq!(ids, [Some(peer(8)), Some(peer(9))]);
    assert_eq!(round[1].endpoints, [ep(1)]);
}

#[tokio::test(start_paused = true)]
async fn use_cache_false_ignores_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_path = dir.path().join("cache.json");
    let mut cache = BootstrapCache::new(&cache_path, 10);
    cache.record(peer(1), ep(100));
    cache.save().expect("save");

    let config = BootstrapConfig::default()
        .with_contact(Contact::new(None, vec![ep(1)]))
        .with_cache_path(&cache_path)
        .with_use_cache(false);
    let mut d = BootstrapDiscovery::from_config(&config);
    assert!(d.cache().is_none());
    assert_eq!(d.cache_load_outcome(), None);
    let round = d.next_candidates().await.expect("round 0");
    assert_eq!(round.len(), 1);
    assert_eq!(round[0].endpoints, [ep(1)]);
    d.direct_connection(peer(2), ep(1));
    let (unchanged, _) = BootstrapCache::load(&cache_path, 10);
    assert_eq!(unchanged.peers(), cache.peers());
}

#[tokio::test(start_paused = true)]
async fn corrupt_cache_does_not_stop_the_bootstrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_path = dir.path().join("cache.json");
    std::fs::write(&cache_path, "{\"version\": 1, \"entr").expect("write");
    let config = BootstrapConfig::default()
        .with_contact(Contact::new(Some(peer(3)), vec![ep(3)]))
        .with_cache_path(&cache_path);
    let mut d = BootstrapDiscovery::from_config(&config);
    assert!(matches!(
        d.cache_load_outcome(),
        Some(LoadOutcome::RecoveredFromCorruption {
            moved_to: Some(_),
            ..
        })
    ));
    let round = d.next_candidates().await.expect("contacts still offered");
    assert_eq!(round[0].peer_id, Some(peer(3)));
}
