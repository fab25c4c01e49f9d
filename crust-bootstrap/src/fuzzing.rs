//! **Not API.** Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by
//! default): the cache file is only parsed from disk by [`BootstrapCache::load`], which
//! also moves bad files aside, so the fuzzers reach the parsing step through these
//! functions. Anything here may change or go away in any release.
//!
//! [`BootstrapCache::load`]: crate::BootstrapCache::load

use crate::cache::{encode_cache_file, parse_cache_file};
use crate::{CacheEntry, DEFAULT_MAX_CACHE_ENTRIES, MAX_ENDPOINTS_PER_PEER, PeerCache};

/// Parses the bytes of a bootstrap cache file as [`BootstrapCache::load`] does, then applies
/// the cache's bounds; `true` when the file was well formed.
///
/// # Panics
///
/// When the loaded cache breaks its bounds (more than [`DEFAULT_MAX_CACHE_ENTRIES`] peers,
/// more than [`MAX_ENDPOINTS_PER_PEER`] endpoints for one) or does not survive a save and
/// a load (bugs).
///
/// [`BootstrapCache::load`]: crate::BootstrapCache::load
pub fn parse_cache(bytes: &[u8]) -> bool {
    let Ok(entries) = parse_cache_file(bytes) else {
        return false;
    };
    let cache = PeerCache::from_entries(DEFAULT_MAX_CACHE_ENTRIES, entries);
    assert!(
        cache.len() <= DEFAULT_MAX_CACHE_ENTRIES,
        "cache bound broken"
    );
    assert!(
        cache
            .entries()
            .iter()
            .all(|e| e.endpoints.len() <= MAX_ENDPOINTS_PER_PEER),
        "endpoint bound broken"
    );
    let saved = encode_cache_file(cache.entries()).expect("a loaded cache encodes");
    let again = parse_cache_file(&saved).expect("a saved cache parses");
    assert_eq!(
        again.as_slice(),
        cache.entries(),
        "cache does not round-trip"
    );
    true
}

/// A valid cache file with a few peers.
pub fn cache_seeds() -> Vec<Vec<u8>> {
    let entry = |b: u8, eps: &[&str]| {
        CacheEntry::new(
            crust_core::PeerId::from_bytes([b; 32]),
            eps.iter().filter_map(|e| e.parse().ok()).collect(),
            1_700_000_000 + u64::from(b),
        )
    };
    let entries = [
        entry(1, &["tcp://192.0.2.1:5483", "rudp://192.0.2.1:5484"]),
        entry(2, &["tcp://[2001:db8::2]:5483"]),
    ];
    [&entries[..], &[]]
        .iter()
        .filter_map(|e| encode_cache_file(e).ok())
        .collect()
}
