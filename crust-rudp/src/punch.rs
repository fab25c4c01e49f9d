//! UDP hole punching for [`RudpTransport`](crate::RudpTransport)
//! ([`Transport::punch_stream`](crust_core::Transport::punch_stream)).
//!
//! ## How
//!
//! Both sides send **probe datagrams** ([`crust_core::probe`]: magic plus the sender's
//! nonce) from the socket QUIC listens on, so the NAT mapping that peers observed is the
//! one that opens. The probe-aware socket under quinn ([`crate::probe::ProbeSocket`])
//! recognises them by their magic before quinn sees anything and routes them **by nonce**:
//! a probe carrying the nonce our punch expects from its peer goes to the punch, every
//! other probe to the general probe receiver (NAT filtering tests). The first probe with
//! the peer's nonce tells the address the peer's packets really come from; we adopt it and
//! probe only it from then on. Then exactly one QUIC connection is made: the
//! [`PunchRole::Client`] side connects to the adopted address from its main endpoint with
//! the peer's identity pinned; the [`PunchRole::Server`] side keeps probing and waits for
//! that connection, which its accept loop hands to the punch instead of the listener
//! ([`PunchWaiters`]).
//!
//! Why probes under quinn rather than both sides connecting at once: probes are cheap and
//! can be sent at any pace from the listening socket, while a QUIC Initial that a NAT drops
//! is retried only after quinn's probe timeout (about a second, then backing off); probes
//! reveal the address the peer's packets really come from (which can differ from every
//! candidate); and the punch leaves exactly one QUIC connection, the client's, so nobody
//! has to pick between two.
//!
//! ## Birthday search (symmetric NATs)
//!
//! A NAT that gives every destination its own mapping makes the peer's observed address
//! useless. The symmetric side ([`PunchStrategy::BirthdayOpen`], always the client) opens
//! many fresh sockets and probes the peer from each, so its NAT opens many mappings; the
//! other side ([`PunchStrategy::BirthdayProbe`]) probes predicted and random ports of the
//! symmetric side's address from its main socket. The first birthday socket that hears the
//! peer's nonce wins: the others are closed, and a client-only quinn endpoint on the
//! winning socket connects to the address the probe came from.
//!
//! ## Limits
//!
//! The whole attempt is bounded by the plan's timeout; probes (all sockets together) by
//! its packet budget and rate ([`pacing::Pacer`]). Probes go only to the plan's
//! candidates, to ports of the first candidate's IP (birthday search), and to the address
//! a probe with the peer's nonce came from.

mod pacing;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crust_core::probe::{PROBE_LEN, ProbeDatagram, decode_probe, encode_probe};
use crust_core::punch::{PunchPlan, PunchRole, PunchStrategy};
use crust_core::{ConnectionPath, Error, PeerId, Result, SecureStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::probe::send_probe;
use crate::transport::{Inner, bind_udp, new_endpoint};
use pacing::{Pacer, PortSearch, Prober};

/// Birthday sockets open at most, whatever the plan asks.
const MAX_BIRTHDAY_SOCKETS: usize = 1024;
/// Birthday sockets re-send their probes at most this often (they only keep mappings open
/// and tell the peer where we are; the peer's probes do the searching).
const BIRTHDAY_RESEND: Duration = Duration::from_millis(500);

type Connecting<'a> = Pin<Box<dyn Future<Output = Result<SecureStream>> + Send + 'a>>;

/// Runs `plan` on `inner`'s sockets (see the [module docs](self)).
pub(crate) async fn punch(inner: &Inner, plan: PunchPlan) -> Result<SecureStream> {
    let Some((endpoint, socket)) = inner.punch_socket() else {
        return Err(Error::Unsupported(
            "punching needs a listening socket".into(),
        ));
    };
    let timeout = plan.timeout;
    let attempt = async {
        let now = Instant::now();
        let pacer = Pacer::new(plan.max_packets_per_second, plan.max_packets, now);
        let search: Option<Box<dyn Iterator<Item = SocketAddr> + Send>> = match &plan.strategy {
            PunchStrategy::Direct => None,
            PunchStrategy::BirthdayProbe {
                predicted,
                probes,
                port_range,
            } => {
                let ip = plan.candidates.first().map(SocketAddr::ip).ok_or_else(|| {
                    Error::Unsupported("a birthday search needs the peer's address".into())
                })?;
                let ports = PortSearch::new(predicted.clone(), *probes, *port_range);
                Some(Box::new(ports.map(move |port| SocketAddr::new(ip, port))))
            }
            PunchStrategy::BirthdayOpen { sockets } => {
                return birthday_open(inner, &plan, *sockets, &endpoint, pacer).await;
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "reliable UDP does not punch with {other:?}"
                )));
            }
        };
        let (_route, from_peer) = socket.route(plan.peer_nonce)?;
        let waiter = match plan.role {
            PunchRole::Server => Some(inner.punch_waiters.wait_for(plan.peer)?),
            PunchRole::Client => None,
        };
        let (_waiter, incoming) = waiter.unzip();
        // Ready for the peer's probes and connection from now on; our first probes wait
        // for the planned start (a probe of the peer that arrives first is answered at once).
        let prober = Prober::new(
            pacer,
            plan.interval,
            plan.candidates.clone(),
            search,
            now + plan.start_delay,
        );
        let nonce = plan.local_nonce;
        let send = |to| socket.send_probe(to, nonce);
        let path = Path {
            endpoint: &endpoint,
            send: &send,
            from_peer: Some(from_peer),
            incoming,
            adopted: None,
        };
        drive(inner, &plan, path, prober).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => {
            tracing::debug!(peer = %plan.peer, ?timeout, "hole punch timed out");
            Err(Error::PunchTimeout(timeout))
        }
    }
}

