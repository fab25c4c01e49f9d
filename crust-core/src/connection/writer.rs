//! The writer task: writes what the send queue holds to the transport's write half.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::send_queue::SendQueue;
use super::{BoxedWriter, Shared};

/// Time a graceful end of stream may take once everything queued is written.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// A coalescing buffer larger than this is not kept for reuse after a burst.
const SPARE_BUFFER_LIMIT: usize = 256 * 1024;

pub(super) enum WriterOutcome {
    /// Our direction ended gracefully (asked to, every sender gone, or the peer finished).
    Finished,
    /// The connection was aborted.
    Aborted,
    /// Writing failed.
    Failed(std::io::Error),
}

pub(super) async fn run_writer(mut writer: BoxedWriter, shared: Arc<Shared>) {
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
pub(super) async fn write_loop(writer: &mut BoxedWriter, queue: &SendQueue) -> std::io::Result<()> {
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
