//! Meta's account events change sending while the engine runs: the
//! simulator (Meta) posts them as signed webhooks to the receiver inside
//! `wabulk run`, which writes them to the account events topic the engine
//! reads. A throughput upgrade raises a number's tier with no violation; a
//! ban stops a WABA until a reinstatement, with its jobs waiting parked.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wabulk_graph_sim::{Latency, SimConfig};
use wabulk_kafka::ParkingSettings;

use crate::harness::{
    accepted, accepted_during, free_port, init_logs, sim_config, violations, write_text_jobs, Collector,
    EngineToml, Number, Stack, TempDir, MPS_MARGIN, RESULTS, TOKEN, TOKEN_ENV, WABA,
};

const PHONE: &str = "106540352242922";
const EVENTS: &str = "wabulk.account_events";
const APP_SECRET: &str = "it-app-secret-account";

/// A simulator posting its webhooks, signed, to a receiver on `port`.
fn posting_to(mut sim: SimConfig, port: u16) -> SimConfig {
    sim.webhooks = wabulk_graph_sim::WebhookConfig {
        url: Some(format!("http://127.0.0.1:{port}/webhooks/whatsapp")),
        app_secret: APP_SECRET.into(),
        ..Default::default()
    };
    sim
}

/// `wabulk run` with the receiver inside it, on `port`.
fn start_engine(dir: &TempDir, toml: &EngineToml, port: u16) -> Child {
    let mut text = toml.render();
    text.push_str(&format!("\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\n"));
    let config = dir.path().join("wabulk.toml");
    std::fs::write(&config, text).expect("write the configuration");
    Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["run", "--config"])
        .arg(&config)
        .env(TOKEN_ENV, TOKEN)
        .env("WABULK_APP_SECRET", APP_SECRET)
        .env("WABULK_WEBHOOK_VERIFY_TOKEN", "it-verify")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("engine.log")).expect("engine log"))
        .spawn()
        .expect("wabulk run")
}

