//! One end of a circuit as a byte stream (`AsyncRead + AsyncWrite`), on which the two ends
//! run TLS and Crust's framing as over TCP: the relay sees only ciphertext.
//!
//! Flow control: an end may send [`WINDOW`] bytes the other end has not credited back;
//! a reader credits what it consumed once it is a quarter of the window, so a relay and a
//! receiving end never hold more than a window per direction.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::circuits::WINDOW;
use super::messages::{CircuitKey, CloseReason, MAX_DATA, RelayMessage};

/// What arrives for a circuit end: bytes, or the end of the peer's direction.
#[derive(Debug)]
pub(crate) enum Incoming {
    Data(Bytes),
    /// The peer finished sending (clean end of stream).
    Finished,
    /// The circuit ended abnormally.
    Closed(CloseReason),
}

#[derive(Debug)]
struct SendState {
    /// Bytes we may still send.
    credit: u64,
    waker: Option<Waker>,
    /// The circuit ended: writes fail.
    closed: Option<CloseReason>,
}

/// The state of a circuit end shared between its stream and the node's frame handler.
#[derive(Debug)]
pub(crate) struct EndShared {
    send: Mutex<SendState>,
    /// Bytes that arrived and were not yet credited back (for the window check).
    uncredited: Mutex<u64>,
}

impl EndShared {
    fn send(&self) -> MutexGuard<'_, SendState> {
        self.send.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn uncredited(&self) -> MutexGuard<'_, u64> {
        self.uncredited.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer credited `bytes` back.
    pub(crate) fn credit(&self, bytes: u32) {
        let mut send = self.send();
        send.credit = send.credit.saturating_add(u64::from(bytes)).min(WINDOW);
        if let Some(waker) = send.waker.take() {
            waker.wake();
        }
    }

    /// `len` bytes arrived; false when that is beyond the window (the peer broke the
    /// protocol).
    pub(crate) fn arrived(&self, len: usize) -> bool {
        let mut uncredited = self.uncredited();
        *uncredited = uncredited.saturating_add(len as u64);
        *uncredited <= WINDOW
    }

    /// The circuit ended: wake a waiting writer, which then fails.
    pub(crate) fn closed(&self, reason: CloseReason) {
        let mut send = self.send();
        send.closed.get_or_insert(reason);
        if let Some(waker) = send.waker.take() {
            waker.wake();
        }
    }
}

/// The handler's side of a circuit end: where arriving bytes go.
#[derive(Debug)]
pub(crate) struct EndHandle {
    pub(crate) incoming: mpsc::UnboundedSender<Incoming>,
    pub(crate) shared: Arc<EndShared>,
}

/// One end of a circuit, as a byte stream. Frames to send go to `out`, which a task writes
/// to the link in order.
pub(crate) struct RelayStream {
    key: CircuitKey,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    current: Bytes,
    /// Consumed and not yet credited back.
    consumed: u64,
    out: mpsc::UnboundedSender<Bytes>,
    shared: Arc<EndShared>,
    peer_finished: bool,
    we_finished: bool,
    failed: Option<CloseReason>,
    /// Run on drop: the node forgets the circuit end.
    forget: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for RelayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStream")
            .field("key", &self.key)
            .field("peer_finished", &self.peer_finished)
            .field("we_finished", &self.we_finished)
            .finish_non_exhaustive()
    }
}

/// A new circuit end named `key` on its link: the stream, and the handle for the frame
/// handler. The stream sends its frames to `out` and calls `forget` when dropped.
pub(crate) fn circuit_end(
    key: CircuitKey,
    out: mpsc::UnboundedSender<Bytes>,
    forget: Box<dyn FnOnce() + Send + Sync>,
) -> (RelayStream, EndHandle) {
    let (incoming_tx, incoming) = mpsc::unbounded_channel();
    let shared = Arc::new(EndShared {
        send: Mutex::new(SendState {
            credit: WINDOW,
            waker: None,
            closed: None,
        }),
        uncredited: Mutex::new(0),
    });
    let stream = RelayStream {
        key,
        incoming,
        current: Bytes::new(),
        consumed: 0,
        out,
        shared: shared.clone(),
        peer_finished: false,
        we_finished: false,
        failed: None,
        forget: Some(forget),
    };
    (
        stream,
        EndHandle {
            incoming: incoming_tx,
            shared,
        },
    )
}

fn closed_error(reason: CloseReason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("relay circuit closed ({})", reason.as_str()),
    )
}

impl RelayStream {
    fn send(&self, message: RelayMessage) -> bool {
        self.out.send(message.encode()).is_ok()
    }

    fn sender_opened(&self) -> bool {
        self.key.ours
    }
}

