//! TCP hole punching by simultaneous open, and the upgrade of an existing TCP stream to an
//! authenticated Crust stream with an explicit handshake role.
//!
//! Both peers `connect()` from their listening port (SO_REUSEADDR + SO_REUSEPORT, like
//! every socket bound to it) towards the other's external endpoint at about the same
//! moment. Each SYN opens its sender's NAT towards the other side, so the later one gets
//! through; depending on timing and NAT type the kernel then completes either a
//! simultaneous open (both `connect()` calls succeed on one connection) or an ordinary
//! accept on the listening socket. Both count: while a punch runs, the listener hands a
//! connection from one of the punch's candidate addresses to the punch instead of running
//! its own handshake. Since both ends may believe they dialled, the TLS roles come from
//! the plan ([`PunchRole`]), not from who called `connect`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crust_core::punch::{PunchPlan, PunchRole, PunchStrategy};
use crust_core::{
    ConnectionInfo, ConnectionPath, Direction, Error, PeerId, Protocol, Result, SecureStream,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::TcpTransport;

/// Connections punches wait for, by the remote address they come from.
pub(crate) type PunchWaiters = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<TcpStream>>>>;

/// Hands `tcp` to the punch waiting for `remote`, if any. Returns the stream back when
/// nobody waits for it.
pub(crate) fn divert(
    waiters: &PunchWaiters,
    remote: SocketAddr,
    tcp: TcpStream,
) -> Option<TcpStream> {
    let waiters = waiters.lock().unwrap_or_else(|p| p.into_inner());
    match waiters.get(&remote) {
        Some(tx) => match tx.try_send(tcp) {
            Ok(()) => {
                tracing::debug!(%remote, "incoming tcp connection handed to a hole punch");
                None
            }
            Err(mpsc::error::TrySendError::Full(tcp) | mpsc::error::TrySendError::Closed(tcp)) => {
                Some(tcp)
            }
        },
        None => Some(tcp),
    }
}

/// Removes a punch's waiters when it ends (also when it is cancelled).
struct WaiterGuard {
    waiters: PunchWaiters,
    addrs: Vec<SocketAddr>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for addr in &self.addrs {
            waiters.remove(addr);
        }
    }
}

impl TcpTransport {
    /// Runs preamble and TLS 1.3 on an already connected TCP stream, taking the given side
    /// of the handshake, and checks that the peer is `expected`. This is how a stream from
    /// a TCP simultaneous open (where both sides dialled) becomes a Crust connection; the
    /// connection's `path` is [`ConnectionPath::PunchedTcp`].
    pub async fn upgrade(
        &self,
        tcp: TcpStream,
        role: PunchRole,
        expected: PeerId,
    ) -> Result<SecureStream> {
        crate::configure_stream(&tcp, self.config.tcp_keepalive)?;
        let local_addr = tcp.local_addr()?;
        let remote_addr = tcp.peer_addr()?;
        let (secured, direction) = match role {
            PunchRole::Client => (
                self.handshaker.client(tcp, Some(expected), false).await?,
                Direction::Outbound,
            ),
            PunchRole::Server => (
                self.handshaker.server(tcp, Some(expected)).await?,
                Direction::Inbound,
            ),
        };
        let info = ConnectionInfo {
            peer_id: secured.peer_id,
            local_addr,
            remote_addr,
            protocol: Protocol::Tcp,
            direction,
            path: ConnectionPath::PunchedTcp,
        };
        Ok(SecureStream {
            info,
            reader: secured.reader,
            writer: secured.writer,
            keep_alive: None,
        })
    }

    /// Our side of a TCP hole punch (see the [module docs](self)).
    pub(crate) async fn punch_tcp(&self, plan: PunchPlan) -> Result<SecureStream> {
        if plan.strategy != PunchStrategy::Direct {
            return Err(Error::Unsupported(
                "tcp punches only by simultaneous open (no birthday search over tcp)".into(),
            ));
        }
        let mut targets = Vec::new();
        for addr in &plan.candidates {
            match self.listen_port_for(*addr) {
                Some(local) if !targets.iter().any(|(a, _)| a == addr) => {
                    targets.push((*addr, local))
                }
                Some(_) => {}
                None => tracing::debug!(%addr, "no listening socket of this family to punch from"),
            }
        }
        if targets.is_empty() {
            return Err(Error::Unsupported(
                "tcp punching needs a listening socket of the candidates' family and dial_from_listen_port".into(),
            ));
        }
        let (tx, mut rx) = mpsc::channel::<TcpStream>(targets.len() * 2);
        let _guard = {
            let mut waiters = self.punch_waiters.lock().unwrap_or_else(|p| p.into_inner());
            for (addr, _) in &targets {
                waiters.insert(*addr, tx.clone());
            }
            WaiterGuard {
                waiters: self.punch_waiters.clone(),
                addrs: targets.iter().map(|(a, _)| *a).collect(),
            }
        };
        let deadline = tokio::time::Instant::now() + plan.timeout;
        // Connect attempts in all, over every candidate: each is one SYN (plus the
        // kernel's own retransmissions of it).
        let budget = Arc::new(std::sync::atomic::AtomicUsize::new(plan.max_packets.max(1)));
        let mut connects = JoinSet::new();
        for (addr, local) in targets {
            connects.spawn(connect_loop(
                addr,
                local,
                (plan.start_delay, plan.interval),
                deadline,
                budget.clone(),
                tx.clone(),
            ));
        }
        drop(tx);
        let handshake = self.config.connection.handshake_timeout;
        let outcome = match plan.role {
            PunchRole::Client => {
                self.upgrade_first(&mut rx, plan.peer, deadline, handshake)
                    .await
            }
            PunchRole::Server => {
                self.upgrade_any(&mut rx, plan.peer, deadline, handshake)
                    .await
            }
        };
        connects.abort_all();
        outcome.unwrap_or(Err(Error::PunchTimeout(plan.timeout)))
    }

