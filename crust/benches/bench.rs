//! `cargo xtask bench`: Crust against the raw stacks it is built on, on loopback.
//!
//! Rows: plain tokio TCP, tokio-rustls TLS 1.3 (Crust's own rustls configs), crust-tcp, raw
//! quinn (one bidirectional stream, Crust's TLS configs and ALPN), crust-rudp, and the
//! `crust` facade over TCP and over rUDP. Every row moves the same length-prefixed messages
//! and is timed until the receiver has them all. Cases:
//!
//! * bulk: 1 GiB in 1 MiB messages (256 MiB with `--quick`), with CPU seconds per GiB
//!   (utime + stime of the whole process, both ends, from `/proc/self/stat`);
//! * rate: 64-byte messages per second (baselines coalesce writes in a 64 KiB `BufWriter`);
//! * handshake: median and p99 of N sequential connects until the first message arrives;
//! * scale: 10 000 concurrent crust-tcp connections in one process, RSS per connection.
//!
//! Repetitions (7, `--quick` 3) are interleaved across rows and each row reports its
//! median. Each row's ratio to its raw baseline from the same run is printed with PASS/MISS
//! against the targets, and the whole table is written as JSON with every run's values
//! (default `target/bench/latest.json`, or `--json PATH`). Options: `--quick`,
//! `--json PATH`, `--only bulk|rate|handshake|scale`, `--row NAME`, `--reps N`,
//! `--scale N`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use crust::{Event, Service, ServiceConfig};
use crust_core::{Connection, Identity, Transport, tls, wire};
use crust_rudp::{RudpConfig, RudpTransport};
use crust_tcp::{TcpConfig, TcpTransport};
use futures::StreamExt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const MIB: usize = 1024 * 1024;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// Write coalescing buffer of the baselines: the same 64 KiB crust-core batches into.
const BUF: usize = 64 * 1024;
const LOOPBACK: &str = "127.0.0.1:0";

/// Targets: Crust row / baseline.
const THROUGHPUT_TARGET: f64 = 0.95;
const HANDSHAKE_TARGET: f64 = 1.1;
const RSS_TARGET_KIB: f64 = 32.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    Tcp,
    Tls,
    CrustTcp,
    Quic,
    CrustRudp,
    FacadeTcp,
    FacadeRudp,
}

const ROWS: [Row; 7] = [
    Row::Tcp,
    Row::Tls,
    Row::CrustTcp,
    Row::Quic,
    Row::CrustRudp,
    Row::FacadeTcp,
    Row::FacadeRudp,
];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Tcp => "tokio-tcp",
            Row::Tls => "tokio-rustls",
            Row::CrustTcp => "crust-tcp",
            Row::Quic => "quinn",
            Row::CrustRudp => "crust-rudp",
            Row::FacadeTcp => "facade-tcp",
            Row::FacadeRudp => "facade-rudp",
        }
    }

    /// The row this one is compared with.
    fn baseline(self) -> Option<Row> {
        match self {
            Row::CrustTcp => Some(Row::Tls),
            Row::CrustRudp => Some(Row::Quic),
            Row::FacadeTcp => Some(Row::CrustTcp),
            Row::FacadeRudp => Some(Row::CrustRudp),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Opts {
    quick: bool,
    json: PathBuf,
    reps: usize,
    bulk_bytes: usize,
    rate_messages: usize,
    handshakes: usize,
    scale_conns: usize,
    /// Run only these cases (`bulk`, `rate`, `handshake`, `scale`); empty = all.
    only: Vec<String>,
    /// Run only these rows (by name, e.g. `crust-tcp`); empty = all.
    rows: Vec<String>,
}

impl Opts {
    fn parse() -> Result<Self> {
        let mut quick = false;
        let mut json = None;
        let mut only = Vec::new();
        let mut rows = Vec::new();
        let mut reps = None;
        let mut scale = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--json" => json = Some(PathBuf::from(args.next().context("--json PATH")?)),
                "--only" => only.push(args.next().context("--only CASE")?),
                "--row" => rows.push(args.next().context("--row NAME")?),
                "--reps" => reps = Some(args.next().context("--reps N")?.parse()?),
                "--scale" => scale = Some(args.next().context("--scale N")?.parse()?),
                // `cargo bench` passes `--bench`; ignore it and libtest-style filters.
                _ => {}
            }
        }
        let json = json.unwrap_or_else(|| target_dir().join("bench").join("latest.json"));
        Ok(Opts {
            quick,
            json,
            reps: reps.unwrap_or(if quick { 3 } else { 7 }).max(1),
            bulk_bytes: if quick { 256 * MIB } else { 1024 * MIB },
            rate_messages: if quick { 1_000_000 } else { 5_000_000 },
            handshakes: if quick { 50 } else { 200 },
            scale_conns: scale.unwrap_or(10_000),
            only,
            rows,
        })
    }

    fn runs(&self, case: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|c| c == case)
    }
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|p| p.join("target"))
            .unwrap_or_else(|| PathBuf::from("target")),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scale-client") {
        let addr = args.get(i + 1).context("--scale-client ADDR N")?.parse()?;
        let n = args.get(i + 2).context("--scale-client ADDR N")?.parse()?;
        return scale_client(addr, n);
    }
    let opts = Opts::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(opts))
}

