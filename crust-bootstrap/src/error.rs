//! The one error type of `crust-bootstrap`.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading the bootstrap config or writing the cache.
///
/// Loading the *cache* never fails (a damaged cache is moved aside and replaced, see
/// [`LoadOutcome`](crate::LoadOutcome)); these errors come from the user-edited config and
/// from saving the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file exists but could not be read (permissions, an I/O error, not UTF-8 ...).
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file (or its directory, or the temporary file beside it) could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file we tried to write.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The config file is not valid JSON, or does not have the expected shape.
    ///
    /// `line` and `column` (both 1-based, as reported by `serde_json`) point at the problem.
    #[error("invalid bootstrap config {}: {source}", shown(.path))]
    ConfigSyntax {
        /// The config file.
        path: PathBuf,
        /// Line of the problem, 1-based (0 when the problem has no position).
        line: usize,
        /// Column of the problem, 1-based (0 when the problem has no position).
        column: usize,
        /// The `serde_json` error, whose message also names line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The config file parsed, but a value is out of range or inconsistent.
    #[error("invalid bootstrap config {}: {reason}", shown(.path.as_deref().unwrap_or(Path::new(""))))]
    ConfigValue {
        /// The config file, when the config came from one.
        path: Option<PathBuf>,
        /// What is wrong, naming the offending field.
        reason: String,
    },
    /// The cache could not be encoded as JSON (should not happen; reported rather than panicking).
    #[error("cannot encode the bootstrap cache: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A path for a message: its display form, or `(in memory)` for text parsed without a file.
fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "(in memory)".to_owned()
    } else {
        path.display().to_string()
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
