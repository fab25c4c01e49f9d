//! Handshake slots under pressure (issue #12): a host stalling handshakes gets only its fair
//! share of the slots, connections beyond a share wait instead of being dropped, and finished
//! handshakes that the application does not accept hold their slots.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crust_core::{ConnectionConfig, Identity, Transport, wire};
use crust_tcp::{TcpConfig, TcpTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Only a safety net: nothing here should take more than a few seconds.
const SAFETY_NET: Duration = Duration::from_secs(60);

fn transport(config: TcpConfig) -> TcpTransport {
    TcpTransport::new(Identity::generate().expect("identity"), config).expect("transport")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback")
}

/// A raw TCP connection to `addr` from `from` (port 0: ephemeral).
async fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(from.parse().expect("source address"))?;
    socket.connect(addr).await
}

/// Runs a fake peer from 127.0.0.2 that sends the Crust preamble and then stalls, over and
/// over: as soon as the listener cuts its connection it opens a new one. `slots` counts the
/// connections the listener started a handshake for (it sent its preamble back).
async fn staller(addr: SocketAddr, slots: Arc<AtomicUsize>) {
    let preamble = wire::preamble(wire::PROTOCOL_VERSION, wire::MIN_PROTOCOL_VERSION);
    loop {
        let Ok(mut tcp) = connect_from("127.0.0.2:0", addr).await else {
            tokio::task::yield_now().await;
            continue;
        };
        if tcp.write_all(&preamble).await.is_err() {
            continue;
        }
        let mut theirs = [0u8; wire::PREAMBLE_LEN];
        if tcp.read_exact(&mut theirs).await.is_ok() {
            slots.fetch_add(1, Ordering::SeqCst);
        }
        // Stall until cut.
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    }
}

/// The attack of issue #12: one address keeps 300 connections stalled after the preamble
/// (more than all 256 handshake slots), re-opening each as it is cut. Honest dials from
/// another address must still connect, each in well under the handshake timeout. The
/// listener has the default limits, with a handshake timeout of 2 s and a maximum wait of
/// 1 s so that the attacker's connections are cut and re-opened while the honest peer dials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_holding_stalled_handshakes_does_not_lock_out_honest_dials() {
    let server = transport(
        TcpConfig::default()
            .with_handshake_queue_timeout(Duration::from_secs(1))
            .with_connection_config(
                ConnectionConfig::default().with_handshake_timeout(Duration::from_secs(2)),
            ),
    );
    let mut listener = server.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();

    let slots = Arc::new(AtomicUsize::new(0));
    let mut attack = JoinSet::new();
    for _ in 0..300 {
        attack.spawn(staller(addr, slots.clone()));
    }
    // Wait until the attacker holds at least its whole share (64 by default).
    tokio::time::timeout(SAFETY_NET, async {
        while slots.load(Ordering::SeqCst) < 64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the attacker gets its share of the slots");

    let accepting = tokio::spawn(async move {
        loop {
            let Ok(conn) = listener.accept().await else {
                return;
            };
            let _ = conn.send("welcome".into()).await;
        }
    });
    let client = transport(TcpConfig::default());
    let mut times = Vec::new();
    let attack_started = Instant::now();
    // At least 10 dials, over at least 3 s (through the cuts and re-opens of the attack).
    while times.len() < 10 || attack_started.elapsed() < Duration::from_secs(3) {
        let started = Instant::now();
        let mut conn =
            tokio::time::timeout(SAFETY_NET, client.dial(addr, Some(server.local_peer_id())))
                .await
                .expect("safety net")
                .expect("an honest dial gets through the attack");
        assert_eq!(conn.recv().await.expect("recv"), "welcome");
        times.push(started.elapsed());
    }
    let held = slots.load(Ordering::SeqCst);
    let worst = times.iter().max().copied().unwrap_or_default();
    let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(1);
    eprintln!(
        "{} honest dials under attack ({held} attacker handshakes started): mean {mean:?}, worst {worst:?}",
        times.len()
    );
    assert!(
        worst < Duration::from_secs(5),
        "an honest dial took {worst:?}"
    );
    attack.shutdown().await;
    accepting.abort();
}

/// 20 connections at once from one address, with only 2 slots per address and 4 in all:
/// they wait for slots instead of being dropped, and every one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_address_waits_and_is_all_served() {
    let server = transport(
        TcpConfig::default()
            .with_max_pending_handshakes(4)
            .with_max_pending_handshakes_per_ip(2),
    );
    let mut listener = server.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();
    let accepting = tokio::spawn(async move {
        let mut accepted = Vec::new();
        while accepted.len() < 20 {
            accepted.push(listener.accept().await.expect("accept"));
        }
        accepted
    });
    let client = Arc::new(transport(TcpConfig::default()));
    let mut dials = JoinSet::new();
    for _ in 0..20 {
        let (client, expected) = (client.clone(), server.local_peer_id());
        dials.spawn(async move { client.dial(addr, Some(expected)).await });
    }
    tokio::time::timeout(SAFETY_NET, async {
        while let Some(dial) = dials.join_next().await {
            dial.expect("task")
                .expect("every dial of the burst is served");
        }
    })
    .await
    .expect("safety net");
    let accepted = tokio::time::timeout(SAFETY_NET, accepting)
        .await
        .expect("safety net")
        .expect("accept task");
    assert_eq!(accepted.len(), 20);
}

