//! Giving memory back after big messages (issue #12, item 3).
//!
//! glibc's `malloc` serves blocks of 128 KiB and more with `mmap` and unmaps them on `free`,
//! but it raises that threshold (up to 32 MiB) every time such a block is freed. After the
//! first 16 MiB message, later message buffers therefore come from the heap arenas, and
//! freed arena memory is only returned above a trim threshold that rose along with it:
//! measured with this program receiving 64 messages of 16 MiB, resident memory stayed at
//! 80–130 MiB (from 18 MiB at the start) for as long as we watched, although Crust itself
//! held none of it. Fixing the threshold at its default turns the adaptation off: large
//! buffers are always mapped and unmapped, and resident memory came back to 19 MiB within
//! a quarter of a second of the last message. The cost is a fresh mapping (and its page
//! faults) per large buffer, which a command-line peer can afford.
//!
//! Only this program changes the allocator: the library leaves that to the application
//! (see the README's note on memory). A `glibc.malloc.mmap_threshold` tunable in
//! `GLIBC_TUNABLES` set by the user wins.

/// The threshold glibc starts with: blocks from this size up are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes glibc's mmap threshold (see the module docs). Call before the runtime starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn return_large_buffers_to_the_os() {
    let tuned_by_user = std::env::var("GLIBC_TUNABLES")
        .is_ok_and(|tunables| tunables.contains("malloc.mmap_threshold"));
    if tuned_by_user {
        return;
    }
    // SAFETY: `mallopt` only sets an allocator parameter (it takes the allocator's own lock);
    // no pointer is involved and no memory is touched.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok != 1 {
        // Not fatal: memory is given back later or not at all, as without this call.
        tracing::debug!("mallopt(M_MMAP_THRESHOLD) failed");
    }
}

/// Other allocators and platforms: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn return_large_buffers_to_the_os() {}
