//! The listener of a [`RudpTransport`](crate::RudpTransport): the accept loop and the
//! acceptor's side of the handshake. Connections from a peer a hole punch waits for are
//! handed to that punch ([`PunchWaiters`]) instead of the listener's queue.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crust_core::wire::{self, MIN_PROTOCOL_VERSION, PREAMBLE_LEN, PROTOCOL_VERSION};
use crust_core::{
    ConnectionConfig, ConnectionPath, Direction, Endpoint, Error, Listener, Result, SecureStream,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

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

/// Accepts connection attempts, running at most `handshakes.available_permits()` handshakes
/// at once, and delivers authenticated streams to `tx`. Handshake tasks live in a `JoinSet`
/// owned by this task, so aborting it (dropping the listener) aborts them too. Streams from
/// a peer that a hole punch waits for go to that punch (`waiters`).
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    waiters: PunchWaiters,
    local: SocketAddr,
    tx: mpsc::Sender<SecureStream>,
    handshakes: Arc<Semaphore>,
    timeout: Duration,
) {
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = tx.closed() => break,
        };
        let incoming = loop {
            tokio::select! {
                biased;
                Some(_) = tasks.join_next() => {}
                _ = tx.closed() => break None,
                incoming = endpoint.accept() => break incoming,
            }
        };
        let Some(incoming) = incoming else {
            break;
        };
        let tx = tx.clone();
        let waiters = waiters.clone();
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(timeout, accept_one(incoming, local, timeout)).await {
                Ok(Ok(stream)) => {
                    tracing::debug!(peer = %stream.info.peer_id, %remote, "accepted");
                    let Some(stream) = waiters.divert(stream) else {
                        tracing::debug!(%remote, "handed to the hole punch waiting for it");
                        drop(permit);
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
            drop(permit);
        });
    }
    tracing::debug!(%local, "accept loop finished");
    tasks.shutdown().await;
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
