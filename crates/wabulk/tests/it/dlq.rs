//! Bad input: every kind of record that is not a job goes to the DLQ once,
//! with its bytes, position and key; a valid job for an unknown number in
//! strict mode gets a `rejected` result; the good jobs around them are sent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use wabulk_graph_sim::Latency;
use wabulk_kafka::JobWriter;
use wabulk_model::{DlqRecord, ErrorCode, Status};

use crate::harness::{
    init_logs, sim_config, status_counts, violations, Collector, EngineToml, InProcessEngine, Number, Stack,
    DLQ, JOBS, RESULTS,
};

const PHONE: &str = "106540352242922";
const UNKNOWN_PHONE: &str = "106540352249999";

/// A record that must end in the DLQ, and words its `error` must contain.
struct Bad {
    name: &'static str,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    error_mentions: &'static [&'static str],
}

fn job(id: &str, phone: &str, to: &str, body: &str) -> serde_json::Value {
    json!({
        "id": id,
        "phone_number_id": phone,
        "to": to,
        "message": { "type": "text", "text": { "body": body } },
        "metadata": { "test": "dlq" },
    })
}

fn bad_records() -> Vec<Bad> {
    let key = || Some(PHONE.as_bytes().to_vec());
    let mut missing_to = job("dlq-missing", PHONE, "+15550000001", "x");
    missing_to.as_object_mut().expect("object").remove("to");
    let mut wrong_type = job("dlq-wrong-type", PHONE, "+15550000001", "x");
    wrong_type["to"] = json!(15551234567u64);
    let invalid_utf8 = {
        let text = serde_json::to_vec(&job("dlq-utf8", PHONE, "+15550000001", "caf@")).expect("json");
        let at = text.iter().position(|&b| b == b'@').expect("marker");
        let mut bytes = text;
        bytes[at] = 0xff;
        bytes
    };
    let oversized =
        serde_json::to_vec(&job("dlq-big", PHONE, "+15550000001", &"x".repeat(70_000))).expect("json");
    vec![
        Bad {
            name: "not JSON",
            key: key(),
            payload: b"this is not JSON {".to_vec(),
            error_mentions: &["line 1"],
        },
        Bad {
            name: "not JSON, no key",
            key: None,
            payload: b"{\"id\": ".to_vec(),
            error_mentions: &["line 1"],
        },
        Bad { name: "invalid UTF-8", key: key(), payload: invalid_utf8, error_mentions: &["UTF-8"] },
        Bad {
            name: "missing field",
            key: key(),
            payload: serde_json::to_vec(&missing_to).expect("json"),
            error_mentions: &["missing field", "`to`"],
        },
        Bad {
            name: "wrong type",
            key: key(),
            payload: serde_json::to_vec(&wrong_type).expect("json"),
            error_mentions: &["to", "invalid type"],
        },
        Bad {
            name: "invalid to",
            key: key(),
            payload: serde_json::to_vec(&job("dlq-short-to", PHONE, "+12", "x")).expect("json"),
            error_mentions: &["`to`"],
        },
        Bad {
            name: "unknown message type",
            key: key(),
            payload: serde_json::to_vec(&json!({
                "id": "dlq-type", "phone_number_id": PHONE, "to": "+15550000001",
                "message": { "type": "fax", "fax": {} },
            }))
            .expect("json"),
            error_mentions: &["`message`", "fax"],
        },
        Bad { name: "oversized", key: key(), payload: oversized, error_mentions: &["65536"] },
    ]
}

/// Writes good job `n`; its id.
async fn write_good(writer: &JobWriter, n: usize) -> String {
    let id = format!("dlq-good-{n}");
    let payload = serde_json::to_vec(&job(&id, PHONE, &format!("+1555100{n:04}"), "hello")).expect("json");
    writer.send(JOBS, Some(PHONE.as_bytes()), &payload).await.expect("write a good job");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_jobs_go_to_the_dlq_with_their_bytes() {
    init_logs();
    let numbers = [Number::new(PHONE, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 2).await;
    let mut toml = EngineToml::new(&stack, "it-dlq", &numbers);
    toml.limits.push("strict_phones = true".into());
    let engine = InProcessEngine::start(toml.setup());
    let results = Collector::start(&stack.brokers(), RESULTS);
    let dead = Collector::start(&stack.brokers(), DLQ);

    // Good jobs around every bad record, so that a bad record that stopped
    // its partition would leave good jobs after it without a result.
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let mut good = Vec::new();
    let mut bad = BTreeMap::new();
    for (n, record) in bad_records().into_iter().enumerate() {
        good.push(write_good(&writer, n).await);
        let position =
            writer.send(JOBS, record.key.as_deref(), &record.payload).await.expect("write a bad record");
        bad.insert(position, record);
    }
    let unknown = serde_json::to_vec(&json!({
        "id": "dlq-unknown-number", "phone_number_id": UNKNOWN_PHONE, "waba_id": crate::harness::WABA,
        "to": "+15550000002", "message": { "type": "text", "text": { "body": "hi" } },
    }))
    .expect("json");
    writer.send(JOBS, Some(UNKNOWN_PHONE.as_bytes()), &unknown).await.expect("write");
    good.push(write_good(&writer, 100).await);
    // A valid job under another key: sent, and counted as mis-keyed.
    let mis_keyed = serde_json::to_vec(&job("dlq-mis-keyed", PHONE, "+15551009999", "hello")).expect("json");
    writer.send(JOBS, Some(b"customer-42"), &mis_keyed).await.expect("write");
    good.push("dlq-mis-keyed".to_owned());

    let expected_results = good.len() + 1;
    let all_in = results.wait_until(Duration::from_secs(30), |r| r.len() >= expected_results).await
        && dead.wait_until(Duration::from_secs(30), |r| r.len() >= bad.len()).await;
    // Anything written twice would show up by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mis_keyed_counted = engine.metrics.mis_keyed_jobs.get();
    engine.stop().await;
    let all = results.results();
    let dead_letters = dead.records();
    results.stop().await;
    dead.stop().await;
    let stats = stack.stop().await;
    assert!(
        all_in,
        "{} results of {expected_results}, {} dead letters of {}",
        all.len(),
        dead_letters.len(),
        bad.len()
    );

    assert_eq!(dead_letters.len(), bad.len(), "one dead letter per bad record");
    let mut seen = BTreeMap::new();
    for record in &dead_letters {
        let letter: DlqRecord = serde_json::from_slice(&record.payload).expect("a DLQ record");
        let position = (letter.partition, letter.offset);
        let source =
            bad.get(&position).unwrap_or_else(|| panic!("a dead letter for no bad record: {letter:?}"));
        let name = source.name;
        assert!(seen.insert(position, name).is_none(), "{name}: two dead letters");
        assert_eq!(letter.topic, JOBS, "{name}: topic");
        assert_eq!(letter.key.as_deref().map(str::as_bytes), source.key.as_deref(), "{name}: key");
        assert_eq!(
            letter.original_payload().as_deref(),
            Some(&source.payload[..]),
            "{name}: bytes kept whole"
        );
        let is_utf8 = std::str::from_utf8(&source.payload).is_ok();
        assert_eq!(letter.payload.is_some(), is_utf8, "{name}: `payload` is the text when it is UTF-8");
        assert_eq!(letter.payload_base64.is_some(), !is_utf8, "{name}: `payload_base64` only when not UTF-8");
        for word in source.error_mentions {
            assert!(letter.error.contains(word), "{name}: error {:?} should mention {word:?}", letter.error);
        }
        // The DLQ record is keyed like the job was (CONTRACT §1).
        assert_eq!(record.key, source.key, "{name}: the DLQ record's Kafka key");
    }

    assert_eq!(all.len(), expected_results, "one result per valid job: {:?}", status_counts(&all));
    let rejected =
        all.iter().find(|r| r.id == "dlq-unknown-number").expect("a result for the unknown number");
    assert_eq!(rejected.status, Status::Rejected);
    let error = rejected.error.as_ref().expect("a rejected result carries an error");
    assert_eq!(error.code, ErrorCode::Engine("unknown_phone_number".into()));
    assert!(!error.retryable);
    assert_eq!(rejected.attempts, 0, "nothing was sent for it");
    for id in &good {
        let result = all.iter().find(|r| &r.id == id).unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(result.status, Status::Sent, "{id}: {result:?}");
        assert!(result.wamid.is_some(), "{id}: a sent result has its wamid");
        assert_eq!(result.metadata, Some(json!({ "test": "dlq" })), "{id}: metadata echoed");
    }
    assert_eq!(stats.requests, good.len() as u64, "only the good jobs reached the Graph API");
    assert_eq!(mis_keyed_counted, 1, "the one job keyed other than by its number");
    assert_eq!(violations(&stats), 0);
}

/// A record whose dead letter cannot go whole into a Kafka message (2 MiB
/// against the producer's 1,000,000-byte limit) is not retried for ever: its
/// dead letter keeps the first bytes that fit, says so with the original's
/// size and digest, and the jobs after it in its partition are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_kafka_is_cut_and_nothing_waits_for_it() {
    use sha2::Digest as _;

    init_logs();
    let numbers = [Number::new(PHONE, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 1).await;
    let engine = InProcessEngine::start(EngineToml::new(&stack, "it-dlq-cut", &numbers).setup());
    let results = Collector::start(&stack.brokers(), RESULTS);
    let dead = Collector::start(&stack.brokers(), DLQ);

    let big_writer = JobWriter::connect(
        &stack.brokers(),
        &[("message.max.bytes".to_owned(), "4000000".to_owned())].into_iter().collect(),
    )
    .expect("job writer for large records");
    let huge =
        serde_json::to_vec(&job("dlq-huge", PHONE, "+15550000001", &"x".repeat(2 << 20))).expect("json");
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let mut good = vec![write_good(&writer, 0).await];
    let position = big_writer.send(JOBS, Some(PHONE.as_bytes()), &huge).await.expect("write the huge record");
    for n in 1..=5 {
        good.push(write_good(&writer, n).await);
    }

    let all_in = results.wait_until(Duration::from_secs(30), |r| r.len() >= good.len()).await
        && dead.wait_until(Duration::from_secs(30), |r| !r.is_empty()).await;
    engine.stop().await;
    let all = results.results();
    let dead_letters = dead.records();
    results.stop().await;
    dead.stop().await;
    stack.stop().await;
    assert!(all_in, "{} results of {}, {} dead letters of 1", all.len(), good.len(), dead_letters.len());

    assert_eq!(dead_letters.len(), 1, "one dead letter");
    assert!(dead_letters[0].payload.len() <= 1_000_000, "the dead letter fits a default Kafka message");
    let letter: DlqRecord = serde_json::from_slice(&dead_letters[0].payload).expect("a DLQ record");
    assert_eq!((letter.partition, letter.offset), position, "it names where the original is");
    assert!(letter.payload_truncated, "it says it was cut");
    assert_eq!(letter.payload_bytes, Some(huge.len() as u64));
    assert_eq!(letter.payload_sha256, Some(format!("{:x}", sha2::Sha256::digest(&huge))));
    let kept = letter.original_payload().expect("a payload");
    assert!(huge.starts_with(&kept), "the payload is the original's first bytes");
    assert!(kept.len() > 900_000, "cut to fit, not needlessly short: {} bytes", kept.len());
    assert!(letter.error.contains("65536"), "{}", letter.error);
    for id in &good {
        let result = all.iter().find(|r| &r.id == id).unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(result.status, Status::Sent, "{id}: {result:?}");
    }
}
