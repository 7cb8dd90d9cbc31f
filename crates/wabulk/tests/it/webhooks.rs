//! `wabulk run` with `[webhooks]`: the engine sends a job, and the status
//! Meta reports for it, signed with the app secret, lands on the statuses
//! topic keyed by the job's id; a forged one is refused. The secrets never
//! show in `check-config`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wabulk_graph_sim::Latency;
use wabulk_kafka::JobWriter;
use wabulk_webhooks::AppSecret;

use crate::harness::{
    init_logs, sim_config, Collector, EngineToml, Number, Stack, TempDir, JOBS, RESULTS, TOKEN, TOKEN_ENV,
};

const PHONE: &str = "106540352242922";
const STATUSES: &str = "wabulk.statuses";
const APP_SECRET: &str = "it-app-secret-5f1e";
const VERIFY_TOKEN: &str = "it-verify-token-9a2c";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One HTTP/1.1 request on a fresh connection; the status code, or `None`
/// while nothing listens yet.
fn request(addr: SocketAddr, head: &str, body: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head =
        format!("{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_job_s_status_reaches_the_statuses_topic_with_its_job_id() {
    init_logs();
    let numbers = [Number::new(PHONE, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 1).await;
    stack.kafka.create_topic(STATUSES, 2).expect("statuses topic");
    stack.kafka.create_topic("wabulk.inbound", 1).expect("inbound topic");
    let dir = TempDir::new("webhooks");
    let port = free_port();
    let mut text = EngineToml::new(&stack, "it-webhooks", &numbers).render();
    text.push_str(&format!("\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\n"));
    let config = dir.path().join("wabulk.toml");
    std::fs::write(&config, text).expect("write the configuration");
    let env = [
        (TOKEN_ENV, TOKEN),
        ("WABULK_APP_SECRET", APP_SECRET),
        ("WABULK_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN),
    ];

    let check = Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["check-config", "--config"])
        .arg(&config)
        .envs(env)
        .output()
        .expect("check-config");
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{shown}");
    assert!(shown.contains("[webhooks]") && shown.contains("WABULK_APP_SECRET"), "{shown}");
    assert!(!shown.contains(APP_SECRET) && !shown.contains(VERIFY_TOKEN), "a secret shown:\n{shown}");

    let mut engine = Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["run", "--config"])
        .arg(&config)
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wabulk run");
    let results = Collector::start(&stack.brokers(), RESULTS);
    let statuses = Collector::start(&stack.brokers(), STATUSES);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let job = json!({ "id": "hook-1", "phone_number_id": PHONE, "to": "+15551230001",
        "message": { "type": "text", "text": { "body": "hi" } } });
    writer
        .send(JOBS, Some(PHONE.as_bytes()), &serde_json::to_vec(&job).unwrap())
        .await
        .expect("write the job");
    assert!(results.wait_until(Duration::from_secs(60), |r| !r.is_empty()).await, "the job was not sent");
    let wamid = results.results()[0].wamid.clone().expect("a sent result has its wamid");

    // What Meta would post for it: `biz_opaque_callback_data` is the job id the engine set.
    let body = serde_json::to_vec(&json!({ "object": "whatsapp_business_account", "entry": [{
        "id": crate::harness::WABA, "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": { "phone_number_id": PHONE },
            "statuses": [{ "id": wamid, "status": "delivered", "timestamp": "1700000000",
                           "recipient_id": "15551230001", "biz_opaque_callback_data": "hook-1" }] } }] }] }))
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let signed = format!(
        "POST /webhooks/whatsapp HTTP/1.1\r\nX-Hub-Signature-256: {}",
        AppSecret::new(APP_SECRET).sign(&body)
    );
    let forged = format!(
        "POST /webhooks/whatsapp HTTP/1.1\r\nX-Hub-Signature-256: {}",
        AppSecret::new("guess").sign(&body)
    );
    let started = Instant::now();
    let forged_status = loop {
        match request(addr, &forged, &body) {
            Some(status) => break status,
            None if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            None => panic!("the receiver did not listen on {addr}"),
        }
    };
    assert_eq!(forged_status, 401, "a forged notification is refused");
    assert_eq!(request(addr, &signed, &body), Some(200));
    let challenge = format!(
        "GET /webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=42 HTTP/1.1"
    );
    assert_eq!(request(addr, &challenge, b""), Some(200));

    assert!(statuses.wait_until(Duration::from_secs(10), |r| !r.is_empty()).await, "no status record");
    // Time for a wrongly published forged one to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = statuses.records();
    assert_eq!(records.len(), 1, "only the signed notification's status");
    assert_eq!(records[0].key.as_deref(), Some(&b"hook-1"[..]), "keyed by the job id");
    let status: Value = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!((status["job_id"].as_str(), status["status"].as_str()), (Some("hook-1"), Some("delivered")));
    assert_eq!(status["wamid"].as_str(), Some(wamid.as_str()));

    let _ = Command::new("kill").args(["-TERM", &engine.id().to_string()]).status();
    let exit = engine.wait().expect("wait for the engine");
    assert!(exit.success(), "a graceful stop exits 0: {exit:?}");
    results.stop().await;
    statuses.stop().await;
    stack.stop().await;
}

