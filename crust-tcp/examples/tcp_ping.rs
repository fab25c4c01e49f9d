//! Two Crust nodes on loopback connect over TCP + TLS 1.3, exchange a message each way and
//! print each other's `PeerId`.
//!
//! Run with `cargo run -p crust-tcp --example tcp_ping`.

use crust_core::{Identity, Transport};
use crust_tcp::{TcpConfig, TcpTransport};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let alice = TcpTransport::new(Identity::generate()?, TcpConfig::default())?;
    let bob = TcpTransport::new(Identity::generate()?, TcpConfig::default())?;
    println!("alice is {}", alice.local_peer_id());
    println!("bob   is {}", bob.local_peer_id());

    let mut listener = bob.listen("127.0.0.1:0".parse()?).await?;
    let bob_endpoint = listener.local_endpoint();
    println!("bob listens on {bob_endpoint}");

    let (dialed, accepted) = tokio::join!(
        alice.dial(bob_endpoint.addr(), Some(bob.local_peer_id())),
        listener.accept()
    );
    let (mut alice_to_bob, mut bob_to_alice) = (dialed?, accepted?);

    alice_to_bob.send("ping from alice".into()).await?;
    let got = bob_to_alice.recv().await?;
    println!(
        "bob got {:?} from {}",
        String::from_utf8_lossy(&got),
        bob_to_alice.peer_id()
    );

    bob_to_alice.send("pong from bob".into()).await?;
    let got = alice_to_bob.recv().await?;
    println!(
        "alice got {:?} from {}",
        String::from_utf8_lossy(&got),
        alice_to_bob.peer_id()
    );

    assert_eq!(bob_to_alice.peer_id(), alice.local_peer_id());
    assert_eq!(alice_to_bob.peer_id(), bob.local_peer_id());
    alice_to_bob.close().await;
    println!("both sides authenticated each other; done");
    Ok(())
}