/// What [`drive`] works with.
struct Path<'a> {
    /// The endpoint the client connects from.
    endpoint: &'a quinn::Endpoint,
    /// Sends one probe (with our nonce) to an address.
    send: &'a (dyn Fn(SocketAddr) -> io::Result<()> + Sync),
    /// Sources of the peer's probes, until one is adopted.
    from_peer: Option<mpsc::Receiver<SocketAddr>>,
    /// The server's diverted incoming connection.
    incoming: Option<oneshot::Receiver<SecureStream>>,
    /// The address the peer's packets come from, once known.
    adopted: Option<SocketAddr>,
}

/// Probes until the peer's address is known, then (client) connects to it while probing
/// on, retrying failed handshakes, or (server) probes it until the peer's connection
/// arrives.
async fn drive(
    inner: &Inner,
    plan: &PunchPlan,
    mut path: Path<'_>,
    mut prober: Prober<SocketAddr>,
) -> Result<SecureStream> {
    let client = plan.role == PunchRole::Client;
    let mut connecting: Option<Connecting<'_>> = None;
    // When the client starts its next handshake attempt (never set for the server).
    let mut connect_at = path.adopted.filter(|_| client).map(|_| Instant::now());
    loop {
        let now = Instant::now();
        if let (Some(addr), Some(at)) = (path.adopted, connect_at) {
            if connecting.is_none() && at <= now {
                connect_at = None;
                let timeout = inner.config.connection.handshake_timeout;
                connecting = Some(Box::pin(inner.dial_from(
                    path.endpoint,
                    addr,
                    Some(plan.peer),
                    ConnectionPath::PunchedUdp,
                    timeout,
                )));
            }
        }
        let send = path.send;
        let next_probe = prober.poll(now, |to| sent(send(to), to));
        let wake = next_probe.into_iter().chain(connect_at).min();
        tokio::select! {
            result = poll_option(&mut connecting) => {
                connecting = None;
                match result {
                    Ok(stream) => {
                        tracing::debug!(peer = %plan.peer, probes = prober.sent(), "punched (client)");
                        return Ok(stream);
                    }
                    Err(e) if is_final(&e) => return Err(e),
                    Err(e) => {
                        tracing::debug!(peer = %plan.peer, error = %e, "punched handshake failed; retrying");
                        connect_at = Some(Instant::now() + plan.interval);
                    }
                }
            }
            stream = recv_oneshot(&mut path.incoming) => match stream {
                Some(stream) => {
                    tracing::debug!(peer = %plan.peer, probes = prober.sent(), "punched (server)");
                    return Ok(stream);
                }
                None => path.incoming = None,
            },
            from = recv_mpsc(&mut path.from_peer) => {
                path.from_peer = None;
                if let Some(from) = from {
                    tracing::debug!(peer = %plan.peer, %from, "the peer's probe arrived; adopting its source");
                    path.adopted = Some(from);
                    prober.adopt(from, Instant::now());
                    if client {
                        connect_at = Some(Instant::now());
                    }
                }
            }
            () = sleep_until(wake) => {}
        }
    }
}

