//! Access tokens never leave the engine except in the `Authorization`
//! header (CONTRACT §7): not in its logs at trace level, its standard
//! output, `check-config`, `/metrics`, the results or the DLQ, whatever
//! path a job takes (sent, failed, rejected, dead letter, halted WABA).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use wabulk_graph_sim::{ForcedError, Latency, SimNumber, SimWaba};
use wabulk_kafka::{JobWriter, Record};
use wabulk_model::Status;

use crate::harness::{
    free_port, http_get, init_logs, sample, sim_config, status_counts, Collector, EngineProcess, EngineToml,
    Number, OtherWaba, Program, Stack, TempDir, DLQ, JOBS, RESULTS, TOKEN_ENV,
};

const PHONE_GOOD: &str = "106540352242922";
const PHONE_UNDELIVERABLE: &str = "106540352242923";
const WABA_B: &str = "102290129340399";
const PHONE_B: &str = "106540352242950";
const TOKEN_B_ENV: &str = "WABULK_IT_SECRET_B_TOKEN";
const GOOD_JOBS: usize = 30;
const FAILED_JOBS: usize = 10;
const B_JOBS: usize = 10;

/// A token no other text would contain.
fn secret(name: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("EAAG-SECRET-{name}-{:x}{:x}", nanos, std::process::id())
}

/// Where `needle` occurs in `haystack`, as a message naming `place`.
fn leak(place: &str, haystack: &[u8], needle: &str) -> Option<String> {
    let at = haystack.windows(needle.len()).position(|w| w == needle.as_bytes())?;
    let from = at.saturating_sub(80);
    let to = (at + needle.len() + 80).min(haystack.len());
    Some(format!("{place}: …{}…", String::from_utf8_lossy(&haystack[from..to])))
}

fn job(id: &str, phone: &str, to: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "phone_number_id": phone,
        "to": to,
        "message": { "type": "text", "text": { "body": "secrets" } },
    }))
    .expect("json")
}

