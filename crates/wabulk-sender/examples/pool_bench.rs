//! Load bench of the pooled sender against the Graph API simulator on
//! 127.0.0.1 (HTTP/2 cleartext). Two bounded phases:
//!
//! 1. throughput: the simulator answers at once; `--concurrency` loops send
//!    back to back for `--zero-secs` seconds; prints requests/s;
//! 2. in flight: the simulator answers after `--latency-ms`; `--inflight`
//!    loops send back to back for `--inflight-secs` seconds; prints the
//!    requests in flight (sampled every 100 ms), requests/s and connections.
//!
//! Both print the refused-stream, connection-error and non-Sent counts, which
//! must be 0.
//!
//! ```text
//! cargo run --release -p wabulk-sender --example pool_bench -- \
//!     --zero-secs 5 --concurrency 256 --inflight 2000 --inflight-secs 10 --latency-ms 1000
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wabulk_graph_sim::{Latency, SimConfig, SimNumber, SimWaba, Simulator};
use wabulk_model::{NumericId, Outcome, RetryReason};
use wabulk_sender::{AccessToken, Sender, SenderConfig};

const NUMBER: u64 = 106540352242922;
const WABA: &str = "102290129340398";
const TOKEN: &str = "bench-token";

#[derive(Debug)]
struct Args {
    zero_secs: u64,
    concurrency: u64,
    inflight: u64,
    inflight_secs: u64,
    latency_ms: u64,
}

fn parse_args() -> Args {
    let mut args =
        Args { zero_secs: 5, concurrency: 256, inflight: 2000, inflight_secs: 10, latency_ms: 1000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: u64 =
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--zero-secs" => args.zero_secs = value.min(60),
            "--concurrency" => args.concurrency = value.clamp(1, 20_000),
            "--inflight" => args.inflight = value.clamp(1, 20_000),
            "--inflight-secs" => args.inflight_secs = value.min(120),
            "--latency-ms" => args.latency_ms = value.min(10_000),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// Counts of one phase.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    connection: AtomicU64,
    timeout: AtomicU64,
    other: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!("{args:?}");
    if args.zero_secs > 0 {
        let rate = phase("throughput (latency 0)", Duration::ZERO, args.concurrency, args.zero_secs).await;
        println!("  => {rate:.0} requests/s at zero latency with {} concurrent senders", args.concurrency);
    }
    if args.inflight_secs > 0 {
        let latency = Duration::from_millis(args.latency_ms);
        phase("sustained in flight", latency, args.inflight, args.inflight_secs).await;
    }
}

/// One phase: a fresh simulator and sender, `loops` senders for `secs`.
/// Returns requests/s.
async fn phase(name: &str, latency: Duration, loops: u64, secs: u64) -> f64 {
    let config = SimConfig {
        numbers: vec![SimNumber { id: NUMBER.to_string(), mps: 10_000_000, waba_id: WABA.into() }],
        wabas: vec![SimWaba { id: WABA.into(), token: TOKEN.into(), hourly_cap: u64::MAX / 2 }],
        latency: Latency::Fixed(latency),
        seed: Some(1),
        ..SimConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let sim = Simulator::start(config, listener).await.expect("simulator");
    let sender =
        Sender::new(SenderConfig { base_url: sim.base_url(), ..SenderConfig::default() }).expect("sender");
    let token = AccessToken::new(TOKEN.into());

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next_recipient = Arc::new(AtomicU64::new(10_000_000_000));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..loops {
        let (sender, token, tally, stop, next) =
            (sender.clone(), token.clone(), tally.clone(), stop.clone(), next_recipient.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A new recipient per message keeps clear of the pair rule.
                let to = next.fetch_add(1, Ordering::Relaxed);
                let body = Bytes::from(format!(
                    r#"{{"messaging_product":"whatsapp","to":"{to}","type":"text","text":{{"body":"bench"}}}}"#
                ));
                let counter = match sender.send(NumericId::new(NUMBER), &token, body, 1, None).await {
                    Outcome::Sent { .. } => &tally.sent,
                    Outcome::Retry { reason: RetryReason::Connection | RetryReason::Broken, .. } => &tally.connection,
                    Outcome::Retry { reason: RetryReason::Timeout, .. } => &tally.timeout,
                    other => {
                        if tally.other.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("unexpected outcome: {other:?}");
                        }
                        &tally.other
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    // Sample the pool while the phase runs; skip the first second (ramp-up)
    // in the in-flight average when the phase is long enough.
    let mut samples = Vec::new();
    let mut max_connections = 0;
    // Requests/s are counted after the ramp-up too: with 1 s latency nothing
    // completes in the first second, which would understate the steady rate.
    let mut steady_from: Option<(Instant, u64)> = None;
    let deadline = started + Duration::from_secs(secs);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = sender.pool_stats();
        max_connections = max_connections.max(stats.connections);
        if started.elapsed() > Duration::from_secs(1) || secs <= 1 {
            samples.push(stats.in_flight);
            steady_from.get_or_insert_with(|| (Instant::now(), tally.sent.load(Ordering::Relaxed)));
        }
    }
    let counted_at = started.elapsed();
    let sent_at_deadline = tally.sent.load(Ordering::Relaxed);
    let steady_rate =
        steady_from.map_or(0.0, |(at, sent)| (sent_at_deadline - sent) as f64 / at.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}

    let stats = sender.pool_stats();
    let rate = sent_at_deadline as f64 / counted_at.as_secs_f64();
    let mean_inflight = samples.iter().sum::<usize>() as f64 / samples.len().max(1) as f64;
    let min_inflight = samples.iter().copied().min().unwrap_or(0);
    println!("{name}: latency {latency:?}, {loops} concurrent senders, {secs} s");
    println!(
        "  sent {} ({rate:.0}/s overall, {steady_rate:.0}/s after 1 s ramp-up); in flight mean {mean_inflight:.0}, min {min_inflight} (after 1 s ramp-up); connections max {max_connections}, opened {}",
        tally.sent.load(Ordering::Relaxed),
        stats.opened_total
    );
    println!(
        "  refused streams {}, connection errors {}, connect errors {}, broken connections {}, timeouts {}, other {}",
        stats.refused_total,
        tally.connection.load(Ordering::Relaxed),
        stats.connect_errors_total,
        stats.broken_total,
        tally.timeout.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed)
    );
    let sim_stats = sim.stats();
    println!(
        "  simulator: {} requests, {} accepted, {} connections, violations {:?}",
        sim_stats.requests, sim_stats.accepted, sim_stats.connections, sim_stats.violations
    );
    sim.shutdown().await;
    rate
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
