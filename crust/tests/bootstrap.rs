//! Bootstrapping a service from contacts and from the cache of an earlier session.

mod common;

use std::time::Duration;

use common::{init_tracing, node, wait_for};
use crust::bootstrap::{BackoffConfig, BootstrapCache};
use crust::{BootstrapConfig, Contact, Event, Protocol, ServiceConfig};

fn quick_backoff() -> BackoffConfig {
    BackoffConfig::default()
        .with_initial_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_bootstrap_the_node_and_the_cache_remembers_them_next_time() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_path = dir.path().join("cache.json");
    let (b, _be) = node(ServiceConfig::loopback()).await;

    // First session: only a hard-coded contact.
    let bootstrap = BootstrapConfig::default()
        .with_contact(Contact::new(Some(b.peer_id()), b.our_endpoints()))
        .with_cache_path(&cache_path)
        .with_backoff(quick_backoff());
    let (a, mut ae) = node(ServiceConfig::loopback().with_bootstrap(bootstrap)).await;
    let event = wait_for(&mut ae, "bootstrap", |e| {
        matches!(e, Event::BootstrapConnected { .. })
    })
    .await;
    let Event::BootstrapConnected {
        peer,
        endpoint,
        source,
    } = event
    else {
        unreachable!()
    };
    assert_eq!(
        (peer, endpoint.protocol(), source.as_str()),
        (b.peer_id(), Protocol::Tcp, "bootstrap")
    );
    a.shutdown().await;

    // The cache now holds b, reached directly, first.
    let (cache, _) = BootstrapCache::load(&cache_path, 10);
    let first = cache
        .peers()
        .entries()
        .first()
        .expect("b is cached")
        .clone();
    assert_eq!(first.peer_id, b.peer_id());
    assert!(first.endpoints.contains(&endpoint));

    // Second session: no contacts at all; the cache is enough.
    let bootstrap = BootstrapConfig::default()
        .with_cache_path(&cache_path)
        .with_backoff(quick_backoff());
    let (a2, mut a2e) = node(ServiceConfig::loopback().with_bootstrap(bootstrap)).await;
    wait_for(
        &mut a2e,
        "bootstrap from cache",
        |e| matches!(e, Event::BootstrapConnected { peer, .. } if *peer == b.peer_id()),
    )
    .await;
    assert!(a2.is_connected(b.peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_keeps_trying_until_a_contact_comes_up() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    // A port with nobody on it yet (the contact will start there later).
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let contact = crust::Endpoint::tcp(([127, 0, 0, 1], port).into());
    let bootstrap = BootstrapConfig::default()
        .with_contact(Contact::new(None, vec![contact]))
        .with_cache_path(dir.path().join("cache.json"))
        .with_backoff(quick_backoff());
    let (a, mut ae) = node(ServiceConfig::loopback().with_bootstrap(bootstrap)).await;
    assert!(a.peers().is_empty());
    // The contact comes up on that port some time later; the bootstrap finds it.
    let (c, _ce) = node(ServiceConfig::loopback().with_ports(port, 0)).await;
    wait_for(
        &mut ae,
        "late contact",
        |e| matches!(e, Event::BootstrapConnected { peer, .. } if *peer == c.peer_id()),
    )
    .await;
}