/// A connection that waits for a slot longer than `handshake_queue_timeout` is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waiting_too_long_for_a_slot_is_closed() {
    let wait = Duration::from_millis(300);
    let server = transport(
        TcpConfig::default()
            .with_max_pending_handshakes(1)
            .with_handshake_queue_timeout(wait)
            .with_connection_config(
                ConnectionConfig::default().with_handshake_timeout(Duration::from_secs(60)),
            ),
    );
    let _listener = server.listen(loopback()).await.expect("listen");
    let addr = _listener.local_endpoint().addr();
    let preamble = wire::preamble(wire::PROTOCOL_VERSION, wire::MIN_PROTOCOL_VERSION);

    // The only slot, held by a connection that stalls after the preamble.
    let mut holder = connect_from("127.0.0.1:0", addr).await.expect("connect");
    holder.write_all(&preamble).await.expect("write");
    let mut theirs = [0u8; wire::PREAMBLE_LEN];
    holder
        .read_exact(&mut theirs)
        .await
        .expect("the holder has the slot");

    let started = Instant::now();
    let mut waiter = connect_from("127.0.0.1:0", addr).await.expect("connect");
    waiter.write_all(&preamble).await.expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(SAFETY_NET, waiter.read_to_end(&mut got))
        .await
        .expect("the waiting connection is closed");
    let waited = started.elapsed();
    assert!(read.is_ok() || got.is_empty(), "closed: {read:?}");
    assert!(
        got.is_empty(),
        "it never got a handshake slot, so no preamble"
    );
    assert!(
        waited >= wait,
        "closed after {waited:?}, before the maximum wait"
    );
    eprintln!("closed after waiting {waited:?} (maximum wait {wait:?})");
    drop(holder);
}

/// Issue #12, item 4: a listener that never accepts. Handshakes that finished keep their slot
/// until their stream is in the accept queue, so with 4 slots and an accept queue of 2 at most
/// 6 of 16 dials complete; once the application accepts, new dials flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_handshakes_wait_for_accept_and_hold_their_slots() {
    const SLOTS: usize = 4;
    const QUEUE: usize = 2;
    const DIALS: usize = 16;
    let server = transport(
        TcpConfig::default()
            .with_max_pending_handshakes(SLOTS)
            .with_accept_queue_len(QUEUE)
            .with_handshake_queue_timeout(Duration::from_secs(60)),
    );
    let mut listener = server.listen(loopback()).await.expect("listen");
    let addr = listener.local_endpoint().addr();

    // Dialers give up after 2 s: what has not completed by then is held back by the listener.
    let impatient = Arc::new(transport(TcpConfig::default().with_connection_config(
        ConnectionConfig::default().with_handshake_timeout(Duration::from_secs(2)),
    )));
    let mut dials = JoinSet::new();
    for _ in 0..DIALS {
        let (client, expected) = (impatient.clone(), server.local_peer_id());
        dials.spawn(async move { client.dial(addr, Some(expected)).await });
    }
    let mut completed = Vec::new();
    tokio::time::timeout(SAFETY_NET, async {
        while let Some(dial) = dials.join_next().await {
            if let Ok(conn) = dial.expect("task") {
                completed.push(conn);
            }
        }
    })
    .await
    .expect("safety net");
    eprintln!(
        "{} of {DIALS} dials completed with nobody accepting ({SLOTS} slots, accept queue {QUEUE})",
        completed.len()
    );
    assert!(
        completed.len() <= SLOTS + QUEUE,
        "{} handshakes completed for a listener that never accepts",
        completed.len()
    );

    // The application accepts: the held connections come out first, and new dials flow.
    let held = completed.len();
    let accepting = tokio::spawn(async move {
        let mut accepted = 0usize;
        while listener.accept().await.is_ok() {
            accepted += 1;
        }
        accepted
    });
    let client = transport(TcpConfig::default());
    for _ in 0..3 {
        tokio::time::timeout(SAFETY_NET, client.dial(addr, Some(server.local_peer_id())))
            .await
            .expect("safety net")
            .expect("dials flow once the application accepts");
    }
    drop(completed);
    accepting.abort();
    eprintln!("{held} held connections then 3 new dials accepted");
}
