//! Measures the two ways of carrying messages over QUIC that `crust-rudp` chose between:
//! one bidirectional stream carrying length-prefixed frames (what the transport does) and a
//! unidirectional stream per message. Reports throughput and how many messages of the
//! per-message-stream mode arrive out of order (which Crust would have to reorder).
//!
//! ```text
//! cargo run --release -p crust-rudp --example stream_modes
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crust_core::{Identity, tls, wire};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    for (count, size) in [(20_000usize, 64usize), (20_000, 1024), (1_000, 64 * 1024)] {
        let (client, server) = pair().await?;
        let one = one_stream(&client, &server, count, size).await?;
        let (client, server) = pair().await?;
        let (per, reordered) = stream_per_message(&client, &server, count, size).await?;
        println!(
            "{count:>6} x {size:>6} B: one stream {:>8.1} MB/s {:>9.0} msg/s | \
             uni stream per message {:>8.1} MB/s {:>9.0} msg/s, {reordered} arrived out of order",
            mbps(count * size, one),
            count as f64 / one.as_secs_f64(),
            mbps(count * size, per),
            count as f64 / per.as_secs_f64(),
        );
    }
    Ok(())
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

async fn pair() -> anyhow::Result<(quinn::Connection, quinn::Connection)> {
    let provider = tls::default_crypto_provider();
    let server_id = Identity::generate()?;
    let client_id = Identity::generate()?;
    let server_tls = tls::server_config(&server_id, provider.clone(), &[wire::ALPN])?;
    let (client_tls, _) = tls::client_config(&client_id, provider, None, &[wire::ALPN])?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(10_000u32.into());
    let transport = Arc::new(transport);
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(
        Arc::new(server_tls),
    )?));
    server_config.transport_config(transport.clone());
    let mut client_config =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(Arc::new(client_tls))?));
    client_config.transport_config(transport);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = quinn::Endpoint::server(server_config, loopback)?;
    let client = quinn::Endpoint::client(loopback)?;
    let addr = server.local_addr()?;
    let connecting = client.connect_with(client_config, addr, tls::SERVER_NAME)?;
    let incoming = server
        .accept()
        .await
        .ok_or_else(|| anyhow::anyhow!("no incoming"))?;
    let (c, s) = tokio::join!(connecting, incoming);
    Ok((c?, s?))
}

async fn one_stream(
    client: &quinn::Connection,
    server: &quinn::Connection,
    count: usize,
    size: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (mut send, _recv) = client.open_bi().await?;
    let writer = tokio::spawn(async move {
        let payload = vec![7u8; size];
        let mut buf = Vec::with_capacity(64 * 1024);
        for _ in 0..count {
            buf.extend_from_slice(&(size as u32).to_be_bytes());
            buf.extend_from_slice(&payload);
            if buf.len() >= 64 * 1024 {
                send.write_all(&buf).await?;
                buf.clear();
            }
        }
        send.write_all(&buf).await?;
        send.finish()?;
        send.stopped().await?;
        anyhow::Ok(())
    });
    let (_s, mut recv) = server.accept_bi().await?;
    let mut msg = vec![0u8; size];
    for _ in 0..count {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await?;
        recv.read_exact(&mut msg).await?;
    }
    writer.await??;
    Ok(started.elapsed())
}

async fn stream_per_message(
    client: &quinn::Connection,
    server: &quinn::Connection,
    count: usize,
    size: usize,
) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let conn = client.clone();
    let writer = tokio::spawn(async move {
        let mut payload = vec![7u8; size.max(8)];
        for i in 0..count {
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let mut send = conn.open_uni().await?;
            send.write_all(&payload).await?;
            send.finish()?;
        }
        anyhow::Ok(())
    });
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..count {
        let mut recv = server.accept_uni().await?;
        readers.spawn(async move {
            let msg = recv.read_to_end(usize::MAX).await?;
            anyhow::Ok((Instant::now(), u64::from_be_bytes(msg[..8].try_into()?)))
        });
    }
    let mut arrivals = Vec::with_capacity(count);
    while let Some(r) = readers.join_next().await {
        arrivals.push(r??);
    }
    writer.await??;
    let elapsed = started.elapsed();
    arrivals.sort();
    let reordered = arrivals.windows(2).filter(|w| w[1].1 < w[0].1).count();
    Ok((elapsed, reordered))
}
