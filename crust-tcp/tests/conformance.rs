//! crust-tcp runs the whole crust-core transport conformance kit.

use crust_core::{ConnectionConfig, Identity, Transport};
use crust_tcp::{TcpConfig, TcpTransport};

fn tcp(identity: Identity, connection: ConnectionConfig) -> Box<dyn Transport> {
    Box::new(
        TcpTransport::new(
            identity,
            TcpConfig::default().with_connection_config(connection),
        )
        .expect("tcp transport"),
    )
}

crust_core::conformance_tests!(tcp);