fn record_bytes(record: &Record) -> Vec<u8> {
    let mut bytes = record.key.clone().unwrap_or_default();
    bytes.push(b'\n');
    bytes.extend_from_slice(&record.payload);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs_metrics_results_or_dlq() {
    init_logs();
    let token_a = secret("A");
    let token_b = secret("B");
    let numbers = [Number::new(PHONE_GOOD, 80), Number::new(PHONE_UNDELIVERABLE, 80)];
    let mut sim = sim_config(&numbers, Latency::Fixed(Duration::from_millis(5)));
    sim.wabas[0].token = token_a.clone();
    // B's real token is another: the engine's is refused with 190.
    sim.numbers.push(SimNumber { id: PHONE_B.into(), mps: 80, waba_id: WABA_B.into() });
    sim.wabas.push(SimWaba { id: WABA_B.into(), token: "the-real-token-of-b".into(), hourly_cap: 1_800_000 });
    sim.faults.forced.push(ForcedError {
        code: 131026,
        http_status: 400,
        probability: 1.0,
        headers: Vec::new(),
        phone_number_id: Some(PHONE_UNDELIVERABLE.into()),
    });
    let stack = Stack::start(sim, 2).await;
    let dir = TempDir::new("secrets");
    let port = free_port();
    let mut toml = EngineToml::new(&stack, "it-secrets", &numbers);
    toml.other_wabas.push(OtherWaba {
        id: WABA_B.into(),
        token_env: TOKEN_B_ENV.into(),
        numbers: vec![Number::new(PHONE_B, 80)],
        hourly_call_cap: None,
    });
    toml.http_listen = format!("127.0.0.1:{port}");
    let config = toml.write(dir.path());
    let env = vec![(TOKEN_ENV.to_owned(), token_a.clone()), (TOKEN_B_ENV.to_owned(), token_b.clone())];
    let results = Collector::start(&stack.brokers(), RESULTS);
    let dead = Collector::start(&stack.brokers(), DLQ);
    let mut engine = EngineProcess::spawn_with(Program::Wabulk, &config, dir.path(), 0, &env, "trace");

    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let mut records: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    for n in 0..GOOD_JOBS {
        records.push((
            Some(PHONE_GOOD.into()),
            job(&format!("secret-ok-{n}"), PHONE_GOOD, &format!("+1555600{n:04}")),
        ));
    }
    for n in 0..FAILED_JOBS {
        let id = format!("secret-131026-{n}");
        records.push((
            Some(PHONE_UNDELIVERABLE.into()),
            job(&id, PHONE_UNDELIVERABLE, &format!("+1555700{n:04}")),
        ));
    }
    for n in 0..B_JOBS {
        records
            .push((Some(PHONE_B.into()), job(&format!("secret-b-{n}"), PHONE_B, &format!("+1555800{n:04}"))));
    }
    // A number in no configured WABA, naming an unknown WABA: `rejected`.
    records.push((
        Some("106540352249999".into()),
        serde_json::to_vec(&json!({
            "id": "secret-rejected", "phone_number_id": "106540352249999", "waba_id": "102290129349999",
            "to": "+15559000001", "message": { "type": "text", "text": { "body": "x" } },
        }))
        .expect("json"),
    ));
    let malformed: Vec<&[u8]> = vec![
        b"not json at all {",
        b"{\"id\": \"secret-bad\"}",
        b"{\"id\":\"x\",\"phone_number_id\":\"abc\"}",
    ];
    for payload in &malformed {
        records.push((Some(PHONE_GOOD.into()), payload.to_vec()));
    }
    records.push((None, b"\xff\xfe not utf-8".to_vec()));
    let dead_letters = malformed.len() + 1;
    for (key, payload) in &records {
        writer.send(JOBS, key.as_deref().map(str::as_bytes), payload).await.expect("write");
    }

    let expected_results = GOOD_JOBS + FAILED_JOBS + 1;
    let started = Instant::now();
    let all_in = results.wait_until(Duration::from_secs(60), |r| r.len() >= expected_results).await
        && dead.wait_until(Duration::from_secs(30), |r| r.len() >= dead_letters).await;
    assert!(
        all_in,
        "{} results of {expected_results}, {} dead letters of {dead_letters}:\n{}",
        results.len(),
        dead.len(),
        engine.log_tail(20)
    );
    let took = started.elapsed();
    // B's jobs are kept (halted WABA); give them time to show up wrongly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics_port = port;
    let mut metrics_body = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&metrics_body, "wabulk_jobs_consumed_total").is_none() && Instant::now() < deadline {
        metrics_body = tokio::task::spawn_blocking(move || http_get(metrics_port, "/metrics"))
            .await
            .expect("scrape")
            .unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // check-config with the tokens set, at trace level too.
    let check = Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["check-config", "--config"])
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "trace")
        .output()
        .expect("run wabulk check-config");

    engine.terminate();
    let exit = engine.wait_exit(Duration::from_secs(20));
    let all = results.results();
    let result_records = results.records();
    let dlq_records = dead.records();
    results.stop().await;
    dead.stop().await;
    let stats = stack.stop().await;
    let log = std::fs::read(&engine.log).expect("read the engine log");
    let out = std::fs::read(&engine.out).expect("read the engine's stdout");
    let trace_lines = String::from_utf8_lossy(&log).lines().filter(|l| l.contains("TRACE")).count();
    println!(
        "secrets: {} results ({:?}) in {:.1} s, {} dead letters; engine log {} bytes ({} lines, {trace_lines} \
         at TRACE), stdout {} bytes, /metrics {} bytes, check-config {} bytes; simulator errors {:?}",
        all.len(),
        status_counts(&all),
        took.as_secs_f64(),
        dlq_records.len(),
        log.len(),
        String::from_utf8_lossy(&log).lines().count(),
        out.len(),
        metrics_body.len(),
        check.stdout.len() + check.stderr.len(),
        stats.errors_by_code
    );

    // The scenario ran as intended, so every path had its chance to leak.
    assert!(matches!(exit, Some(s) if s.success()), "SIGTERM: {exit:?}");
    assert!(check.status.success(), "check-config: {}", String::from_utf8_lossy(&check.stderr));
    let check_text = String::from_utf8_lossy(&check.stdout);
    assert!(check_text.contains(TOKEN_ENV) && check_text.contains("(set)"), "check-config:\n{check_text}");
    assert!(trace_lines > 0, "the engine logged nothing at trace level: the test would miss a leak there");
    assert!(sample(&metrics_body, "wabulk_jobs_consumed_total").is_some(), "/metrics:\n{metrics_body}");
    let count = |status| all.iter().filter(|r| r.status == status).count();
    assert_eq!(
        (count(Status::Sent), count(Status::Failed), count(Status::Rejected), all.len()),
        (GOOD_JOBS, FAILED_JOBS, 1, expected_results),
        "results: {:?}",
        status_counts(&all)
    );
    assert_eq!(dlq_records.len(), dead_letters, "one dead letter per malformed record");
    assert!(stats.errors_by_code.contains_key("190"), "B's token was refused: {:?}", stats.errors_by_code);
    let halt_line =
        String::from_utf8_lossy(&log).lines().any(|l| l.contains("access token") && l.contains(WABA_B));
    assert!(halt_line, "the engine logged B's refused token");
    // The search itself finds what is there.
    assert!(
        leak("log", &log, WABA_B).is_some() && leak("metrics", metrics_body.as_bytes(), PHONE_GOOD).is_some()
    );

    let mut leaks = Vec::new();
    for token in [&token_a, &token_b] {
        // The random part alone too, in case a prefix were cut or masked.
        let tail = token.rsplit('-').next().expect("suffix").to_owned();
        for needle in [token.as_str(), tail.as_str()] {
            leaks.extend(leak("engine log (stderr)", &log, needle));
            leaks.extend(leak("engine stdout", &out, needle));
            leaks.extend(leak("check-config stdout", &check.stdout, needle));
            leaks.extend(leak("check-config stderr", &check.stderr, needle));
            leaks.extend(leak("/metrics", metrics_body.as_bytes(), needle));
            for record in &result_records {
                leaks.extend(leak("wabulk.results", &record_bytes(record), needle));
            }
            for record in &dlq_records {
                leaks.extend(leak("wabulk.dlq", &record_bytes(record), needle));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "a token leaked in {} places, e.g.:\n{}",
        leaks.len(),
        leaks[..leaks.len().min(5)].join("\n")
    );
}
