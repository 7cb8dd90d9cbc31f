//! The TLS path against the simulator's HTTPS mode (its own CA, trusted
//! through `ca_file`), a wrong CA, and proxies that refuse the tunnel.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wabulk_graph_sim::{Latency, SimConfig, SimHandle};
use wabulk_model::{ErrorCode, Outcome, RetryReason, Scope};
use wabulk_sender::{ProxyUrl, Sender, SenderConfig, SenderError};

use crate::{is_sent, send_many, send_to, sender, sim_config, start, NUMBER};

/// A file removed when the test ends.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        TempFile(std::env::temp_dir().join(format!("wabulk-sender-{name}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn start_https(config: SimConfig) -> (SimHandle, TempFile) {
    let sim = start(SimConfig { tls: true, ..config }).await;
    let ca = TempFile::new("ca.pem");
    sim.write_ca_pem(&ca.0).unwrap();
    (sim, ca)
}

fn is_connection_retry_saying(outcome: &Outcome, words: &[&str]) -> bool {
    match outcome {
        Outcome::Retry { scope: Scope::Request, reason: RetryReason::Connection, error, .. } => {
            error.code == ErrorCode::Engine("connection".into())
                && words.iter().all(|w| error.message.contains(w))
        }
        _ => false,
    }
}

/// A thousand requests in flight over TLS, HTTP/2 by ALPN, the simulator's
/// CA trusted through `ca_file`: every one is sent, over several connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_in_flight_over_https_with_ca_file() {
    // 1 s, so that the thousand are on the wire together even on a busy machine.
    let (sim, ca) =
        start_https(SimConfig { latency: Latency::Fixed(Duration::from_secs(1)), ..sim_config() }).await;
    assert!(sim.base_url().starts_with("https://127.0.0.1:"), "{}", sim.base_url());
    let sender = sender(sim.base_url(), |c| {
        c.ca_file = Some(ca.0.clone());
        c.connect_timeout = Duration::from_secs(10);
        c.request_timeout = Duration::from_secs(20);
    });
    let outcomes = send_many(&sender, 1000).await;
    let failed: Vec<_> = outcomes.iter().filter(|o| !is_sent(o)).collect();
    assert!(failed.is_empty(), "{} not sent, first {:?}", failed.len(), failed.first());
    let stats = sim.stats();
    let pool = sender.pool_stats();
    assert_eq!((stats.accepted, stats.http2_requests), (1000, 1000), "{stats:?}");
    // 100 streams per connection: a thousand at once need ten connections.
    assert!(pool.opened_total >= 10, "{pool:?}");
    assert_eq!((pool.connect_errors_total, pool.refused_total), (0, 0), "{pool:?}");
    sim.shutdown().await;
}

/// Trusting another CA: the handshake fails with an error that names the
/// certificate problem, and the send is a connection retry (the job is not
/// spent); nothing reached the simulator's handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_connection_retry_naming_the_certificate() {
    let (sim, _own_ca) = start_https(sim_config()).await;
    let (other, other_ca) = start_https(sim_config()).await;
    let sender = sender(sim.base_url(), |c| c.ca_file = Some(other_ca.0.clone()));
    let outcome = send_to(&sender, NUMBER, 15_550_000_001).await;
    assert!(
        is_connection_retry_saying(
            &outcome,
            &["certificate is not trusted", "UnknownIssuer", "graph.ca_file"]
        ),
        "{outcome:?}"
    );
    assert_eq!(sim.stats().requests, 0);
    assert!(sender.pool_stats().connect_errors_total >= 1);

    // No CA file at all: the simulator's CA is in no store either.
    let sender = self::sender(sim.base_url(), |_| {});
    let outcome = send_to(&sender, NUMBER, 15_550_000_002).await;
    assert!(is_connection_retry_saying(&outcome, &["UnknownIssuer"]), "{outcome:?}");
    other.shutdown().await;
    sim.shutdown().await;
}

#[test]
fn a_ca_file_that_is_not_pem_is_refused_at_start() {
    let file = TempFile::new("not-a-ca.pem");
    std::fs::write(&file.0, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let config = SenderConfig {
        base_url: "https://127.0.0.1:9/v21.0".into(),
        ca_file: Some(file.0.clone()),
        ..SenderConfig::default()
    };
    match Sender::new(config) {
        Err(SenderError::CaFile { path, reason }) => {
            assert_eq!(path, file.0.display().to_string());
            assert!(reason.contains("PEM"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// A one-shot proxy that answers every CONNECT with `status` and records
/// what it was asked.
async fn refusing_proxy(status: &'static str) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        // The sender opens a connection or two before it reports the failure.
        while let Ok(Ok((mut stream, _))) =
            tokio::time::timeout(Duration::from_millis(1500), listener.accept()).await
        {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            seen.push(String::from_utf8_lossy(&request).into_owned());
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        seen
    });
    (port, task)
}

/// A proxy that refuses the credentials (407) or the destination (403): a
/// connection retry that says so and never shows the credentials; the
/// credentials went to the proxy as `Proxy-Authorization: Basic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_proxy_is_a_connection_retry_without_its_credentials() {
    for (status, words) in [
        ("407 Proxy Authentication Required", ["refused the proxy credentials", "407"]),
        ("403 Forbidden", ["does not allow a tunnel", "403"]),
    ] {
        let (port, proxy) = refusing_proxy(status).await;
        let proxy_url = format!("http://alice:pr0xy-s3cret@127.0.0.1:{port}");
        let sender = sender("https://graph.example.test/v21.0".into(), |c| {
            c.proxy = Some(ProxyUrl::parse(&proxy_url).unwrap());
        });
        let outcome = send_to(&sender, NUMBER, 15_550_000_003).await;
        assert!(is_connection_retry_saying(&outcome, &words), "{status}: {outcome:?}");
        assert!(!format!("{outcome:?}").contains("pr0xy-s3cret"), "{outcome:?}");
        let seen = proxy.await.unwrap();
        let first = seen.first().expect("the proxy was asked");
        assert!(first.starts_with("CONNECT graph.example.test:443 HTTP/1.1\r\n"), "{first}");
        // base64("alice:pr0xy-s3cret")
        assert!(first.contains("Proxy-Authorization: Basic YWxpY2U6cHIweHktczNjcmV0\r\n"), "{first}");
    }
}