/// The delivery lifecycle end to end: the engine sends, the simulator posts
/// each message's later statuses as Meta would (signed, some twice or out of
/// order, some `failed`), and `wabulk webhooks` writes them to the statuses
/// topic. The receiver is stopped for 30 s in the middle: the simulator's
/// retries (backoff up to 5 s) bring every status in all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sent_job_gets_its_later_statuses_through_a_receiver_outage() {
    init_logs();
    const JOBS_N: usize = 300;
    let numbers = [Number::new(PHONE, 80)];
    let port = free_port();
    let mut sim = sim_config(&numbers, Latency::Fixed(Duration::from_millis(5)));
    sim.webhooks = wabulk_graph_sim::WebhookConfig {
        url: Some(format!("http://127.0.0.1:{port}/webhooks/whatsapp")),
        app_secret: APP_SECRET.into(),
        delivered_after: Latency::Meta { scale: 0.5 },
        read_after: Latency::Meta { scale: 0.5 },
        failed_fraction: 0.1,
        duplicate_fraction: 0.05,
        ..Default::default()
    };
    let stack = Stack::start(sim, 2).await;
    stack.kafka.create_topic(STATUSES, 2).expect("statuses topic");
    stack.kafka.create_topic("wabulk.inbound", 1).expect("inbound topic");
    let dir = TempDir::new("webhooks-lifecycle");
    let toml = EngineToml::new(&stack, "it-webhooks-life", &numbers);
    let mut text = toml.render();
    text.push_str(&format!("\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\n"));
    let config = dir.path().join("wabulk.toml");
    std::fs::write(&config, text).expect("write the configuration");
    let receiver = || {
        Command::new(env!("CARGO_BIN_EXE_wabulk"))
            .args(["webhooks", "--config"])
            .arg(&config)
            .env("WABULK_APP_SECRET", APP_SECRET)
            .env("WABULK_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN)
            // Its own /metrics port, apart from the engine's.
            .env("WABULK_HTTP__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wabulk webhooks")
    };
    let mut running = receiver();
    let engine = crate::harness::InProcessEngine::start(toml.setup());
    let results = Collector::start(&stack.brokers(), RESULTS);
    let statuses = Collector::start(&stack.brokers(), STATUSES);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    for i in 0..JOBS_N {
        let job = json!({ "id": format!("life-{i}"), "phone_number_id": PHONE, "to": format!("+1555200{i:04}"),
            "message": { "type": "text", "text": { "body": "hi" } } });
        writer
            .send(JOBS, Some(PHONE.as_bytes()), &serde_json::to_vec(&job).unwrap())
            .await
            .expect("write a job");
    }
    // Stop the receiver once some statuses are in, while most are still coming.
    assert!(statuses.wait_until(Duration::from_secs(60), |r| r.len() >= 50).await, "no statuses arrive");
    let _ = Command::new("kill").args(["-TERM", &running.id().to_string()]).status();
    assert!(running.wait().expect("wait").success(), "the receiver stops gracefully");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = statuses.len();
    running = receiver();

    assert!(results.wait_until(Duration::from_secs(60), |r| r.len() >= JOBS_N).await, "jobs not all sent");
    let settled = |records: &[wabulk_kafka::Record]| {
        let mut done = std::collections::HashSet::new();
        for record in records {
            let status: Value = serde_json::from_slice(&record.payload).unwrap();
            if matches!(status["status"].as_str(), Some("delivered" | "failed")) {
                done.insert(status["job_id"].as_str().unwrap_or_default().to_owned());
            }
        }
        done.len()
    };
    let all_in = statuses.wait_until(Duration::from_secs(90), |r| settled(r) >= JOBS_N).await;
    let _ = Command::new("kill").args(["-TERM", &running.id().to_string()]).status();
    let _ = running.wait();
    engine.stop().await;
    let records = statuses.records();
    results.stop().await;
    statuses.stop().await;
    let stats = stack.stop().await;
    assert!(all_in, "{} of {JOBS_N} jobs have a settled status", settled(&records));
    assert!(
        stats.webhook_posts_failed > 0,
        "the outage happened: the simulator had to retry ({during} statuses in by then)"
    );

    let mut by_job: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for record in &records {
        let status: Value = serde_json::from_slice(&record.payload).unwrap();
        let job = status["job_id"].as_str().expect("every status names its job").to_owned();
        assert_eq!(record.key.as_deref(), Some(job.as_bytes()), "keyed by the job id");
        let state = status["status"].as_str().unwrap().to_owned();
        if state == "failed" {
            assert_eq!(status["errors"][0]["code"], 131026, "a failed status carries Meta's error: {status}");
        }
        by_job.entry(job).or_default().push(state);
    }
    assert_eq!(by_job.len(), JOBS_N, "statuses for every job and no other");
    for (job, states) in &by_job {
        assert!(states.iter().any(|s| s == "sent"), "{job}: no sent status: {states:?}");
        let settled = states.iter().filter(|s| *s == "delivered" || *s == "failed").count();
        assert!(settled >= 1, "{job}: never delivered nor failed: {states:?}");
    }
    let failed = by_job.values().filter(|s| s.iter().any(|s| s == "failed")).count();
    assert!(failed > 0 && failed < JOBS_N / 3, "about a tenth fail: {failed}");
}

