//! The writer task: writes what the send queue holds to the transport's write half.

use std::io;
use std::sync::Arc;

use bytes::Buf;
use tokio::io::AsyncWriteExt;

use super::send_queue::{Lane, Part, SendQueue, Work};
use super::{BoxedWriter, Shared};
use crate::wire::{self, Frame, FrameKind};

/// Time a graceful end of stream may take once everything queued is written.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

enum WriterOutcome {
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
    for ack in shared.queue.writer_done() {
        let _ = ack.send(());
    }
}

/// Writes queued frames until our direction should end (a finish was requested and
/// everything queued is written). Fails when writing fails.
///
/// Control frames go first: the control lane is written whenever it holds frames before
/// the data lane is taken, and again between any two data frames (whole small frames, or
/// the chunks of a large message) while the data lane is written.
async fn write_loop(writer: &mut BoxedWriter, queue: &SendQueue) -> io::Result<()> {
    // The lanes being written; swapped with the queue's, so their buffers are reused.
    let mut data = Lane::default();
    let mut control = Lane::default();
    loop {
        match queue.next_work(&mut data, &mut control) {
            Work::Control => {
                write_encoded(writer, &mut control).await?;
                control.recycle();
            }
            Work::Data => {
                write_data(writer, queue, &mut data, &mut control).await?;
                data.recycle();
            }
            Work::Park => {
                queue.writer_wake.notified().await;
                continue;
            }
            Work::Finish => {
                writer.flush().await?;
                return Ok(());
            }
        }
        writer.flush().await?;
    }
}

/// Writes a lane that holds only encoded bytes (the control lane).
async fn write_encoded(writer: &mut BoxedWriter, lane: &mut Lane) -> io::Result<()> {
    while let Some(part) = lane.parts.pop_front() {
        match part {
            Part::Encoded(bytes) => writer.write_all(&bytes).await?,
            // Never queued in the control lane; written correctly all the same.
            Part::Message(payload) => {
                let kind = FrameKind::Message;
                write_frame(writer, &Frame { kind, payload }).await?;
            }
        }
    }
    if !lane.tail.is_empty() {
        writer.write_all(&lane.tail).await?;
    }
    Ok(())
}

/// Writes the data lane, letting queued control frames pass at every frame boundary.
async fn write_data(
    writer: &mut BoxedWriter,
    queue: &SendQueue,
    lane: &mut Lane,
    control: &mut Lane,
) -> io::Result<()> {
    while let Some(part) = lane.parts.pop_front() {
        match part {
            Part::Encoded(frames) => {
                let_control_pass(writer, queue, control).await?;
                writer.write_all(&frames).await?;
            }
            Part::Message(payload) => {
                for frame in wire::message_frames(payload, queue.chunk_size) {
                    let_control_pass(writer, queue, control).await?;
                    write_frame(writer, &frame).await?;
                }
            }
        }
    }
    if !lane.tail.is_empty() {
        let_control_pass(writer, queue, control).await?;
        writer.write_all(&lane.tail).await?;
    }
    Ok(())
}

/// Writes the control frames queued so far, if any (between two data frames).
async fn let_control_pass(
    writer: &mut BoxedWriter,
    queue: &SendQueue,
    control: &mut Lane,
) -> io::Result<()> {
    if queue.control_pending() && queue.take_control(control) {
        write_encoded(writer, control).await?;
        control.recycle();
    }
    Ok(())
}

