//! Fuzz targets for every Crust parser of peer or disk input, run by `cargo xtask fuzz`
//! (see `fuzz/README.md`).
//!
//! Each public function below is one target: it feeds arbitrary bytes to one parser and
//! asserts that the parser returns (an error or a value, never a panic) and the invariants
//! the target names (round trips, size bounds). `fuzz_targets/<name>.rs` wraps it for
//! libFuzzer; [`TARGETS`] lists them with their seeds (the checked-in corpus under
//! `fuzz/corpus/<name>/`, written by the ignored test `write_seed_corpus`).
#![forbid(unsafe_code)]

use bytes::BytesMut;
use crust_core::wire::{
    self, FRAME_HEADER_LEN, Frame, FrameDecoder, FrameKind, MessageDecoder, PREAMBLE_LEN,
};
use crust_core::{Endpoint, PeerAddr, PeerId};
use tokio_util::codec::Decoder;

/// The maximum message size the framing targets configure: small, so that the fuzzer
/// reaches the limit easily.
pub const FUZZ_MAX_MESSAGE: usize = 4096;

/// One fuzz target: its name, its function and its seed inputs.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name of the target (and of its `fuzz_targets/<name>.rs` and corpus directory).
    pub name: &'static str,
    /// The function libFuzzer calls with each input.
    pub run: fn(&[u8]),
    /// Valid encodings of the format, the starting corpus.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame_decoder",
        run: frame_decoder,
        seeds: frame_seeds,
    },
    Target {
        name: "message_decoder",
        run: message_decoder,
        seeds: frame_seeds,
    },
    Target {
        name: "preamble",
        run: preamble,
        seeds: preamble_seeds,
    },
    Target {
        name: "observed_address",
        run: observed_address,
        seeds: observed_address_seeds,
    },
    Target {
        name: "ping_nonce",
        run: ping_nonce,
        seeds: crust::fuzzing::ping_nonce_seeds,
    },
    Target {
        name: "delivered",
        run: delivered,
        seeds: crust::fuzzing::delivered_seeds,
    },
    Target {
        name: "probe_datagram",
        run: probe_datagram,
        seeds: probe_datagram_seeds,
    },
    Target {
        name: "filtering_message",
        run: filtering_message,
        seeds: crust::fuzzing::probe_message_seeds,
    },
    Target {
        name: "punch_message",
        run: punch_message,
        seeds: crust::fuzzing::punch_message_seeds,
    },
    Target {
        name: "relay_message",
        run: relay_message,
        seeds: crust::fuzzing::relay_message_seeds,
    },
    Target {
        name: "gossip_message",
        run: gossip_message,
        seeds: crust::fuzzing::gossip_message_seeds,
    },
    Target {
        name: "beacon_packet",
        run: beacon_packet,
        seeds: beacon_seeds,
    },
    Target {
        name: "identity_pem",
        run: identity_pem,
        seeds: identity_seeds,
    },
    Target {
        name: "bootstrap_config",
        run: bootstrap_config,
        seeds: config_seeds,
    },
    Target {
        name: "bootstrap_cache",
        run: bootstrap_cache,
        seeds: crust_bootstrap::fuzzing::cache_seeds,
    },
    Target {
        name: "endpoint_text",
        run: endpoint_text,
        seeds: endpoint_seeds,
    },
    Target {
        name: "peer_addr_text",
        run: peer_addr_text,
        seeds: peer_addr_seeds,
    },
];

/// Splits the input into the stream pieces a decoder is fed: the first byte picks the
/// piece size (0: everything at once), the rest is the stream.
fn pieces(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&n, rest)) if n > 0 => (usize::from(n), rest),
        Some((_, rest)) => (rest.len().max(1), rest),
        None => (1, &[]),
    }
}

/// Feeds `stream` to `decoder` in pieces of `step` bytes, then signals the end, checking
/// after every call that no frame exceeds the maximum and that the read buffer never grew
/// beyond what was fed plus one maximum frame (so a header announcing 4 GiB fails before
/// any allocation).
fn drive<D>(mut decoder: D, step: usize, stream: &[u8])
where
    D: Decoder<Item = Frame, Error = crust_core::Error>,
{
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let bound = |fed: usize| 2 * (fed + FUZZ_MAX_MESSAGE + FRAME_HEADER_LEN) + 64;
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.payload.len() <= FUZZ_MAX_MESSAGE),
                Ok(None) => break,
                Err(_) => {
                    assert!(buf.capacity() <= bound(fed), "buffer grew past the maximum");
                    return;
                }
            }
            assert!(buf.capacity() <= bound(fed), "buffer grew past the maximum");
        }
        assert!(buf.capacity() <= bound(fed), "buffer grew past the maximum");
    }
    while let Ok(Some(frame)) = decoder.decode_eof(&mut buf) {
        assert!(frame.payload.len() <= FUZZ_MAX_MESSAGE);
    }
}

