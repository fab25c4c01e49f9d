//! A connection survives 5 % random packet loss (in both directions) and delivers every
//! message intact and in order.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{DEADLINE, init_tracing, loopback, lossy_transport};
use crust_core::{ConnectionConfig, Error, Transport};
use crust_rudp::RudpConfig;

const MESSAGES: u32 = 2000;
/// 5 % of outgoing datagrams are dropped, on each side.
const LOSS_PPM: u32 = 50_000;

/// Size of message `i`: mostly small and medium, every 100th one 100 KiB.
fn size_of(i: u32) -> usize {
    if i % 100 == 99 {
        100 * 1024
    } else {
        [8usize, 100, 1200, 1500, 4000, 9000, 16 * 1024][(i % 7) as usize]
    }
}

fn message(i: u32) -> Bytes {
    let len = size_of(i);
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&i.to_be_bytes());
    msg.extend((4..len).map(|j| (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8));
    msg.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_delivers_everything_in_order() {
    init_tracing();
    let config = RudpConfig::default().with_connection_config(
        // Handshake packets are lost too; leave QUIC plenty of time to retransmit them.
        ConnectionConfig::default().with_handshake_timeout(Duration::from_secs(30)),
    );
    let (server, server_socket) = lossy_transport(config.clone(), LOSS_PPM, 0x5eed_0001);
    let (client, client_socket) = lossy_transport(config, LOSS_PPM, 0x5eed_0002);

    let run = async {
        let mut listener = server.listen(loopback()).await.expect("listen");
        let addr = listener.local_endpoint().addr();
        let started = Instant::now();
        let (dialled, accepted) = tokio::join!(
            client.dial(addr, Some(server.local_peer_id())),
            listener.accept()
        );
        let (conn, mut incoming) = (dialled.expect("dial"), accepted.expect("accept"));

        let sender = tokio::spawn(async move {
            for i in 0..MESSAGES {
                conn.send(message(i)).await.expect("send");
            }
            conn.close().await;
            conn
        });
        let mut bytes = 0usize;
        for i in 0..MESSAGES {
            let got = incoming.recv().await.expect("recv");
            assert_eq!(got.len(), size_of(i), "message {i} has the wrong size");
            assert!(got == message(i), "message {i} corrupted or out of order");
            bytes += got.len();
        }
        let end = incoming.recv().await;
        assert!(matches!(end, Err(Error::ConnectionClosed)), "{end:?}");
        let _conn = sender.await.expect("sender");
        (started.elapsed(), bytes)
    };
    let (elapsed, bytes) = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("transfer did not finish within the deadline");

    let (client_sent, client_dropped) = client_socket.stats();
    let (server_sent, server_dropped) = server_socket.stats();
    eprintln!(
        "{MESSAGES} messages, {bytes} bytes in {elapsed:?}; client sent {client_sent} \
         datagrams and dropped {client_dropped}, server sent {server_sent} and dropped {server_dropped}"
    );
    // The loss really happened, on both sides.
    assert!(client_dropped > 0 && server_dropped > 0);
    let share = client_dropped as f64 / (client_sent + client_dropped) as f64;
    assert!((0.02..0.10).contains(&share), "dropped share {share}");
}
