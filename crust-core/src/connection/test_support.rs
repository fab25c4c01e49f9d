//! Helpers for the connection's unit tests: a connection over an in-memory pipe whose
//! other end the test drives by hand.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio_util::codec::Decoder;

use super::{Connection, ConnectionConfig, ConnectionInfo, Direction, SecureStream};
use crate::wire::{self, Frame, FrameKind};
use crate::{PeerId, Protocol};

pub(super) fn info() -> ConnectionInfo {
    ConnectionInfo {
        peer_id: PeerId::from_bytes([7; 32]),
        local_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        remote_addr: SocketAddr::from(([127, 0, 0, 1], 2)),
        protocol: Protocol::Tcp,
        direction: Direction::Outbound,
        path: crate::ConnectionPath::Direct,
    }
}

/// A connection over an in-memory pipe of `pipe_bytes`; the other end is raw.
pub(super) fn connection(
    config: &ConnectionConfig,
    pipe_bytes: usize,
) -> (Connection, DuplexStream) {
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

pub(super) fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    wire::put_frame_header(&mut buf, kind, payload.len()).expect("header");
    buf.extend_from_slice(payload);
    buf.to_vec()
}

/// The single frames in raw wire bytes (chunks left as they are).
pub(super) fn frames_of(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = wire::FrameDecoder::new(usize::MAX);
    let mut out = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).expect("valid frames") {
        out.push(frame);
    }
    assert!(buf.is_empty(), "trailing bytes");
    out
}

/// Reads one frame from the raw end of the pipe.
pub(super) async fn read_frame(peer: &mut DuplexStream) -> Frame {
    let mut header = [0u8; wire::FRAME_HEADER_LEN];
    peer.read_exact(&mut header).await.expect("header");
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let mut payload = vec![0u8; len as usize];
    peer.read_exact(&mut payload).await.expect("payload");
    Frame {
        kind: FrameKind::from_byte(header[4]),
        payload: payload.into(),
    }
}

/// Polls `fut` once: whether it is still pending.
pub(super) async fn still_pending<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    tokio::select! {
        biased;
        _ = fut => false,
        _ = std::future::ready(()) => true,
    }
}
