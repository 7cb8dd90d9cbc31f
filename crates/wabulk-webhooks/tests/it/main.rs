//! The receiver end to end: real HTTP/1.1 on 127.0.0.1, librdkafka's mock
//! cluster. What Meta would send, signed and not, and what reaches Kafka.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use wabulk_kafka::{EmbeddedKafka, JobWriter, TopicReader};
use wabulk_telemetry::Metrics;
use wabulk_webhooks::{AppSecret, Receiver, ReceiverConfig, ServerTls, VerifyToken};

mod tls;

const STATUSES: &str = "wabulk.statuses";
const INBOUND: &str = "wabulk.inbound";
const EVENTS: &str = "wabulk.account_events";
const DLQ: &str = "wabulk.dlq";
const PATH: &str = "/webhooks/whatsapp";
const SECRET: &str = "app-secret-for-tests";

struct Running {
    _kafka: EmbeddedKafka,
    brokers: String,
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    /// `serve`'s task: it ends once the stop is sent and the drain is over.
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(max_body_bytes: usize) -> Running {
    start_serving(max_body_bytes, None).await
}

async fn start_serving(max_body_bytes: usize, tls: Option<ServerTls>) -> Running {
    let kafka = EmbeddedKafka::start(1).expect("mock cluster");
    for topic in [STATUSES, INBOUND, EVENTS, DLQ] {
        kafka.create_topic(topic, 2).expect("topic");
    }
    let brokers = kafka.bootstrap_servers();
    let config = ReceiverConfig {
        path: PATH.into(),
        app_secret: AppSecret::new(SECRET),
        verify_token: VerifyToken::new("verify-me"),
        statuses_topic: STATUSES.into(),
        inbound_topic: INBOUND.into(),
        account_events_topic: EVENTS.into(),
        dlq_topic: DLQ.into(),
        max_body_bytes,
        body_timeout: Duration::from_secs(2),
    };
    let metrics = Arc::new(Metrics::new());
    let producer = JobWriter::connect(&brokers, &Default::default()).expect("producer");
    let receiver = Arc::new(Receiver::new(config, producer, Arc::clone(&metrics)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let served = tokio::spawn(wabulk_webhooks::serve(listener, tls, receiver, async move {
        let _ = stopped.await;
    }));
    Running { _kafka: kafka, brokers, addr, metrics, stop, served }
}

/// One request on a fresh connection; the status and the body.
async fn call(addr: std::net::SocketAddr, request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post(body: &[u8], signature: Option<&str>) -> Request<Full<Bytes>> {
    let mut request =
        Request::post(PATH).header("host", "127.0.0.1").header("content-type", "application/json");
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.body(Full::new(Bytes::copy_from_slice(body))).expect("request")
}

fn notification(statuses: Vec<Value>, messages: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550001111", "phone_number_id": "106540352242922" },
            "statuses": statuses, "messages": messages } }] }]
    }))
    .expect("json")
}

fn status(wamid: &str, state: &str, job: Option<&str>) -> Value {
    let mut status =
        json!({ "id": wamid, "status": state, "timestamp": "1700000000", "recipient_id": "15551234567" });
    if let Some(job) = job {
        status["biz_opaque_callback_data"] = json!(job);
    }
    if state == "failed" {
        status["errors"] = json!([{ "code": 131026, "title": "Message undeliverable" }]);
    }
    status
}

