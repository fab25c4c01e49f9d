//! The library-owned cache of peers we reached directly.
//!
//! [`PeerCache`] is the policy (order, de-duplication, bound) with no I/O and no clock;
//! [`BootstrapCache`] is the thin file layer beside it: atomic saves and a load that recovers
//! from a damaged file instead of failing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crust_core::{Endpoint, PeerId};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Default bound of the cache: 200 peers.
pub const DEFAULT_MAX_CACHE_ENTRIES: usize = 200;

/// How many endpoints the cache keeps per peer (the most recently reached first).
pub const MAX_ENDPOINTS_PER_PEER: usize = 8;

/// Version of the cache file format this crate writes and reads.
const CACHE_FORMAT_VERSION: u32 = 1;

/// Where the cache lives by default: `<cache dir>/crust/bootstrap-cache.json`
/// (e.g. `~/.cache/crust/bootstrap-cache.json` on Linux), or `None` when the platform has no
/// cache directory.
pub fn default_cache_path() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("crust").join("bootstrap-cache.json"))
}

/// One peer of the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheEntry {
    /// The peer's proven identity.
    pub peer_id: PeerId,
    /// Where we reached it, most recent first (at most [`MAX_ENDPOINTS_PER_PEER`]).
    pub endpoints: Vec<Endpoint>,
    /// When we last reached it directly, in seconds since the Unix epoch.
    pub last_seen: u64,
}

impl CacheEntry {
    /// An entry for `peer_id` reached at `endpoints`, last seen at `last_seen` (Unix seconds).
    pub fn new(peer_id: PeerId, endpoints: Vec<Endpoint>, last_seen: u64) -> Self {
        CacheEntry {
            peer_id,
            endpoints,
            last_seen,
        }
    }
}

/// The cache policy, without I/O: a bounded list of peers, most recently reached first, with
/// at most one entry per [`PeerId`].
///
/// ```
/// use crust_bootstrap::PeerCache;
/// use crust_core::{Endpoint, PeerId};
/// let mut cache = PeerCache::new(2);
/// let ep: Endpoint = "tcp://192.0.2.1:5483".parse()?;
/// for n in 1..=3u8 {
///     cache.record(PeerId::from_bytes([n; 32]), ep, u64::from(n));
/// }
/// let order: Vec<u8> = cache.entries().iter().map(|e| e.peer_id.as_bytes()[0]).collect();
/// assert_eq!(order, [3, 2]); // peer 1, the oldest, was dropped
/// # Ok::<(), crust_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCache {
    max_entries: usize,
    entries: Vec<CacheEntry>,
}

impl PeerCache {
    /// An empty cache holding at most `max_entries` peers (0 keeps nothing).
    pub fn new(max_entries: usize) -> Self {
        PeerCache {
            max_entries,
            entries: Vec::new(),
        }
    }

    /// A cache built from stored entries: sorted most recent first (stable, so equal
    /// `last_seen` keep their order), duplicates of a `PeerId` merged into its most recent
    /// entry, entries without endpoints dropped, and bounded to `max_entries`.
    pub fn from_entries(max_entries: usize, mut entries: Vec<CacheEntry>) -> Self {
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_seen));
        let mut cache = PeerCache::new(max_entries);
        for mut entry in entries {
            dedup_endpoints(&mut entry.endpoints);
            if entry.endpoints.is_empty() {
                continue;
            }
            match cache
                .entries
                .iter_mut()
                .find(|e| e.peer_id == entry.peer_id)
            {
                Some(existing) => {
                    existing.endpoints.extend(entry.endpoints);
                    dedup_endpoints(&mut existing.endpoints);
                }
                None => cache.entries.push(entry),
            }
        }
        cache.entries.truncate(max_entries);
        cache
    }

    /// Records that we reached `peer` directly at `endpoint` at `now` (Unix seconds).
    ///
    /// The peer moves to the front; `endpoint` becomes its first endpoint, followed by the
    /// ones already known (duplicates removed, at most [`MAX_ENDPOINTS_PER_PEER`]). When the
    /// cache is over its bound, the least recently reached peers are dropped.
    pub fn record(&mut self, peer: PeerId, endpoint: Endpoint, now: u64) {
        let mut endpoints = vec![endpoint];
        let mut last_seen = now;
        if let Some(i) = self.entries.iter().position(|e| e.peer_id == peer) {
            let old = self.entries.remove(i);
            endpoints.extend(old.endpoints);
            // A clock that went backwards must not make the front entry look older.
            last_seen = last_seen.max(old.last_seen);
        }
        if let Some(front) = self.entries.first() {
            last_seen = last_seen.max(front.last_seen);
        }
        dedup_endpoints(&mut endpoints);
        self.entries
            .insert(0, CacheEntry::new(peer, endpoints, last_seen));
        self.entries.truncate(self.max_entries);
    }

    /// Forgets `peer`; returns whether it was cached.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.peer_id != *peer);
        self.entries.len() != before
    }

    /// The entries, most recently reached first.
    pub fn entries(&self) -> &[CacheEntry] {
        &self.entries
    }

    /// The entry of `peer`, if cached.
    pub fn get(&self, peer: &PeerId) -> Option<&CacheEntry> {
        self.entries.iter().find(|e| e.peer_id == *peer)
    }

    /// Number of cached peers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no peer is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bound on the number of peers.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

