//! IPv6: nodes listen dual-stack and connect over `::1`, on TCP and reliable UDP.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use common::{init_tracing, node};
use crust::{Endpoint, Protocol, ServiceConfig};

fn v6_loopback() -> ServiceConfig {
    ServiceConfig::loopback().with_listen_ipv6(Some(IpAddr::V6(Ipv6Addr::LOCALHOST)))
}

fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_connect_over_ipv6_loopback_on_both_transports() {
    init_tracing();
    if !ipv6_available() {
        eprintln!("skipped: this machine has no IPv6 loopback (::1)");
        return;
    }
    let (a, _ae) = node(v6_loopback()).await;
    let endpoints = a.our_endpoints();
    assert!(
        endpoints.iter().any(|ep| ep.addr().is_ipv4()),
        "{endpoints:?}"
    );
    assert!(
        endpoints.iter().any(|ep| ep.addr().is_ipv6()),
        "{endpoints:?}"
    );
    for protocol in [Protocol::Tcp, Protocol::Rudp] {
        let (b, _be) = node(v6_loopback()).await;
        let v6: Vec<Endpoint> = endpoints
            .iter()
            .copied()
            .filter(|ep| ep.protocol() == protocol && ep.addr().is_ipv6())
            .collect();
        assert_eq!(v6.len(), 1, "{protocol}: {endpoints:?}");
        let peer = b
            .connect(&v6, Some(a.peer_id()))
            .await
            .expect("connect over ::1");
        let info = b.peer_info(peer).expect("connected").connection;
        assert_eq!(info.protocol, protocol);
        assert!(info.remote_addr.is_ipv6(), "{info:?}");
        b.send(peer, "over ipv6".into()).await.expect("send");
        b.ping(peer).await.expect("pong over ipv6");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_config_is_dual_stack() {
    init_tracing();
    if !ipv6_available() {
        eprintln!("skipped: this machine has no IPv6");
        return;
    }
    // The default config (0.0.0.0 and ::), only the ports random.
    let (a, _ae) = node(ServiceConfig::default().with_loopback_endpoints(true)).await;
    let listening = a.listening_endpoints();
    for protocol in [Protocol::Tcp, Protocol::Rudp] {
        let families: Vec<bool> = listening
            .iter()
            .filter(|ep| ep.protocol() == protocol)
            .map(|ep| ep.addr().is_ipv6())
            .collect();
        assert_eq!(families, vec![false, true], "{protocol}: {listening:?}");
    }
    // Never a link-local address (it needs a scope id an endpoint cannot carry).
    assert!(a.our_endpoints().iter().all(|ep| match ep.addr().ip() {
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 != 0xfe80,
        IpAddr::V4(_) => true,
    }));
    // Reachable over ::1 at its IPv6 listening port.
    let (b, _be) = node(v6_loopback()).await;
    let v6_tcp = listening
        .iter()
        .find(|ep| ep.protocol() == Protocol::Tcp && ep.addr().is_ipv6())
        .expect("an ipv6 tcp listener");
    let target = Endpoint::new(
        Protocol::Tcp,
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), v6_tcp.addr().port()),
    );
    assert_eq!(
        b.connect(&[target], Some(a.peer_id()))
            .await
            .expect("connect"),
        a.peer_id()
    );
}
