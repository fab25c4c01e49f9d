//! Listening: fixed ports, ports in use.

mod common;

use common::init_tracing;
use crust::{Protocol, Service, ServiceConfig};

#[tokio::test]
async fn a_port_in_use_is_a_typed_error_and_leaves_nothing_listening() {
    init_tracing();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (service, _events) =
        Service::new(ServiceConfig::loopback().with_ports(port, 0)).expect("service");
    let err = service.start_listening().await.expect_err("port is taken");
    assert!(
        matches!(err, crust::Error::Core(crust_core::Error::Io(_))),
        "{err:?}"
    );
    assert!(service.listening_endpoints().is_empty());
    // Once the port is free, listening works, on exactly that port.
    drop(taken);
    let bound = service
        .start_listening()
        .await
        .expect("listen after the port is freed");
    let tcp = bound
        .iter()
        .find(|e| e.protocol() == Protocol::Tcp)
        .expect("tcp");
    assert_eq!(tcp.addr().port(), port);
}

#[tokio::test]
async fn listening_twice_is_refused() {
    init_tracing();
    let (service, _events) = Service::new(ServiceConfig::loopback()).expect("service");
    service.start_listening().await.expect("listen");
    let err = service.start_listening().await.expect_err("second listen");
    assert!(matches!(err, crust::Error::Listen(_)), "{err:?}");
}