impl AsyncRead for RelayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(reason) = this.failed {
            return Poll::Ready(Err(closed_error(reason)));
        }
        while this.current.is_empty() {
            if this.peer_finished {
                return Poll::Ready(Ok(()));
            }
            match this.incoming.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Incoming::Data(data))) => this.current = data,
                Poll::Ready(Some(Incoming::Finished)) => this.peer_finished = true,
                Poll::Ready(Some(Incoming::Closed(reason))) => {
                    this.failed = Some(reason);
                    return Poll::Ready(Err(closed_error(reason)));
                }
                Poll::Ready(None) => {
                    this.failed = Some(CloseReason::LinkLost);
                    return Poll::Ready(Err(closed_error(CloseReason::LinkLost)));
                }
            }
        }
        let n = this.current.len().min(buf.remaining());
        buf.put_slice(&this.current.split_to(n));
        this.consumed += n as u64;
        if this.consumed >= WINDOW / 4 {
            let bytes = u32::try_from(this.consumed).unwrap_or(u32::MAX);
            {
                let mut uncredited = this.shared.uncredited();
                *uncredited = uncredited.saturating_sub(u64::from(bytes));
            }
            this.consumed -= u64::from(bytes);
            let sender_opened = this.sender_opened();
            this.send(RelayMessage::Credit {
                id: this.key.id,
                sender_opened,
                bytes,
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.we_finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "relay circuit: write after shutdown",
            )));
        }
        let n = {
            let mut send = self.shared.send();
            if let Some(reason) = send.closed {
                return Poll::Ready(Err(closed_error(reason)));
            }
            if send.credit == 0 {
                send.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf
                .len()
                .min(MAX_DATA)
                .min(usize::try_from(send.credit).unwrap_or(usize::MAX));
            send.credit -= n as u64;
            n
        };
        let sent = self.send(RelayMessage::Data {
            id: self.key.id,
            sender_opened: self.sender_opened(),
            data: Bytes::copy_from_slice(&buf[..n]),
        });
        if sent {
            Poll::Ready(Ok(n))
        } else {
            Poll::Ready(Err(closed_error(CloseReason::LinkLost)))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are handed to the link's writer in order as they are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.we_finished {
            self.we_finished = true;
            let sender_opened = self.sender_opened();
            let id = self.key.id;
            self.send(RelayMessage::Close {
                id,
                sender_opened,
                reason: CloseReason::Finished,
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for RelayStream {
    fn drop(&mut self) {
        // Both directions over cleanly: the relay forgot the circuit already. Otherwise
        // tell the relay and the other end that nothing more will be read or written.
        if !(self.we_finished && self.peer_finished) && self.failed.is_none() {
            self.send(RelayMessage::Close {
                id: self.key.id,
                sender_opened: self.sender_opened(),
                reason: CloseReason::Reset,
            });
        }
        if let Some(forget) = self.forget.take() {
            forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Carries frames from one end's `out` to the other end's handle, as a relay would.
    fn pump(
        mut out: mpsc::UnboundedReceiver<Bytes>,
        to: EndHandle,
    ) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut frames = 0;
            while let Some(frame) = out.recv().await {
                frames += 1;
                match RelayMessage::decode(&frame).expect("valid") {
                    RelayMessage::Data { data, .. } => {
                        assert!(to.shared.arrived(data.len()), "within the window");
                        let _ = to.incoming.send(Incoming::Data(data));
                    }
                    RelayMessage::Credit { bytes, .. } => to.shared.credit(bytes),
                    RelayMessage::Close { reason, .. } => {
                        let _ = to.incoming.send(match reason {
                            CloseReason::Finished => Incoming::Finished,
                            other => Incoming::Closed(other),
                        });
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            frames
        })
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_within_the_window_and_end_cleanly() {
        let (a_tx, a_out) = mpsc::unbounded_channel();
        let (b_tx, b_out) = mpsc::unbounded_channel();
        let (mut a, a_handle) =
            circuit_end(CircuitKey { ours: true, id: 1 }, a_tx, Box::new(|| {}));
        let (mut b, b_handle) =
            circuit_end(CircuitKey { ours: false, id: 1 }, b_tx, Box::new(|| {}));
        let a_to_b = pump(a_out, b_handle);
        let b_to_a = pump(b_out, a_handle);
        // Four windows' worth: only possible if credits come back as b reads.
        let data: Vec<u8> = (0..4 * WINDOW as usize).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                a.write_all(&data).await.expect("write");
                a.shutdown().await.expect("shutdown");
                let mut reply = Vec::new();
                a.read_to_end(&mut reply).await.expect("reply");
                reply
            })
        };
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, data);
        b.write_all(b"thanks").await.expect("reply");
        b.shutdown().await.expect("shutdown");
        assert_eq!(writer.await.expect("writer"), b"thanks");
        drop(b);
        assert!(a_to_b.await.expect("pump") > 0);
        assert!(b_to_a.await.expect("pump") > 0);
    }

    #[tokio::test]
    async fn a_closed_circuit_fails_reads_and_writes() {
        let (tx, _out) = mpsc::unbounded_channel();
        let (mut a, a_handle) = circuit_end(CircuitKey { ours: true, id: 1 }, tx, Box::new(|| {}));
        a_handle.shared.closed(CloseReason::ByteLimit);
        let _ = a_handle
            .incoming
            .send(Incoming::Closed(CloseReason::ByteLimit));
        let e = a.write_all(b"x").await.expect_err("closed");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        let mut buf = [0u8; 4];
        let e = a.read(&mut buf).await.expect_err("closed");
        assert!(e.to_string().contains("byte_limit"), "{e}");
    }

    /// A relay that alters one byte of the circuit breaks the TLS session inside it: the
    /// reader gets an error, never the altered data.
    #[tokio::test]
    async fn an_altering_relay_breaks_the_session_and_delivers_nothing_altered() {
        use crust_core::{Identity, tls};
        use std::sync::atomic::{AtomicUsize, Ordering};

        let client_id = Identity::generate().expect("identity");
        let server_id = Identity::generate().expect("identity");
        let provider = tls::default_crypto_provider();
        let (client_config, _) = tls::client_config(
            &client_id,
            provider.clone(),
            Some(server_id.peer_id()),
            &[b"t"],
        )
        .expect("client config");
        let server_config = tls::server_config(&server_id, provider, &[b"t"]).expect("server");
        let (a_tx, mut a_out) = mpsc::unbounded_channel();
        let (b_tx, mut b_out) = mpsc::unbounded_channel();
        let (a, a_handle) = circuit_end(CircuitKey { ours: true, id: 1 }, a_tx, Box::new(|| {}));
        let (b, b_handle) = circuit_end(CircuitKey { ours: false, id: 1 }, b_tx, Box::new(|| {}));
        // A -> B: once the handshake is over, flip a byte of every data message. B -> A
        // passes unchanged.
        let data_seen = Arc::new(AtomicUsize::new(0));
        let seen = data_seen.clone();
        let tamper = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tampering = tamper.clone();
        tokio::spawn(async move {
            while let Some(frame) = a_out.recv().await {
                match RelayMessage::decode(&frame).expect("valid") {
                    RelayMessage::Data { data, .. } => {
                        let mut bytes = data.to_vec();
                        if tampering.load(Ordering::SeqCst) {
                            seen.fetch_add(1, Ordering::SeqCst);
                            let last = bytes.len() - 1;
                            bytes[last] ^= 0x40;
                        }
                        b_handle.shared.arrived(bytes.len());
                        let _ = b_handle.incoming.send(Incoming::Data(Bytes::from(bytes)));
                    }
                    RelayMessage::Credit { bytes, .. } => b_handle.shared.credit(bytes),
                    RelayMessage::Close { .. } => {
                        let _ = b_handle.incoming.send(Incoming::Finished);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        tokio::spawn(pump(b_out_take(&mut b_out), a_handle));
        let (handshake_done, handshake) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
            let mut tls = acceptor
                .accept(b)
                .await
                .expect("handshake passes unaltered");
            tamper.store(true, Ordering::SeqCst);
            let _ = handshake_done.send(());
            let mut got = Vec::new();
            let result = tls.read_to_end(&mut got).await;
            (result, got)
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let mut tls = connector
            .connect(tls::server_name(), a)
            .await
            .expect("client handshake");
        handshake.await.expect("server handshake");
        let _ = tls.write_all(b"pay 100 to alice").await;
        let _ = tls.flush().await;
        let _ = tls.shutdown().await;
        let (result, got) = tokio::time::timeout(std::time::Duration::from_secs(60), server)
            .await
            .expect("the server ends")
            .expect("server task");
        assert!(
            result.is_err(),
            "altered bytes must fail the session: {result:?}"
        );
        assert!(got.is_empty(), "nothing altered delivered: {got:?}");
        assert!(
            data_seen.load(Ordering::SeqCst) >= 1,
            "altered data went through"
        );
    }

    /// Takes the receiver out (the pump owns it).
    fn b_out_take(out: &mut mpsc::UnboundedReceiver<Bytes>) -> mpsc::UnboundedReceiver<Bytes> {
        let (_, empty) = mpsc::unbounded_channel();
        std::mem::replace(out, empty)
    }

    #[test]
    fn data_beyond_the_window_is_refused() {
        let (tx, _out) = mpsc::unbounded_channel();
        let (_a, handle) = circuit_end(CircuitKey { ours: true, id: 1 }, tx, Box::new(|| {}));
        assert!(handle.shared.arrived(WINDOW as usize));
        assert!(!handle.shared.arrived(1));
    }
}
