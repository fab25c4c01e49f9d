//! Discovery sources plug into the service: their candidates get connected and reported.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::{init_tracing, node, wait_for};
use crust::{Discovery, Endpoint, Event, PeerCandidate, PeerId, Protocol, ServiceConfig};

/// Direct connections the source heard about, and a signal for each.
type Reached = Arc<(Mutex<Vec<(PeerId, Endpoint)>>, tokio::sync::Notify)>;

/// A discovery source that yields fixed batches, then ends, and records what the service
/// reports back.
#[derive(Debug)]
struct Batches {
    batches: VecDeque<Vec<PeerCandidate>>,
    reached: Reached,
}

#[async_trait::async_trait]
impl Discovery for Batches {
    fn name(&self) -> &str {
        "batches"
    }

    async fn next_candidates(&mut self) -> Option<Vec<PeerCandidate>> {
        self.batches.pop_front()
    }

    fn direct_connection(&mut self, peer: PeerId, endpoint: Endpoint) {
        self.reached.0.lock().expect("lock").push((peer, endpoint));
        self.reached.1.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_are_connected_reported_and_fed_back() {
    init_tracing();
    let (a, mut ae) = node(ServiceConfig::loopback()).await;
    let (b, _be) = node(ServiceConfig::loopback()).await;
    let (c, _ce) = node(ServiceConfig::loopback()).await;
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Endpoint::tcp(l.local_addr().expect("addr"))
    };
    let reached: Reached = Arc::new((Mutex::new(Vec::new()), tokio::sync::Notify::new()));
    a.add_discovery(Box::new(Batches {
        batches: VecDeque::from([vec![
            PeerCandidate::new(Some(b.peer_id()), b.our_endpoints()),
            PeerCandidate::new(None, c.our_endpoints()),
            PeerCandidate::new(None, vec![nobody]),
        ]]),
        reached: reached.clone(),
    }));
    let mut connected = Vec::new();
    while connected.len() < 2 {
        if let Event::BootstrapConnected {
            peer,
            endpoint,
            source,
        } = wait_for(&mut ae, "bootstrap connection", |e| {
            matches!(e, Event::BootstrapConnected { .. })
        })
        .await
        {
            assert_eq!(source, "batches");
            assert_eq!(endpoint.protocol(), Protocol::Tcp, "TCP is preferred");
            connected.push((peer, endpoint));
        }
    }
    connected.sort();
    let mut expected = vec![
        (
            b.peer_id(),
            *b.our_endpoints()
                .iter()
                .find(|e| e.protocol() == Protocol::Tcp)
                .expect("tcp"),
        ),
        (
            c.peer_id(),
            *c.our_endpoints()
                .iter()
                .find(|e| e.protocol() == Protocol::Tcp)
                .expect("tcp"),
        ),
    ];
    expected.sort();
    assert_eq!(connected, expected);
    // Reports reach the source asynchronously: wait until both arrived.
    let mut fed_back = tokio::time::timeout(common::SAFETY_NET, async {
        loop {
            let notified = reached.1.notified();
            let seen = reached.0.lock().expect("lock").clone();
            if seen.len() >= 2 {
                return seen;
            }
            notified.await;
        }
    })
    .await
    .expect("direct connections reported to the source");
    fed_back.sort();
    assert_eq!(
        fed_back, expected,
        "the source learns which peers were reached directly"
    );
    assert!(a.is_connected(b.peer_id()) && a.is_connected(c.peer_id()));
}