fn stop_engine(mut engine: Child) {
    let _ = Command::new("kill").args(["-TERM", &engine.id().to_string()]).status();
    let exit = engine.wait().expect("wait for the engine");
    assert!(exit.success(), "a graceful stop exits 0: {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throughput_upgrade_raises_the_tier_while_running() {
    init_logs();
    const JOBS_N: usize = 9_000;
    let numbers = [Number::new(PHONE, 80)];
    let port = free_port();
    let stack =
        Stack::start(posting_to(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), port), 2)
            .await;
    for topic in ["wabulk.statuses", "wabulk.inbound"] {
        stack.kafka.create_topic(topic, 1).expect("topic");
    }
    let dir = TempDir::new("account-upgrade");
    let mut toml = EngineToml::new(&stack, "it-account-upgrade", &numbers);
    toml.display_numbers = true;
    toml.limits.push(MPS_MARGIN.into());
    let engine = start_engine(&dir, &toml, port);
    let events = Collector::start(&stack.brokers(), EVENTS);
    let results = Collector::start(&stack.brokers(), RESULTS);
    write_text_jobs(&stack, PHONE, "up", JOBS_N).await;
    assert!(results.wait_until(Duration::from_secs(60), |r| r.len() >= 100).await, "the number never sent");
    let (at_80, span) = accepted_during(&stack, PHONE, Duration::from_secs(2)).await;
    // Any span holds at most one more window's worth than its length.
    assert!(at_80 as f64 <= 80.0 * (span.as_secs_f64() + 1.0), "{at_80} accepted in {span:?} at 80/s");

    stack.sim.upgrade_number(PHONE, 1000).expect("a known number");
    let upgraded = Instant::now();
    assert!(
        events.wait_until(Duration::from_secs(10), |r| !r.is_empty()).await,
        "the upgrade never reached the topic"
    );
    // The engine reads the event within about a second of its write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (at_1000, span) = accepted_during(&stack, PHONE, Duration::from_secs(2)).await;
    let reacted_within = upgraded.elapsed();
    let records = events.records();
    events.stop().await;
    results.stop().await;
    stop_engine(engine);
    let stats = stack.stop().await;

    assert_eq!(records.len(), 1, "one account event");
    let key = String::from_utf8_lossy(records[0].key.as_deref().unwrap_or_default()).into_owned();
    assert_eq!(key, format!("phone_number_quality_update:{WABA}:{PHONE}"));
    // 1000/s less pacing, margins and the 5 ms round trip: half of it is
    // six times the old tier.
    assert!(at_1000 >= 2 * 500, "{at_1000} accepted in {span:?}, {reacted_within:?} after the upgrade");
    assert!(
        at_1000 as f64 <= 1000.0 * (span.as_secs_f64() + 1.0),
        "{at_1000} in {span:?}: over the new tier"
    );
    assert_eq!(violations(&stats), 0, "no limit broken: {:?}", stats.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_waba_waits_parked_and_goes_out_once_reinstated() {
    init_logs();
    const JOBS_N: usize = 600;
    let numbers = [Number::new(PHONE, 80)];
    let port = free_port();
    let stack =
        Stack::start(posting_to(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), port), 2)
            .await;
    for topic in ["wabulk.statuses", "wabulk.inbound"] {
        stack.kafka.create_topic(topic, 1).expect("topic");
    }
    let dir = TempDir::new("account-ban");
    let mut toml = EngineToml::new(&stack, "it-account-ban", &numbers);
    // Parked jobs of the banned WABA look again every 2 s.
    toml.parking.push("held_recheck_ms = 2000".into());
    let engine = start_engine(&dir, &toml, port);
    let results = Collector::start(&stack.brokers(), RESULTS);
    write_text_jobs(&stack, PHONE, "ban", JOBS_N).await;
    assert!(results.wait_until(Duration::from_secs(60), |r| r.len() >= 50).await, "the number never sent");

    let ban = json!({ "event": "DISABLED_UPDATE", "ban_info": { "waba_ban_state": ["DISABLE"], "waba_ban_date": "today" } });
    assert!(stack.sim.post_account_event(WABA, "account_update", ban));
    // The ban travels (webhook, Kafka, the engine) and requests in flight
    // end: wait until nothing was accepted for a second (15 s at most),
    // then watch for 4 s more.
    let quiet_from = Instant::now();
    let mut last = accepted(&stack, PHONE);
    let mut unchanged_since = Instant::now();
    while unchanged_since.elapsed() < Duration::from_secs(1) && quiet_from.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = accepted(&stack, PHONE);
        if now != last {
            (last, unchanged_since) = (now, Instant::now());
        }
    }
    let (during_ban, _) = accepted_during(&stack, PHONE, Duration::from_secs(4)).await;
    let parked: i64 = ParkingSettings::default()
        .tier_topics()
        .iter()
        .map(|topic| {
            wabulk_kafka::topic_record_count(&stack.brokers(), topic, Duration::from_secs(5)).unwrap_or(0)
        })
        .sum();
    let sent_before = results.len();

    let reinstated = json!({ "event": "DISABLED_UPDATE", "ban_info": { "waba_ban_state": ["REINSTATE"] } });
    assert!(stack.sim.post_account_event(WABA, "account_update", reinstated));
    let all = results.wait_until(Duration::from_secs(60), |r| r.len() >= JOBS_N).await;
    let done = results.results();
    results.stop().await;
    stop_engine(engine);
    let stats = stack.stop().await;

    assert_eq!(during_ban, 0, "nothing sent for a banned WABA");
    assert!(sent_before < JOBS_N, "the ban came while jobs were waiting ({sent_before} sent)");
    assert!(parked > 0, "the banned WABA's jobs were parked in Kafka");
    assert!(all, "{} of {JOBS_N} jobs answered after the reinstatement", done.len());
    assert!(done.iter().all(|r| r.wamid.is_some()), "every job sent once reinstated");
    assert_eq!(violations(&stats), 0, "no limit broken: {:?}", stats.violations);
}