/// Removes repeated endpoints (keeping the first occurrence) and bounds the list.
fn dedup_endpoints(endpoints: &mut Vec<Endpoint>) {
    let mut seen = Vec::with_capacity(endpoints.len());
    endpoints.retain(|ep| {
        if seen.contains(ep) {
            false
        } else {
            seen.push(*ep);
            true
        }
    });
    endpoints.truncate(MAX_ENDPOINTS_PER_PEER);
}

/// What [`BootstrapCache::load`] found. Whatever it was, loading yields a usable cache.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadOutcome {
    /// The file was read and parsed.
    Loaded {
        /// Number of peers loaded (after de-duplication and the bound).
        entries: usize,
    },
    /// There was no cache file yet: the cache starts empty.
    Missing,
    /// The file was corrupt (truncated, not JSON, wrong shape or unknown version): it was
    /// moved aside and the cache starts empty.
    RecoveredFromCorruption {
        /// Where the damaged file now is (`<name>.corrupt-<unix seconds>`), or `None` when it
        /// could not be moved (it will be overwritten by the next save).
        moved_to: Option<PathBuf>,
        /// What was wrong with it.
        reason: String,
    },
    /// The file exists but could not be read (e.g. permissions): the cache starts empty and
    /// the file is left alone (saving will probably fail too, and will be reported then).
    Unreadable {
        /// The I/O error, as text.
        reason: String,
    },
}

/// The on-disk form of the cache.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    version: u32,
    entries: Vec<CacheEntry>,
}

/// Parses the bytes of a cache file into its entries; the error says what is wrong.
pub(crate) fn parse_cache_file(bytes: &[u8]) -> std::result::Result<Vec<CacheEntry>, String> {
    let file = serde_json::from_slice::<CacheFile>(bytes).map_err(|e| e.to_string())?;
    if file.version == CACHE_FORMAT_VERSION {
        Ok(file.entries)
    } else {
        Err(format!("unsupported cache format version {}", file.version))
    }
}

/// The on-disk bytes of a cache holding `entries` (pretty JSON, as [`BootstrapCache::save`]
/// writes).
pub(crate) fn encode_cache_file(entries: &[CacheEntry]) -> Result<Vec<u8>> {
    let file = CacheFile {
        version: CACHE_FORMAT_VERSION,
        entries: entries.to_vec(),
    };
    serde_json::to_vec_pretty(&file).map_err(Error::Encode)
}

