//! An authenticated, message-oriented connection, built by `crust-core` on top of the byte
//! stream a transport authenticated.
//!
//! Transports only establish and authenticate a byte stream (TLS over TCP, a QUIC stream);
//! framing, size limits, batching of small messages and close semantics live here once, so
//! every transport behaves the same.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::wire::{self, Frame, FrameDecoder, FrameKind};
use crate::{Endpoint, Error, PeerId, Protocol, Result};

/// The read half of an authenticated byte stream.
pub type BoxedReader = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The write half of an authenticated byte stream. `poll_shutdown` must end the stream
/// gracefully (TLS `close_notify`, QUIC stream `FIN`) after delivering what was written.
pub type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialled the peer.
    Outbound,
    /// The peer dialled us and our listener accepted.
    Inbound,
}

impl Direction {
    /// `"outbound"` or `"inbound"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Facts about an established connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The authenticated identity of the peer.
    pub peer_id: PeerId,
    /// Our local socket address.
    pub local_addr: SocketAddr,
    /// The peer's socket address as we see it.
    pub remote_addr: SocketAddr,
    /// The transport protocol.
    pub protocol: Protocol,
    /// Who dialled.
    pub direction: Direction,
}

impl ConnectionInfo {
    /// The peer's address as an [`Endpoint`].
    pub fn remote_endpoint(&self) -> Endpoint {
        Endpoint::new(self.protocol, self.remote_addr)
    }
}

/// Limits and queue sizes of a connection. Every transport config embeds one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Largest message accepted for sending or receiving, in bytes.
    /// Default [`wire::DEFAULT_MAX_MESSAGE_SIZE`] (16 MiB).
    pub max_message_size: usize,
    /// Messages that may wait in the send queue before `send()` waits (backpressure).
    /// Default 1024.
    pub send_queue_len: usize,
    /// Time allowed for the whole handshake (preamble, TLS or QUIC). Default 10 s.
    pub handshake_timeout: std::time::Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_message_size: wire::DEFAULT_MAX_MESSAGE_SIZE,
            send_queue_len: 1024,
            handshake_timeout: std::time::Duration::from_secs(10),
        }
    }
}

impl ConnectionConfig {
    /// Sets [`ConnectionConfig::max_message_size`].
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`ConnectionConfig::send_queue_len`] (at least 1).
    pub fn with_send_queue_len(mut self, messages: usize) -> Self {
        self.send_queue_len = messages.max(1);
        self
    }

    /// Sets [`ConnectionConfig::handshake_timeout`].
    pub fn with_handshake_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

/// What a transport hands to `crust-core` once it has authenticated a peer: the two halves
/// of the byte stream and whatever must stay alive while they are used.
pub struct SecureStream {
    /// Facts about the connection; `peer_id` must be the authenticated one.
    pub info: ConnectionInfo,
    /// Read half.
    pub reader: BoxedReader,
    /// Write half.
    pub writer: BoxedWriter,
    /// Kept alive until both halves of the connection are gone (e.g. a QUIC connection handle).
    pub keep_alive: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for SecureStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureStream")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Coalesce queued small messages into writes of up to this many bytes.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Payloads at least this large are written straight from their buffer, not copied.
const DIRECT_WRITE_BYTES: usize = 16 * 1024;
/// Time a graceful end of stream may take once everything queued is written.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Commands taken from the queue per batch.
const COMMANDS_PER_BATCH: usize = 256;

enum Command {
    Frame(FrameKind, Bytes),
    /// End our sending direction once everything queued before it is written; answer when done.
    Finish(oneshot::Sender<()>),
}

struct Shared {
    info: ConnectionInfo,
    /// Cancelled when the connection is over: both directions finished, or aborted.
    closed: CancellationToken,
    /// Cancelled when the peer ended its stream cleanly.
    peer_finished: CancellationToken,
    /// Cancelled when we ended our stream cleanly.
    we_finished: CancellationToken,
    /// How long a graceful close may take before the connection is aborted.
    close_timeout: std::time::Duration,
    _keep_alive: Option<Box<dyn Any + Send + Sync>>,
}

impl Shared {
    fn mark_peer_finished(&self) {
        self.peer_finished.cancel();
        if self.we_finished.is_cancelled() {
            self.closed.cancel();
        }
    }

