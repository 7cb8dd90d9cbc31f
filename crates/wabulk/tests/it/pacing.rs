//! Tiers hold on a loaded machine: the demo's numbers sent with a CPU hog on
//! both cores beside the engine, the simulator and the broker. A stalled
//! runtime bunches requests on their way out; the departure gates and the
//! window widened by the measured scheduling delay must keep every number
//! within its tier at the simulator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wabulk::demo::DemoOptions;

use crate::harness::init_logs;

/// Busy threads that compete for the CPU until stopped, each reporting the
/// CPU time it got, so the test can show that the machine was loaded.
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Duration>>,
    started: Instant,
}

impl CpuHog {
    fn start(threads: usize) -> CpuHog {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let before = thread_cpu_time();
                    let mut spin = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        spin = std::hint::black_box(spin.wrapping_add(1));
                    }
                    thread_cpu_time() - before
                })
            })
            .collect();
        CpuHog { stop, threads, started: Instant::now() }
    }

    /// Stops the threads; returns the wall time and the CPU time they got.
    fn stop(self) -> (Duration, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let cpu = self.threads.into_iter().map(|t| t.join().expect("hog thread")).sum();
        (self.started.elapsed(), cpu)
    }
}

/// CPU time of the calling thread, from the scheduler's own accounting.
fn thread_cpu_time() -> Duration {
    let stat =
        std::fs::read_to_string("/proc/thread-self/schedstat").expect("read /proc/thread-self/schedstat");
    let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok()).expect("schedstat's first field");
    Duration::from_nanos(ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_hold_with_a_cpu_hog_on_both_cores() {
    init_logs();
    let hog = CpuHog::start(2);
    let options = DemoOptions {
        jobs: 8000,
        latency_scale: 0.05,
        quiet: true,
        timeout_s: 240,
        engine_binary: Some(env!("CARGO_BIN_EXE_wabulk").into()),
        ..Default::default()
    };
    let report = wabulk::demo::run(options).await.expect("the demo runs");
    let (wall, hog_cpu) = hog.stop();
    println!(
        "loaded run: {:.1} s, hog CPU {:.1} s; per number (tier, max in 1 s, achieved/s): {:?}",
        wall.as_secs_f64(),
        hog_cpu.as_secs_f64(),
        report.numbers.iter().map(|n| (n.tier, n.max_in_any_1s_window, n.achieved_mps)).collect::<Vec<_>>()
    );
    // The scenario happened: the hog held at least a quarter of the two
    // cores for the whole run, and the small tiers were driven at their
    // limit, where bunched requests would break it.
    assert!(hog_cpu >= wall / 2, "the hog got only {hog_cpu:?} of CPU in {wall:?}");
    for number in report.numbers.iter().filter(|n| n.tier <= 80) {
        assert!(
            number.max_in_any_1s_window * 10 >= u64::from(number.tier) * 9,
            "number {} was not driven at its tier: {} in its busiest second",
            number.phone_number_id,
            number.max_in_any_1s_window
        );
    }
    let sim = &report.sim;
    assert_eq!(sim.violations_phone, 0, "a number went over its tier at the simulator: {sim:?}");
    assert_eq!(sim.violations_pair + sim.violations_waba, 0, "limits broken: {sim:?}");
    assert_eq!(report.results, report.written - report.malformed, "one result per valid job");
    assert!(report.passed(), "the demo's own verdict: {:?}", report.checks);
}
