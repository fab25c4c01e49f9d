//! A damaged cache file is moved aside and replaced by an empty cache, never an error.

use std::path::Path;

use crust_bootstrap::{BootstrapCache, LoadOutcome};
use crust_core::{Endpoint, PeerId};

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn ep(port: u16) -> Endpoint {
    format!("tcp://192.0.2.1:{port}").parse().expect("endpoint")
}

/// Writes `bytes` as the cache, loads it, and checks the recovery.
fn assert_recovers(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bootstrap-cache.json");
    std::fs::write(&path, bytes).expect("write");

    let (mut cache, outcome) = BootstrapCache::load(&path, 200);
    let LoadOutcome::RecoveredFromCorruption { moved_to, reason } = outcome else {
        panic!("expected recovery for {bytes:?}, got {outcome:?}");
    };
    assert!(!reason.is_empty());
    let moved_to = moved_to.expect("moved aside");
    assert_eq!(moved_to.parent(), Some(dir.path()));
    let name = moved_to.file_name().expect("name").to_string_lossy();
    assert!(
        name.starts_with("bootstrap-cache.json.corrupt-"),
        "unexpected name {name}"
    );
    assert_eq!(std::fs::read(&moved_to).expect("read moved"), bytes);
    assert!(
        !path.exists(),
        "the corrupt file must be gone from its place"
    );
    assert!(cache.peers().is_empty());

    // The replacement cache works normally.
    cache.record(peer(1), ep(1));
    cache.save().expect("save");
    let (again, outcome) = BootstrapCache::load(&path, 200);
    assert_eq!(outcome, LoadOutcome::Loaded { entries: 1 });
    assert_eq!(again.peers(), cache.peers());
}

fn valid_cache_bytes(dir: &Path) -> Vec<u8> {
    let path = dir.join("valid.json");
    let mut cache = BootstrapCache::new(&path, 200);
    for n in 1..=5 {
        cache.record(peer(n), ep(u16::from(n)));
    }
    cache.save().expect("save");
    std::fs::read(&path).expect("read")
}

#[test]
fn truncated_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = valid_cache_bytes(dir.path());
    for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
        assert_recovers(&bytes[..cut]);
    }
}

#[test]
fn garbage_bytes() {
    assert_recovers(&[0xff, 0x00, 0xfe, 0x13, 0x37, 0x80, 0x81]);
    assert_recovers(b"this is not json at all");
}

#[test]
fn wrong_types() {
    assert_recovers(br#"{"version": "one", "entries": []}"#);
    assert_recovers(br#"{"version": 1, "entries": {}}"#);
    assert_recovers(
        br#"{"version": 1, "entries": [{"peer_id": 5, "endpoints": [], "last_seen": 1}]}"#,
    );
    assert_recovers(
        br#"{"version": 1, "entries": [{"peer_id": "00", "endpoints": ["tcp://x"], "last_seen": -1}]}"#,
    );
    assert_recovers(b"[]");
    assert_recovers(b"null");
}

#[test]
fn unknown_version() {
    assert_recovers(br#"{"version": 999, "entries": []}"#);
}

#[test]
fn empty_file() {
    assert_recovers(b"");
    assert_recovers(b"   \n");
}

#[test]
fn repeated_corruption_does_not_clobber_earlier_evidence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.json");
    let mut moved = Vec::new();
    for text in ["first", "second", "third"] {
        std::fs::write(&path, text).expect("write");
        match BootstrapCache::load(&path, 10).1 {
            LoadOutcome::RecoveredFromCorruption {
                moved_to: Some(to), ..
            } => moved.push(to),
            other => panic!("unexpected {other:?}"),
        }
    }
    moved.sort();
    moved.dedup();
    assert_eq!(moved.len(), 3, "each corrupt file gets its own name");
}

#[test]
fn unreadable_cache_starts_empty_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be: reading fails with an I/O error, not a parse error.
    let path = dir.path().join("cache.json");
    std::fs::create_dir(&path).expect("mkdir");
    let (cache, outcome) = BootstrapCache::load(&path, 10);
    assert!(
        matches!(outcome, LoadOutcome::Unreadable { .. }),
        "{outcome:?}"
    );
    assert!(cache.peers().is_empty());
    assert!(path.is_dir());
    // Saving over a directory is a typed error, not a panic.
    assert!(matches!(
        cache.save(),
        Err(crust_bootstrap::Error::Write { .. })
    ));
}

#[test]
fn missing_file_is_an_empty_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cache, outcome) = BootstrapCache::load(dir.path().join("nope.json"), 10);
    assert_eq!(outcome, LoadOutcome::Missing);
    assert!(cache.peers().is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
}