/// Whether a probe send is done with (sent, or failed for good: counted either way, so a
/// persistent error cannot make us spin); false when the socket would block.
fn sent(result: io::Result<()>, to: SocketAddr) -> bool {
    match result {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => {
            tracing::debug!(%to, error = %e, "probe not sent");
            true
        }
    }
}

/// Errors a new handshake attempt cannot fix.
fn is_final(error: &Error) -> bool {
    matches!(
        error,
        Error::PeerIdMismatch { .. }
            | Error::NotCrust
            | Error::VersionMismatch { .. }
            | Error::Transport(_)
    )
}

/// [`PunchStrategy::BirthdayOpen`]: probes from many fresh sockets until one hears the
/// peer, then connects from that one.
async fn birthday_open(
    inner: &Inner,
    plan: &PunchPlan,
    sockets: usize,
    main: &quinn::Endpoint,
    pacer: Pacer,
) -> Result<SecureStream> {
    if plan.role != PunchRole::Client {
        return Err(Error::Unsupported(
            "the side opening birthday sockets must be the client".into(),
        ));
    }
    let Some(first) = plan.candidates.first() else {
        return Err(Error::Unsupported(
            "a birthday search needs the peer's address".into(),
        ));
    };
    let main_local = main.local_addr()?;
    let bind_ip = if main_local.is_ipv4() == first.is_ipv4() && !main_local.ip().is_unspecified() {
        main_local.ip()
    } else if first.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let count = sockets
        .clamp(1, MAX_BIRTHDAY_SOCKETS)
        .min(plan.max_packets.max(1));
    let mut birthday = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = bind_udp(SocketAddr::new(bind_ip, 0))?;
        birthday.push(Arc::new(tokio::net::UdpSocket::from_std(socket)?));
    }
    let candidates: Vec<SocketAddr> = plan
        .candidates
        .iter()
        .copied()
        .filter(|c| c.is_ipv4() == first.is_ipv4())
        .collect();
    let round = (0..count)
        .flat_map(|i| candidates.iter().map(move |c| (i, *c)))
        .collect();
    let interval = plan.interval.max(BIRTHDAY_RESEND);
    // Nobody knows these sockets yet: nothing can arrive before the planned start.
    tokio::time::sleep(plan.start_delay).await;
    let mut prober = Prober::new(pacer, interval, round, None, Instant::now());

    let mut listening = JoinSet::new();
    for (i, socket) in birthday.iter().enumerate() {
        let socket = socket.clone();
        let nonce = plan.peer_nonce;
        listening.spawn(async move { wait_for_probe(&socket, nonce).await.map(|from| (i, from)) });
    }
    let probe = encode_probe(plan.local_nonce);
    let (winner, from) = loop {
        let next = prober.poll(Instant::now(), |(i, to)| match birthday.get(i) {
            Some(socket) => sent(socket.try_send_to(&probe, to).map(drop), to),
            None => true,
        });
        tokio::select! {
            heard = listening.join_next(), if !listening.is_empty() => match heard {
                Some(Ok(Ok(won))) => break won,
                Some(Ok(Err(e))) => tracing::debug!(error = %e, "a birthday socket failed"),
                Some(Err(e)) => tracing::debug!(error = %e, "a birthday listener ended"),
                None => {}
            },
            () = sleep_until(next) => {}
        }
    };
    tracing::debug!(peer = %plan.peer, %from, socket = winner, probes = prober.sent(), "a birthday socket heard the peer");
    // The other sockets close once their listeners are gone.
    listening.shutdown().await;
    let socket = birthday.swap_remove(winner);
    drop(birthday);
    let socket = Arc::try_unwrap(socket)
        .map_err(|_| io::Error::other("the winning birthday socket is still shared"))?
        .into_std()?;
    // A plain socket under quinn, not a `ProbeSocket`: the peer's late probes (16 bytes,
    // first byte 0, no QUIC fixed bit) are dropped by quinn as undecodable, too short even
    // to answer with a stateless reset, and nobody else listens on this socket.
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = runtime.wrap_udp_socket(socket)?;
    // Client-only (no server config); the connection keeps the endpoint's driver alive
    // after this function drops the handle.
    let endpoint = new_endpoint(socket.clone(), &inner.endpoint_config)?;
    let mut prober = Prober::new(
        prober.into_pacer(),
        plan.interval,
        Vec::new(),
        None,
        Instant::now(),
    );
    prober.adopt(from, Instant::now());
    let nonce = plan.local_nonce;
    let send = |to| send_probe(&*socket, to, nonce);
    let path = Path {
        endpoint: &endpoint,
        send: &send,
        from_peer: None,
        incoming: None,
        adopted: Some(from),
    };
    drive(inner, plan, path, prober).await
}

