//! The process's resources the soak watches: resident memory, open file descriptors and
//! tokio tasks alive.

use serde_json::{Value, json};

/// One sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Resident set size in KiB (`VmRSS` of `/proc/self/status`).
    pub(crate) rss_kib: u64,
    /// Entries of `/proc/self/fd`.
    pub(crate) fds: u64,
    /// Tasks alive in the tokio runtime.
    pub(crate) tasks: u64,
}

impl Sample {
    /// Now. Fields that cannot be read (not Linux) are 0.
    pub(crate) fn now() -> Sample {
        Sample {
            rss_kib: rss_kib().unwrap_or(0),
            fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u64)
                .unwrap_or(0),
            tasks: tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_alive_tasks() as u64)
                .unwrap_or(0),
        }
    }

    /// The larger of each field.
    pub(crate) fn max(self, other: Sample) -> Sample {
        Sample {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
            tasks: self.tasks.max(other.tasks),
        }
    }

    pub(crate) fn to_json(self) -> Value {
        json!({"rss_kib": self.rss_kib, "fds": self.fds, "tasks": self.tasks})
    }
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
