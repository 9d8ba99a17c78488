//! Shared helpers for the benchmark binaries in `src/bin/`.
//!
//! Each binary measures one thing against a baseline in the same run and
//! prints a Markdown table row that goes into `docs/BENCHMARKS.md`.

use std::time::Duration;

/// Percentile (0..=100) of a sorted sample.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median of an unsorted sample.
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    percentile(samples, 50.0)
}
