//! Tiers hold on a loaded machine: the demo's numbers sent with a CPU hog on
//! both cores beside the engine, the simulator and the broker. A stalled
//! runtime bunches requests on their way out; the departure gates and the
//! window widened by the measured scheduling delay must keep every number
//! within its tier at the simulator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wabulk_lab::demo::DemoOptions;

use crate::harness::init_logs;

/// Busy threads that compete for the CPU until stopped, each reporting the
/// CPU time it got and the time it waited for a CPU, so the test can show
/// that the machine was loaded.
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(Duration, Duration)>>,
    started: Instant,
}

impl CpuHog {
    fn start(threads: usize) -> CpuHog {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let before = thread_sched_times();
                    let mut spin = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        spin = std::hint::black_box(spin.wrapping_add(1));
                    }
                    let after = thread_sched_times();
                    (after.0 - before.0, after.1 - before.1)
                })
            })
            .collect();
        CpuHog { stop, threads, started: Instant::now() }
    }

    /// Stops the threads; returns the wall time, the CPU time they got and
    /// the time they waited for a CPU, summed over the threads.
    fn stop(self) -> (Duration, Duration, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut cpu, mut waited) = (Duration::ZERO, Duration::ZERO);
        for thread in self.threads {
            let (ran, queued) = thread.join().expect("hog thread");
            cpu += ran;
            waited += queued;
        }
        (self.started.elapsed(), cpu, waited)
    }
}

/// The calling thread's time on a CPU and time waiting in a run queue, from
/// the kernel scheduler's own accounting.
fn thread_sched_times() -> (Duration, Duration) {
    let stat =
        std::fs::read_to_string("/proc/thread-self/schedstat").expect("read /proc/thread-self/schedstat");
    let mut fields =
        stat.split_whitespace().map(|n| Duration::from_nanos(n.parse().expect("a schedstat field")));
    (fields.next().expect("run time"), fields.next().expect("run-queue wait"))
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
    let report = wabulk_lab::demo::run(options).await.expect("the demo runs");
    let (wall, hog_cpu, hog_waited) = hog.stop();
    println!(
        "loaded run: {:.1} s, hog CPU {:.1} s, hog waiting for a CPU {:.1} s; per number (tier, max in 1 s, achieved/s): {:?}",
        wall.as_secs_f64(),
        hog_cpu.as_secs_f64(),
        hog_waited.as_secs_f64(),
        report.numbers.iter().map(|n| (n.tier, n.max_in_any_1s_window, n.achieved_mps)).collect::<Vec<_>>()
    );
    // The scenario happened: the hog ran (an eighth of the two cores at
    // least), the CPUs were oversubscribed (runnable threads, the hog's
    // among them, waited for one a fifth of the run at least; other load on
    // the machine only adds to both waits), and the small tiers were driven
    // at their limit, where bunched requests would break it.
    assert!(hog_cpu >= wall / 4, "the hog got only {hog_cpu:?} of CPU in {wall:?}");
    assert!(hog_waited >= wall / 5, "the CPUs were not contended: the hog waited {hog_waited:?} in {wall:?}");
    // Driven at its limit, a number's window is at most 1.26 s (1 s, the
    // 1 % margin and the largest allowance, 250 ms), so its fullest second
    // holds at least 79 % of its tier, less one send for the phase: 70 %
    // leaves room for that and proves the limit was reached for (with the
    // hog alone the allowance is tens of milliseconds and it holds 95 %).
    for number in report.numbers.iter().filter(|n| n.tier <= 80) {
        assert!(
            number.max_in_any_1s_window * 100 >= u64::from(number.tier) * 70,
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
