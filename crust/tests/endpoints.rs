//! `our_endpoints()` reports reachable endpoints only.

mod common;

use std::net::IpAddr;

use common::{init_tracing, node};
use crust::{Protocol, ServiceConfig};

#[tokio::test]
async fn all_interfaces_never_yield_port_zero_loopback_or_unspecified() {
    init_tracing();
    let (service, _events) = node(ServiceConfig::default()).await;
    let bound = service.listening_endpoints();
    // One IPv4 listener per transport, and one IPv6 listener per transport where the
    // machine has IPv6.
    assert_eq!(bound.iter().filter(|ep| ep.addr().is_ipv4()).count(), 2);
    assert!(matches!(
        bound.iter().filter(|ep| ep.addr().is_ipv6()).count(),
        0 | 2
    ));
    for ep in &bound {
        assert_ne!(ep.addr().port(), 0, "bound endpoint {ep} has port 0");
    }
    let ours = service.our_endpoints();
    for ep in &ours {
        assert_ne!(ep.addr().port(), 0, "{ep}");
        assert!(!ep.addr().ip().is_loopback(), "{ep} is loopback");
        assert!(!ep.addr().ip().is_unspecified(), "{ep} is unspecified");
        let listener = bound
            .iter()
            .find(|b| b.protocol() == ep.protocol() && b.addr().is_ipv4() == ep.addr().is_ipv4())
            .expect("listener");
        assert_eq!(
            ep.addr().port(),
            listener.addr().port(),
            "{ep} advertises another port"
        );
    }
    // Every non-loopback IPv4 interface address appears for both protocols.
    let expected: Vec<IpAddr> = if_addrs::get_if_addrs()
        .expect("interfaces")
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
        .collect();
    for ip in expected {
        for protocol in [Protocol::Tcp, Protocol::Rudp] {
            assert!(
                ours.iter()
                    .any(|e| e.addr().ip() == ip && e.protocol() == protocol),
                "{protocol} on {ip} missing from {ours:?}"
            );
        }
    }
}

#[tokio::test]
async fn loopback_is_reported_only_when_asked() {
    init_tracing();
    let (service, _events) = node(ServiceConfig::loopback()).await;
    let ours = service.our_endpoints();
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert!(
        ours.iter()
            .all(|e| e.addr().ip().is_loopback() && e.addr().port() != 0)
    );

    let config = ServiceConfig::loopback().with_loopback_endpoints(false);
    let (service, _events) = node(config).await;
    assert!(service.our_endpoints().is_empty());
}
