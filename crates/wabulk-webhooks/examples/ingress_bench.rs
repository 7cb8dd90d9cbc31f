//! Webhook ingress: signed notifications posted by many keep-alive
//! connections as fast as the receiver answers, each answered only once
//! Kafka (librdkafka's mock cluster, in this process) acknowledged its
//! records. Prints statuses per second and the answer latency.
//!
//! `cargo run --release -p wabulk-webhooks --example ingress_bench -- [SECONDS] [CONNECTIONS] [STATUSES_PER_POST]`
//!
//! With `INGRESS_RECEIVER=target/release/wabulk`, the receiver is that
//! binary's `wabulk webhooks`, in a process of its own, as it runs in
//! production; this process then holds the broker and the clients.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use wabulk_kafka::{EmbeddedKafka, JobWriter};
use wabulk_telemetry::Metrics;
use wabulk_webhooks::{AppSecret, Receiver, ReceiverConfig, VerifyToken};

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let seconds = args.first().copied().unwrap_or(10);
    let connections = args.get(1).copied().unwrap_or(64) as usize;
    let per_post = args.get(2).copied().unwrap_or(5) as usize;

    let kafka = EmbeddedKafka::start(1).expect("mock cluster");
    for topic in ["wabulk.statuses", "wabulk.inbound", "wabulk.account_events", "wabulk.dlq"] {
        kafka.create_topic(topic, 8).expect("topic");
    }
    let secret = AppSecret::new("bench-secret");
    let config = ReceiverConfig {
        path: ReceiverConfig::DEFAULT_PATH.into(),
        app_secret: secret.clone(),
        verify_token: VerifyToken::new("v"),
        statuses_topic: "wabulk.statuses".into(),
        inbound_topic: "wabulk.inbound".into(),
        account_events_topic: "wabulk.account_events".into(),
        dlq_topic: "wabulk.dlq".into(),
        max_body_bytes: ReceiverConfig::DEFAULT_MAX_BODY_BYTES,
        body_timeout: ReceiverConfig::DEFAULT_BODY_TIMEOUT,
    };
    let (addr, _external) = match std::env::var("INGRESS_RECEIVER") {
        Ok(binary) => {
            let (addr, child) = external_receiver(&binary, &kafka.bootstrap_servers()).await;
            (addr, Some(child))
        }
        Err(_) => {
            let producer =
                JobWriter::connect(&kafka.bootstrap_servers(), &Default::default()).expect("producer");
            let receiver = Arc::new(Receiver::new(config, producer, Arc::new(Metrics::new())));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(wabulk_webhooks::serve(listener, None, receiver, std::future::pending()));
            (addr, None)
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    let started = Instant::now();
    for c in 0..connections {
        let (stop, statuses, secret) = (Arc::clone(&stop), Arc::clone(&statuses), secret.clone());
        clients.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let list: Vec<_> = (0..per_post)
                    .map(|i| {
                        json!({ "id": format!("wamid.{c}.{n}.{i}"), "status": "delivered",
                        "timestamp": "1700000000", "recipient_id": "15551234567",
                        "biz_opaque_callback_data": format!("job-{c}-{n}-{i}") })
                    })
                    .collect();
                let body = serde_json::to_vec(&json!({ "object": "whatsapp_business_account", "entry": [{
                    "id": "102290129340398", "changes": [{ "field": "messages", "value": {
                        "messaging_product": "whatsapp", "metadata": { "phone_number_id": "106540352242922" },
                        "statuses": list } }] }] }))
                .unwrap();
                let request = http::Request::post(ReceiverConfig::DEFAULT_PATH)
                    .header("host", "127.0.0.1")
                    .header("x-hub-signature-256", secret.sign(&body))
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let sent = Instant::now();
                let response = sender.send_request(request).await.expect("answer");
                assert!(response.status().is_success(), "{}", response.status());
                let _ = response.into_body().collect().await;
                latencies.push(sent.elapsed());
                statuses.fetch_add(per_post as u64, Ordering::Relaxed);
                n += 1;
            }
            latencies
        });
    }
    // Whole seconds only: the first is warm-up and left out.
    let mut per_second = Vec::new();
    let mut last = 0;
    for s in 0..=seconds {
        tokio::time::sleep_until((started + Duration::from_secs(s + 1)).into()).await;
        let now = statuses.load(Ordering::Relaxed);
        if s > 0 {
            per_second.push(now - last);
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = clients.join_all().await.into_iter().flatten().collect();
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let mut sorted = per_second.clone();
    sorted.sort();
    println!(
        "{connections} connections, {per_post} statuses per notification: statuses/s over {} whole seconds: median {} (min {}, max {}); answer latency p50 {:.1} ms, p99 {:.1} ms",
        per_second.len(),
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
        quantile(0.5).as_secs_f64() * 1e3,
        quantile(0.99).as_secs_f64() * 1e3
    );
}

/// Starts `binary webhooks` on a free port with `brokers`, and waits until
/// it listens. The child is killed when the handle is dropped.
async fn external_receiver(binary: &str, brokers: &str) -> (std::net::SocketAddr, KillOnDrop) {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let dir = std::env::temp_dir().join(format!("ingress-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a work dir");
    let config = dir.join("wabulk.toml");
    let text = format!(
        "[kafka]\nbrokers = {brokers:?}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    std::fs::write(&config, text).expect("write the configuration");
    let child = std::process::Command::new(binary)
        .args(["webhooks", "--config"])
        .arg(&config)
        .env("WABULK_APP_SECRET", "bench-secret")
        .env("WABULK_WEBHOOK_VERIFY_TOKEN", "v")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the receiver");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the receiver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (addr, KillOnDrop(child))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
