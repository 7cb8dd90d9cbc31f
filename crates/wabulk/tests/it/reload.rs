//! Steering a running `wabulk run`: SIGHUP applies a raised tier with no
//! violation and refuses, naming the key, what needs a restart or is
//! invalid; a rotated token file lets a WABA halted for its refused token
//! resume by itself.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use wabulk_graph_sim::Latency;

use crate::harness::{
    accepted_during, free_port, http_call, init_logs, sim_config, violations, write_text_jobs, Collector,
    EngineProcess, EngineToml, Number, Program, Stack, TempDir, MPS_MARGIN, RESULTS, WABA,
};

const PHONE: &str = "106540352242922";

fn hang_up(engine: &EngineProcess) {
    let status = Command::new("kill").args(["-HUP", &engine.pid().to_string()]).status().expect("kill -HUP");
    assert!(status.success());
}

/// Waits (10 s at most) for a log line with every one of `words`, beyond
/// the `seen` lines that had them already.
async fn log_line(engine: &EngineProcess, words: &[&str], seen: usize) -> Option<String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Some(line) = engine.log_lines(words).into_iter().nth(seen) {
            return Some(line);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn rewrite(toml: &EngineToml, dir: &Path) {
    toml.write(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_raises_a_tier_and_refuses_what_needs_a_restart() {
    init_logs();
    let numbers = [Number::new(PHONE, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 2).await;
    let dir = TempDir::new("reload-tier");
    let mut toml = EngineToml::new(&stack, "it-reload-tier", &numbers);
    toml.limits.push(MPS_MARGIN.into());
    let config = toml.write(dir.path());
    let mut engine = EngineProcess::spawn(Program::Wabulk, &config, dir.path(), 0);
    let results = Collector::start(&stack.brokers(), RESULTS);
    write_text_jobs(&stack, PHONE, "tier", 9_000).await;
    assert!(results.wait_until(Duration::from_secs(60), |r| r.len() >= 100).await, "the number never sent");

    // Needs a restart: refused, naming the key.
    let mut restart = EngineToml { kafka: vec!["max_job_bytes = 1000".into()], ..toml.clone() };
    rewrite(&restart, dir.path());
    hang_up(&engine);
    let refused = log_line(&engine, &["reload refused"], 0).await.expect("no refusal logged");
    assert!(refused.contains("kafka.max_job_bytes"), "{refused}");
    // Invalid: refused, naming the key.
    restart.kafka.clear();
    restart.numbers[0].mps = 0;
    rewrite(&restart, dir.path());
    hang_up(&engine);
    let invalid = log_line(&engine, &["reload refused"], 1).await.expect("no second refusal logged");
    assert!(invalid.contains("phones[0].mps"), "{invalid}");
    let (at_80, span) = accepted_during(&stack, PHONE, Duration::from_secs(2)).await;
    assert!(at_80 as f64 <= 80.0 * (span.as_secs_f64() + 1.0), "{at_80} in {span:?}: the old tier holds");

    // Meta upgraded the number; the operator raises its tier.
    stack.sim.upgrade_number(PHONE, 1000).expect("a known number");
    toml.numbers[0].mps = 1000;
    rewrite(&toml, dir.path());
    hang_up(&engine);
    log_line(&engine, &["configuration reloaded"], 0).await.expect("the reload was not applied");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (at_1000, span) = accepted_during(&stack, PHONE, Duration::from_secs(2)).await;
    results.stop().await;
    engine.terminate();
    assert!(
        engine.wait_exit(Duration::from_secs(30)).is_some_and(|e| e.success()),
        "{}",
        engine.log_tail(20)
    );
    let stats = stack.stop().await;

    assert!(at_1000 >= 2 * 500, "{at_1000} accepted in {span:?} after the tier was raised to 1000");
    assert!(at_1000 as f64 <= 1000.0 * (span.as_secs_f64() + 1.0), "{at_1000} in {span:?}: over the tier");
    assert_eq!(violations(&stats), 0, "{:?}", stats.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_resumes_a_halted_waba_by_itself() {
    init_logs();
    const JOBS_N: usize = 400;
    let numbers = [Number::new(PHONE, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 2).await;
    let dir = TempDir::new("reload-token");
    let token_file = dir.path().join("waba.token");
    std::fs::write(&token_file, format!("{}\n", crate::harness::TOKEN)).expect("token file");
    let mut toml = EngineToml::new(&stack, "it-reload-token", &numbers);
    toml.token_file = Some(token_file.clone());
    // Jobs of the halted WABA wait in memory, and its token would be
    // checked again only after 10 minutes: only the file change can let
    // it resume within the test.
    toml.parking.push("enabled = false".into());
    toml.graph.push("token_check_interval_ms = 600000".into());
    let mut engine = EngineProcess::spawn(Program::Wabulk, &toml.write(dir.path()), dir.path(), 0);
    let results = Collector::start(&stack.brokers(), RESULTS);
    write_text_jobs(&stack, PHONE, "token", JOBS_N).await;
    assert!(results.wait_until(Duration::from_secs(60), |r| r.len() >= 20).await, "the number never sent");

    // The token is revoked at Meta: the engine halts the WABA.
    stack.sim.set_token(WABA, "it-token-rotated").expect("a known WABA");
    log_line(&engine, &["access token of this WABA was refused"], 0).await.expect("the WABA was not halted");
    let halted_at = results.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(results.len() < JOBS_N, "the halt came while jobs were waiting");

    std::fs::write(&token_file, "it-token-rotated\n").expect("rotate the token file");
    let rotated = Instant::now();
    let all = results.wait_until(Duration::from_secs(30), |r| r.len() >= JOBS_N).await;
    let resumed_within = rotated.elapsed();
    let done = results.results();
    results.stop().await;
    engine.terminate();
    assert!(
        engine.wait_exit(Duration::from_secs(30)).is_some_and(|e| e.success()),
        "{}",
        engine.log_tail(20)
    );
    let stats = stack.stop().await;

    assert!(all, "{} of {JOBS_N} answered ({halted_at} when halted)", done.len());
    assert!(done.iter().all(|r| r.wamid.is_some()), "every job sent once the token was rotated");
    assert!(resumed_within < Duration::from_secs(30), "resumed {resumed_within:?} after the rotation");
    assert!(stats.errors_by_code.get("190").is_some_and(|&n| n > 0), "the old token was refused");
    assert_eq!(violations(&stats), 0, "{:?}", stats.violations);
}

/// The status code of an HTTP answer, and its text.
fn status_of(answer: &str) -> (u16, &str) {
    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, answer.split("\r\n\r\n").nth(1).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_reload_and_steer_campaigns_with_the_admin_token() {
    init_logs();
    const ADMIN: &str = "it-admin-token-7c1d";
    let numbers = [Number::new(PHONE, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 2).await;
    let dir = TempDir::new("reload-admin");
    let port = free_port();
    let mut toml = EngineToml::new(&stack, "it-reload-admin", &numbers);
    toml.http_listen = format!("127.0.0.1:{port}");
    let config = toml.write(dir.path());
    let env = [
        (crate::harness::TOKEN_ENV.to_owned(), crate::harness::TOKEN.to_owned()),
        ("WABULK_ADMIN_TOKEN".to_owned(), ADMIN.to_owned()),
    ];
    let mut engine =
        EngineProcess::spawn_with(Program::Wabulk, &config, dir.path(), 0, &env, "info,librdkafka=warn");
    let controls = Collector::start(&stack.brokers(), "wabulk.control");
    let bearer = format!("Authorization: Bearer {ADMIN}");
    let started = Instant::now();
    let call = |method: &str, path: &str, headers: &[&str]| loop {
        match http_call(port, method, path, headers) {
            Ok(answer) => break answer,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(error) => panic!("the engine does not answer on {port}: {error}"),
        }
    };

    assert_eq!(status_of(&call("POST", "/admin/reload", &[])).0, 401, "no token");
    assert_eq!(
        status_of(&call("POST", "/admin/reload", &["Authorization: Bearer guess"])).0,
        401,
        "wrong token"
    );
    let answer = call("POST", "/admin/reload", &[&bearer]);
    let (code, text) = status_of(&answer);
    assert_eq!(code, 200, "{text}");
    let mut invalid = toml.clone();
    invalid.numbers[0].mps = 0;
    rewrite(&invalid, dir.path());
    let answer = call("POST", "/admin/reload", &[&bearer]);
    let (code, text) = status_of(&answer);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("phones[0].mps"), "the refusal names the key: {text}");
    assert_eq!(status_of(&call("GET", "/admin/reload", &[&bearer])).0, 405);
    assert_eq!(status_of(&call("POST", "/admin/campaigns/nov%20shipping/frobnicate", &[&bearer])).0, 404);
    let answer = call("POST", "/admin/campaigns/nov%20shipping/pause", &[&bearer]);
    assert_eq!(status_of(&answer).0, 200, "{answer}");
    assert!(controls.wait_until(Duration::from_secs(10), |r| !r.is_empty()).await, "no control record");
    let records = controls.records();
    controls.stop().await;
    engine.terminate();
    assert!(
        engine.wait_exit(Duration::from_secs(30)).is_some_and(|e| e.success()),
        "{}",
        engine.log_tail(20)
    );
    stack.stop().await;

    let control: wabulk_model::Control =
        serde_json::from_slice(&records[0].payload).expect("a control record");
    assert_eq!(records[0].key.as_deref(), Some(&b"nov shipping"[..]));
    assert_eq!(
        (control.campaign.as_str(), control.state),
        ("nov shipping", wabulk_model::CampaignState::Paused)
    );
    assert!(!engine.log_lines(&[ADMIN]).iter().any(|_| true), "the admin token is never logged");
}
