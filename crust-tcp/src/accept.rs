//! The listener's accept loop: every incoming connection goes through a
//! [`HandshakeQueue`], which gives each source (address, subnet) a fair share of the
//! handshake slots and keeps the rest waiting in a bounded queue; then the acceptor's side of
//! the handshake (preamble, TLS).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crust_core::limits::{Admission, HandshakeQueue};
use crust_core::{ConnectionInfo, Direction, Error, Protocol, Result, SecureStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::secure::Handshaker;
use crate::{TcpConfig, configure_stream, punch};

/// A connection that waits for a handshake slot.
type Waiting = (TcpStream, SocketAddr);

/// Accepts TCP connections and runs their handshakes, as many at once as the fair share of
/// `config` allows, handing authenticated streams to `ready`. A handshake keeps its slot
/// until its stream is in `ready`, so a full accept queue holds back new handshakes. The
/// handshake tasks belong to this task: aborting it (dropping the listener) aborts them.
pub(crate) async fn accept_loop(
    listener: Arc<tokio::net::TcpListener>,
    handshaker: Handshaker,
    config: TcpConfig,
    ready: mpsc::Sender<SecureStream>,
    punch_waiters: punch::PunchWaiters,
) {
    let mut queue: HandshakeQueue<Waiting> = HandshakeQueue::new(config.fair_share());
    let mut tasks = JoinSet::new();
    // The address each running handshake task holds a slot for.
    let mut running: HashMap<tokio::task::Id, IpAddr> = HashMap::new();
    let local = listener.local_addr().ok();
    let start = |tasks: &mut JoinSet<()>,
                 running: &mut HashMap<tokio::task::Id, IpAddr>,
                 (tcp, remote): Waiting| {
        let handshake = handshake_task(tcp, remote, local, handshaker.clone(), &config, &ready);
        let id = tasks.spawn(handshake).id();
        running.insert(id, remote.ip());
    };
    loop {
        let expiry = queue.next_expiry();
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    // A connection a hole punch waits for skips the ordinary handshake: the
                    // punch runs it with the roles both sides agreed on.
                    let Some(tcp) = punch::divert(&punch_waiters, remote, tcp) else {
                        continue;
                    };
                    match queue.arrive(remote.ip(), (tcp, remote), Instant::now().into_std()) {
                        Admission::Start(waiting) => start(&mut tasks, &mut running, waiting),
                        Admission::Queued => {
                            tracing::debug!(%remote, "handshake slots taken; connection waits");
                        }
                        Admission::Displaced((_, displaced)) => {
                            tracing::debug!(%remote, %displaced, "handshake queue full; closing a waiting connection of the heaviest source");
                        }
                        Admission::Refused(_) => {
                            tracing::debug!(%remote, "handshake queue full for this source; closing connection");
                        }
                    }
                }
                // The listener was dropped: its socket is shut down (accept then fails with
                // EINVAL) and the task is being aborted. Not a failure worth a warning.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput || ready.is_closed() => {
                    tracing::debug!(error = %e, "tcp listener shut down; accept loop ends");
                    return;
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
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
                for (_, remote) in queue.expire(Instant::now().into_std()) {
                    tracing::debug!(%remote, "waited too long for a handshake slot; closing connection");
                }
            }
            () = ready.closed() => return,
        }
        while let Some((_, waiting)) = queue.pop_ready() {
            start(&mut tasks, &mut running, waiting);
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(Instant::from_std(deadline)).await;
    }
}

/// One incoming handshake, bounded by the handshake timeout, then the hand-over of its
/// stream to the accept queue (which may wait for the application to accept).
fn handshake_task(
    tcp: TcpStream,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    handshaker: Handshaker,
    config: &TcpConfig,
    ready: &mpsc::Sender<SecureStream>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ready = ready.clone();
    let timeout = config.connection.handshake_timeout;
    let keepalive = config.tcp_keepalive;
    async move {
        let handshake = accept_handshake(tcp, remote, handshaker, keepalive);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => {
                tracing::debug!(peer = %stream.info.peer_id, %remote, ?local, "tcp connection accepted");
                let _ = ready.send(stream).await;
            }
            // A peer in the other mode is a configuration error worth seeing.
            Ok(Err(e @ Error::ModeMismatch { .. })) => {
                tracing::info!(%remote, error = %e, "incoming tcp connection refused");
            }
            Ok(Err(e)) => tracing::debug!(%remote, error = %e, "incoming tcp handshake failed"),
            Err(_) => tracing::debug!(%remote, ?timeout, "incoming tcp handshake timed out"),
        }
    }
}

async fn accept_handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    handshaker: Handshaker,
    keepalive: Option<Duration>,
) -> Result<SecureStream> {
    configure_stream(&tcp, keepalive)?;
    let local_addr = tcp.local_addr()?;
    let secured = handshaker.server(tcp, None).await?;
    let info = ConnectionInfo {
        peer_id: secured.peer_id,
        local_addr,
        remote_addr: remote,
        protocol: Protocol::Tcp,
        direction: Direction::Inbound,
        path: crust_core::ConnectionPath::Direct,
    };
    Ok(SecureStream {
        info,
        reader: secured.reader,
        writer: secured.writer,
        keep_alive: None,
    })
}
