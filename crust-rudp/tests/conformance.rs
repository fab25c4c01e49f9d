//! The `crust-core` transport conformance kit, run against the rUDP transport.

use crust_core::{ConnectionConfig, Identity, Transport};
use crust_rudp::{RudpConfig, RudpTransport};

fn rudp(identity: Identity, config: ConnectionConfig) -> Box<dyn Transport> {
    Box::new(
        RudpTransport::new(
            identity,
            RudpConfig::default().with_connection_config(config),
        )
        .expect("rudp transport"),
    )
}

crust_core::conformance_tests!(rudp);