/// The bootstrap cache file: a [`PeerCache`] plus where it is stored.
///
/// Saves are atomic (a temporary file in the same directory, synced, then renamed over the
/// old one; owner-only permissions on Unix), so a crash leaves either the old or the new
/// cache, never half of one. Loads never fail: see [`LoadOutcome`].
///
/// ```
/// use crust_bootstrap::{BootstrapCache, LoadOutcome};
/// use crust_core::PeerId;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("bootstrap-cache.json");
/// let (mut cache, outcome) = BootstrapCache::load(&path, 200);
/// assert_eq!(outcome, LoadOutcome::Missing);
/// cache.record(PeerId::from_bytes([7; 32]), "tcp://192.0.2.1:5483".parse()?);
/// cache.save()?;
/// let (again, outcome) = BootstrapCache::load(&path, 200);
/// assert_eq!(outcome, LoadOutcome::Loaded { entries: 1 });
/// assert_eq!(again.peers(), cache.peers());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct BootstrapCache {
    path: PathBuf,
    peers: PeerCache,
}

impl BootstrapCache {
    /// An empty cache that will be saved at `path`, holding at most `max_entries` peers.
    pub fn new(path: impl Into<PathBuf>, max_entries: usize) -> Self {
        BootstrapCache {
            path: path.into(),
            peers: PeerCache::new(max_entries),
        }
    }

    /// Loads the cache at `path`, never failing: a missing file gives an empty cache; a
    /// corrupt one is moved aside (with a `tracing` warning) and gives an empty cache; the
    /// [`LoadOutcome`] says which happened.
    pub fn load(path: impl Into<PathBuf>, max_entries: usize) -> (Self, LoadOutcome) {
        let path = path.into();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return (Self::new(path, max_entries), LoadOutcome::Missing);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the bootstrap cache, starting empty");
                let outcome = LoadOutcome::Unreadable {
                    reason: e.to_string(),
                };
                return (Self::new(path, max_entries), outcome);
            }
        };
        match parse_cache_file(&bytes) {
            Ok(entries) => {
                let peers = PeerCache::from_entries(max_entries, entries);
                let outcome = LoadOutcome::Loaded {
                    entries: peers.len(),
                };
                (BootstrapCache { path, peers }, outcome)
            }
            Err(reason) => {
                let moved_to = move_aside(&path);
                tracing::warn!(
                    path = %path.display(),
                    moved_to = ?moved_to,
                    %reason,
                    "bootstrap cache is corrupt; moved aside, starting with an empty cache"
                );
                let outcome = LoadOutcome::RecoveredFromCorruption { moved_to, reason };
                (Self::new(path, max_entries), outcome)
            }
        }
    }

    /// Writes the cache to its file atomically (creating the directory if needed).
    pub fn save(&self) -> Result<()> {
        let json = encode_cache_file(self.peers.entries())?;
        write_atomically(&self.path, &json)
    }

    /// Records that we reached `peer` directly at `endpoint` now (see [`PeerCache::record`]).
    /// Does not save.
    pub fn record(&mut self, peer: PeerId, endpoint: Endpoint) {
        self.peers.record(peer, endpoint, unix_now());
    }

    /// The in-memory policy, e.g. to [`record`](PeerCache::record) with an explicit time.
    pub fn peers_mut(&mut self) -> &mut PeerCache {
        &mut self.peers
    }

    /// The cached peers.
    pub fn peers(&self) -> &PeerCache {
        &self.peers
    }

    /// The file this cache is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Renames a damaged file to `<name>.corrupt-<unix seconds>[-n]`; `None` if that fails.
fn move_aside(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let now = unix_now();
    for n in 0..100u32 {
        let suffix = if n == 0 {
            format!("{name}.corrupt-{now}")
        } else {
            format!("{name}.corrupt-{now}-{n}")
        };
        let target = path.with_file_name(suffix);
        if target.exists() {
            continue;
        }
        return match fs::rename(path, &target) {
            Ok(()) => Some(target),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot move the corrupt bootstrap cache aside");
                None
            }
        };
    }
    None
}

