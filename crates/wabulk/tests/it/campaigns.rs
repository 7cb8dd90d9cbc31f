//! Campaign control (CONTRACT §12) through the control topic, with two
//! engine instances in one group and the simulator as referee: a paused
//! campaign's sends stop within 2 s on both while another campaign of the
//! same numbers goes on, stay stopped across a restart of both, and resume;
//! a cancelled campaign's unsent jobs each end with one `cancelled` result
//! and are never sent.

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

/// Three numbers shared by campaigns a and b, and one slow number for c:
/// their keys spread over the four partitions, so both instances send.
const BUSY: [&str; 3] = ["106540352242922", "106540352242923", "106540352242924"];
const SLOW: &str = "106540352242925";
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

/// A graceful stop of each, which must exit 0.
fn stop_all(engines: &mut [EngineProcess]) {
    for engine in engines.iter() {
        engine.terminate();
    }
    for engine in engines {
        let exit = engine.wait_exit(Duration::from_secs(60));
        assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{}", engine.log_tail(40));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_campaigns_wait_across_a_restart_and_cancelled_ones_end_cancelled() {
    init_logs();
    const EACH: u64 = 1_000;
    const CANCELLED: u64 = 300;
    let mut numbers: Vec<Number> = BUSY.iter().map(|id| Number::new(id, 100)).collect();
    numbers.push(Number::new(SLOW, 20));
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 4).await;
    let dir = TempDir::new("campaigns");
    let mut toml = EngineToml::new(&stack, "it-campaigns", &numbers);
    toml.limits.push(MPS_MARGIN.into());
    // Instances stopped and started together: the group settles within a
    // short session rather than the default 45 s.
    toml.short_session();
    let config = toml.write(dir.path());
    let mut engines =
        [0, 1].map(|generation| EngineProcess::spawn(Program::Wabulk, &config, dir.path(), generation));
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    // Campaigns a and b share the busy numbers, interleaved; c is on the slow one.
    let mut jobs: Vec<(&str, Vec<u8>)> = Vec::new();
    for i in 0..EACH {
        let phone = BUSY[i as usize % BUSY.len()];
        jobs.push((phone, job(&format!("a-{i}"), phone, 15_550_000_000 + i, "a")));
        jobs.push((phone, job(&format!("b-{i}"), phone, 15_560_000_000 + i, "b")));
    }
    jobs.extend((0..CANCELLED).map(|i| (SLOW, job(&format!("c-{i}"), SLOW, 15_570_000_000 + i, "c"))));
    write_all(&writer, &jobs).await;
    // Each campaign under way (c's number is the slow one) before the controls.
    let under_way = |records: &[wabulk_kafka::Record]| {
        let started = |prefix: &str| {
            records
                .iter()
                .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(prefix.as_bytes())))
                .count()
        };
        started("a-") >= 50 && started("b-") >= 50 && started("c-") >= 10
    };
    assert!(results.wait_until(Duration::from_secs(60), under_way).await, "not every campaign sent");
    for engine in &engines {
        let owns = engine.log_lines(&["partitions assigned"]).iter().any(|line| !line.contains("[]"));
        assert!(owns, "both instances own partitions:\n{}", engine.log_tail(20));
    }

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

    // Restarted instances read the pause again before their first job.
    stop_all(&mut engines);
    let restarted = SystemTime::now();
    let mut engines =
        [2, 3].map(|generation| EngineProcess::spawn(Program::Wabulk, &config, dir.path(), generation));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a_after_restart = sent_after(&stack.sim.first_requests(), "a-", restarted);

    control(&writer, "a", CampaignState::Active).await;
    let total = 2 * EACH + CANCELLED;
    let all = results.wait_until(Duration::from_secs(120), |r| r.len() as u64 >= total).await;
    let first = stack.sim.first_requests();
    let done = results.results();
    results.stop().await;
    stop_all(&mut engines);
    let stats = stack.stop().await;

    assert_eq!(a_late, 0, "campaign a sent after its pause");
    assert!(b_on > 0, "campaign b, on the same numbers, went on");
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
