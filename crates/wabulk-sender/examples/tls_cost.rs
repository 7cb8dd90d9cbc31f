//! The CPU cost of TLS per request: the sender sends the same number of
//! requests at the same rate to a simulator over HTTP/2 cleartext and to one
//! over HTTPS (HTTP/2 by ALPN), alternating, `--runs` times each, and reads
//! its own process's CPU time (user + system, /proc/self/stat) for each run.
//! The simulators run in two child processes (this example re-started with
//! `serve`), so their work, TLS included, is not counted.
//!
//! ```text
//! cargo run --release -p wabulk-sender --example tls_cost -- --jobs 20000 --rate 2000 --runs 3
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wabulk_graph_sim::{Latency, SimConfig, SimNumber, SimWaba, Simulator};
use wabulk_model::{NumericId, Outcome};
use wabulk_sender::{AccessToken, Sender, SenderConfig};

const NUMBER: u64 = 106540352242922;
const WABA: &str = "102290129340398";
const TOKEN: &str = "bench-token";
/// The simulator's answer delay: a few requests in flight, as against Meta.
const LATENCY: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Args {
    jobs: u64,
    rate: u64,
    runs: usize,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let mut args = Args { jobs: 20_000, rate: 2_000, runs: 3 };
    while let Some(flag) = it.next() {
        let value: u64 =
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--jobs" => args.jobs = value.clamp(100, 1_000_000),
            "--rate" => args.rate = value.clamp(100, 50_000),
            "--runs" => args.runs = (value as usize).clamp(1, 9),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("serve") {
        argv.next();
        let tls = argv.next().as_deref() == Some("tls");
        return serve(tls);
    }
    let args = parse_args(argv);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(measure(args));
}

/// A child process: one simulator on 127.0.0.1:0 until stdin closes; its
/// base URL and CA (PEM, one line per line) on stdout, then `ready`.
fn serve(tls: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let config = SimConfig {
            numbers: vec![SimNumber { id: NUMBER.to_string(), mps: 10_000_000, waba_id: WABA.into() }],
            wabas: vec![SimWaba { id: WABA.into(), token: TOKEN.into(), hourly_cap: u64::MAX / 2 }],
            latency: Latency::Fixed(LATENCY),
            seed: Some(1),
            tls,
            ..SimConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sim = Simulator::start(config, listener).await.expect("simulator");
        println!("{}", sim.base_url());
        print!("{}", sim.ca_pem().unwrap_or_default());
        println!("ready");
        // Until the parent closes our stdin (or dies).
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await.expect("stdin");
        sim.shutdown().await;
    });
}

/// A simulator child process, killed when dropped.
struct SimProcess {
    child: Child,
    base_url: String,
    ca_file: Option<std::path::PathBuf>,
}

impl SimProcess {
    fn start(tls: bool) -> SimProcess {
        let mut child = Command::new(std::env::current_exe().expect("this example"))
            .args(["serve", if tls { "tls" } else { "h2c" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the simulator process");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base_url = lines.next().expect("a base URL").expect("read");
        let mut pem = String::new();
        for line in lines.by_ref() {
            let line = line.expect("read");
            if line == "ready" {
                break;
            }
            pem.push_str(&line);
            pem.push('\n');
        }
        let ca_file = tls.then(|| {
            let path = std::env::temp_dir().join(format!("wabulk-tls-cost-ca-{}.pem", std::process::id()));
            std::fs::write(&path, &pem).expect("write the CA");
            path
        });
        SimProcess { child, base_url, ca_file }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(path) = &self.ca_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// This process's CPU time so far (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may contain spaces): state is the
    // 3rd field; utime and stime are the 14th and 15th, in clock ticks.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // Linux's USER_HZ is 100 on every architecture it runs on.
    Duration::from_millis(ticks * 10)
}

/// One run: a fresh sender, `jobs` requests at `rate`/s; the CPU time it took.
async fn run(sim: &SimProcess, args: &Args) -> (Duration, Duration, u64) {
    let sender = Sender::new(SenderConfig {
        base_url: sim.base_url.clone(),
        ca_file: sim.ca_file.clone(),
        ..SenderConfig::default()
    })
    .expect("sender");
    let token = AccessToken::new(TOKEN.into());
    let cpu_before = cpu_time();
    let started = Instant::now();
    let per_tick = (args.rate / 100).max(1);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = tokio::task::JoinSet::new();
    let mut issued = 0;
    while issued < args.jobs {
        ticker.tick().await;
        for _ in 0..per_tick.min(args.jobs - issued) {
            let (sender, token) = (sender.clone(), token.clone());
            let to = 10_000_000_000 + issued;
            tasks.spawn(async move {
                let body = Bytes::from(format!(
                    r#"{{"messaging_product":"whatsapp","to":"{to}","type":"text","text":{{"body":"tls cost"}}}}"#
                ));
                sender.send(NumericId::new(NUMBER), &token, body, 1, None).await
            });
            issued += 1;
        }
        // Reap as we go, so the set stays small.
        while let Some(done) = tasks.try_join_next() {
            done.expect("send task");
        }
    }
    let mut not_sent = 0;
    while let Some(outcome) = tasks.join_next().await {
        if !matches!(outcome.expect("send task"), Outcome::Sent { .. }) {
            not_sent += 1;
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    drop(sender);
    (cpu, elapsed, not_sent)
}

async fn measure(args: Args) {
    println!("{args:?}; simulator latency {LATENCY:?}");
    let h2c = SimProcess::start(false);
    let https = SimProcess::start(true);
    let mut per_job: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=args.runs {
        for (mode, sim) in [(0, &h2c), (1, &https)] {
            let (cpu, elapsed, not_sent) = run(sim, &args).await;
            let micros = cpu.as_secs_f64() * 1e6 / args.jobs as f64;
            println!(
                "run {round} {:<5} {} jobs in {:.1} s ({:.0}/s): CPU {:.2} s = {micros:.1} µs/job, not sent {not_sent}",
                ["h2c", "https"][mode],
                args.jobs,
                elapsed.as_secs_f64(),
                args.jobs as f64 / elapsed.as_secs_f64(),
                cpu.as_secs_f64(),
            );
            assert_eq!(not_sent, 0, "every request must be sent");
            per_job[mode].push(micros);
        }
    }
    let summary = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (values[values.len() / 2], values[0], values[values.len() - 1])
    };
    let (h2c_median, h2c_min, h2c_max) = summary(&mut per_job[0]);
    let (tls_median, tls_min, tls_max) = summary(&mut per_job[1]);
    println!("h2c:   median {h2c_median:.1} µs/job (range {h2c_min:.1}–{h2c_max:.1})");
    println!("https: median {tls_median:.1} µs/job (range {tls_min:.1}–{tls_max:.1})");
    println!("TLS cost: {:.1} µs/job (difference of the medians)", tls_median - h2c_median);
}
