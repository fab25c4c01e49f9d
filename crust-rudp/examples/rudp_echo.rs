//! An echo server and client over Crust's reliable-UDP (QUIC) transport.
//!
//! ```text
//! cargo run -p crust-rudp --example rudp_echo                       # both ends, in-process
//! cargo run -p crust-rudp --example rudp_echo -- listen 127.0.0.1:5484
//! cargo run -p crust-rudp --example rudp_echo -- dial 127.0.0.1:5484 <peer-id> "hello"
//! ```

use std::net::SocketAddr;

use crust_core::{Connection, Identity, PeerId, Transport};
use crust_rudp::{RudpConfig, RudpTransport};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["listen", addr] => listen(addr.parse()?).await,
        ["dial", addr, peer, message] => {
            let transport = RudpTransport::new(Identity::generate()?, RudpConfig::default())?;
            let conn = transport.dial(addr.parse()?, Some(peer.parse()?)).await?;
            ask(conn, message).await
        }
        [] => demo().await,
        _ => anyhow::bail!("usage: rudp_echo [listen ADDR | dial ADDR PEER_ID MESSAGE]"),
    }
}

/// Serves echo on `addr` until interrupted.
async fn listen(addr: SocketAddr) -> anyhow::Result<()> {
    let transport = RudpTransport::new(Identity::generate()?, RudpConfig::default())?;
    let mut listener = transport.listen(addr).await?;
    println!(
        "listening on {} as {}",
        listener.local_endpoint(),
        transport.local_peer_id()
    );
    loop {
        let conn = listener.accept().await?;
        println!("{} connected from {}", conn.peer_id(), conn.remote_addr());
        tokio::spawn(echo(conn));
    }
}

async fn echo(conn: Connection) {
    let (tx, mut rx) = conn.split();
    while let Ok(message) = rx.recv().await {
        if tx.send(message).await.is_err() {
            break;
        }
    }
}

/// Sends `message`, prints the echo and closes.
async fn ask(mut conn: Connection, message: &str) -> anyhow::Result<()> {
    conn.send(message.to_owned().into()).await?;
    let reply = conn.recv().await?;
    println!(
        "{} echoed {:?}",
        conn.peer_id(),
        String::from_utf8_lossy(&reply)
    );
    conn.close().await;
    Ok(())
}

/// Both ends in one process on loopback.
async fn demo() -> anyhow::Result<()> {
    let server = RudpTransport::new(Identity::generate()?, RudpConfig::default())?;
    let server_id: PeerId = server.local_peer_id();
    let mut listener = server.listen(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_endpoint().addr();
    println!("echo server {server_id} on {}", listener.local_endpoint());
    tokio::spawn(async move {
        while let Ok(conn) = listener.accept().await {
            tokio::spawn(echo(conn));
        }
    });
    let client = RudpTransport::new(Identity::generate()?, RudpConfig::default())?;
    let conn = client.dial(addr, Some(server_id)).await?;
    ask(conn, "hello over QUIC").await
}