/// Reads `n` records of `topic`, or fewer if none comes for `quiet`.
async fn read(brokers: &str, topic: &str, n: usize, quiet: Duration) -> Vec<wabulk_kafka::Record> {
    let reader = TopicReader::connect(brokers, topic, Duration::from_secs(10)).expect("reader");
    let mut records = Vec::new();
    while records.len() < n {
        match tokio::time::timeout(quiet, reader.next()).await {
            Ok(record) => records.push(record.expect("record")),
            Err(_) => break,
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_statuses_reach_kafka_and_unsigned_ones_nothing() {
    let running = start(ReceiverConfig::DEFAULT_MAX_BODY_BYTES).await;
    let secret = AppSecret::new(SECRET);
    let body = notification(
        vec![
            status("wamid.1", "sent", Some("job-1")),
            status("wamid.1", "delivered", Some("job-1")),
            status("wamid.2", "failed", None),
        ],
        vec![json!({ "from": "15551234567", "id": "wamid.in", "type": "text", "text": { "body": "STOP" } })],
    );
    // Refused, each one: nothing may be published for them.
    let other = AppSecret::new("not-the-secret").sign(&body);
    let mut changed = body.clone();
    let at = changed.iter().position(|&b| b == b'1').expect("a digit");
    changed[at] = b'7';
    let reserialised = serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    let good = secret.sign(&body);
    for (name, request) in [
        ("no signature", post(&body, None)),
        ("wrong secret", post(&body, Some(&other))),
        ("one byte changed", post(&changed, Some(&good))),
        ("re-serialised JSON", post(&reserialised, Some(&good))),
        ("not hex", post(&body, Some("sha256=zz"))),
    ] {
        let (code, _) = call(running.addr, request).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{name}");
    }
    let (code, _) = call(running.addr, post(&body, Some(&good))).await;
    assert_eq!(code, StatusCode::OK);

    let statuses = read(&running.brokers, STATUSES, 4, Duration::from_secs(3)).await;
    assert_eq!(statuses.len(), 3, "one record per status of the one signed notification");
    let mut seen: Vec<(Option<String>, String, String, Value)> = statuses
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
            (v["job_id"].as_str().map(str::to_owned), key, v["status"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    seen.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(
        (seen[0].0.as_deref(), seen[0].1.as_str(), seen[0].2.as_str()),
        (Some("job-1"), "job-1", "delivered")
    );
    assert_eq!((seen[1].0.as_deref(), seen[1].1.as_str(), seen[1].2.as_str()), (None, "wamid.2", "failed"));
    assert_eq!(seen[1].3["errors"][0]["code"], 131026, "a failed status carries Meta's error");
    assert_eq!(seen[2].2, "sent");
    assert_eq!(seen[0].3["phone_number_id"], "106540352242922");
    assert_eq!(seen[0].3["waba_id"], "102290129340398");
    let inbound = read(&running.brokers, INBOUND, 2, Duration::from_secs(2)).await;
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].key.as_deref(), Some(&b"106540352242922"[..]));

    let counted = |outcome: &str| running.metrics.webhook_requests.with_label_values(&[outcome]).get();
    assert_eq!((counted("ok"), counted("bad_signature")), (1, 5));
    let statuses =
        |status: &str| running.metrics.statuses.with_label_values(&["106540352242922", status]).get();
    assert_eq!((statuses("sent"), statuses("delivered"), statuses("failed")), (1, 1, 1));
    assert_eq!(
        running.metrics.status_errors.with_label_values(&["131026"]).get(),
        1,
        "the failed one's code"
    );
    let _ = running.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_bodies_go_to_the_dlq_and_oversized_ones_are_refused() {
    let running = start(4096).await;
    let secret = AppSecret::new(SECRET);
    // Signed, but not a notification: kept whole in the DLQ, and Meta told 200
    // so that it does not send it again for a week.
    let odd = br#"{"entry": "a new shape"}"#;
    let (code, _) = call(running.addr, post(odd, Some(&secret.sign(odd)))).await;
    assert_eq!(code, StatusCode::OK);
    let dead = read(&running.brokers, DLQ, 1, Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1);
    let letter: Value = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(letter["payload"].as_str().unwrap().as_bytes(), odd);
    assert_eq!(letter["topic"], format!("webhook:{PATH}"));
    // Over the size limit: 413 before anything else.
    let big = notification((0..200).map(|i| status(&format!("wamid.{i}"), "read", None)).collect(), vec![]);
    assert!(big.len() > 4096);
    let (code, _) = call(running.addr, post(&big, Some(&secret.sign(&big)))).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        read(&running.brokers, STATUSES, 1, Duration::from_secs(2)).await.is_empty(),
        "nothing published"
    );
    let _ = running.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_echoes_the_challenge_only_for_our_token() {
    let running = start(4096).await;
    let get = |query: &str| {
        Request::get(format!("{PATH}?{query}"))
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (code, body) =
        call(running.addr, get("hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"))
            .await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "1158201444"));
    for query in [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        "hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=1",
        "hub.mode=subscribe&hub.verify_token=verify-me",
    ] {
        assert_eq!(call(running.addr, get(query)).await.0, StatusCode::FORBIDDEN, "{query}");
    }
    let (code, _) = call(
        running.addr,
        Request::get("/elsewhere").header("host", "127.0.0.1").body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let _ = running.stop.send(());
}

/// Changes that are not about a message go whole to the account events
/// topic, keyed so that compaction keeps the latest of each kind per
/// account, and are answered 200 only once Kafka has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_events_reach_their_topic_keyed_per_kind_and_account() {
    let running = start(ReceiverConfig::DEFAULT_MAX_BODY_BYTES).await;
    let body = serde_json::to_vec(&json!({ "object": "whatsapp_business_account", "entry": [{
        "id": "102290129340398", "time": 1_700_000_000, "changes": [
            { "field": "phone_number_quality_update", "value": {
                "display_phone_number": "15550783881", "event": "THROUGHPUT_UPGRADE", "current_limit": "TIER_UNLIMITED" } },
            { "field": "account_update", "value": {
                "event": "DISABLED_UPDATE", "ban_info": { "waba_ban_state": ["DISABLE"] } } }
        ] }] }))
    .expect("json");
    let (code, _) = call(running.addr, post(&body, Some(&AppSecret::new(SECRET).sign(&body)))).await;
    assert_eq!(code, StatusCode::OK);
    let events = read(&running.brokers, EVENTS, 3, Duration::from_secs(3)).await;
    let mut keys: Vec<String> =
        events.iter().map(|r| String::from_utf8(r.key.clone().expect("keyed")).expect("UTF-8")).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "account_update:DISABLED_UPDATE:102290129340398",
            "phone_number_quality_update:102290129340398:15550783881"
        ]
    );
    let upgrade: wabulk_webhooks::account::AccountEvent = events
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("an account event"))
        .find(|e: &wabulk_webhooks::account::AccountEvent| e.field == "phone_number_quality_update")
        .expect("the upgrade");
    assert_eq!(
        upgrade.changes(),
        [wabulk_webhooks::account::AccountChange::ThroughputUpgrade {
            display_phone_number: "15550783881".into()
        }]
    );
    assert!(read(&running.brokers, STATUSES, 1, Duration::from_millis(500)).await.is_empty(), "no status");
    let _ = running.stop.send(());
}