/// Waits on a birthday socket for a probe carrying `nonce`; returns where it came from.
async fn wait_for_probe(socket: &tokio::net::UdpSocket, nonce: u64) -> io::Result<SocketAddr> {
    // Larger than a probe, so a longer datagram is not mistaken for one when truncated.
    let mut buf = [0u8; 4 * PROBE_LEN];
    loop {
        let (len, from) = socket.recv_from(&mut buf).await?;
        if decode_probe(&buf[..len]) == ProbeDatagram::Probe(nonce) {
            return Ok(from);
        }
    }
}

async fn poll_option<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The diverted stream; `None` if the waiter is gone.
async fn recv_oneshot<T>(receiver: &mut Option<oneshot::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.await.ok(),
        None => std::future::pending().await,
    }
}

async fn recv_mpsc<T>(receiver: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        // Nothing more to send (budget spent): the plan's timeout ends the wait.
        None => std::future::pending().await,
    }
}

/// Punches waiting for an incoming connection from their peer: the accept loop hands such
/// a connection to the punch ([`PunchWaiters::divert`]) instead of the listener.
#[derive(Clone, Default)]
pub(crate) struct PunchWaiters {
    waiting: Arc<Mutex<Waiting>>,
    ids: Arc<AtomicU64>,
}

type Waiting = HashMap<PeerId, (u64, oneshot::Sender<SecureStream>)>;

impl PunchWaiters {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `peer`'s next incoming connection until the guard is dropped. Fails if a
    /// punch already waits for that peer.
    pub(crate) fn wait_for(
        &self,
        peer: PeerId,
    ) -> Result<(WaiterGuard, oneshot::Receiver<SecureStream>)> {
        let mut waiting = self.lock();
        if waiting.contains_key(&peer) {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a hole punch with this peer is already running",
            )));
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        waiting.insert(peer, (id, tx));
        let guard = WaiterGuard {
            waiters: self.clone(),
            peer,
            id,
        };
        Ok((guard, rx))
    }

    /// Hands `stream` to the punch waiting for its peer (marked
    /// [`ConnectionPath::PunchedUdp`]); returns it if no punch takes it.
    pub(crate) fn divert(&self, mut stream: SecureStream) -> Option<SecureStream> {
        let waiter = self.lock().remove(&stream.info.peer_id);
        let Some((_, tx)) = waiter else {
            return Some(stream);
        };
        stream.info.path = ConnectionPath::PunchedUdp;
        match tx.send(stream) {
            Ok(()) => None,
            Err(mut stream) => {
                stream.info.path = ConnectionPath::Direct;
                Some(stream)
            }
        }
    }
}

impl fmt::Debug for PunchWaiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PunchWaiters")
            .field("peers", &self.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Stops a punch's wait for its peer's connection when dropped.
#[derive(Debug)]
pub(crate) struct WaiterGuard {
    waiters: PunchWaiters,
    peer: PeerId,
    id: u64,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        if waiting
            .get(&self.peer)
            .is_some_and(|(id, _)| *id == self.id)
        {
            waiting.remove(&self.peer);
        }
    }
}