    fn mark_we_finished(&self) {
        self.we_finished.cancel();
        if self.peer_finished.is_cancelled() {
            self.closed.cancel();
        }
    }
}

/// An authenticated connection to one peer that sends and receives whole messages.
///
/// Messages from one sender arrive whole, exactly once and in the order sent. `send()`
/// returns once the message is queued (it waits when the queue is full); queued messages are
/// written in batches, so many small messages cost few system calls while a lone message is
/// written at once. Use [`Connection::split`] to send and receive from different tasks.
///
/// ```no_run
/// # async fn demo(mut conn: crust_core::Connection) -> crust_core::Result<()> {
/// conn.send(bytes::Bytes::from_static(b"hello")).await?;
/// let reply = conn.recv().await?;
/// println!("{} said {:?}", conn.peer_id(), reply);
/// conn.close().await;
/// # Ok(()) }
/// ```
pub struct Connection {
    sender: MessageSender,
    receiver: MessageReceiver,
}

impl Connection {
    /// Wraps an authenticated stream. Spawns the writer task, so it must be called inside a
    /// tokio runtime.
    pub fn new(stream: SecureStream, config: &ConnectionConfig) -> Self {
        let shared = Arc::new(Shared {
            info: stream.info,
            closed: CancellationToken::new(),
            peer_finished: CancellationToken::new(),
            we_finished: CancellationToken::new(),
            close_timeout: config.handshake_timeout,
            _keep_alive: stream.keep_alive,
        });
        let (tx, rx) = mpsc::channel(config.send_queue_len.max(1));
        tokio::spawn(run_writer(stream.writer, rx, shared.clone()));
        let sender = MessageSender {
            tx,
            shared: shared.clone(),
            max_message_size: config.max_message_size,
        };
        let receiver = MessageReceiver {
            frames: Some(FramedRead::new(
                stream.reader,
                FrameDecoder::new(config.max_message_size),
            )),
            pong: sender.tx.downgrade(),
            shared,
        };
        Connection { sender, receiver }
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.sender.shared.info
    }

    /// The peer's authenticated identity.
    pub fn peer_id(&self) -> PeerId {
        self.info().peer_id
    }

    /// Our local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.info().local_addr
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.info().remote_addr
    }

    /// Queues one message for the peer. See [`MessageSender::send`].
    pub async fn send(&self, message: Bytes) -> Result<()> {
        self.sender.send(message).await
    }

    /// Receives the next message. See [`MessageReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Bytes> {
        self.receiver.recv().await
    }

    /// Flushes what is queued, ends the stream gracefully and closes the connection.
    /// See [`MessageSender::close`].
    pub async fn close(&self) {
        self.sender.close().await
    }

    /// Closes the connection at once, dropping whatever is still queued.
    pub fn abort(&self) {
        self.sender.abort()
    }

    /// A sending handle that can be cloned and moved to other tasks.
    pub fn sender(&self) -> MessageSender {
        self.sender.clone()
    }

    /// Splits into a cloneable sender and the receiver.
    pub fn split(self) -> (MessageSender, MessageReceiver) {
        (self.sender, self.receiver)
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("info", self.info())
            .finish()
    }
}

/// The sending half of a [`Connection`]. Cheap to clone.
#[derive(Clone)]
pub struct MessageSender {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    max_message_size: usize,
}

impl MessageSender {
    /// Queues an application message.
    ///
    /// Fails with [`Error::MessageTooLarge`] (nothing is sent, the connection stays usable)
    /// when the message exceeds the configured maximum, and with [`Error::ConnectionClosed`]
    /// once the connection is closed. `Ok` means the message is queued for writing; like
    /// TCP, it is not an acknowledgement of delivery.
    pub async fn send(&self, message: Bytes) -> Result<()> {
        self.send_frame(FrameKind::Message, message).await
    }

    /// Queues a frame of any kind (control messages are sent this way).
    pub async fn send_frame(&self, kind: FrameKind, payload: Bytes) -> Result<()> {
        if payload.len() > self.max_message_size {
            return Err(Error::MessageTooLarge {
                size: payload.len() as u64,
                max: self.max_message_size,
            });
        }
        if self.shared.closed.is_cancelled() {
            return Err(Error::ConnectionClosed);
        }
        self.tx
            .send(Command::Frame(kind, payload))
            .await
            .map_err(|_| Error::ConnectionClosed)
    }

