//! An authenticated, message-oriented connection, built by `crust-core` on top of the byte
//! stream a transport authenticated.
//!
//! Transports only establish and authenticate a byte stream (TLS over TCP, a QUIC stream);
//! framing, size limits, batching of small messages, the control lane, chunking and close
//! semantics live here once, so every transport behaves the same.
//!
//! # Layout
//!
//! - `mod.rs`: [`Connection`] and the state both halves share (close bookkeeping);
//! - `config.rs`: [`ConnectionConfig`], [`ConnectionInfo`], [`SecureStream`];
//! - `sender.rs` / `receiver.rs`: [`MessageSender`] and [`MessageReceiver`];
//! - `send_queue.rs`: the two bounded lanes (messages, control frames) between the senders
//!   and the writer task;
//! - `writer.rs`: the writer task (batching, chunking, letting control frames pass);
//! - `reader.rs`: `FrameReader`, which reads into one adaptive buffer and decodes with
//!   [`wire::MessageDecoder`](crate::wire::MessageDecoder) (reassembly of chunks).
//!
//! # Control frames never wait behind a large message
//!
//! Control frames (ping, pong, observed address, plug-ins' own kinds) have a queue of their
//! own, bounded separately ([`ConnectionConfig::control_buffer_bytes`]), which the writer
//! drains before the message queue and again at every frame boundary while it writes
//! messages. For there to be frame boundaries inside a large message, a message larger than
//! [`ConnectionConfig::message_chunk_bytes`] (64 KiB) is written as `MessageChunk` frames
//! ending with a `Message` frame; the receiver reassembles it within the same
//! `max_message_size`, handing out control frames that arrive in between at once. Messages
//! up to the chunk size stay exactly one `Message` frame, so the small-message path is
//! unchanged. A control frame therefore waits for at most about one chunk in our queue,
//! plus whatever the transport has already accepted (the kernel's socket buffer on TCP,
//! quinn's stream buffer on QUIC).
//!
//! Why one mechanism here rather than a second QUIC stream for control frames on rUDP: TCP
//! has a single byte stream, so chunking at this layer is needed anyway, and doing it once
//! in the shared connection keeps the behaviour (ordering, limits, close and drain
//! semantics, the conformance cases) identical on both transports and keeps the
//! [`Transport`](crate::Transport) contract at one authenticated stream. A second,
//! higher-priority QUIC stream could additionally skip data already inside quinn's stream
//! buffer, but it would bring cross-stream ordering and a second FIN into close semantics
//! for an rUDP-only gain; it can be added later under this same API.

mod config;
mod reader;
mod receiver;
mod send_queue;
mod sender;
mod writer;

#[cfg(test)]
mod test_support;

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::{PeerId, Result};

pub use config::{
    BoxedReader, BoxedWriter, ConnectionConfig, ConnectionInfo, Direction, SecureStream,
};
pub use receiver::MessageReceiver;
pub use sender::MessageSender;

use reader::FrameReader;
use send_queue::SendQueue;
use writer::run_writer;

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
            queue: SendQueue::new(config),
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

#[cfg(test)]
mod tests {
    use super::test_support::{connection, frame};
    use super::*;
    use crate::Error;
    use crate::wire::FrameKind;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