    /// The client side: several connections may open (IPv4 and IPv6, the peer's own dial
    /// and ours); run TLS on one at a time, in the order they opened, so the server side
    /// can only complete the one we chose. `None` when none opened before the deadline.
    async fn upgrade_first(
        &self,
        opened: &mut mpsc::Receiver<TcpStream>,
        peer: PeerId,
        deadline: tokio::time::Instant,
        handshake: Duration,
    ) -> Option<Result<SecureStream>> {
        let mut last = None;
        loop {
            let tcp = tokio::select! {
                tcp = opened.recv() => tcp,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let Some(tcp) = tcp else {
                return last;
            };
            let remote = tcp.peer_addr().ok();
            tracing::debug!(
                ?remote,
                "tcp punch opened a connection; handshake as the client"
            );
            match tokio::time::timeout(handshake, self.upgrade(tcp, PunchRole::Client, peer)).await
            {
                Ok(Ok(stream)) => return Some(Ok(stream)),
                Ok(Err(e @ Error::PeerIdMismatch { .. })) => return Some(Err(e)),
                Ok(Err(e)) => {
                    tracing::debug!(?remote, error = %e, "punched connection failed its handshake");
                    last = Some(Err(e));
                }
                Err(_) => last = Some(Err(Error::HandshakeTimeout(handshake))),
            }
        }
    }

    /// The server side: answer on every connection that opens, at once; the one the
    /// client chose completes.
    async fn upgrade_any(
        &self,
        opened: &mut mpsc::Receiver<TcpStream>,
        peer: PeerId,
        deadline: tokio::time::Instant,
        handshake: Duration,
    ) -> Option<Result<SecureStream>> {
        let mut handshakes = handshake_set();
        let mut last = None;
        let mut open = true;
        loop {
            tokio::select! {
                tcp = opened.recv(), if open => match tcp {
                    Some(tcp) => {
                        tracing::debug!(remote = ?tcp.peer_addr().ok(), "tcp punch opened a connection; handshake as the server");
                        handshakes.spawn(tokio::time::timeout(handshake, self.upgrade_owned(tcp, peer)));
                    }
                    None => open = false,
                },
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => match done {
                    Ok(Ok(Ok(stream))) => return Some(Ok(stream)),
                    Ok(Ok(Err(e @ Error::PeerIdMismatch { .. }))) => return Some(Err(e)),
                    Ok(Ok(Err(e))) => {
                        tracing::debug!(error = %e, "punched connection failed its handshake");
                        last = Some(Err(e));
                    }
                    Ok(Err(_)) => last = Some(Err(Error::HandshakeTimeout(handshake))),
                    Err(e) => last = Some(Err(Error::Io(std::io::Error::other(e)))),
                },
                _ = tokio::time::sleep_until(deadline), if handshakes.is_empty() => return last,
                else => return last,
            }
        }
    }

    /// [`TcpTransport::upgrade`] as the server, as a `'static` future (for a task).
    fn upgrade_owned(
        &self,
        tcp: TcpStream,
        peer: PeerId,
    ) -> impl std::future::Future<Output = Result<SecureStream>> + Send + 'static {
        let this = TcpTransport {
            identity: self.identity.clone(),
            config: self.config.clone(),
            handshaker: self.handshaker.clone(),
            listen_addrs: self.listen_addrs.clone(),
            punch_waiters: self.punch_waiters.clone(),
        };
        async move { this.upgrade(tcp, PunchRole::Server, peer).await }
    }
}

fn handshake_set() -> JoinSet<std::result::Result<Result<SecureStream>, tokio::time::error::Elapsed>>
{
    JoinSet::new()
}

/// Connects to `addr` from `local` until it succeeds, the deadline passes or the shared
/// attempt budget is spent. A failed attempt (refused, reset, unreachable, or the
/// four-tuple taken by a connection the listener accepted meanwhile) is retried after
/// `interval`; a SYN the peer's NAT drops is retransmitted by the kernel.
async fn connect_loop(
    addr: SocketAddr,
    local: SocketAddr,
    (start_delay, interval): (Duration, Duration),
    deadline: tokio::time::Instant,
    budget: Arc<std::sync::atomic::AtomicUsize>,
    won: mpsc::Sender<TcpStream>,
) {
    use std::sync::atomic::Ordering;
    tokio::time::sleep_until((tokio::time::Instant::now() + start_delay).min(deadline)).await;
    loop {
        let spend = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(1)
        });
        if spend.is_err() || tokio::time::Instant::now() >= deadline {
            return;
        }
        let attempt = async {
            let socket = crate::new_socket(addr)?;
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(local)?;
            Ok::<_, Error>(socket.connect(addr).await?)
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(tcp)) => {
                let _ = won.send(tcp).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::trace!(%addr, %local, error = %e, "tcp punch connect failed; retrying");
            }
            Err(_) => return,
        }
        tokio::time::sleep(
            interval.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
    }
}