/// Writes `bytes` to `path` atomically with owner-only permissions (see
/// [`crust_core::fs::write_atomic`]).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crust_core::fs::write_atomic(path, bytes, crust_core::fs::OWNER_ONLY).map_err(|source| {
        Error::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::tcp(std::net::SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn re_adding_moves_to_front_and_merges_endpoints() {
        let mut c = PeerCache::new(10);
        c.record(peer(1), ep(1), 10);
        c.record(peer(2), ep(2), 20);
        c.record(peer(1), ep(3), 30);
        assert_eq!(c.len(), 2);
        assert_eq!(c.entries()[0].peer_id, peer(1));
        assert_eq!(c.entries()[0].endpoints, [ep(3), ep(1)]);
        assert_eq!(c.entries()[0].last_seen, 30);
        c.record(peer(1), ep(1), 40);
        assert_eq!(c.entries()[0].endpoints, [ep(1), ep(3)]);
    }

    #[test]
    fn oldest_is_dropped_beyond_the_cap() {
        let mut c = PeerCache::new(3);
        for n in 1..=5 {
            c.record(peer(n), ep(u16::from(n)), u64::from(n));
        }
        let ids: Vec<_> = c.entries().iter().map(|e| e.peer_id).collect();
        assert_eq!(ids, [peer(5), peer(4), peer(3)]);
        assert!(c.get(&peer(1)).is_none());
    }

    #[test]
    fn zero_cap_keeps_nothing() {
        let mut c = PeerCache::new(0);
        c.record(peer(1), ep(1), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn endpoints_per_peer_are_bounded() {
        let mut c = PeerCache::new(1);
        for port in 0..20 {
            c.record(peer(1), ep(port), 1);
        }
        assert_eq!(c.entries()[0].endpoints.len(), MAX_ENDPOINTS_PER_PEER);
        assert_eq!(c.entries()[0].endpoints[0], ep(19));
    }

    #[test]
    fn clock_going_backwards_keeps_order_consistent() {
        let mut c = PeerCache::new(5);
        c.record(peer(1), ep(1), 100);
        c.record(peer(2), ep(2), 50);
        assert_eq!(c.entries()[0].peer_id, peer(2));
        assert!(c.entries()[0].last_seen >= c.entries()[1].last_seen);
    }

    #[test]
    fn from_entries_sorts_dedups_and_bounds() {
        let entries = vec![
            CacheEntry::new(peer(1), vec![ep(1)], 10),
            CacheEntry::new(peer(2), vec![ep(2)], 30),
            CacheEntry::new(peer(1), vec![ep(3), ep(3)], 20),
            CacheEntry::new(peer(4), vec![], 40),
            CacheEntry::new(peer(5), vec![ep(5)], 5),
        ];
        let c = PeerCache::from_entries(2, entries);
        let ids: Vec<_> = c.entries().iter().map(|e| e.peer_id).collect();
        assert_eq!(ids, [peer(2), peer(1)]);
        assert_eq!(c.entries()[1].endpoints, [ep(3), ep(1)]);
        assert_eq!(c.entries()[1].last_seen, 20);
    }

    #[test]
    fn remove_forgets() {
        let mut c = PeerCache::new(5);
        c.record(peer(1), ep(1), 1);
        assert!(c.remove(&peer(1)));
        assert!(!c.remove(&peer(1)));
        assert!(c.is_empty());
    }

    proptest! {
        #[test]
        fn invariants_hold(
            cap in 0usize..12,
            ops in proptest::collection::vec((0u8..20, 0u16..6, 0u64..3), 0..200),
        ) {
            let mut c = PeerCache::new(cap);
            let mut now = 0u64;
            for (p, port, step) in ops {
                now += step;
                c.record(peer(p), ep(port), now);
                prop_assert!(c.len() <= cap);
                let ids: HashSet<_> = c.entries().iter().map(|e| e.peer_id).collect();
                prop_assert_eq!(ids.len(), c.len());
                prop_assert!(c.entries().windows(2).all(|w| w[0].last_seen >= w[1].last_seen));
                if cap > 0 {
                    prop_assert_eq!(c.entries()[0].peer_id, peer(p));
                    prop_assert_eq!(c.entries()[0].endpoints[0], ep(port));
                    prop_assert_eq!(c.entries()[0].last_seen, now);
                }
                for e in c.entries() {
                    prop_assert!(!e.endpoints.is_empty());
                    prop_assert!(e.endpoints.len() <= MAX_ENDPOINTS_PER_PEER);
                }
            }
            // Reloading what we would save gives the same cache.
            let again = PeerCache::from_entries(cap, c.entries().to_vec());
            prop_assert_eq!(again, c);
        }
    }
}