// ---------------------------------------------------------------------------------------
// Measurements of the process itself.

/// utime + stime of the whole process (every thread), in seconds.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / clock_ticks(),
        _ => f64::NAN,
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// VmRSS of the process in KiB.
fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    (cores, model)
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = (p * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// Shared setup: identities and the exact TLS configurations Crust uses.

struct Env {
    server: Identity,
    client: Identity,
    /// TLS over TCP: no ALPN, like crust-tcp.
    tls_acceptor: TlsAcceptor,
    tls_connector: TlsConnector,
    quic_server: quinn::ServerConfig,
    quic_client: quinn::ClientConfig,
}

impl Env {
    fn new() -> Result<Self> {
        let server = Identity::generate()?;
        let client = Identity::generate()?;
        let provider = tls::default_crypto_provider();
        let tls_server = tls::server_config(&server, provider.clone(), &[])?;
        let (tls_client, _) =
            tls::client_config(&client, provider.clone(), Some(server.peer_id()), &[])?;
        let quic_tls_server = tls::server_config(&server, provider.clone(), &[wire::ALPN])?;
        let (quic_tls_client, _) =
            tls::client_config(&client, provider, Some(server.peer_id()), &[wire::ALPN])?;
        let quic_server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(
            Arc::new(quic_tls_server),
        )?));
        let quic_client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(
            Arc::new(quic_tls_client),
        )?));
        Ok(Env {
            server,
            client,
            tls_acceptor: TlsAcceptor::from(Arc::new(tls_server)),
            tls_connector: TlsConnector::from(Arc::new(tls_client)),
            quic_server,
            quic_client,
        })
    }

    fn tcp_transport(&self, server: bool) -> Result<TcpTransport> {
        let identity = if server { &self.server } else { &self.client };
        Ok(TcpTransport::new(
            identity.clone(),
            TcpConfig::default().with_max_pending_handshakes(2048),
        )?)
    }

    fn rudp_transport(&self, server: bool) -> Result<RudpTransport> {
        let identity = if server { &self.server } else { &self.client };
        Ok(RudpTransport::new(identity.clone(), RudpConfig::default())?)
    }

    fn service(&self, row: Row, identity: Identity) -> Result<(Service, crust::Events)> {
        let config = ServiceConfig::loopback()
            .with_identity(identity)
            .with_tcp(row == Row::FacadeTcp)
            // Default flood protection: a bulk transfer at full speed is no flood.
            .with_rudp(row == Row::FacadeRudp);
        Ok(Service::new(config)?)
    }
}

fn loopback() -> SocketAddr {
    LOOPBACK.parse().expect("valid loopback address")
}

fn quic_endpoint(server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
    Ok(match server {
        Some(config) => quinn::Endpoint::server(config, loopback())?,
        None => quinn::Endpoint::client(loopback())?,
    })
}

// ---------------------------------------------------------------------------------------
// Transfers: `count` messages of `size` bytes, timed until the receiver has them all.

#[derive(Clone, Copy, Debug)]
struct Transfer {
    secs: f64,
    cpu: f64,
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected pair of the row's kind; the holder keeps whatever must stay alive.
enum Pair {
    Stream {
        writer: Writer,
        reader: Reader,
        _hold: Box<dyn std::any::Any + Send>,
    },
    Crust {
        sender: Connection,
        receiver: Connection,
        _hold: Box<dyn std::any::Any + Send>,
    },
    Facade {
        sender: Service,
        to: crust::PeerId,
        receiver: Service,
        events: crust::Events,
    },
}

async fn connect_pair(env: &Env, row: Row) -> Result<Pair> {
    Ok(match row {
        Row::Tcp => {
            let listener = TcpListener::bind(loopback()).await?;
            let addr = listener.local_addr()?;
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (client, (server, _)) = (client?, accepted?);
            client.set_nodelay(true)?;
            server.set_nodelay(true)?;
            Pair::Stream {
                writer: Box::new(client),
                reader: Box::new(server),
                _hold: Box::new(()),
            }
        }
        Row::Tls => {
            let listener = TcpListener::bind(loopback()).await?;
            let addr = listener.local_addr()?;
            let dial = async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                anyhow::Ok(env.tls_connector.connect(tls::server_name(), tcp).await?)
            };
            let accept = async {
                let (tcp, _) = listener.accept().await?;
                tcp.set_nodelay(true)?;
                anyhow::Ok(env.tls_acceptor.accept(tcp).await?)
            };
            let (client, server) = tokio::join!(dial, accept);
            Pair::Stream {
                writer: Box::new(client?),
                reader: Box::new(server?),
                _hold: Box::new(()),
            }
        }
        Row::Quic => {
            let server = quic_endpoint(Some(env.quic_server.clone()))?;
            let client = quic_endpoint(None)?;
            let addr = server.local_addr()?;
            let connecting =
                client.connect_with(env.quic_client.clone(), addr, tls::SERVER_NAME)?;
            let accept = async {
                let incoming = server.accept().await.context("server endpoint closed")?;
                anyhow::Ok(incoming.await?)
            };
            let (client_conn, server_conn) = tokio::join!(connecting, accept);
            let (client_conn, server_conn) = (client_conn?, server_conn?);
            let (send, _) = client_conn.open_bi().await?;
            // The acceptor learns of the stream when data arrives: accept it lazily.
            let reader = QuicLazyReader::new(server_conn.clone());
            Pair::Stream {
                writer: Box::new(send),
                reader: Box::new(reader),
                _hold: Box::new((server, client, client_conn, server_conn)),
            }
        }
        Row::CrustTcp | Row::CrustRudp => {
            let (server, client): (Box<dyn Transport>, Box<dyn Transport>) = if row == Row::CrustTcp
            {
                (
                    Box::new(env.tcp_transport(true)?),
                    Box::new(env.tcp_transport(false)?),
                )
            } else {
                (
                    Box::new(env.rudp_transport(true)?),
                    Box::new(env.rudp_transport(false)?),
                )
            };
            let mut listener = server.listen(loopback()).await?;
            let addr = listener.local_endpoint().addr();
            let (dialled, accepted) = tokio::join!(
                client.dial(addr, Some(env.server.peer_id())),
                listener.accept()
            );
            Pair::Crust {
                sender: dialled?,
                receiver: accepted?,
                _hold: Box::new((server, client, listener)),
            }
        }
        Row::FacadeTcp | Row::FacadeRudp => {
            let (receiver, mut events) = env.service(row, env.server.clone())?;
            let (sender, _sender_events) = env.service(row, env.client.clone())?;
            receiver.start_listening().await?;
            let to = sender
                .connect(&receiver.our_endpoints(), Some(receiver.peer_id()))
                .await?;
            // Wait until the receiving side registered the peer.
            while !receiver.is_connected(sender.peer_id()) {
                match events.recv().await {
                    Some(_) => {}
                    None => bail!("receiver events ended"),
                }
            }
            Pair::Facade {
                sender,
                to,
                receiver,
                events,
            }
        }
    })
}

