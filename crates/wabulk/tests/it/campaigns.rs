//! Campaign control (CONTRACT §12) through the control topic, with the
//! simulator as referee: a paused campaign's sends stop within 2 s while
//! another campaign of the same number goes on, stay stopped across a
//! restart of the engine, and resume; a cancelled campaign's unsent jobs
//! each end with one `cancelled` result and are never sent.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use serde_json::json;
use wabulk_graph_sim::Latency;
use wabulk_kafka::JobWriter;
use wabulk_model::{CampaignState, Control, Status};

use crate::harness::{
    init_logs, sim_config, violations, write_all, Collector, EngineProcess, EngineToml, Number, Program,
    Stack, TempDir, MPS_MARGIN, RESULTS,
};

const BUSY: &str = "106540352242922";
const SLOW: &str = "106540352242923";
const CONTROL: &str = "wabulk.control";

fn job(id: &str, phone: &str, recipient: u64, campaign: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "id": id, "phone_number_id": phone, "to": format!("+{recipient}"),
        "campaign": campaign, "message": { "type": "text", "text": { "body": "hi" } } }))
    .expect("json")
}

async fn control(writer: &JobWriter, campaign: &str, state: CampaignState) -> SystemTime {
    let record = Control { campaign: campaign.into(), state, at: Utc::now(), by: Some("it".into()) };
    writer.send(CONTROL, Some(campaign.as_bytes()), &record.to_json()).await.expect("a control record");
    SystemTime::now()
}

/// Jobs of `prefix` whose first request reached the simulator after `at`.
fn sent_after(first_requests: &HashMap<String, SystemTime>, prefix: &str, at: SystemTime) -> usize {
    first_requests.iter().filter(|(id, &first)| id.starts_with(prefix) && first > at).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_campaigns_wait_across_a_restart_and_cancelled_ones_end_cancelled() {
    init_logs();
    const EACH: u64 = 1_000;
    const CANCELLED: u64 = 300;
    let numbers = [Number::new(BUSY, 250), Number::new(SLOW, 20)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 2).await;
    let dir = TempDir::new("campaigns");
    let mut toml = EngineToml::new(&stack, "it-campaigns", &numbers);
    toml.limits.push(MPS_MARGIN.into());
    let config = toml.write(dir.path());
    let mut engine = EngineProcess::spawn(Program::Wabulk, &config, dir.path(), 0);
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    // Campaigns A and B share the busy number, interleaved; C is on the slow one.
    let mut jobs: Vec<(&str, Vec<u8>)> = Vec::new();
    for i in 0..EACH {
        jobs.push((BUSY, job(&format!("a-{i}"), BUSY, 15_550_000_000 + i, "a")));
        jobs.push((BUSY, job(&format!("b-{i}"), BUSY, 15_560_000_000 + i, "b")));
    }
    jobs.extend((0..CANCELLED).map(|i| (SLOW, job(&format!("c-{i}"), SLOW, 15_570_000_000 + i, "c"))));
    write_all(&writer, &jobs).await;
    assert!(results.wait_until(Duration::from_secs(60), |r| r.len() >= 200).await, "nothing sent");

    let paused = control(&writer, "a", CampaignState::Paused).await;
    let cancelled = control(&writer, "c", CampaignState::Cancelled).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first = stack.sim.first_requests();
    let grace = Duration::from_secs(2);
    let a_late = sent_after(&first, "a-", paused + grace);
    let c_late = sent_after(&first, "c-", cancelled + grace);
    let b_on = sent_after(&first, "b-", paused + grace);
    // Measured in loadtest/RESULTS.md ("Pausing a campaign").
    let last_a = first.iter().filter(|(id, _)| id.starts_with("a-")).map(|(_, &at)| at).max();
    if let Some(last) = last_a.and_then(|last| last.duration_since(paused).ok()) {
        eprintln!("campaign a: its last send {last:?} after the pause was written");
    }

    // A restarted engine reads the pause again before its first job.
    engine.terminate();
    assert!(
        engine.wait_exit(Duration::from_secs(30)).is_some_and(|e| e.success()),
        "{}",
        engine.log_tail(20)
    );
    let restarted = SystemTime::now();
    let mut engine = EngineProcess::spawn(Program::Wabulk, &config, dir.path(), 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a_after_restart = sent_after(&stack.sim.first_requests(), "a-", restarted);

    control(&writer, "a", CampaignState::Active).await;
    let total = 2 * EACH + CANCELLED;
    let all = results.wait_until(Duration::from_secs(90), |r| r.len() as u64 >= total).await;
    let first = stack.sim.first_requests();
    let done = results.results();
    results.stop().await;
    engine.terminate();
    assert!(
        engine.wait_exit(Duration::from_secs(30)).is_some_and(|e| e.success()),
        "{}",
        engine.log_tail(20)
    );
    let stats = stack.stop().await;

    assert_eq!(a_late, 0, "campaign a sent after its pause");
    assert!(b_on > 0, "campaign b, on the same number, went on");
    assert_eq!(a_after_restart, 0, "campaign a sent after a restart while paused");
    assert_eq!(c_late, 0, "campaign c sent after its cancellation");
    assert!(all, "{} results of {total}", done.len());
    let mut by_id: HashMap<&str, Vec<Status>> = HashMap::new();
    for result in &done {
        by_id.entry(result.id.as_str()).or_default().push(result.status);
    }
    let sent_a =
        (0..EACH).filter(|i| by_id.get(format!("a-{i}").as_str()) == Some(&vec![Status::Sent])).count();
    assert_eq!(sent_a as u64, EACH, "every job of a sent once it resumed");
    let mut c_cancelled = 0;
    for i in 0..CANCELLED {
        let id = format!("c-{i}");
        let statuses = by_id.get(id.as_str()).unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(statuses.len(), 1, "{id}: one result, {statuses:?}");
        match statuses[0] {
            Status::Cancelled => {
                c_cancelled += 1;
                assert!(!first.contains_key(&id), "{id} was cancelled yet sent");
            }
            Status::Sent => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    assert!(c_cancelled > 0 && c_cancelled < CANCELLED, "{c_cancelled} of c cancelled");
    let c_campaign = done.iter().filter(|r| r.campaign.as_deref() == Some("c")).count();
    assert_eq!(c_campaign as u64, CANCELLED, "results carry their campaign");
    assert_eq!(violations(&stats), 0, "{:?}", stats.violations);
}