/// A CA and a server certificate for 127.0.0.1 it signed: the chain (server
/// first) and key as PEM, and a client trusting that CA alone.
struct ReceiverPki {
    chain_pem: String,
    key_pem: String,
    client: tokio_rustls::TlsConnector,
}

impl ReceiverPki {
    fn generate() -> ReceiverPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "wabulk webhooks it CA");
        let ca = ca.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
        let server = server.signed_by(&key, &ca, &ca_key).expect("server certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("trust the CA");
        let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        ReceiverPki {
            chain_pem: format!("{}{}", server.pem(), ca.pem()),
            key_pem: key.serialize_pem(),
            client: tokio_rustls::TlsConnector::from(std::sync::Arc::new(client)),
        }
    }
}

/// [`request`] over HTTPS; `None` while nothing listens or the handshake fails.
async fn request_tls(
    addr: SocketAddr,
    client: &tokio_rustls::TlsConnector,
    head: &str,
    body: &[u8],
) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut stream = client.connect(name, stream).await.ok()?;
    let head =
        format!("{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    let mut answer = Vec::new();
    // A client closing without TLS close_notify is a read error; the answer is in by then.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).split_whitespace().nth(1)?.parse().ok()
}

/// `wabulk webhooks` with `tls_cert_file` and `tls_key_file` serves HTTPS:
/// a signed notification posted by a client trusting the CA is answered 200
/// and its status lands on the statuses topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wabulk_webhooks_serves_https_with_the_configured_certificate() {
    init_logs();
    let kafka = wabulk_kafka::EmbeddedKafka::start(1).expect("mock cluster");
    kafka.create_topic(STATUSES, 1).expect("statuses topic");
    kafka.create_topic("wabulk.inbound", 1).expect("inbound topic");
    let brokers = kafka.bootstrap_servers();
    let dir = TempDir::new("webhooks-tls");
    let pki = ReceiverPki::generate();
    let (cert, key) = (dir.path().join("receiver.pem"), dir.path().join("receiver.key"));
    std::fs::write(&cert, &pki.chain_pem).expect("write the chain");
    std::fs::write(&key, &pki.key_pem).expect("write the key");
    let port = free_port();
    let config = dir.path().join("wabulk.toml");
    let text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\n\
         tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    std::fs::write(&config, text).expect("write the configuration");
    let env = [("WABULK_APP_SECRET", APP_SECRET), ("WABULK_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN)];

    let check = Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["check-config", "--config"])
        .arg(&config)
        .envs(env)
        .output()
        .expect("check-config");
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{shown}{}", String::from_utf8_lossy(&check.stderr));
    assert!(shown.contains("tls_key_file"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "key material shown:\n{shown}");

    let mut receiver = Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["webhooks", "--config"])
        .arg(&config)
        .envs(env)
        .env("WABULK_HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wabulk webhooks");
    let statuses = Collector::start(&brokers, STATUSES);
    let body = serde_json::to_vec(&json!({ "object": "whatsapp_business_account", "entry": [{
        "id": crate::harness::WABA, "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": { "phone_number_id": PHONE },
            "statuses": [{ "id": "wamid.tls-1", "status": "delivered", "timestamp": "1700000000",
                           "recipient_id": "15551230001", "biz_opaque_callback_data": "tls-1" }] } }] }] }))
    .unwrap();
    let signed = format!(
        "POST /webhooks/whatsapp HTTP/1.1\r\nX-Hub-Signature-256: {}",
        AppSecret::new(APP_SECRET).sign(&body)
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let answered = loop {
        match request_tls(addr, &pki.client, &signed, &body).await {
            Some(status) => break status,
            None if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => panic!("the receiver did not serve HTTPS on {addr}"),
        }
    };
    assert_eq!(answered, 200);
    // Plain HTTP to the same port gets no HTTP answer.
    assert_eq!(request(addr, &signed, &body), None, "plain HTTP answered on the HTTPS port");

    assert!(statuses.wait_until(Duration::from_secs(10), |r| !r.is_empty()).await, "no status record");
    let records = statuses.records();
    assert_eq!(records[0].key.as_deref(), Some(&b"tls-1"[..]), "keyed by the job id");
    let _ = Command::new("kill").args(["-TERM", &receiver.id().to_string()]).status();
    assert!(receiver.wait().expect("wait for the receiver").success(), "a graceful stop exits 0");
    statuses.stop().await;
}

