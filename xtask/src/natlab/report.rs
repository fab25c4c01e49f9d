//! The result of each cell, the matrix printed at the end and the JSON file.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// The result of one cell.
#[derive(Debug)]
pub(crate) struct CellReport {
    /// Cell name, e.g. `observe/symmetric`.
    pub(crate) name: String,
    /// Short outcome, e.g. `1/4 connected` or `error`.
    pub(crate) outcome: String,
    /// Why the outcome differs from the expectation; empty when it matches.
    pub(crate) mismatches: Vec<String>,
    /// One line of facts for people (addresses, ports, times).
    pub(crate) details: String,
    /// The raw facts, for the JSON file.
    pub(crate) data: Value,
    /// Wall time of the cell.
    pub(crate) elapsed: Duration,
}

impl CellReport {
    /// A cell that could not be run to its end (a node did not start, a required
    /// connection to the rendezvous failed, …): always unexpected.
    pub(crate) fn error(name: &str, error: &anyhow::Error, elapsed: Duration) -> Self {
        CellReport {
            name: name.to_owned(),
            outcome: "error".to_owned(),
            mismatches: vec![format!("{error:#}")],
            details: String::new(),
            data: Value::Null,
            elapsed,
        }
    }

    /// Whether the outcome matches today's expectation.
    pub(crate) fn expected(&self) -> bool {
        self.mismatches.is_empty()
    }

    fn to_json(&self) -> Value {
        json!({
            "cell": self.name,
            "outcome": self.outcome,
            "expected": self.expected(),
            "mismatches": self.mismatches,
            "details": self.details,
            "seconds": round2(self.elapsed.as_secs_f64()),
            "facts": self.data,
        })
    }
}

/// Seconds rounded to hundredths, for reports.
pub(crate) fn round2(seconds: f64) -> f64 {
    (seconds * 100.0).round() / 100.0
}

/// The matrix: one row per cell, then a summary line.
pub(crate) fn matrix(cells: &[CellReport]) -> String {
    let name_w = cells.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    let outcome_w = cells
        .iter()
        .map(|c| c.outcome.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<name_w$}  {:<outcome_w$}  {:<10}  {:>6}  details",
        "cell", "outcome", "verdict", "time"
    );
    let _ = writeln!(out, "{}", "-".repeat(name_w + outcome_w + 40));
    for c in cells {
        let verdict = if c.expected() {
            "expected"
        } else {
            "UNEXPECTED"
        };
        let _ = writeln!(
            out,
            "{:<name_w$}  {:<outcome_w$}  {verdict:<10}  {:>5.1}s  {}",
            c.name,
            c.outcome,
            c.elapsed.as_secs_f64(),
            c.details
        );
        for m in &c.mismatches {
            let _ = writeln!(out, "{:<name_w$}  -> {m}", "");
        }
    }
    let unexpected = cells.iter().filter(|c| !c.expected()).count();
    let _ = writeln!(
        out,
        "{} cells, {} expected, {unexpected} unexpected",
        cells.len(),
        cells.len() - unexpected
    );
    out
}

/// Writes the JSON report (`mode`, `lab` prefix, every cell with its raw facts).
pub(crate) fn write_json(
    path: &Path,
    mode: &str,
    prefix: &str,
    cells: &[CellReport],
    total: Duration,
) -> Result<()> {
    let unexpected = cells.iter().filter(|c| !c.expected()).count();
    let report = json!({
        "tool": "cargo xtask natlab",
        "mode": mode,
        "lab": prefix,
        "finished_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "seconds": round2(total.as_secs_f64()),
        "unexpected": unexpected,
        "cells": cells.iter().map(CellReport::to_json).collect::<Vec<_>>(),
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_flags_unexpected_rows() {
        let cells = [
            CellReport {
                name: "observe/none".into(),
                outcome: "ok".into(),
                mismatches: vec![],
                details: "198.19.1.10".into(),
                data: Value::Null,
                elapsed: Duration::from_millis(1500),
            },
            CellReport::error(
                "pair/none->none",
                &anyhow::anyhow!("a1 did not start"),
                Duration::ZERO,
            ),
        ];
        let text = matrix(&cells);
        assert!(text.contains("observe/none"));
        assert!(text.contains("expected"));
        assert!(text.contains("UNEXPECTED"));
        assert!(text.contains("-> a1 did not start"));
        assert!(text.contains("2 cells, 1 expected, 1 unexpected"));
    }
}
