//! Files the crates keep on disk (an identity key, the bootstrap config and cache): written
//! atomically, so that a crash leaves the old file or the new one, never part of one.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;

/// Unix permission bits of a file only its owner may read and write: `0o600`.
pub const OWNER_ONLY: u32 = 0o600;

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never part
/// of one, and a crash leaves one of them in place.
///
/// The bytes go to a temporary file in the same directory (the directory and its parents
/// are created if missing), which gets the Unix permission bits `mode` (for example
/// [`OWNER_ONLY`]) before any byte is written, is synced to disk, and is then renamed over
/// `path`. On Unix the directory is synced too, so that the rename itself survives a crash
/// (best effort: a failure there is not reported). On other platforms `mode` is ignored.
/// When any step fails, the temporary file is removed and `path` is left as it was.
///
/// ```
/// use crust_core::fs::{OWNER_ONLY, write_atomic};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state/notes.txt");
/// write_atomic(&path, b"first", OWNER_ONLY)?;
/// write_atomic(&path, b"second", OWNER_ONLY)?;
/// assert_eq!(std::fs::read(&path)?, b"second");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8], mode: u32) -> io::Result<()> {
    let path = path.as_ref();
    let dir = directory_of(path);
    std::fs::create_dir_all(dir)?;
    // `.<name>.XXXXXX.tmp`: hidden, and names the file it belongs to.
    let mut prefix = OsString::from(".");
    if let Some(name) = path.file_name() {
        prefix.push(name);
        prefix.push(".");
    }
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    set_mode(file.as_file(), mode)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    #[cfg(unix)]
    {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The directory `path` is in: its parent, or `.` for a bare file name (whose parent is
/// empty).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Sets the Unix permission bits of `file` (nothing elsewhere).
fn set_mode(file: &std::fs::File, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (file, mode);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_directories_overwrites_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/file.json");
        write_atomic(&path, b"one", OWNER_ONLY).expect("first write");
        write_atomic(&path, b"two", OWNER_ONLY).expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(listing(&dir.path().join("a/b")), ["file.json"]);
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(directory_of(Path::new("file.json")), Path::new("."));
        assert_eq!(directory_of(Path::new("a/file.json")), Path::new("a"));
        assert_eq!(directory_of(Path::new("/file.json")), Path::new("/"));
    }

    #[cfg(unix)]
    #[test]
    fn the_new_file_gets_the_mode_even_over_a_more_open_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").expect("pre-existing file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&path, b"new", OWNER_ONLY).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        write_atomic(&path, b"newer", 0o640).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The target is a non-empty directory: the final rename fails.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).expect("mkdir");
        std::fs::write(path.join("inside"), "keep").expect("write inside");
        assert!(write_atomic(&path, b"new", OWNER_ONLY).is_err());
        assert_eq!(listing(dir.path()), ["taken"]);
        assert_eq!(std::fs::read(path.join("inside")).expect("read"), b"keep");
    }

    #[test]
    fn readers_never_see_a_partial_file() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let small = vec![b'a'; 10];
        let large = vec![b'b'; 256 * 1024];
        write_atomic(&path, &small, OWNER_ONLY).expect("initial write");
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), Arc::clone(&done));
            let (small, large) = (small.clone(), large.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !done.load(Ordering::Acquire) || reads == 0 {
                    let seen = std::fs::read(&path).expect("read");
                    assert!(seen == small || seen == large, "saw {} bytes", seen.len());
                    reads += 1;
                }
            })
        };
        for n in 0..50 {
            let bytes = if n % 2 == 0 { &large } else { &small };
            write_atomic(&path, bytes, OWNER_ONLY).expect("write");
        }
        done.store(true, Ordering::Release);
        reader.join().expect("reader thread");
        assert_eq!(listing(dir.path()), ["data"]);
    }
}