/// The read half of raw quinn's one bidirectional stream, accepted on first read.
struct QuicLazyReader {
    accept: Option<futures::future::BoxFuture<'static, std::io::Result<quinn::RecvStream>>>,
    recv: Option<quinn::RecvStream>,
}

impl QuicLazyReader {
    fn new(conn: quinn::Connection) -> Self {
        QuicLazyReader {
            accept: Some(Box::pin(async move {
                let (_, recv) = conn.accept_bi().await?;
                Ok(recv)
            })),
            recv: None,
        }
    }
}

impl AsyncRead for QuicLazyReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(accept) = this.accept.as_mut() {
            let recv = std::task::ready!(accept.as_mut().poll(cx))?;
            this.recv = Some(recv);
            this.accept = None;
        }
        match this.recv.as_mut() {
            Some(recv) => std::pin::Pin::new(recv).poll_read(cx, buf),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

/// Moves `count` messages of `size` bytes over one connection of `row` and times it.
/// With `batch`, Crust rows use the batch API (`send_many` of `batch` messages, and
/// `recv_many` on raw connections; the facade delivers events as usual); baseline rows
/// always coalesce on their own.
async fn transfer(
    env: &Env,
    row: Row,
    size: usize,
    count: usize,
    batch: Option<usize>,
) -> Result<Transfer> {
    let pair = connect_pair(env, row).await?;
    let payload = Bytes::from((0..size).map(|i| i as u8).collect::<Vec<u8>>());
    let total = (size * count) as u64;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let received = match pair {
        Pair::Stream {
            writer,
            reader,
            _hold,
        } => {
            let receiving = tokio::spawn(read_frames(reader, count));
            let sending = tokio::spawn(write_frames(writer, payload, count));
            let received = receiving.await??;
            let writer = sending.await??;
            drop((writer, _hold));
            received
        }
        Pair::Crust {
            sender,
            mut receiver,
            _hold,
        } => {
            let receiving = tokio::spawn(async move {
                let (mut bytes, mut n) = (0u64, 0usize);
                let mut got = Vec::with_capacity(1024);
                while n < count {
                    if batch.is_some() {
                        got.clear();
                        n += receiver.recv_many(&mut got, 1024).await?;
                        bytes += got.iter().map(|m| m.len() as u64).sum::<u64>();
                    } else {
                        bytes += receiver.recv().await?.len() as u64;
                        n += 1;
                    }
                }
                anyhow::Ok((bytes, receiver))
            });
            let sending = tokio::spawn(async move {
                match batch {
                    Some(batch) => {
                        let messages = vec![payload; batch];
                        let mut sent = 0;
                        while sent < count {
                            let n = batch.min(count - sent);
                            sender.send_many(&messages[..n]).await?;
                            sent += n;
                        }
                    }
                    None => {
                        for _ in 0..count {
                            sender.send(payload.clone()).await?;
                        }
                    }
                }
                anyhow::Ok(sender)
            });
            let (bytes, receiver) = receiving.await??;
            let sender = sending.await??;
            drop((sender, receiver, _hold));
            bytes
        }
        Pair::Facade {
            sender,
            to,
            receiver,
            mut events,
        } => {
            let receiving = tokio::spawn(async move {
                let (mut bytes, mut n) = (0u64, 0usize);
                while n < count {
                    match events.recv().await {
                        Some(Event::Message { payload, .. }) => {
                            bytes += payload.len() as u64;
                            n += 1;
                        }
                        Some(_) => {}
                        None => bail!("events ended after {n} messages"),
                    }
                }
                anyhow::Ok(bytes)
            });
            let sending = tokio::spawn(async move {
                match batch {
                    Some(batch) => {
                        let messages = vec![payload; batch];
                        let mut sent = 0;
                        while sent < count {
                            let n = batch.min(count - sent);
                            sender.send_many(to, &messages[..n]).await?;
                            sent += n;
                        }
                    }
                    None => {
                        for _ in 0..count {
                            sender.send(to, payload.clone()).await?;
                        }
                    }
                }
                anyhow::Ok(sender)
            });
            let bytes = receiving.await??;
            let sender = sending.await??;
            let secs = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu0;
            if bytes != total {
                bail!("{}: received {bytes} of {total} bytes", row.name());
            }
            sender.shutdown().await;
            receiver.shutdown().await;
            return Ok(Transfer { secs, cpu });
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    if received != total {
        bail!("{}: received {received} of {total} bytes", row.name());
    }
    Ok(Transfer { secs, cpu })
}

/// Baseline sender: `u32` big-endian length prefix + payload, coalesced in a 64 KiB buffer
/// (large payloads bypass it), flushed at the end.
async fn write_frames(writer: Writer, payload: Bytes, count: usize) -> Result<Writer> {
    let mut out = BufWriter::with_capacity(BUF, writer);
    let len = u32::try_from(payload.len())?.to_be_bytes();
    for _ in 0..count {
        out.write_all(&len).await?;
        out.write_all(&payload).await?;
    }
    out.flush().await?;
    Ok(out.into_inner())
}

/// Baseline receiver: reads `count` frames, each payload into its own buffer.
async fn read_frames(reader: Reader, count: usize) -> Result<u64> {
    let mut input = BufReader::with_capacity(BUF, reader);
    let mut bytes = 0u64;
    let mut header = [0u8; 4];
    let mut payload = Vec::new();
    for _ in 0..count {
        input.read_exact(&mut header).await?;
        let len = u32::from_be_bytes(header) as usize;
        payload.resize(len, 0);
        input.read_exact(&mut payload).await?;
        bytes += len as u64;
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// Handshakes: connect until the acceptor has the first message, sequentially.

async fn handshakes(env: &Env, row: Row, n: usize) -> Result<Vec<f64>> {
    let message = Bytes::from_static(b"first message");
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let mut samples = Vec::with_capacity(n);
    // Runs `connect_and_send` n times, each until the acceptor reports the message.
    macro_rules! timed {
        ($body:expr) => {
            for _ in 0..n {
                let start = Instant::now();
                let hold = $body;
                done.recv().await.context("acceptor gone")?;
                samples.push(start.elapsed().as_secs_f64());
                drop(hold);
            }
        };
    }
    let frame = {
        let mut f = u32::try_from(message.len())?.to_be_bytes().to_vec();
        f.extend_from_slice(&message);
        f
    };
    match row {
        Row::Tcp | Row::Tls => {
            let listener = TcpListener::bind(loopback()).await?;
            let addr = listener.local_addr()?;
            let acceptor = (row == Row::Tls).then(|| env.tls_acceptor.clone());
            let server = tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        let reader: Reader = match acceptor {
                            Some(acceptor) => match acceptor.accept(tcp).await {
                                Ok(tls) => Box::new(tls),
                                Err(_) => return,
                            },
                            None => Box::new(tcp),
                        };
                        if read_frames(reader, 1).await.is_ok() {
                            let _ = done.send(());
                        }
                    });
                }
            });
            if row == Row::Tcp {
                timed!({
                    let mut tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    tcp.write_all(&frame).await?;
                    tcp
                });
            } else {
                timed!({
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let mut tls = env.tls_connector.connect(tls::server_name(), tcp).await?;
                    tls.write_all(&frame).await?;
                    tls.flush().await?;
                    tls
                });
            }
            server.abort();
        }
        Row::Quic => {
            let server = quic_endpoint(Some(env.quic_server.clone()))?;
            let client = quic_endpoint(None)?;
            let addr = server.local_addr()?;
            let accepting = server.clone();
            let server_task = tokio::spawn(async move {
                while let Some(incoming) = accepting.accept().await {
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        let Ok((_send, recv)) = conn.accept_bi().await else {
                            return;
                        };
                        if read_frames(Box::new(recv), 1).await.is_ok() {
                            let _ = done.send(());
                        }
                        // Let the peer close; keep the connection until then.
                        conn.closed().await;
                    });
                }
            });
            timed!({
                let conn = client
                    .connect_with(env.quic_client.clone(), addr, tls::SERVER_NAME)?
                    .await?;
                let (mut send, _recv) = conn.open_bi().await?;
                send.write_all(&frame).await?;
                (conn, send)
            });
            server_task.abort();
            client.close(0u32.into(), b"done");
            server.close(0u32.into(), b"done");
        }
        Row::CrustTcp | Row::CrustRudp => {
            let (server, client): (Box<dyn Transport>, Box<dyn Transport>) = if row == Row::CrustTcp
            {
                (
                    Box::new(env.tcp_transport(true)?),
                    Box::new(env.tcp_transport(false)?),
                )
            } else {
                (
                    Box::new(env.rudp_transport(true)?),
                    Box::new(env.rudp_transport(false)?),
                )
            };
            let mut listener = server.listen(loopback()).await?;
            let addr = listener.local_endpoint().addr();
            let server_task = tokio::spawn(async move {
                while let Ok(mut conn) = listener.accept().await {
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        if conn.recv().await.is_ok() {
                            let _ = done.send(());
                        }
                        // Keep the connection until the dialler ends it.
                        let _ = conn.recv().await;
                    });
                }
            });
            let expected = Some(env.server.peer_id());
            timed!({
                let conn = client.dial(addr, expected).await?;
                conn.send(message.clone()).await?;
                conn
            });
            server_task.abort();
        }
        Row::FacadeTcp | Row::FacadeRudp => {
            let (server, mut events) = env.service(row, env.server.clone())?;
            server.start_listening().await?;
            let endpoints = server.our_endpoints();
            let server_id = server.peer_id();
            let events_task = tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    if let Event::Message { .. } = event {
                        let _ = done_tx.send(());
                    }
                }
            });
            for _ in 0..n {
                // A fresh node per connect (one connection per peer pair); built untimed.
                // It listens like any node, so rUDP dials from its bound endpoint (as the
                // crust-rudp row's reused transport does) instead of binding one in the timing.
                let (client, _client_events) = env.service(row, Identity::generate()?)?;
                client.start_listening().await?;
                let start = Instant::now();
                let peer = client.connect(&endpoints, Some(server_id)).await?;
                client.send(peer, message.clone()).await?;
                done.recv().await.context("server events gone")?;
                samples.push(start.elapsed().as_secs_f64());
                client.shutdown().await;
            }
            server.shutdown().await;
            events_task.abort();
        }
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------
// Scale: one node (this process) with many concurrent crust-tcp connections. The dialling
// side runs in a child process (this binary with `--scale-client`), so the node's RSS
// growth is its own connections' cost and the node needs one fd per connection (the hard
// RLIMIT_NOFILE here cannot be raised: no CAP_SYS_RESOURCE in this container).