/// Target: the frame decoder ([`FrameDecoder`]) on a stream fed in pieces.
pub fn frame_decoder(data: &[u8]) {
    let (step, stream) = pieces(data);
    drive(FrameDecoder::new(FUZZ_MAX_MESSAGE), step, stream);
}

/// Target: the reassembling decoder ([`MessageDecoder`], chunked messages) on a stream
/// fed in pieces.
pub fn message_decoder(data: &[u8]) {
    let (step, stream) = pieces(data);
    drive(MessageDecoder::new(FUZZ_MAX_MESSAGE), step, stream);
}

/// Target: [`wire::negotiate_version`] on a peer's preamble (the first 8 bytes) against
/// our range (the next 4 bytes, else the build's own); a chosen version lies in both ranges.
pub fn preamble(data: &[u8]) {
    let Some(theirs) = data.first_chunk::<PREAMBLE_LEN>() else {
        return;
    };
    let (our_max, our_min) = match data.get(PREAMBLE_LEN..PREAMBLE_LEN + 4) {
        Some(&[a, b, c, d]) => (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
        _ => (wire::PROTOCOL_VERSION, wire::MIN_PROTOCOL_VERSION),
    };
    if let Ok(version) = wire::negotiate_version(theirs, our_max, our_min) {
        let their_max = u16::from_be_bytes([theirs[4], theirs[5]]);
        let their_min = u16::from_be_bytes([theirs[6], theirs[7]]);
        assert!(
            version <= our_max && version >= our_min,
            "outside our range"
        );
        assert!(
            version <= their_max && version >= their_min,
            "outside their range"
        );
    }
}

/// Target: the observed-address control payload; a decoded one re-encodes to the input.
pub fn observed_address(data: &[u8]) {
    if let Ok(addr) = wire::decode_observed_address(data) {
        assert_eq!(&wire::encode_observed_address(addr)[..], data);
    }
}

/// Target: the ping/pong nonce payload.
pub fn ping_nonce(data: &[u8]) {
    crust::fuzzing::decode_ping_nonce(data);
}

/// Target: the delivery acknowledgement payload (frame kind 18); round trip.
pub fn delivered(data: &[u8]) {
    crust::fuzzing::decode_delivered(data);
}

/// Target: probe datagrams ([`crust_core::probe::decode_probe`]); a probe re-encodes to
/// the input.
pub fn probe_datagram(data: &[u8]) {
    use crust_core::probe::{ProbeDatagram, decode_probe, encode_probe};
    if let ProbeDatagram::Probe(nonce) = decode_probe(data) {
        assert_eq!(&encode_probe(nonce)[..], data);
    }
}

/// Target: the NAT filtering-test messages (request, forward, report).
pub fn filtering_message(data: &[u8]) {
    crust::fuzzing::decode_probe_message(data);
}

/// Target: the hole-punch coordination messages.
pub fn punch_message(data: &[u8]) {
    crust::fuzzing::decode_punch_message(data);
}

/// Target: the relay messages (circuits, data, credits).
pub fn relay_message(data: &[u8]) {
    crust::fuzzing::decode_relay_message(data);
}

/// Target: the gossip messages (peer records).
pub fn gossip_message(data: &[u8]) {
    crust::fuzzing::decode_gossip_message(data);
}

/// Target: beacon datagrams; a decoded packet re-encodes and decodes to itself.
pub fn beacon_packet(data: &[u8]) {
    use crust_beacon::BeaconPacket;
    if let Ok(packet) = BeaconPacket::decode(data) {
        let bytes = packet.encode().expect("a decoded beacon packet encodes");
        assert_eq!(BeaconPacket::decode(&bytes).ok(), Some(packet));
    }
}

/// Target: identity files ([`crust_core::Identity::from_pem`]).
pub fn identity_pem(data: &[u8]) {
    let _ = crust_core::Identity::from_pem(&String::from_utf8_lossy(data));
}

/// Target: bootstrap config files ([`crust_bootstrap::BootstrapConfig::parse`]).
pub fn bootstrap_config(data: &[u8]) {
    let _ = crust_bootstrap::BootstrapConfig::parse(&String::from_utf8_lossy(data));
}

/// Target: bootstrap cache files (the parse step of `BootstrapCache::load`, then the
/// cache's bounds and a save/load round trip).
pub fn bootstrap_cache(data: &[u8]) {
    crust_bootstrap::fuzzing::parse_cache(data);
}

/// Target: [`Endpoint`] text; a parsed endpoint displays as text that parses to itself.
pub fn endpoint_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(endpoint) = text.parse::<Endpoint>() {
        assert_eq!(
            endpoint.to_string().parse::<Endpoint>().ok(),
            Some(endpoint)
        );
    }
}

