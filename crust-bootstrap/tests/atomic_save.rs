//! Saving the cache is atomic: readers see the old or the new file, never half of one, and no
//! temporary file is left behind.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crust_bootstrap::{BootstrapCache, LoadOutcome};
use crust_core::{Endpoint, PeerId};

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn ep(port: u16) -> Endpoint {
    format!("tcp://192.0.2.1:{port}").parse().expect("endpoint")
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn save_then_load_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bootstrap-cache.json");
    let mut cache = BootstrapCache::new(&path, 3);
    for n in 1..=5u8 {
        cache.record(peer(n), ep(u16::from(n)));
    }
    cache.record(peer(4), ep(40));
    cache.save().expect("save");

    let (loaded, outcome) = BootstrapCache::load(&path, 3);
    assert_eq!(outcome, LoadOutcome::Loaded { entries: 3 });
    assert_eq!(loaded.peers(), cache.peers());
    let order: Vec<_> = loaded.peers().entries().iter().map(|e| e.peer_id).collect();
    assert_eq!(order, [peer(4), peer(5), peer(3)]);
    assert_eq!(loaded.peers().entries()[0].endpoints, [ep(40), ep(4)]);
    assert_eq!(dir_listing(dir.path()), ["bootstrap-cache.json"]);
}

#[test]
fn loading_applies_a_smaller_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.json");
    let mut cache = BootstrapCache::new(&path, 10);
    for n in 1..=10u8 {
        cache.record(peer(n), ep(1));
    }
    cache.save().expect("save");
    let (loaded, outcome) = BootstrapCache::load(&path, 4);
    assert_eq!(outcome, LoadOutcome::Loaded { entries: 4 });
    assert_eq!(loaded.peers().entries()[0].peer_id, peer(10));
}

#[test]
fn creates_missing_directories_and_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a/b/cache.json");
    let mut cache = BootstrapCache::new(&path, 10);
    cache.save().expect("first save (empty)");
    cache.record(peer(1), ep(1));
    cache.save().expect("second save");
    let (loaded, _) = BootstrapCache::load(&path, 10);
    assert_eq!(loaded.peers().len(), 1);
    assert_eq!(dir_listing(&dir.path().join("a/b")), ["cache.json"]);
}

#[cfg(unix)]
#[test]
fn cache_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.json");
    std::fs::write(&path, "{}").expect("pre-existing file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut cache = BootstrapCache::new(&path, 10);
    cache.record(peer(1), ep(1));
    cache.save().expect("save");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn readers_never_see_a_half_written_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.json");
    let mut cache = BootstrapCache::new(&path, 200);
    cache.save().expect("initial save");

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let path = path.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !done.load(Ordering::Acquire) || reads == 0 {
                let (_, outcome) = BootstrapCache::load(&path, 200);
                assert!(
                    matches!(outcome, LoadOutcome::Loaded { .. }),
                    "reader saw {outcome:?}"
                );
                reads += 1;
            }
            reads
        })
    };
    for n in 0..150u16 {
        let bytes = n.to_be_bytes();
        cache.record(PeerId::from_bytes([bytes[1]; 32]), ep(n));
        cache.save().expect("save");
    }
    done.store(true, Ordering::Release);
    let reads = reader.join().expect("reader thread");
    assert!(reads > 0);
    assert_eq!(dir_listing(dir.path()), ["cache.json"]);
    let (loaded, _) = BootstrapCache::load(&path, 200);
    assert_eq!(loaded.peers(), cache.peers());
}