#[derive(Debug)]
struct Scale {
    requested: usize,
    conns: usize,
    fd_limit: u64,
    note: String,
    establish_secs: f64,
    rss_before_kib: f64,
    rss_after_kib: f64,
    /// RSS of the dialling child process with all its connections open.
    client_rss_kib: f64,
}

impl Scale {
    /// The node's RSS growth per connection.
    fn kib_per_conn(&self) -> f64 {
        (self.rss_after_kib - self.rss_before_kib) / self.conns as f64
    }
}

/// Raises RLIMIT_NOFILE (soft, and hard when permitted) so `conns` sockets plus slack
/// fit; returns the soft limit and how many connections fit.
fn raise_fd_limit(conns: usize) -> (u64, usize, String) {
    use rlimit::Resource;
    // One socket per connection in each process, plus listeners, epoll, quinn, stdio.
    const SLACK: u64 = 512;
    let want = conns as u64 + SLACK;
    let mut note = String::new();
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((1024, 1024));
    let limit = if soft >= want {
        soft
    } else if Resource::NOFILE.set(want, want.max(hard)).is_ok() {
        want
    } else {
        // Without CAP_SYS_RESOURCE only the soft limit can go up, to the hard one.
        rlimit::increase_nofile_limit(want).unwrap_or(soft)
    };
    let fit = usize::try_from(limit.saturating_sub(SLACK)).unwrap_or(conns);
    if fit < conns {
        note.push_str(&format!(
            "scaled down from {conns} to {fit} connections: RLIMIT_NOFILE is {limit} (hard {hard}) and could not be raised to {want}; "
        ));
    }
    (limit, conns.min(fit), note)
}