/// Target: [`PeerAddr`] (and [`PeerId`]) text; a parsed one displays as text that parses
/// to itself.
pub fn peer_addr_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(addr) = text.parse::<PeerAddr>() {
        assert_eq!(addr.to_string().parse::<PeerAddr>().ok(), Some(addr));
    }
    if let Ok(id) = text.parse::<PeerId>() {
        assert_eq!(id.to_string().parse::<PeerId>().ok(), Some(id));
    }
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let mut stream = BytesMut::new();
    let mut put = |kind: FrameKind, payload: &[u8]| {
        wire::put_frame_header(&mut stream, kind, payload.len()).expect("small frame");
        stream.extend_from_slice(payload);
    };
    put(FrameKind::Ping, &7u64.to_be_bytes());
    put(FrameKind::Message, b"hello");
    put(FrameKind::MessageChunk, b"first part, ");
    put(FrameKind::Pong, &7u64.to_be_bytes());
    put(FrameKind::Message, b"last part");
    put(
        FrameKind::ObservedAddress,
        &wire::encode_observed_address(([192, 0, 2, 1], 80).into()),
    );
    put(FrameKind::Unknown(17), b"facade");
    let whole = stream.to_vec();
    // Piece size 0 (all at once), then 3 bytes at a time.
    vec![[&[0u8][..], &whole].concat(), [&[3u8][..], &whole].concat()]
}

fn preamble_seeds() -> Vec<Vec<u8>> {
    vec![
        wire::preamble(wire::PROTOCOL_VERSION, wire::MIN_PROTOCOL_VERSION).to_vec(),
        [&wire::preamble(3, 1)[..], &[0, 2, 0, 2]].concat(),
    ]
}

fn observed_address_seeds() -> Vec<Vec<u8>> {
    ["203.0.113.7:4321", "[2001:db8::1]:65535"]
        .iter()
        .filter_map(|t| t.parse().ok())
        .map(|a| wire::encode_observed_address(a).to_vec())
        .collect()
}

fn probe_datagram_seeds() -> Vec<Vec<u8>> {
    vec![crust_core::probe::encode_probe(0x0123_4567_89ab_cdef).to_vec()]
}

fn sample_endpoints() -> Vec<Endpoint> {
    ["tcp://192.0.2.1:5483", "rudp://[2001:db8::1]:5484"]
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect()
}

fn beacon_seeds() -> Vec<Vec<u8>> {
    let packet =
        crust_beacon::BeaconPacket::new(PeerId::from_bytes([9; 32]), sample_endpoints(), 1, 2);
    packet.encode().into_iter().collect()
}

fn identity_seeds() -> Vec<Vec<u8>> {
    let Ok(dir) = tempfile::tempdir() else {
        return Vec::new();
    };
    let path = dir.path().join("identity.pem");
    crust_core::Identity::generate()
        .and_then(|id| id.save(&path))
        .ok()
        .and_then(|()| std::fs::read(&path).ok())
        .into_iter()
        .collect()
}

fn config_seeds() -> Vec<Vec<u8>> {
    let id = PeerId::from_bytes([5; 32]);
    let text = format!(
        r#"{{"contacts": [{{"peer_id": "{id}", "endpoints": ["tcp://192.0.2.1:5483"]}}], "tcp_port": 5483, "use_cache": true}}"#
    );
    vec![text.into_bytes(), b"{}".to_vec()]
}

fn endpoint_seeds() -> Vec<Vec<u8>> {
    sample_endpoints()
        .iter()
        .map(|e| e.to_string().into_bytes())
        .collect()
}

fn peer_addr_seeds() -> Vec<Vec<u8>> {
    let addr = PeerAddr::new(PeerId::from_bytes([3; 32])).with_endpoints(sample_endpoints());
    vec![
        addr.to_string().into_bytes(),
        PeerId::from_bytes([4; 32]).to_string().into_bytes(),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::TARGETS;

    fn corpus_dir(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(name)
    }

    /// Every target accepts its own seeds and every checked-in corpus file without panicking.
    #[test]
    fn seeds_and_corpus_run() {
        for target in TARGETS {
            for seed in (target.seeds)() {
                (target.run)(&seed);
            }
            for entry in std::fs::read_dir(corpus_dir(target.name))
                .into_iter()
                .flatten()
            {
                let bytes = std::fs::read(entry.expect("dir entry").path()).expect("read");
                (target.run)(&bytes);
            }
        }
    }

    /// Writes the seeds as `corpus/<target>/seed-<n>`: `cargo test -- --ignored write_seed_corpus`.
    #[test]
    #[ignore = "writes the checked-in seed corpus"]
    fn write_seed_corpus() {
        for target in TARGETS {
            let dir = corpus_dir(target.name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            for (n, seed) in (target.seeds)().iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{n}")), seed).expect("write");
            }
        }
    }
}
