//! A node built from one `Identity` is the same `PeerId` over TCP and over rUDP: both
//! transports authenticate with `crust_core::tls`.

mod common;

use common::{DEADLINE, init_tracing, loopback};
use crust_core::{Identity, Transport};
use crust_rudp::{RudpConfig, RudpTransport};
use crust_tcp::{TcpConfig, TcpTransport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_rudp_nodes_of_one_identity_have_one_peer_id() {
    init_tracing();
    tokio::time::timeout(DEADLINE, async {
        let node = Identity::generate().expect("identity");
        let observer = Identity::generate().expect("identity");

        let node_tcp = TcpTransport::new(node.clone(), TcpConfig::default()).expect("tcp");
        let node_rudp = RudpTransport::new(node.clone(), RudpConfig::default()).expect("rudp");
        let observer_tcp = TcpTransport::new(observer.clone(), TcpConfig::default()).expect("tcp");
        let observer_rudp =
            RudpTransport::new(observer.clone(), RudpConfig::default()).expect("rudp");

        let mut tcp_listener = node_tcp.listen(loopback()).await.expect("tcp listen");
        let mut rudp_listener = node_rudp.listen(loopback()).await.expect("rudp listen");
        let tcp_addr = tcp_listener.local_endpoint().addr();
        let rudp_addr = rudp_listener.local_endpoint().addr();

        // The observer dials both without knowing whom to expect, and compares.
        let (via_tcp, tcp_in) =
            tokio::join!(observer_tcp.dial(tcp_addr, None), tcp_listener.accept());
        let (via_rudp, rudp_in) =
            tokio::join!(observer_rudp.dial(rudp_addr, None), rudp_listener.accept());
        let (via_tcp, via_rudp) = (via_tcp.expect("tcp dial"), via_rudp.expect("rudp dial"));
        assert_eq!(via_tcp.peer_id(), node.peer_id());
        assert_eq!(via_rudp.peer_id(), node.peer_id());
        assert_eq!(node_tcp.local_peer_id(), node_rudp.local_peer_id());
        // And in the other direction.
        assert_eq!(tcp_in.expect("tcp accept").peer_id(), observer.peer_id());
        assert_eq!(rudp_in.expect("rudp accept").peer_id(), observer.peer_id());

        // Pinning the id learnt over TCP works for the rUDP dial.
        let (pinned, accepted) = tokio::join!(
            observer_rudp.dial(rudp_addr, Some(via_tcp.peer_id())),
            rudp_listener.accept()
        );
        assert_eq!(pinned.expect("pinned dial").peer_id(), node.peer_id());
        accepted.expect("accept");
    })
    .await
    .expect("test did not finish within the deadline");
}
