//! Integration test: `serve` on 127.0.0.1:0 answers the CONTRACT §8 endpoints
//! over real TCP and stops when its shutdown future resolves.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use wabulk_telemetry::{serve, Health, Metrics};

/// A parsed HTTP/1.1 answer: status code, headers (lower-cased names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection with `Connection: close`, read to EOF:
/// enough of a client for these endpoints, without a client dependency.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 5 s")
        .expect("read");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers, body: body.to_string() }
}

#[tokio::test]
async fn serves_endpoints_and_stops_on_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::clone(&metrics), Arc::clone(&health), async move {
        let _ = stopped.await;
    }));

    metrics.jobs_consumed.inc_by(3);
    metrics.messages_sent.with_label_values(&["106540352242922"]).inc();
    let m = request(addr, "GET", "/metrics").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4"));
    assert!(m.body.contains("# TYPE wabulk_jobs_consumed_total counter\n"));
    assert!(m.body.contains("wabulk_jobs_consumed_total 3\n"), "{}", m.body);
    assert!(m.body.contains("wabulk_messages_sent_total{phone_number_id=\"106540352242922\"} 1\n"));
    // A query string does not change the route.
    assert_eq!(request(addr, "GET", "/metrics?x=1").await.status, 200);

    let h = request(addr, "GET", "/healthz").await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));

    let r = request(addr, "GET", "/readyz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body.lines().count(), 1, "one-line reason: {:?}", r.body);
    health.set_consuming(true);
    let r = request(addr, "GET", "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (503, "not able to send to the Graph API\n"));
    health.set_sending(true);
    assert_eq!(request(addr, "GET", "/readyz").await.status, 200);

    assert_eq!(request(addr, "GET", "/").await.status, 404);
    assert_eq!(request(addr, "GET", "/metricsx").await.status, 404);
    let post = request(addr, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = request(addr, "HEAD", "/healthz").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .expect("serve task did not panic")
        .expect("serve returned Ok");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
}

#[tokio::test]
async fn shutdown_is_not_delayed_by_an_idle_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server =
        tokio::spawn(serve(listener, Arc::new(Metrics::new()), Arc::new(Health::new()), async move {
            let _ = stopped.await;
        }));
    // A keep-alive client that made one request and then sits idle.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("an idle keep-alive connection does not hold up shutdown")
        .unwrap()
        .unwrap();
}