    /// Writes everything queued before this call and ends our sending direction gracefully
    /// (TLS `close_notify`, QUIC `FIN`), while the receiver keeps delivering what the peer
    /// still sends until it ends its side too. Later sends fail with
    /// [`Error::ConnectionClosed`]. If the queue cannot be written within the handshake
    /// timeout (the peer stopped reading), the connection is aborted.
    pub async fn finish(&self) {
        let graceful = async {
            let (ack_tx, ack_rx) = oneshot::channel();
            if self.tx.send(Command::Finish(ack_tx)).await.is_ok() {
                let _ = ack_rx.await;
            }
        };
        if tokio::time::timeout(self.shared.close_timeout, graceful)
            .await
            .is_err()
        {
            tracing::debug!(peer = %self.shared.info.peer_id, "graceful finish timed out; aborting");
            self.abort();
        }
    }

    /// Writes everything queued before this call, ends the stream gracefully (TLS
    /// `close_notify`, QUIC `FIN`) and closes the connection in both directions: later sends
    /// fail with [`Error::ConnectionClosed`] and a pending `recv()` returns it. Bounded like
    /// [`MessageSender::finish`].
    pub async fn close(&self) {
        self.finish().await;
        self.shared.closed.cancel();
    }

    /// Closes the connection at once, dropping whatever is still queued.
    pub fn abort(&self) {
        self.shared.closed.cancel();
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Completes when the connection is closed, for any reason.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.shared.info
    }
}

impl fmt::Debug for MessageSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSender")
            .field("info", &self.shared.info)
            .finish()
    }
}

/// The receiving half of a [`Connection`].
pub struct MessageReceiver {
    /// `None` once the connection failed, so the read half is released at once.
    frames: Option<FramedRead<BoxedReader, FrameDecoder>>,
    pong: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
}

impl MessageReceiver {
    /// Receives the next application message, answering pings and skipping other control
    /// frames on the way.
    ///
    /// Errors are final: after an error every call returns [`Error::ConnectionClosed`].
    /// A peer that ends the connection, vanishes mid-message, or whose connection we closed
    /// yields [`Error::ConnectionClosed`]; a peer that announces a message over our maximum
    /// yields [`Error::MessageTooLarge`] and the connection is closed.
    pub async fn recv(&mut self) -> Result<Bytes> {
        loop {
            let frame = self.recv_frame().await?;
            match frame.kind {
                FrameKind::Message => return Ok(frame.payload),
                FrameKind::Ping => {
                    if let Some(tx) = self.pong.upgrade() {
                        // A peer flooding pings must not block our reader: drop pongs when the queue is full.
                        let _ = tx.try_send(Command::Frame(FrameKind::Pong, frame.payload));
                    }
                }
                other => {
                    tracing::trace!(peer = %self.shared.info.peer_id, kind = ?other, "skipping control frame");
                }
            }
        }
    }

    /// Receives the next frame of any kind, for code that handles control messages itself.
    pub async fn recv_frame(&mut self) -> Result<Frame> {
        let Some(frames) = self.frames.as_mut() else {
            return Err(Error::ConnectionClosed);
        };
        let next = tokio::select! {
            next = frames.next() => next,
            _ = self.shared.closed.cancelled() => None,
        };
        match next {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(e)) => {
                self.fail();
                tracing::debug!(peer = %self.shared.info.peer_id, error = %e, "connection failed while receiving");
                Err(match e {
                    Error::Io(_) => Error::ConnectionClosed,
                    other => other,
                })
            }
            None if self.shared.closed.is_cancelled() => {
                self.fail();
                Err(Error::ConnectionClosed)
            }
            None => {
                // The peer ended its stream cleanly: let our writer deliver what is queued
                // and end our side too.
                self.frames = None;
                self.shared.mark_peer_finished();
                Err(Error::ConnectionClosed)
            }
        }
    }

    fn fail(&mut self) {
        self.frames = None;
        self.shared.closed.cancel();
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.shared.info
    }
}

impl fmt::Debug for MessageReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageReceiver")
            .field("info", &self.shared.info)
            .finish()
    }
}

