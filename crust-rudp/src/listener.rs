//! The listener of a [`RudpTransport`](crate::RudpTransport): the accept loop and the
//! acceptor's side of the handshake. Connections from a peer a hole punch waits for are
//! handed to that punch ([`PunchWaiters`]) instead of the listener's queue.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use crust_core::limits::{Admission, FairShare, HandshakeQueue};
use crust_core::wire::{self, MIN_PROTOCOL_VERSION, PREAMBLE_LEN, PROTOCOL_VERSION};
use crust_core::{
    ConnectionConfig, ConnectionPath, Direction, Endpoint, Error, Listener, Result, SecureStream,
};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::punch::PunchWaiters;
use crate::slot::Slot;
use crate::transport::{CLOSE_PROTOCOL_ERROR, peer_id_of, secure_stream};

/// The listener of a [`RudpTransport`]: accepts and authenticates incoming connections in a
/// background task; dropping it stops accepting.
pub(crate) struct RudpListener {
    pub(crate) local: Endpoint,
    pub(crate) config: ConnectionConfig,
    pub(crate) incoming: mpsc::Receiver<SecureStream>,
    pub(crate) task: JoinHandle<()>,
    pub(crate) slot: Slot,
}

impl fmt::Debug for RudpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RudpListener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Drop for RudpListener {
    fn drop(&mut self) {
        // Refuse new connection attempts; the endpoint keeps serving dials and the
        // connections already accepted.
        self.task.abort();
        self.slot.stop_listening();
    }
}

#[async_trait]
impl Listener for RudpListener {
    fn local_endpoint(&self) -> Endpoint {
        self.local
    }

    fn connection_config(&self) -> &ConnectionConfig {
        &self.config
    }

    async fn accept_stream(&mut self) -> Result<SecureStream> {
        self.incoming.recv().await.ok_or_else(|| {
            Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "the QUIC endpoint stopped accepting connections",
            ))
        })
    }
}

/// Accepts connection attempts and runs their handshakes, as many at once as `share` allows
/// (a fair share per address and subnet, the rest waiting in a bounded queue; see
/// [`HandshakeQueue`]), and delivers authenticated streams to `tx`. A handshake keeps its
/// slot until its stream is in `tx`. Handshake tasks live in a `JoinSet` owned by this task,
/// so aborting it (dropping the listener) aborts them too. Streams from a peer that a hole
/// punch waits for go to that punch (`waiters`).
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    waiters: PunchWaiters,
    local: SocketAddr,
    tx: mpsc::Sender<SecureStream>,
    share: FairShare,
    timeout: Duration,
) {
    let mut queue: HandshakeQueue<quinn::Incoming> = HandshakeQueue::new(share);
    let mut tasks = JoinSet::new();
    // The address each running handshake task holds a slot for.
    let mut running: HashMap<tokio::task::Id, IpAddr> = HashMap::new();
    let start = |tasks: &mut JoinSet<()>,
                 running: &mut HashMap<tokio::task::Id, IpAddr>,
                 incoming: quinn::Incoming| {
        let remote = incoming.remote_address();
        let handshake = handshake_task(incoming, local, timeout, tx.clone(), waiters.clone());
        let id = tasks.spawn(handshake).id();
        running.insert(id, remote.ip());
    };
    loop {
        let expiry = queue.next_expiry();
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else {
                    break;
                };
                let remote = incoming.remote_address();
                match queue.arrive(remote.ip(), incoming, Instant::now().into_std()) {
                    Admission::Start(incoming) => start(&mut tasks, &mut running, incoming),
                    Admission::Queued => {
                        tracing::debug!(%remote, "handshake slots taken; connection attempt waits");
                    }
                    Admission::Displaced(displaced) => {
                        tracing::debug!(%remote, displaced = %displaced.remote_address(), "handshake queue full; refusing a waiting attempt of the heaviest source");
                        displaced.refuse();
                    }
                    Admission::Refused(incoming) => {
                        tracing::debug!(%remote, "handshake queue full for this source; refusing");
                        incoming.refuse();
                    }
                }
            }
            Some(done) = tasks.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(ip) = running.remove(&id) {
                    queue.release(ip);
                }
            }
            () = sleep_until(expiry), if expiry.is_some() => {
                for incoming in queue.expire(Instant::now().into_std()) {
                    tracing::debug!(remote = %incoming.remote_address(), "waited too long for a handshake slot; refusing");
                    incoming.refuse();
                }
            }
            () = tx.closed() => break,
        }
        while let Some((_, incoming)) = queue.pop_ready() {
            start(&mut tasks, &mut running, incoming);
        }
    }
    tracing::debug!(%local, "accept loop finished");
    tasks.shutdown().await;
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(Instant::from_std(deadline)).await;
    }
}

/// One incoming handshake, bounded by `timeout`, then the hand-over of its stream to the
/// hole punch waiting for it or to the accept queue (which may wait for the application).
async fn handshake_task(
    incoming: quinn::Incoming,
    local: SocketAddr,
    timeout: Duration,
    tx: mpsc::Sender<SecureStream>,
    waiters: PunchWaiters,
) {
    let remote = incoming.remote_address();
    match tokio::time::timeout(timeout, accept_one(incoming, local, timeout)).await {
        Ok(Ok(stream)) => {
            tracing::debug!(peer = %stream.info.peer_id, %remote, "accepted");
            let Some(stream) = waiters.divert(stream) else {
                tracing::debug!(%remote, "handed to the hole punch waiting for it");
                return;
            };
            if tx.send(stream).await.is_err() {
                tracing::debug!(%remote, "listener gone; dropping accepted connection");
            }
        }
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "incoming handshake failed");
        }
        Err(_) => {
            tracing::info!(%remote, ?timeout, "incoming handshake timed out");
        }
    }
}

async fn accept_one(
    incoming: quinn::Incoming,
    local: SocketAddr,
    linger: Duration,
) -> Result<SecureStream> {
    let conn = incoming
        .await
        .map_err(|e| Error::Handshake(e.to_string()))?;
    let peer_id = peer_id_of(&conn)?;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Error::Handshake(format!("waiting for the stream: {e}")))?;
    read_preamble(&conn, &mut recv).await?;
    send.write_all(&wire::preamble(PROTOCOL_VERSION, MIN_PROTOCOL_VERSION))
        .await
        .map_err(|e| Error::Handshake(format!("sending the preamble: {e}")))?;
    let local_addr = SocketAddr::new(conn.local_ip().unwrap_or(local.ip()), local.port());
    Ok(secure_stream(
        conn,
        send,
        recv,
        peer_id,
        local_addr,
        (Direction::Inbound, ConnectionPath::Direct),
        linger,
    ))
}

/// Reads and checks the peer's 8-byte preamble at the start of the stream.
async fn read_preamble(conn: &quinn::Connection, recv: &mut quinn::RecvStream) -> Result<u16> {
    let mut theirs = [0u8; PREAMBLE_LEN];
    match recv.read_exact(&mut theirs).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(Error::NotCrust),
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(Error::Handshake(format!("reading the preamble: {e}")));
        }
    }
    wire::negotiate_version(&theirs, PROTOCOL_VERSION, MIN_PROTOCOL_VERSION).inspect_err(|_| {
        conn.close(CLOSE_PROTOCOL_ERROR.into(), b"bad preamble");
    })
}