/// Writes one frame whose payload is its own buffer: header and payload in one vectored
/// write where the writer supports it (one TLS record stream instead of a separate record
/// for the 5-byte header), without copying the payload.
async fn write_frame(writer: &mut BoxedWriter, frame: &Frame) -> io::Result<()> {
    let header = wire::frame_header(frame.kind, frame.payload.len()).map_err(io::Error::other)?;
    let mut bytes = (&header[..]).chain(&frame.payload[..]);
    writer.write_all_buf(&mut bytes).await
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{connection, frames_of, read_frame, still_pending};
    use crate::ConnectionConfig;
    use crate::wire::{Frame, FrameKind};
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_control_frame_passes_a_large_message_at_a_chunk_boundary() {
        let config = ConnectionConfig::default().with_message_chunk_bytes(1024);
        // The pipe holds less than one chunk, so the writer stalls inside the message
        // until the peer reads, which it does only after the control frames are queued.
        let (conn, mut peer) = connection(&config, 1000);
        let big: Bytes = (0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>().into();
        conn.send(big.clone()).await.expect("queued");
        let sender = conn.sender();
        sender
            .send_control(FrameKind::Ping, Bytes::from_static(b"now"))
            .await
            .expect("queued on the control lane");
        assert!(sender.try_send_control(FrameKind::Unknown(99), Bytes::from_static(b"plug-in")));
        // Exactly the chunk size: one frame.
        conn.send(Bytes::from(vec![5u8; 1024]))
            .await
            .expect("queued");
        let reader = tokio::spawn(async move {
            let mut bytes = Vec::new();
            peer.read_to_end(&mut bytes).await.expect("read");
            bytes
        });
        conn.close().await;
        let frames = frames_of(&reader.await.expect("reader"));
        let position = |kind| {
            frames
                .iter()
                .position(|f| f.kind == kind)
                .expect("frame present")
        };
        let end_of_big = position(FrameKind::Message);
        assert!(
            position(FrameKind::Ping) < end_of_big,
            "ping waited for the message"
        );
        assert!(position(FrameKind::Unknown(99)) < end_of_big);
        let parts: Vec<&Frame> = frames[..=end_of_big]
            .iter()
            .filter(|f| !f.kind.is_control())
            .collect();
        assert_eq!(parts.len(), 10, "9 chunks of 1024 bytes and the last 784");
        for part in &parts[..9] {
            assert_eq!(
                (part.kind, part.payload.len()),
                (FrameKind::MessageChunk, 1024)
            );
        }
        let joined: Vec<u8> = parts.iter().flat_map(|f| f.payload.to_vec()).collect();
        assert_eq!(joined, big);
        let last = frames.last().expect("frames");
        assert_eq!((last.kind, last.payload.len()), (FrameKind::Message, 1024));
        assert_eq!(frames.len(), 13);
    }

    #[tokio::test]
    async fn control_frames_wait_only_for_their_own_lane() {
        let config = ConnectionConfig::default()
            .with_send_buffer_bytes(2048)
            .with_control_buffer_bytes(100);
        let (conn, mut peer) = connection(&config, 64);
        let sender = conn.sender();
        let a = Bytes::from(vec![1u8; 3000]);
        let b = Bytes::from(vec![2u8; 3000]);
        conn.send(a.clone()).await.expect("a");
        // Accepted once the writer took `a` (and stalled writing it into the small pipe).
        conn.send(b.clone()).await.expect("b");
        assert!(
            sender
                .try_send(Bytes::from_static(b"c"))
                .expect("size ok")
                .is_some(),
            "data lane is full"
        );
        let ping = Bytes::from(vec![3u8; 50]);
        let mut first = Box::pin(sender.send_control(FrameKind::Ping, ping.clone()));
        assert!(
            !still_pending(&mut first).await,
            "a full data lane must not hold up control"
        );
        assert!(
            !sender.try_send_control(FrameKind::Pong, Bytes::from(vec![4u8; 50])),
            "the control lane has its own limit"
        );
        let mut second = Box::pin(sender.send_control(FrameKind::Pong, Bytes::from(vec![4u8; 50])));
        assert!(
            still_pending(&mut second).await,
            "waits for room in the control lane"
        );
        // The peer reads: `a` (being written), then the ping ahead of `b`.
        assert_eq!(read_frame(&mut peer).await.payload, a);
        let next = read_frame(&mut peer).await;
        assert_eq!((next.kind, next.payload), (FrameKind::Ping, ping));
        second.await.expect("room again");
        let mut rest = [read_frame(&mut peer).await, read_frame(&mut peer).await];
        rest.sort_by_key(|f| f.kind.to_byte());
        assert_eq!((rest[0].kind, &rest[0].payload), (FrameKind::Message, &b));
        assert_eq!(rest[1].kind, FrameKind::Pong);
    }
}
