//! An authenticated, message-oriented connection, built by `crust-core` on top of the byte
//! stream a transport authenticated.
//!
//! Transports only establish and authenticate a byte stream (TLS over TCP, a QUIC stream);
//! framing, size limits, batching of small messages and close semantics live here once, so
//! every transport behaves the same.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};
use tokio_util::codec::Decoder;
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
    /// Bytes (frame headers included) that may wait to be written before `send()` waits
    /// (backpressure). A single message larger than this is still accepted into an empty
    /// queue. Default 1 MiB.
    pub send_buffer_bytes: usize,
    /// Time allowed for the whole handshake (preamble, TLS or QUIC), and for a graceful
    /// close. Default 10 s.
    pub handshake_timeout: std::time::Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_message_size: wire::DEFAULT_MAX_MESSAGE_SIZE,
            send_buffer_bytes: 1024 * 1024,
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

    /// Sets [`ConnectionConfig::send_buffer_bytes`] (at least 1).
    pub fn with_send_buffer_bytes(mut self, bytes: usize) -> Self {
        self.send_buffer_bytes = bytes.max(1);
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

/// Payloads at least this large are queued as their own buffer instead of being copied.
const DIRECT_WRITE_BYTES: usize = 16 * 1024;
/// Time a graceful end of stream may take once everything queued is written.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// A coalescing buffer larger than this is not kept for reuse after a burst.
const SPARE_BUFFER_LIMIT: usize = 256 * 1024;

/// The encoded frames waiting for the writer task, shared by every sender.
///
/// Senders encode straight into `tail` under a short lock, so a small message costs a
/// lock and a copy, not a channel hop; the writer takes everything queued at once and
/// writes it with as few calls as possible. Large payloads are queued as their own `Bytes`
/// and written without copying.
struct SendQueue {
    state: Mutex<SendState>,
    /// Wakes the writer when it is parked and something was queued or requested.
    writer_wake: Notify,
    /// Wakes senders waiting for buffer space (and on close).
    space: Notify,
    /// Cancelled once our direction is asked to end, however that happens: the drain that
    /// follows is bounded in time, so a peer that stops reading cannot pin the connection.
    finishing: CancellationToken,
    limit: usize,
    max_message_size: usize,
}

#[derive(Default)]
struct SendState {
    /// Complete buffers in order, before `tail`.
    chunks: VecDeque<Bytes>,
    /// Small frames coalesced after `chunks`.
    tail: BytesMut,
    queued_bytes: usize,
    /// No more frames are accepted: finishing, aborted or failed.
    closed: bool,
    /// End our direction once everything queued is written.
    finish_requested: bool,
    /// Answered once our direction has ended.
    finish_waiters: Vec<oneshot::Sender<()>>,
    /// The writer is parked waiting for `writer_wake`.
    writer_parked: bool,
    /// The writer task has ended; nothing queued now will ever be written.
    writer_done: bool,
}

impl SendQueue {
    fn lock(&self) -> MutexGuard<'_, SendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock and wakes the writer if it is parked waiting for work.
    fn unlock_and_wake_writer(&self, mut state: MutexGuard<'_, SendState>) {
        let wake = std::mem::take(&mut state.writer_parked);
        drop(state);
        if wake {
            self.writer_wake.notify_one();
        }
    }

    /// Queues frames of one kind in order under as few locks as possible, waiting whenever
    /// the buffer is over its limit. Sizes were checked by the caller.
    async fn push(&self, kind: FrameKind, frames: &[Bytes]) -> Result<()> {
        let mut next = 0;
        while next < frames.len() {
            // The lock is held only inside this block, never across an await.
            let wait = {
                let mut state = self.lock();
                if state.closed {
                    return Err(Error::ConnectionClosed);
                }
                let queued_before = state.queued_bytes;
                while let Some(payload) = frames.get(next) {
                    let frame_len = wire::FRAME_HEADER_LEN + payload.len();
                    if state.queued_bytes > 0 && state.queued_bytes + frame_len > self.limit {
                        break;
                    }
                    Self::encode(&mut state, kind, payload)?;
                    state.queued_bytes += frame_len;
                    next += 1;
                }
                let wait = (next < frames.len()).then(|| {
                    let mut space = Box::pin(self.space.notified());
                    space.as_mut().enable();
                    space
                });
                if state.queued_bytes != queued_before {
                    self.unlock_and_wake_writer(state);
                }
                wait
            };
            if let Some(space) = wait {
                space.await;
            }
        }
        Ok(())
    }

    /// Queues a frame only if it fits right now (used for automatic replies, which must
    /// never make the reader wait).
    fn try_push(&self, kind: FrameKind, payload: Bytes) -> bool {
        matches!(self.try_push_or_return(kind, payload), Ok(None))
    }

    /// Queues a frame if it can be queued right now: `Ok(None)` when queued,
    /// `Ok(Some(payload))` (handed back) when the buffer is full or the queue is closed.
    fn try_push_or_return(&self, kind: FrameKind, payload: Bytes) -> Result<Option<Bytes>> {
        let frame_len = wire::FRAME_HEADER_LEN + payload.len();
        let mut state = self.lock();
        if state.closed || (state.queued_bytes > 0 && state.queued_bytes + frame_len > self.limit) {
            return Ok(Some(payload));
        }
        Self::encode(&mut state, kind, &payload)?;
        state.queued_bytes += frame_len;
        self.unlock_and_wake_writer(state);
        Ok(None)
    }

    fn encode(state: &mut SendState, kind: FrameKind, payload: &Bytes) -> Result<()> {
        wire::put_frame_header(&mut state.tail, kind, payload.len())?;
        if payload.len() >= DIRECT_WRITE_BYTES {
            let head = state.tail.split().freeze();
            state.chunks.push_back(head);
            state.chunks.push_back(payload.clone());
        } else {
            state.tail.put_slice(payload);
        }
        Ok(())
    }

    /// Stops accepting frames and asks the writer to end our direction after what is queued.
    fn request_finish(&self, ack: Option<oneshot::Sender<()>>) {
        let mut state = self.lock();
        state.closed = true;
        state.finish_requested = true;
        if let Some(ack) = ack {
            if !state.writer_done {
                state.finish_waiters.push(ack);
            }
            // else: dropping the ack answers the caller at once.
        }
        self.unlock_and_wake_writer(state);
        self.finishing.cancel();
        self.space.notify_waiters();
    }

    /// Refuses further frames at once (abort, failure).
    fn close_now(&self) {
        self.lock().closed = true;
        self.space.notify_waiters();
    }
}

struct Shared {
    info: ConnectionInfo,
    queue: SendQueue,
    /// Live `MessageSender` handles; when the last one goes, our direction ends gracefully.
    senders: AtomicUsize,
    /// Cancelled when the connection is over: both directions finished, or aborted. Always
    /// set through [`Shared::mark_closed`].
    closed: CancellationToken,
    /// Mirrors `closed` for the per-message checks: reading an atomic instead of taking the
    /// token's lock on every receive.
    closed_flag: AtomicBool,
    /// Cancelled when the peer ended its stream cleanly.
    peer_finished: CancellationToken,
    /// Cancelled when we ended our stream cleanly.
    we_finished: CancellationToken,
    /// How long a graceful close may take before the connection is aborted.
    close_timeout: std::time::Duration,
    _keep_alive: Option<Box<dyn Any + Send + Sync>>,
}

impl Shared {
    /// Marks the connection over (idempotent).
    fn mark_closed(&self) {
        self.closed_flag.store(true, Ordering::Release);
        self.closed.cancel();
    }

    fn is_closed(&self) -> bool {
        self.closed_flag.load(Ordering::Acquire)
    }

    fn mark_peer_finished(&self) {
        self.peer_finished.cancel();
        if self.we_finished.is_cancelled() {
            self.mark_closed();
        } else {
            // Deliver what is queued, then end our side too.
            self.queue.request_finish(None);
        }
    }

    fn mark_we_finished(&self) {
        self.we_finished.cancel();
        if self.peer_finished.is_cancelled() {
            self.mark_closed();
        }
    }

    fn abort(&self) {
        self.queue.close_now();
        self.mark_closed();
    }
}

/// An authenticated connection to one peer that sends and receives whole messages.
///
/// Messages from one sender arrive whole, exactly once and in the order sent. `send()`
/// returns once the message is queued (it waits while the send buffer is full); queued
/// messages are written in batches, so many small messages cost few system calls while a
/// lone message is written at once. Use [`Connection::split`] to send and receive from
/// different tasks.
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
            queue: SendQueue {
                state: Mutex::new(SendState::default()),
                writer_wake: Notify::new(),
                space: Notify::new(),
                finishing: CancellationToken::new(),
                limit: config.send_buffer_bytes.max(1),
                max_message_size: config.max_message_size,
            },
            senders: AtomicUsize::new(1),
            closed: CancellationToken::new(),
            closed_flag: AtomicBool::new(false),
            peer_finished: CancellationToken::new(),
            we_finished: CancellationToken::new(),
            close_timeout: config.handshake_timeout,
            _keep_alive: stream.keep_alive,
        });
        tokio::spawn(run_writer(stream.writer, shared.clone()));
        let receiver = MessageReceiver {
            frames: Some(FrameReader::new(stream.reader, config.max_message_size)),
            pending_error: None,
            shared: shared.clone(),
        };
        Connection {
            sender: MessageSender { shared },
            receiver,
        }
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

    /// Queues several messages at once. See [`MessageSender::send_many`].
    pub async fn send_many(&self, messages: &[Bytes]) -> Result<()> {
        self.sender.send_many(messages).await
    }

    /// Receives every message that already arrived (at least one). See
    /// [`MessageReceiver::recv_many`].
    pub async fn recv_many(&mut self, out: &mut Vec<Bytes>, max: usize) -> Result<usize> {
        self.receiver.recv_many(out, max).await
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

/// The sending half of a [`Connection`]. Cheap to clone. When the last sender is dropped,
/// our direction of the connection ends gracefully after everything queued is written.
pub struct MessageSender {
    shared: Arc<Shared>,
}

impl Clone for MessageSender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        MessageSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for MessageSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.queue.request_finish(None);
        }
    }
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

    /// Queues several application messages, in order, taking the send buffer's lock once
    /// per burst instead of once per message: the fastest way to send many small messages.
    ///
    /// Every size is checked first: if any message exceeds the maximum, nothing is queued
    /// and [`Error::MessageTooLarge`] is returned. Otherwise waits while the buffer is full,
    /// like [`MessageSender::send`]; on [`Error::ConnectionClosed`] an unknown prefix of the
    /// messages may have been queued.
    pub async fn send_many(&self, messages: &[Bytes]) -> Result<()> {
        let max = self.shared.queue.max_message_size;
        if let Some(big) = messages.iter().find(|m| m.len() > max) {
            return Err(Error::MessageTooLarge {
                size: big.len() as u64,
                max,
            });
        }
        self.shared.queue.push(FrameKind::Message, messages).await
    }

    /// Queues a frame of any kind (control messages are sent this way).
    pub async fn send_frame(&self, kind: FrameKind, payload: Bytes) -> Result<()> {
        let max = self.shared.queue.max_message_size;
        if payload.len() > max {
            return Err(Error::MessageTooLarge {
                size: payload.len() as u64,
                max,
            });
        }
        self.shared
            .queue
            .push(kind, std::slice::from_ref(&payload))
            .await
    }

    /// Queues an application message only if that is possible right now, without waiting:
    /// `Ok(None)` when queued, `Ok(Some(message))` (handed back, so the caller can wait with
    /// [`MessageSender::send`], which reports why) when the buffer is full or the connection
    /// is closed. Fails only with [`Error::MessageTooLarge`].
    pub fn try_send(&self, message: Bytes) -> Result<Option<Bytes>> {
        let max = self.shared.queue.max_message_size;
        if message.len() > max {
            return Err(Error::MessageTooLarge {
                size: message.len() as u64,
                max,
            });
        }
        self.shared
            .queue
            .try_push_or_return(FrameKind::Message, message)
    }

    /// Queues a frame only if the send buffer has room right now; returns whether it did.
    /// For replies that must never make the caller wait (e.g. answering pings).
    pub fn try_send_frame(&self, kind: FrameKind, payload: Bytes) -> bool {
        payload.len() <= self.shared.queue.max_message_size
            && self.shared.queue.try_push(kind, payload)
    }

    /// Writes everything queued before this call and ends our sending direction gracefully
    /// (TLS `close_notify`, QUIC `FIN`), while the receiver keeps delivering what the peer
    /// still sends until it ends its side too. Later sends fail with
    /// [`Error::ConnectionClosed`]. If the queue cannot be written within the handshake
    /// timeout (the peer stopped reading), the connection is aborted.
    pub async fn finish(&self) {
        let (ack_tx, ack_rx) = oneshot::channel();
        self.shared.queue.request_finish(Some(ack_tx));
        if tokio::time::timeout(self.shared.close_timeout, ack_rx)
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
        self.shared.mark_closed();
    }

    /// Closes the connection at once, dropping whatever is still queued.
    pub fn abort(&self) {
        self.shared.abort();
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
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
    /// `None` once the connection ended, so the read half is released at once.
    frames: Option<FrameReader>,
    /// An error met while draining (`recv_many`), reported by the next call.
    pending_error: Option<Box<Error>>,
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
                    self.answer_ping(frame.payload);
                }
                other => {
                    tracing::trace!(peer = %self.shared.info.peer_id, kind = ?other, "skipping control frame");
                }
            }
        }
    }

    /// Waits for at least one application message, then appends to `out` every further
    /// message that has already arrived, up to `max` in all; returns how many were added.
    /// The fastest way to receive many small messages. Errors as [`MessageReceiver::recv`];
    /// messages appended before an error are kept in `out`.
    pub async fn recv_many(&mut self, out: &mut Vec<Bytes>, max: usize) -> Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        out.push(self.recv().await?);
        let mut added = 1;
        while added < max {
            match self.try_recv_frame() {
                Ok(Some(frame)) => match frame.kind {
                    FrameKind::Message => {
                        out.push(frame.payload);
                        added += 1;
                    }
                    FrameKind::Ping => self.answer_ping(frame.payload),
                    _ => {}
                },
                Ok(None) => break,
                Err(e) => {
                    // What arrived before the error is returned now, the error next time.
                    self.pending_error = Some(Box::new(e));
                    break;
                }
            }
        }
        Ok(added)
    }

    /// Answers a ping with a pong carrying the same payload, unless the send buffer is full
    /// (a peer pinging faster than it reads gets no answer rather than stalling us).
    pub fn answer_ping(&self, payload: Bytes) {
        let _ = self.shared.queue.try_push(FrameKind::Pong, payload);
    }

    /// Receives the next frame of any kind, for code that handles control messages itself.
    pub async fn recv_frame(&mut self) -> Result<Frame> {
        if let Some(e) = self.pending_error.take() {
            return Err(*e);
        }
        if self.shared.is_closed() {
            // Closed or aborted: nothing more is delivered, not even what is buffered.
            self.fail();
        }
        let Some(frames) = self.frames.as_mut() else {
            return Err(Error::ConnectionClosed);
        };
        // Fast path: a frame already buffered is returned without waiting on anything.
        let next = match frames.decode_buffered() {
            Ok(Some(frame)) => Some(Ok(frame)),
            Err(e) => Some(Err(e)),
            Ok(None) => tokio::select! {
                biased;
                next = std::future::poll_fn(|cx| frames.poll_frame(cx)) => next,
                _ = self.shared.closed.cancelled() => None,
            },
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
            None if self.shared.is_closed() => {
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

    /// A frame that has already arrived, without waiting: `Ok(None)` when none is buffered.
    /// Lets a reader drain a burst of frames in one go. Errors are final, as for
    /// [`MessageReceiver::recv_frame`].
    pub fn try_recv_frame(&mut self) -> Result<Option<Frame>> {
        if let Some(e) = self.pending_error.take() {
            return Err(*e);
        }
        if self.shared.is_closed() {
            self.fail();
        }
        let Some(frames) = self.frames.as_mut() else {
            return Err(Error::ConnectionClosed);
        };
        match frames.decode_buffered() {
            Ok(frame) => Ok(frame),
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    fn fail(&mut self) {
        self.frames = None;
        self.shared.abort();
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

/// Smallest read buffer; idle connections keep no more than this.
const READ_BUFFER_MIN: usize = 8 * 1024;
/// Largest read chunk a busy connection grows to.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// Reads frames from the byte stream into one buffer that frames are split off without
/// copying. The read size adapts: it doubles while reads fill it (a busy connection makes
/// fewer, larger reads) and falls back to the minimum when traffic is light, so thousands
/// of idle connections hold little memory.
struct FrameReader {
    reader: BoxedReader,
    buf: BytesMut,
    decoder: FrameDecoder,
    read_size: usize,
    eof: bool,
}

impl FrameReader {
    fn new(reader: BoxedReader, max_message_size: usize) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_message_size),
            read_size: READ_BUFFER_MIN,
            eof: false,
        }
    }

    /// A frame that is complete in the buffer, if any.
    fn decode_buffered(&mut self) -> Result<Option<Frame>> {
        self.decoder.decode(&mut self.buf)
    }

    /// The next frame; `None` at a clean end of stream.
    fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame>>> {
        use std::task::Poll;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            if self.eof {
                return Poll::Ready(match self.decoder.decode_eof(&mut self.buf) {
                    Ok(Some(frame)) => Some(Ok(frame)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                });
            }
            if self.buf.is_empty() && self.buf.capacity() > 2 * READ_BUFFER_MAX {
                // Drop a large buffer left over from a big message.
                self.buf = BytesMut::new();
            }
            self.buf.reserve(self.read_size);
            let room = self.buf.capacity() - self.buf.len();
            let n = match tokio_util::io::poll_read_buf(
                std::pin::Pin::new(&mut self.reader),
                cx,
                &mut self.buf,
            ) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            };
            if n == 0 {
                self.eof = true;
            } else if n >= room {
                self.read_size = (self.read_size * 2).min(READ_BUFFER_MAX);
            } else if n < READ_BUFFER_MIN / 2 {
                self.read_size = READ_BUFFER_MIN;
            }
        }
    }
}

enum WriterOutcome {
    /// Our direction ended gracefully (asked to, every sender gone, or the peer finished).
    Finished,
    /// The connection was aborted.
    Aborted,
    /// Writing failed.
    Failed(std::io::Error),
}

async fn run_writer(mut writer: BoxedWriter, shared: Arc<Shared>) {
    let peer = shared.info.peer_id;
    let outcome = tokio::select! {
        biased;
        _ = shared.closed.cancelled() => WriterOutcome::Aborted,
        _ = async {
            shared.queue.finishing.cancelled().await;
            tokio::time::sleep(shared.close_timeout).await;
        } => {
            tracing::debug!(%peer, "queued data not written within the close timeout; aborting");
            shared.mark_closed();
            WriterOutcome::Aborted
        }
        result = write_loop(&mut writer, &shared.queue) => match result {
            Ok(()) => WriterOutcome::Finished,
            Err(e) => WriterOutcome::Failed(e),
        },
    };
    shared.queue.close_now();
    match outcome {
        WriterOutcome::Finished => {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, writer.shutdown()).await;
            shared.mark_we_finished();
        }
        WriterOutcome::Aborted => {
            // Drop the write half without a graceful end: the peer sees an error (TLS
            // without close_notify, a QUIC stream reset), not a clean end it would drain.
            drop(writer);
        }
        WriterOutcome::Failed(e) => {
            tracing::debug!(%peer, error = %e, "connection failed while sending");
            shared.mark_closed();
        }
    }
    // Answer `finish()` callers (dropping the acks answers them too on abort).
    let waiters = {
        let mut state = shared.queue.lock();
        state.writer_done = true;
        std::mem::take(&mut state.finish_waiters)
    };
    for ack in waiters {
        let _ = ack.send(());
    }
}

/// Writes queued frames until our direction should end (a finish was requested and
/// everything queued is written). Fails when writing fails.
async fn write_loop(writer: &mut BoxedWriter, queue: &SendQueue) -> std::io::Result<()> {
    let mut spare = BytesMut::new();
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    loop {
        let (tail, finish) = {
            let mut state = queue.lock();
            if state.queued_bytes == 0 {
                if state.finish_requested {
                    (None, true)
                } else {
                    state.writer_parked = true;
                    (None, false)
                }
            } else {
                std::mem::swap(&mut chunks, &mut state.chunks);
                let tail = std::mem::replace(&mut state.tail, std::mem::take(&mut spare));
                state.queued_bytes = 0;
                (Some(tail), false)
            }
        };
        let Some(mut tail) = tail else {
            if finish {
                writer.flush().await?;
                return Ok(());
            }
            queue.writer_wake.notified().await;
            continue;
        };
        // Room again for senders waiting on a full buffer.
        queue.space.notify_waiters();
        for chunk in chunks.drain(..) {
            writer.write_all(&chunk).await?;
        }
        if !tail.is_empty() {
            writer.write_all(&tail).await?;
        }
        writer.flush().await?;
        if tail.capacity() <= SPARE_BUFFER_LIMIT {
            tail.clear();
            spare = tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            peer_id: PeerId::from_bytes([7; 32]),
            local_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 2)),
            protocol: Protocol::Tcp,
            direction: Direction::Outbound,
        }
    }

    /// A connection over an in-memory pipe of `pipe_bytes`; the other end is raw.
    fn connection(config: &ConnectionConfig, pipe_bytes: usize) -> (Connection, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(pipe_bytes);
        let (reader, writer) = tokio::io::split(ours);
        let stream = SecureStream {
            info: info(),
            reader: Box::new(reader),
            writer: Box::new(writer),
            keep_alive: None,
        };
        (Connection::new(stream, config), theirs)
    }

    fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        wire::put_frame_header(&mut buf, kind, payload.len()).expect("header");
        buf.extend_from_slice(payload);
        buf.to_vec()
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_cannot_pin_a_finishing_connection() {
        let timeout = Duration::from_secs(3);
        let config = ConnectionConfig::default()
            .with_handshake_timeout(timeout)
            .with_send_buffer_bytes(8 << 20);
        let (conn, mut peer) = connection(&config, 1024);
        let (sender, mut receiver) = conn.split();
        // Far more than the pipe holds; the peer never reads it.
        for _ in 0..4 {
            sender
                .send(Bytes::from(vec![1u8; 1 << 20]))
                .await
                .expect("queued");
        }
        // The peer ends its direction: we must drain and end ours, but only for so long.
        peer.shutdown().await.expect("peer finishes");
        drop(sender);
        let started = tokio::time::Instant::now();
        let err = receiver.recv().await.expect_err("peer finished");
        assert!(matches!(err, Error::ConnectionClosed));
        // The writer gives up after the close timeout (time is paused, so this is exact).
        let closed = receiver.shared.closed.clone();
        tokio::time::timeout(timeout * 2, closed.cancelled())
            .await
            .expect("the writer must give up within its close timeout");
        assert!(started.elapsed() >= timeout, "aborted too early");
    }

    #[tokio::test]
    async fn nothing_is_delivered_after_abort_not_even_buffered_frames() {
        let (conn, mut peer) = connection(&ConnectionConfig::default(), 64 * 1024);
        let mut burst = Vec::new();
        for i in 0..10u8 {
            burst.extend(frame(FrameKind::Message, &[i; 10]));
        }
        peer.write_all(&burst).await.expect("write");
        let (_sender, mut receiver) = conn.split();
        assert_eq!(&receiver.recv().await.expect("first")[..], &[0u8; 10]);
        receiver.shared.abort();
        let err = receiver.recv().await.expect_err("aborted");
        assert!(matches!(err, Error::ConnectionClosed), "{err:?}");
        assert!(matches!(
            receiver.try_recv_frame(),
            Err(Error::ConnectionClosed)
        ));
    }

    #[tokio::test]
    async fn recv_many_reports_an_error_after_what_arrived_before_it() {
        let config = ConnectionConfig::default().with_max_message_size(100);
        let (conn, mut peer) = connection(&config, 64 * 1024);
        let mut burst = frame(FrameKind::Message, b"one");
        burst.extend(frame(FrameKind::Message, b"two"));
        burst.extend_from_slice(&[0, 0, 1, 0, 0]); // announces 256 bytes: over the maximum
        peer.write_all(&burst).await.expect("write");
        let (_sender, mut receiver) = conn.split();
        let mut got = Vec::new();
        assert_eq!(
            receiver
                .recv_many(&mut got, 10)
                .await
                .expect("two messages"),
            2
        );
        assert_eq!(
            got,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
        let err = receiver
            .recv_many(&mut got, 10)
            .await
            .expect_err("then the error");
        assert!(
            matches!(
                err,
                Error::MessageTooLarge {
                    size: 256,
                    max: 100
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn small_messages_are_coalesced_and_arrive_in_order() {
        let (conn, mut peer) = connection(&ConnectionConfig::default(), 1 << 20);
        for i in 0..100u8 {
            conn.send(Bytes::from(vec![i; 3])).await.expect("send");
        }
        conn.send_many(&[Bytes::from_static(b"a"), Bytes::from(vec![9u8; 20_000])])
            .await
            .expect("send_many");
        conn.close().await;
        let mut wire_bytes = Vec::new();
        peer.read_to_end(&mut wire_bytes).await.expect("read");
        let mut expected = Vec::new();
        for i in 0..100u8 {
            expected.extend(frame(FrameKind::Message, &[i; 3]));
        }
        expected.extend(frame(FrameKind::Message, b"a"));
        expected.extend(frame(FrameKind::Message, &[9u8; 20_000]));
        assert_eq!(wire_bytes, expected);
    }
}
