//! The tokio glue without a gateway, on loopback only (no root needed): UPnP is off (its
//! SSDP search would leave the machine) and the PCP/NAT-PMP gateway is `127.0.0.1`, where
//! nothing listens on port 5351, so the probe is refused at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crust_core::{Endpoint, NatTraverser, PeerId, Protocol, PunchRequest};
use crust_nat::{Error, MappingRequest, PortMapConfig, PortMapEvent, PortMapper};

fn loopback_config() -> PortMapConfig {
    PortMapConfig::default()
        .with_upnp(false)
        .with_gateway(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        .with_reprobe(Duration::from_millis(50), Duration::from_millis(200))
}

#[tokio::test]
async fn no_gateway_is_reported_once_and_quickly() {
    let started = Instant::now();
    let requests = vec![
        MappingRequest::new(Protocol::Tcp, "0.0.0.0:4000".parse().expect("addr")),
        MappingRequest::new(Protocol::Rudp, "0.0.0.0:4000".parse().expect("addr")),
    ];
    let (mapper, mut events) = PortMapper::start(loopback_config(), requests);
    let start_cost = started.elapsed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("channel open");
    assert!(matches!(first, PortMapEvent::NoGateway), "{first:?}");
    eprintln!(
        "start() took {start_cost:?}, NoGateway after {:?}",
        started.elapsed()
    );
    // Several re-probes (50 → 200 ms) happen in the next second; none is reported. This
    // wait observes an absence, it synchronises nothing.
    let more = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
    assert!(more.is_err(), "unexpected event: {more:?}");
    assert!(mapper.mappings().is_empty());

    let local = Endpoint::tcp("0.0.0.0:4000".parse().expect("addr"));
    assert_eq!(mapper.name(), "portmap");
    assert!(
        mapper
            .external_endpoints(local)
            .await
            .expect("endpoints")
            .is_empty()
    );
    let punch = PunchRequest::new(
        PeerId::from_bytes([1; 32]),
        Protocol::Tcp,
        "0.0.0.0:4000".parse().expect("addr"),
        vec![],
        Duration::from_secs(1),
    );
    assert!(mapper.punch(punch).await.is_err());

    let t = Instant::now();
    mapper.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The task ended: the channel closes.
    let end = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("channel closes");
    assert!(end.is_none());
}

#[tokio::test]
async fn unmappable_requests_are_reported() {
    let requests = vec![
        MappingRequest::new(Protocol::Tcp, SocketAddr::from(([0, 0, 0, 0], 0))),
        MappingRequest::new(Protocol::Rudp, SocketAddr::from(([127, 0, 0, 1], 4000))),
    ];
    let (mapper, mut events) = PortMapper::start(loopback_config(), requests);
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .expect("channel open");
        assert!(
            matches!(
                event,
                PortMapEvent::Failed {
                    error: Error::InvalidLocal(_),
                    ..
                }
            ),
            "{event:?}"
        );
    }
    // Nothing valid to map: it does not even look for a gateway.
    let more = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(more.is_err(), "unexpected event: {more:?}");
    mapper.shutdown().await;
}

#[tokio::test]
async fn dropping_the_mapper_stops_it() {
    let requests = vec![MappingRequest::new(
        Protocol::Tcp,
        "0.0.0.0:4000".parse().expect("addr"),
    )];
    let (mapper, mut events) = PortMapper::start(loopback_config(), requests);
    drop(mapper);
    // The background task notices, cleans up (nothing to remove) and ends: the channel
    // closes, after at most the NoGateway it may already have queued.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(None) => break,
            Ok(Some(PortMapEvent::NoGateway)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