enum WriterOutcome {
    /// Our direction ended gracefully (asked to, every sender gone, or the peer finished).
    Finished(Option<oneshot::Sender<()>>),
    /// The connection was aborted.
    Aborted,
    /// Writing failed.
    Failed(std::io::Error),
}

async fn run_writer(mut writer: BoxedWriter, mut rx: mpsc::Receiver<Command>, shared: Arc<Shared>) {
    let peer = shared.info.peer_id;
    let outcome = tokio::select! {
        biased;
        _ = shared.closed.cancelled() => WriterOutcome::Aborted,
        result = write_loop(&mut writer, &mut rx, &shared.peer_finished) => match result {
            Ok(ack) => WriterOutcome::Finished(ack),
            Err(e) => WriterOutcome::Failed(e),
        },
    };
    rx.close();
    match outcome {
        WriterOutcome::Finished(ack) => {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, writer.shutdown()).await;
            shared.mark_we_finished();
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        }
        WriterOutcome::Aborted => {
            // Drop the write half without a graceful end: the peer sees an error (TLS
            // without close_notify, a QUIC stream reset), not a clean end it would drain.
            drop(writer);
        }
        WriterOutcome::Failed(e) => {
            tracing::debug!(%peer, error = %e, "connection failed while sending");
            shared.closed.cancel();
        }
    }
    // Dropping the remaining commands answers any waiting `finish()` callers.
    while rx.try_recv().is_ok() {}
}

/// Writes queued frames until our direction should end: a finish was requested
/// (`Ok(Some(ack))`), every sender is gone or the peer finished and the queue is drained
/// (`Ok(None)`). Fails when writing fails.
async fn write_loop(
    writer: &mut BoxedWriter,
    rx: &mut mpsc::Receiver<Command>,
    peer_finished: &CancellationToken,
) -> std::io::Result<Option<oneshot::Sender<()>>> {
    let mut batch = Vec::with_capacity(COMMANDS_PER_BATCH);
    let mut buf = BytesMut::new();
    let mut draining = false;
    loop {
        let received = if draining {
            rx.recv_many(&mut batch, COMMANDS_PER_BATCH).await
        } else {
            tokio::select! {
                received = rx.recv_many(&mut batch, COMMANDS_PER_BATCH) => received,
                _ = peer_finished.cancelled() => {
                    // Accept nothing new, deliver what is queued, then end our side.
                    rx.close();
                    draining = true;
                    continue;
                }
            }
        };
        if received == 0 {
            writer.flush().await?;
            return Ok(None);
        }
        let mut finish_ack = None;
        for command in batch.drain(..) {
            match command {
                Command::Frame(kind, payload) => {
                    encode_into(&mut buf, kind, &payload)?;
                    if payload.len() >= DIRECT_WRITE_BYTES {
                        writer.write_all(&buf).await?;
                        buf.clear();
                        writer.write_all(&payload).await?;
                    } else {
                        buf.extend_from_slice(&payload);
                        if buf.len() >= WRITE_BATCH_BYTES {
                            writer.write_all(&buf).await?;
                            buf.clear();
                        }
                    }
                }
                Command::Finish(ack) => {
                    finish_ack = Some(ack);
                    rx.close();
                }
            }
        }
        if finish_ack.is_some() {
            // Frames that raced into the queue before it closed are still delivered.
            while let Ok(command) = rx.try_recv() {
                if let Command::Frame(kind, payload) = command {
                    encode_into(&mut buf, kind, &payload)?;
                    buf.extend_from_slice(&payload);
                    if buf.len() >= WRITE_BATCH_BYTES {
                        writer.write_all(&buf).await?;
                        buf.clear();
                    }
                }
            }
        }
        if !buf.is_empty() {
            writer.write_all(&buf).await?;
            buf.clear();
        }
        writer.flush().await?;
        if finish_ack.is_some() {
            return Ok(finish_ack);
        }
        if buf.capacity() > 4 * WRITE_BATCH_BYTES {
            // Do not keep a large buffer around on idle connections.
            buf = BytesMut::new();
        }
    }
}

fn encode_into(buf: &mut BytesMut, kind: FrameKind, payload: &Bytes) -> std::io::Result<()> {
    wire::put_frame_header(buf, kind, payload.len())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    if payload.len() < DIRECT_WRITE_BYTES {
        buf.reserve(payload.len());
    }
    Ok(())
}
