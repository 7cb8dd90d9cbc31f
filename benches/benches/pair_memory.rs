//! Memory per tracked pair at 1M and 10M pairs.
//!
//! A counting global allocator would need `unsafe impl GlobalAlloc`, which the
//! workspace forbids, so two independent readings are printed instead: the
//! bytes the map itself allocated (`PairBudgets::heap_bytes`, from hashbrown's
//! `allocation_size`) and the growth of the process's resident set
//! (`/proc/self/statm`) while the pairs were inserted. RSS counts pages the
//! table touched, so after the last resize it matches the table size; the
//! old table freed by a resize goes back to the OS (glibc uses mmap for
//! blocks this large), so it does not inflate the figure.

use std::time::Instant;

use wabulk_limits::{Moment, PairBudgets, PairRule};

/// Resident set size in bytes, from the second field of /proc/self/statm.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn measure(pairs: u64) {
    let rss_before = rss_bytes();
    let start = Instant::now();
    let mut budgets = PairBudgets::new(PairRule::default());
    for i in 0..pairs {
        // Distinct phone-number-like recipients; 100,000 new pairs per ms of
        // simulated time, so all of them are still in debt when the last one
        // is added and the automatic sweeps find nothing to drop.
        let recipient = 33_600_000_000 + i.wrapping_mul(7919);
        let now = Moment::from_millis(i / 100_000);
        budgets.acquire(recipient, now).expect("a new pair is always allowed");
    }
    let elapsed = start.elapsed();
    let rss_after = rss_bytes();
    let len = budgets.len() as f64;
    let heap = budgets.heap_bytes() as f64;
    print!(
        "{:>10} pairs: heap_bytes/pair {:>6.2} (table {:>7.1} MiB)",
        budgets.len(),
        heap / len,
        heap / (1024.0 * 1024.0)
    );
    match (rss_before, rss_after) {
        (Some(b), Some(a)) => print!(", RSS growth/pair {:>6.2}", a.saturating_sub(b) as f64 / len),
        _ => print!(", RSS not available"),
    }
    println!(
        ", inserted in {:.2} s ({:.1} M pairs/s)",
        elapsed.as_secs_f64(),
        len / elapsed.as_secs_f64() / 1e6
    );
    drop(budgets);
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects sizes ("1M", "10M", "worst").
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    // 917,505 is one pair past 7/8 of 2^20 slots: the table has just doubled,
    // the worst bytes-per-pair hashbrown's load factor allows.
    for (name, pairs) in [("1M", 1_000_000), ("10M", 10_000_000), ("worst", 917_505)] {
        if filter.is_empty() || filter.iter().any(|f| f == name) {
            measure(pairs);
        }
    }
}