/// Half a pair, a key of another pair, a missing file: refused at start
/// (here `check-config`, which loads them as `run` does) with the key to fix.
#[test]
fn check_config_refuses_unusable_tls_files_naming_the_key() {
    let dir = TempDir::new("webhooks-tls-config");
    let (pki, other) = (ReceiverPki::generate(), ReceiverPki::generate());
    let cert = dir.path().join("receiver.pem");
    let other_key = dir.path().join("other.key");
    std::fs::write(&cert, &pki.chain_pem).expect("write the chain");
    std::fs::write(&other_key, &other.key_pem).expect("write the other key");
    let missing = dir.path().join("absent.key");
    let check = |keys: &str| {
        let config = dir.path().join("wabulk.toml");
        std::fs::write(&config, format!("[webhooks]\n{keys}")).expect("write the configuration");
        let out = Command::new(env!("CARGO_BIN_EXE_wabulk"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .expect("check-config");
        assert!(!out.status.success(), "{keys} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let file = |path: &std::path::Path| format!("\"{}\"", path.display());

    let said = check(&format!("tls_cert_file = {}\n", file(&cert)));
    assert!(said.contains("webhooks.tls_key_file: must be set too"), "{said}");
    let said = check(&format!("tls_key_file = {}\n", file(&other_key)));
    assert!(said.contains("webhooks.tls_cert_file: must be set too"), "{said}");
    let said = check(&format!("tls_cert_file = {}\ntls_key_file = {}\n", file(&cert), file(&missing)));
    assert!(said.contains("webhooks.tls_key_file") && said.contains("absent.key"), "{said}");
    let said = check(&format!("tls_cert_file = {}\ntls_key_file = {}\n", file(&cert), file(&other_key)));
    assert!(
        said.contains("webhooks.tls_cert_file / webhooks.tls_key_file") && said.contains("does not belong"),
        "{said}"
    );
    assert!(!said.contains("PRIVATE KEY"), "key material in the error:\n{said}");
}

/// The app secret and the verify token may come from files: `wabulk
/// webhooks` with no secret variable set answers the handshake with the
/// file's verify token and takes a body signed with the file's secret; a
/// missing file stops it at start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secrets_may_come_from_files() {
    init_logs();
    let numbers = [Number::new(PHONE, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 1).await;
    stack.kafka.create_topic(STATUSES, 1).expect("statuses topic");
    stack.kafka.create_topic("wabulk.inbound", 1).expect("inbound topic");
    let dir = TempDir::new("webhook-secret-files");
    let (secret_file, verify_file) = (dir.path().join("app.secret"), dir.path().join("verify.token"));
    std::fs::write(&secret_file, format!("{APP_SECRET}\n")).expect("secret file");
    std::fs::write(&verify_file, VERIFY_TOKEN).expect("verify token file");
    let port = free_port();
    let mut text = EngineToml::new(&stack, "it-webhook-files", &numbers).render();
    text.push_str(&format!(
        "\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\napp_secret_file = {:?}\nverify_token_file = {:?}\n",
        secret_file.display().to_string(),
        verify_file.display().to_string()
    ));
    let config = dir.path().join("wabulk.toml");
    std::fs::write(&config, &text).expect("write the configuration");
    let receiver = |config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_wabulk"))
            .args(["webhooks", "--config"])
            .arg(config)
            .env("WABULK_HTTP__LISTEN", "127.0.0.1:0")
            .env_remove("WABULK_APP_SECRET")
            .env_remove("WABULK_WEBHOOK_VERIFY_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wabulk webhooks")
    };
    let mut running = receiver(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let challenge = format!(
        "GET /webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=7 HTTP/1.1"
    );
    let started = Instant::now();
    let handshake = loop {
        match request(addr, &challenge, b"") {
            Some(status) => break status,
            None if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            None => panic!("the receiver did not listen on {addr}"),
        }
    };
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let signed = format!(
        "POST /webhooks/whatsapp HTTP/1.1\r\nX-Hub-Signature-256: {}",
        AppSecret::new(APP_SECRET).sign(body)
    );
    let posted = request(addr, &signed, body);
    let _ = Command::new("kill").args(["-TERM", &running.id().to_string()]).status();
    assert!(running.wait().expect("wait").success(), "a graceful stop exits 0");
    assert_eq!(handshake, 200, "the verify token from its file");
    assert_eq!(posted, Some(200), "a body signed with the secret from its file");

    std::fs::remove_file(&secret_file).expect("remove the secret file");
    let output = receiver(&config).wait_with_output().expect("wabulk webhooks");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("webhooks.app_secret_file"), "the key is named: {stderr}");
    assert!(!stderr.contains(APP_SECRET), "no secret shown: {stderr}");
    stack.stop().await;
}