/// The child process: dials `n` connections to `addr` (256 in flight), exchanges one
/// message on each, prints `ready OK FAILED`, and keeps them open until stdin closes.
fn scale_client(addr: SocketAddr, n: usize) -> Result<()> {
    use std::io::{BufRead, Write};
    let (_, n, _) = raise_fd_limit(n);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (conns, failed) = runtime.block_on(async {
        let client = Arc::new(TcpTransport::new(
            Identity::generate()?,
            TcpConfig::default(),
        )?);
        let dialled: Vec<Result<Connection>> = futures::stream::iter(0..n)
            .map(|_| {
                let client = client.clone();
                async move {
                    let mut conn = client.dial(addr, None).await?;
                    conn.send(Bytes::from_static(b"ping")).await?;
                    let reply = conn.recv().await?;
                    if &reply[..] != b"pong" {
                        bail!("unexpected reply");
                    }
                    anyhow::Ok(conn)
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        let failed = dialled.iter().filter(|r| r.is_err()).count();
        let conns: Vec<Connection> = dialled.into_iter().flatten().collect();
        anyhow::Ok((conns, failed))
    })?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready {} {failed}", conns.len())?;
    stdout.flush()?;
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(conns);
    drop(runtime);
    Ok(())
}

async fn scale(env: &Env, requested: usize) -> Result<Scale> {
    use std::io::{BufRead, Write};
    let (fd_limit, conns, mut note) = raise_fd_limit(requested);
    let server = env.tcp_transport(true)?;
    let mut listener = server.listen(loopback()).await?;
    let addr = listener.local_endpoint().addr();
    // Acceptor: receive one message on each connection, answer it, keep the connection.
    let (kept_tx, mut kept_rx) = mpsc::unbounded_channel::<Connection>();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rss_before_kib = rss_kib();
    let acceptor = tokio::spawn(async move {
        while let Ok(mut conn) = listener.accept().await {
            let kept = kept_tx.clone();
            tokio::spawn(async move {
                if conn.recv().await.is_ok() && conn.send(Bytes::from_static(b"pong")).await.is_ok()
                {
                    let _ = kept.send(conn);
                }
            });
        }
    });
    let start = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--scale-client", &addr.to_string(), &conns.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawning the dialling process")?;
    let child_pid = child.id();
    let stdout = child.stdout.take().context("child stdout")?;
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let mut inbound = Vec::with_capacity(conns);
    while inbound.len() < conns {
        match tokio::time::timeout(Duration::from_secs(20), kept_rx.recv()).await {
            Ok(Some(conn)) => inbound.push(conn),
            _ => break,
        }
    }
    let line = ready.await??;
    let establish_secs = start.elapsed().as_secs_f64();
    let mut words = line.split_whitespace().skip(1);
    let ok: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let failed: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    // Late arrivals (the child is ready once it has every pong).
    while inbound.len() < ok {
        match tokio::time::timeout(Duration::from_secs(5), kept_rx.recv()).await {
            Ok(Some(conn)) => inbound.push(conn),
            _ => break,
        }
    }
    // Let deferred frees and task wake-ups settle before reading RSS.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after_kib = rss_kib();
    let client_rss_kib = std::fs::read_to_string(format!("/proc/{child_pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"done\n");
    }
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    acceptor.abort();
    let established = inbound.len();
    if failed > 0 || established < conns {
        note.push_str(&format!(
            "{failed} dials failed, {established} of {conns} established; "
        ));
    }
    drop(inbound);
    if established == 0 {
        bail!("no connection established: {note}");
    }
    Ok(Scale {
        requested,
        conns: established,
        fd_limit,
        note,
        establish_secs,
        rss_before_kib,
        rss_after_kib,
        client_rss_kib,
    })
}

// ---------------------------------------------------------------------------------------
// Running, reporting.

#[derive(Clone, Debug, Default)]
struct RowResult {
    bulk_mib_s: Option<f64>,
    cpu_s_per_gib: Option<f64>,
    rate_msg_s: Option<f64>,
    batch_msg_s: Option<f64>,
    hs_p50_ms: Option<f64>,
    hs_p99_ms: Option<f64>,
    bulk_runs: Vec<f64>,
    cpu_runs: Vec<f64>,
    rate_runs: Vec<f64>,
    batch_runs: Vec<f64>,
    hs_p50_runs: Vec<f64>,
    hs_p99_runs: Vec<f64>,
    errors: Vec<String>,
}

async fn run(opts: Opts) -> Result<()> {
    let wall = Instant::now();
    let (cores, model) = machine();
    let env = Env::new()?;
    let mode = if opts.quick { "quick" } else { "full" };
    let header = vec![
        format!(
            "crust bench ({mode}): {cores} cores, {model}; tokio multi-thread runtime, 2 workers; loopback 127.0.0.1"
        ),
        format!(
            "bulk: {} MiB in 1 MiB messages; rate: {} x 64 B messages; handshake: {} sequential connects to first message; median of {} interleaved runs",
            opts.bulk_bytes / MIB,
            opts.rate_messages,
            opts.handshakes,
            opts.reps
        ),
    ];
    for line in &header {
        println!("{line}");
    }

    // Scale first: a heap not yet grown by the bulk runs shows the connections' own cost.
    let scale_result = if opts.runs("scale") {
        eprintln!("scale: {} connections ...", opts.scale_conns);
        match scale(&env, opts.scale_conns).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("scale failed: {e:#}");
                None
            }
        }
    } else {
        None
    };

    let mut results: Vec<(Row, RowResult)> = ROWS
        .iter()
        .filter(|r| opts.rows.is_empty() || opts.rows.iter().any(|n| n == r.name()))
        .map(|r| (*r, RowResult::default()))
        .collect();
    // Repetitions are interleaved (rep 1 of every row, then rep 2, ...), so a Crust row and
    // its baseline see the same machine conditions; each row reports the median.
    let mib = opts.bulk_bytes as f64 / MIB as f64;
    let gib = opts.bulk_bytes as f64 / GIB;
    for case in ["bulk", "rate", "batch", "handshake"] {
        if !opts.runs(case) {
            continue;
        }
        for rep in 1..=opts.reps {
            eprintln!("{case}: run {rep} of {} ...", opts.reps);
            for (row, result) in &mut results {
                let row = *row;
                if result.errors.iter().any(|e| e.starts_with(case)) {
                    continue;
                }
                let outcome = match case {
                    "bulk" => transfer(&env, row, MIB, opts.bulk_bytes / MIB, None)
                        .await
                        .map(|t| {
                            result.bulk_runs.push(mib / t.secs);
                            result.cpu_runs.push(t.cpu / gib);
                        }),
                    "rate" => transfer(&env, row, 64, opts.rate_messages, None)
                        .await
                        .map(|t| result.rate_runs.push(opts.rate_messages as f64 / t.secs)),
                    // The batch API only exists on Crust rows; baselines already coalesce.
                    "batch" if row.baseline().is_none() => Ok(()),
                    "batch" => transfer(&env, row, 64, opts.rate_messages, Some(256))
                        .await
                        .map(|t| result.batch_runs.push(opts.rate_messages as f64 / t.secs)),
                    _ => handshakes(&env, row, opts.handshakes).await.map(|s| {
                        result.hs_p50_runs.push(median(&s) * 1e3);
                        result.hs_p99_runs.push(percentile(&s, 0.99) * 1e3);
                    }),
                };
                if let Err(e) = outcome {
                    eprintln!("{} {case} failed: {e:#}", row.name());
                    result.errors.push(format!("{case}: {e:#}"));
                }
            }
        }
    }
    for (_, result) in &mut results {
        let med = |v: &[f64]| (!v.is_empty()).then(|| median(v));
        result.bulk_mib_s = med(&result.bulk_runs);
        result.cpu_s_per_gib = med(&result.cpu_runs);
        result.rate_msg_s = med(&result.rate_runs);
        result.batch_msg_s = med(&result.batch_runs);
        result.hs_p50_ms = med(&result.hs_p50_runs);
        result.hs_p99_ms = med(&result.hs_p99_runs);
    }

    let report = Report {
        results,
        scale: scale_result,
    };
    let (table, json_rows, targets) = report.render();
    println!();
    println!("{table}");
    let batched: Vec<String> = report
        .results
        .iter()
        .filter_map(|(row, r)| {
            let batch = r.batch_msg_s?;
            let base = row.baseline()?;
            let base_rate = report
                .results
                .iter()
                .find(|(b, _)| *b == base)
                // A Crust baseline is compared batched too; raw baselines already coalesce.
                .and_then(|(_, b)| b.batch_msg_s.or(b.rate_msg_s))?;
            let ratio = batch / base_rate;
            let verdict = if ratio >= 0.95 { "PASS" } else { "MISS" };
            Some(format!(
                "  {:<12} {:>11.0} msg/s  {:.2}x {:<13} {verdict}",
                row.name(),
                batch,
                ratio,
                base.name()
            ))
        })
        .collect();
    if !batched.is_empty() {
        println!(
            "64-byte message rate with the batch API (send_many of 256 / recv_many), vs the baseline's rate:"
        );
        for line in &batched {
            println!("{line}");
        }
        println!();
    }
    let wall_secs = wall.elapsed().as_secs_f64();
    println!("bench wall time: {wall_secs:.1} s");
    let json = json!({
        "mode": mode,
        "machine": { "nproc": cores, "cpu": model },
        "runtime": "tokio multi-thread, 2 workers",
        "reps": opts.reps,
        "bulk_bytes": opts.bulk_bytes,
        "bulk_message_bytes": MIB,
        "rate_messages": opts.rate_messages,
        "rate_message_bytes": 64,
        "handshakes": opts.handshakes,
        "rows": json_rows,
        "scale": report.scale.as_ref().map(|s| json!({
            "requested": s.requested,
            "connections": s.conns,
            "fd_limit": s.fd_limit,
            "establish_secs": s.establish_secs,
            "rss_before_kib": s.rss_before_kib,
            "rss_after_kib": s.rss_after_kib,
            "kib_per_connection": s.kib_per_conn(),
            "dialler_process_rss_kib": s.client_rss_kib,
            "note": s.note,
        })),
        "targets": targets,
        "table": table,
        "wall_secs": wall_secs,
    });
    if let Some(dir) = opts.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.json, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", opts.json.display());
    Ok(())
}

struct Report {
    results: Vec<(Row, RowResult)>,
    scale: Option<Scale>,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

impl Report {
    fn get(&self, row: Row) -> Option<&RowResult> {
        self.results.iter().find(|(r, _)| *r == row).map(|(_, r)| r)
    }

    fn render(&self) -> (String, Value, Value) {
        use std::fmt::Write;
        let mut t = String::new();
        let mut rows_json = Vec::new();
        let mut targets = Vec::new();
        let _ = writeln!(
            t,
            "{:<12} {:<13} | {:>9} {:>6} {:>4} {:>8} | {:>10} {:>6} {:>4} | {:>7} {:>7} {:>6} {:>4}",
            "row",
            "vs",
            "bulk MiB/s",
            "ratio",
            "",
            "CPU s/GiB",
            "msg/s",
            "ratio",
            "",
            "hs p50",
            "hs p99",
            "ratio",
            ""
        );
        let _ = writeln!(t, "{}", "-".repeat(118));
        let fmt = |v: Option<f64>, prec: usize| match v {
            Some(v) if v.is_finite() => format!("{v:.prec$}"),
            _ => "-".into(),
        };
        for (row, r) in &self.results {
            let base = row.baseline().and_then(|b| self.get(b));
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let bulk_ratio = ratio(r.bulk_mib_s, base.and_then(|b| b.bulk_mib_s));
            let rate_ratio = ratio(r.rate_msg_s, base.and_then(|b| b.rate_msg_s));
            let hs_ratio = ratio(r.hs_p50_ms, base.and_then(|b| b.hs_p50_ms));
            let mut check = |what: &str, ratio: Option<f64>, ok: fn(f64) -> bool, target: &str| {
                let Some(ratio) = ratio else {
                    return String::new();
                };
                let pass = ok(ratio);
                targets.push(json!({
                    "row": row.name(),
                    "vs": row.baseline().map(Row::name),
                    "metric": what,
                    "ratio": ratio,
                    "target": target,
                    "pass": pass,
                }));
                verdict(pass).to_owned()
            };
            let bulk_v = check(
                "bulk throughput",
                bulk_ratio,
                |x| x >= THROUGHPUT_TARGET,
                ">= 0.95x",
            );
            let rate_v = check(
                "message rate",
                rate_ratio,
                |x| x >= THROUGHPUT_TARGET,
                ">= 0.95x",
            );
            let hs_v = check(
                "handshake p50",
                hs_ratio,
                |x| x <= HANDSHAKE_TARGET,
                "<= 1.1x",
            );
            let _ = writeln!(
                t,
                "{:<12} {:<13} | {:>9} {:>6} {:>4} {:>8} | {:>10} {:>6} {:>4} | {:>7} {:>7} {:>6} {:>4}",
                row.name(),
                row.baseline().map_or("-", Row::name),
                fmt(r.bulk_mib_s, 0),
                fmt(bulk_ratio, 2),
                bulk_v,
                fmt(r.cpu_s_per_gib, 2),
                fmt(r.rate_msg_s, 0),
                fmt(rate_ratio, 2),
                rate_v,
                fmt(r.hs_p50_ms, 2),
                fmt(r.hs_p99_ms, 2),
                fmt(hs_ratio, 2),
                hs_v,
            );
            for e in &r.errors {
                let _ = writeln!(t, "  ! {} {e}", row.name());
            }
            rows_json.push(json!({
                "row": row.name(),
                "baseline": row.baseline().map(Row::name),
                "bulk_mib_per_s": r.bulk_mib_s,
                "bulk_ratio": bulk_ratio,
                "cpu_s_per_gib": r.cpu_s_per_gib,
                "rate_msg_per_s": r.rate_msg_s,
                "batch_msg_per_s": r.batch_msg_s,
                "rate_ratio": rate_ratio,
                "handshake_p50_ms": r.hs_p50_ms,
                "handshake_p99_ms": r.hs_p99_ms,
                "handshake_ratio": hs_ratio,
                "runs": {
                    "bulk_mib_per_s": r.bulk_runs,
                    "cpu_s_per_gib": r.cpu_runs,
                    "rate_msg_per_s": r.rate_runs,
                    "handshake_p50_ms": r.hs_p50_runs,
                    "handshake_p99_ms": r.hs_p99_runs,
                },
                "errors": r.errors,
            }));
        }
        let _ = writeln!(
            t,
            "(hs = handshake in ms, connect until the acceptor has the first message; facade: connect() + send + Event::Message;"
        );
        let _ = writeln!(
            t,
            " CPU = utime+stime of the whole process, both ends, per GiB of payload; targets: >= 0.95x throughput/rate, <= 1.1x handshake p50)"
        );
        if let Some(s) = &self.scale {
            let per = s.kib_per_conn();
            let pass = per <= RSS_TARGET_KIB && s.conns >= s.requested;
            targets.push(json!({
                "row": "scale crust-tcp",
                "metric": "RSS per connection (KiB)",
                "value": per,
                "target": "<= 32 KiB at 10000 connections",
                "pass": pass,
            }));
            let _ = writeln!(t);
            let _ = writeln!(
                t,
                "scale (crust-tcp): one node with {} concurrent connections (fd limit {}), one ping/pong each, dialled by a child process with 256 in flight",
                s.conns, s.fd_limit
            );
            let _ = writeln!(
                t,
                "  established all in {:.2} s ({:.0} conn/s); VmRSS {:.1} -> {:.1} MiB",
                s.establish_secs,
                s.conns as f64 / s.establish_secs,
                s.rss_before_kib / 1024.0,
                s.rss_after_kib / 1024.0
            );
            let _ = writeln!(
                t,
                "  RSS per connection (node's VmRSS growth / connections): {per:.1} KiB, target <= {RSS_TARGET_KIB} KiB: {}",
                verdict(pass)
            );
            let _ = writeln!(
                t,
                "  (the dialling side runs in a child process, {:.1} MiB VmRSS = {:.1} KiB per connection incl. its runtime)",
                s.client_rss_kib / 1024.0,
                s.client_rss_kib / s.conns as f64
            );
            if !s.note.is_empty() {
                let _ = writeln!(t, "  note: {}", s.note);
            }
        }
        (t, Value::Array(rows_json), Value::Array(targets))
    }
}
