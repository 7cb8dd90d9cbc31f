//! End-to-end tests of the simulator: real servers on 127.0.0.1:0 driven by hyper
//! clients over HTTP/1.1 and HTTP/2 prior knowledge. Limits are observed with
//! short real intervals (tens to hundreds of milliseconds); the exact arithmetic is
//! covered by the ledger's unit tests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use wabulk_graph_sim::{
    example_config, Faults, ForcedError, Latency, Outage, SimConfig, SimHandle, SimNumber, SimStats, SimWaba,
    Simulator, UnknownWaba,
};

const TOKEN_A: &str = "token-a";
const TOKEN_B: &str = "token-b";

/// Two WABAs; numbers "1001" and "1002" in A, "2001" in B; all at `mps`; answers
/// at once.
fn config(mps: u32) -> SimConfig {
    let number = |id: &str, waba: &str| SimNumber { id: id.into(), mps, waba_id: waba.into() };
    SimConfig {
        numbers: vec![number("1001", "wa"), number("1002", "wa"), number("2001", "wb")],
        wabas: vec![
            SimWaba { id: "wa".into(), token: TOKEN_A.into(), hourly_cap: 1_000_000 },
            SimWaba { id: "wb".into(), token: TOKEN_B.into(), hourly_cap: 1_000_000 },
        ],
        latency: Latency::Fixed(Duration::ZERO),
        seed: Some(7),
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(config, listener).await.unwrap()
}

/// A client connection of either protocol.
enum Client {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> Option<i64> {
        self.body["error"]["code"].as_i64()
    }
}

async fn h1(addr: SocketAddr) -> Client {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (sender, conn) = http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    Client::H1(sender)
}

async fn h2_with_conn(addr: SocketAddr) -> (Client, JoinHandle<Result<(), hyper::Error>>) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    (Client::H2(sender), tokio::spawn(conn))
}

async fn h2(addr: SocketAddr) -> Client {
    h2_with_conn(addr).await.0
}

fn message(to: &str, job: Option<&str>) -> Value {
    let mut body = json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}});
    if let Some(job) = job {
        body["biz_opaque_callback_data"] = json!(job);
    }
    body
}

impl Client {
    async fn request(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        let response = match self {
            Client::H1(sender) => {
                sender.ready().await?;
                sender.send_request(req).await?
            }
            Client::H2(sender) => {
                sender.ready().await?;
                sender.send_request(req).await?
            }
        };
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }

    async fn send(&mut self, number: &str, token: &str, body: &Value) -> Result<Answer, hyper::Error> {
        self.request(post(number, token, body.to_string())).await
    }

    async fn get(&mut self, path: &str) -> Answer {
        let req = Request::get(path).header("host", "sim").body(Full::default()).unwrap();
        self.request(req).await.unwrap()
    }
}

/// A token check: `GET path` with the token, if any.
fn read(path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get(path).header("host", "sim");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    req.body(Full::default()).unwrap()
}

fn post(number: &str, token: &str, body: String) -> Request<Full<Bytes>> {
    Request::post(format!("/v21.0/{number}/messages"))
        .header("host", "sim")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn errors(stats: &SimStats, code: &str) -> u64 {
    stats.errors_by_code.get(code).copied().unwrap_or(0)
}

#[tokio::test]
async fn success_has_meta_shape_over_http1_and_http2() {
    let sim = start(config(100)).await;
    assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    assert!(sim.base_url().ends_with("/v21.0"));
    let mut wamids = Vec::new();
    for mut client in [h1(sim.local_addr()).await, h2(sim.local_addr()).await] {
        let answer =
            client.send("1001", TOKEN_A, &message(&format!("155500{}", wamids.len()), None)).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body["messaging_product"], "whatsapp");
        let to = answer.body["contacts"][0]["input"].as_str().unwrap().to_owned();
        assert_eq!(answer.body["contacts"][0]["wa_id"], to.as_str());
        let wamid = answer.body["messages"][0]["id"].as_str().unwrap().to_owned();
        assert!(wamid.starts_with("wamid."));
        wamids.push(wamid);
        assert_eq!(client.get("/healthz").await.status, StatusCode::OK);
    }
    assert_ne!(wamids[0], wamids[1]);

    let mut client = h1(sim.local_addr()).await;
    let over_http: SimStats = serde_json::from_value(client.get("/__sim/stats").await.body).unwrap();
    assert_eq!(over_http, sim.stats());
    assert_eq!((over_http.requests, over_http.accepted, over_http.http2_requests), (2, 2, 1));
    assert_eq!(over_http.numbers["1001"].accepted, 2);
    assert_eq!(over_http.connections, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn auth_unknown_numbers_and_bad_bodies_are_refused_with_meta_codes() {
    let sim = start(config(100)).await;
    let mut client = h2(sim.local_addr()).await;

    // A token of another WABA is as bad as a wrong one.
    let answer = client.send("1001", TOKEN_B, &message("1555", None)).await.unwrap();
    assert_eq!((answer.status, answer.code()), (StatusCode::UNAUTHORIZED, Some(190)));
    let error = &answer.body["error"];
    assert_eq!(error["type"], "OAuthException");
    assert_eq!(error["error_data"]["messaging_product"], "whatsapp");
    assert!(error["error_data"]["details"].is_string() && error["fbtrace_id"].is_string());
    let no_auth = Request::post("/v21.0/1001/messages").body(Full::new(Bytes::from("{}"))).unwrap();
    assert_eq!(client.request(no_auth).await.unwrap().code(), Some(190));

    let answer = client.send("9999", TOKEN_A, &message("1555", None)).await.unwrap();
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, Some(100)));
    for bad in [
        json!({"to": "1555", "type": "text"}),
        json!({"messaging_product": "sms", "to": "1555"}),
        json!({"messaging_product": "whatsapp", "type": "text"}),
    ] {
        let answer = client.send("1001", TOKEN_A, &bad).await.unwrap();
        assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, Some(100)), "{bad}");
    }
    let not_json = client.request(post("1001", TOKEN_A, "{nope".into())).await.unwrap();
    assert_eq!(not_json.code(), Some(100));

    let stats = sim.stats();
    assert_eq!((stats.requests, stats.accepted), (7, 0));
    assert_eq!(errors(&stats, "190"), 2);
    assert_eq!(errors(&stats, "100"), 5);
    // Known numbers count every request; the unknown one has no counters.
    assert_eq!(stats.numbers["1001"].requests, 6);
    sim.shutdown().await;
}

#[tokio::test]
async fn token_checks_answer_as_meta_and_are_no_messages() {
    let sim = start(config(100)).await;
    for mut client in [h1(sim.local_addr()).await, h2(sim.local_addr()).await] {
        for path in ["/v21.0/1001?fields=id", "/v21.0/1001", "/v19.0/1001?fields=id,verified_name"] {
            let answer = client.request(read(path, Some(TOKEN_A))).await.unwrap();
            assert_eq!((answer.status, &answer.body), (StatusCode::OK, &json!({"id": "1001"})), "{path}");
        }
    }
    let mut client = h2(sim.local_addr()).await;
    // A bad token gets exactly the body a send gets, trace id aside.
    let send = client.send("1001", TOKEN_B, &message("1555", None)).await.unwrap();
    for token in [Some(TOKEN_B), None] {
        let answer = client.request(read("/v21.0/1001?fields=id", token)).await.unwrap();
        assert_eq!((answer.status, answer.code()), (StatusCode::UNAUTHORIZED, Some(190)));
        let strip = |body: &Value| {
            let mut body = body.clone();
            body["error"].as_object_mut().unwrap().remove("fbtrace_id");
            body
        };
        assert_eq!(strip(&answer.body), strip(&send.body));
    }
    let unknown = client.request(read("/v21.0/9999?fields=id", Some(TOKEN_A))).await.unwrap();
    assert_eq!((unknown.status, unknown.code()), (StatusCode::BAD_REQUEST, Some(100)));
    assert!(unknown.body["error"]["message"].as_str().unwrap().starts_with("Unsupported get request"));
    // The fixed routes are not read as nodes.
    assert_eq!(client.get("/healthz").await.status, StatusCode::OK);
    assert!(client.get("/__sim/stats").await.body["token_checks"].is_u64());

    let stats = sim.stats();
    assert_eq!((stats.token_checks, stats.token_checks_refused), (9, 2));
    // Only the one send is a request; the checks are in no message counter.
    assert_eq!((stats.requests, stats.accepted, stats.http2_requests), (1, 0, 1));
    assert_eq!(errors(&stats, "190"), 1);
    assert_eq!(errors(&stats, "100"), 0);
    assert_eq!((stats.numbers["1001"].requests, stats.numbers["1001"].max_in_any_1s_window), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn token_checks_count_against_no_limit() {
    let mut cfg = config(1);
    cfg.wabas[0].hourly_cap = 1;
    let sim = start(cfg).await;
    let mut client = h2(sim.local_addr()).await;
    for _ in 0..20 {
        let answer = client.request(read("/v21.0/1001?fields=id", Some(TOKEN_A))).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }
    // The number's one message per second and the WABA's one call per hour
    // are still there for a send.
    assert_eq!(client.send("1001", TOKEN_A, &message("1555", None)).await.unwrap().status, StatusCode::OK);
    let stats = sim.stats();
    assert_eq!(stats.violations, Default::default());
    assert_eq!(stats.token_checks, 20);
    sim.shutdown().await;
}

#[tokio::test]
async fn set_token_changes_what_a_waba_accepts_while_running() {
    let sim = start(config(100)).await;
    let mut client = h2(sim.local_addr()).await;
    let check = |token| read("/v21.0/1002?fields=id", Some(token));

    sim.set_token("wa", "token-a2").unwrap();
    // Every number of the WABA, sends and checks alike; the other WABA keeps its token.
    assert_eq!(client.request(check(TOKEN_A)).await.unwrap().code(), Some(190));
    assert_eq!(client.send("1001", TOKEN_A, &message("1", None)).await.unwrap().code(), Some(190));
    assert_eq!(client.request(check("token-a2")).await.unwrap().status, StatusCode::OK);
    assert_eq!(client.send("1001", "token-a2", &message("1", None)).await.unwrap().status, StatusCode::OK);
    assert_eq!(client.send("2001", TOKEN_B, &message("1", None)).await.unwrap().status, StatusCode::OK);

    // Back again: the refused token is accepted once more.
    sim.set_token("wa", TOKEN_A).unwrap();
    assert_eq!(client.request(check(TOKEN_A)).await.unwrap().status, StatusCode::OK);
    assert_eq!(client.request(check("token-a2")).await.unwrap().code(), Some(190));

    assert_eq!(sim.set_token("nope", "x"), Err(UnknownWaba("nope".into())));
    assert_eq!(sim.set_token("nope", "x").unwrap_err().to_string(), r#"unknown waba "nope""#);
    let stats = sim.stats();
    assert_eq!((stats.token_checks, stats.token_checks_refused), (4, 2));
    sim.shutdown().await;
}

#[tokio::test]
async fn over_mps_in_one_second_is_130429_and_a_phone_violation() {
    let sim = start(config(5)).await;
    let mut client = h1(sim.local_addr()).await;
    let mut codes = Vec::new();
    for i in 0..6 {
        codes.push(client.send("1001", TOKEN_A, &message(&format!("1555{i}"), None)).await.unwrap().code());
    }
    assert_eq!(codes, [None, None, None, None, None, Some(130429)]);
    // Another number has its own window.
    assert_eq!(client.send("1002", TOKEN_A, &message("1555", None)).await.unwrap().status, StatusCode::OK);
    let stats = sim.stats();
    assert_eq!(stats.violations.phone, 1);
    assert_eq!(stats.numbers["1001"].max_in_any_1s_window, 6);
    assert_eq!(stats.numbers["1001"].mps, 5);
    assert_eq!(errors(&stats, "130429"), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn pair_rule_allows_a_long_burst_but_makes_it_repaid() {
    let mut cfg = config(1_000);
    cfg.pair_interval = Duration::from_millis(500);
    let sim = start(cfg).await;
    let mut client = h1(sim.local_addr()).await;

    // Within one burst window: 21 to A (the 21st is fine), then 20 to B.
    let mut statuses = Vec::new();
    for to in std::iter::repeat_n("15550000001", 21).chain(std::iter::repeat_n("15550000002", 20)) {
        statuses.push(client.send("1001", TOKEN_A, &message(to, None)).await.unwrap().status);
    }
    assert!(statuses.iter().all(|&s| s == StatusCode::OK), "{statuses:?}");

    // After the window, B's burst of 20 is still being repaid (until 20 × 500 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answer = client.send("1001", TOKEN_A, &message("15550000002", None)).await.unwrap();
    assert_eq!(answer.code(), Some(131056));
    // Other recipients and the same recipient on another number are unaffected.
    assert_eq!(
        client.send("1001", TOKEN_A, &message("15550000003", None)).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(
        client.send("1002", TOKEN_A, &message("15550000002", None)).await.unwrap().status,
        StatusCode::OK
    );

    let stats = sim.stats();
    assert_eq!(stats.violations.pair, 1);
    assert_eq!(stats.violations.phone, 0);
    assert_eq!(errors(&stats, "131056"), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn waba_hourly_cap_is_80007_with_usage_header() {
    let mut cfg = config(1_000);
    cfg.wabas[0].hourly_cap = 3;
    let sim = start(cfg).await;
    let mut client = h2(sim.local_addr()).await;
    // Both numbers of WABA "wa" share the cap; "2001" in "wb" does not.
    for (number, to) in [("1001", "1"), ("1002", "2"), ("1001", "3")] {
        assert_eq!(client.send(number, TOKEN_A, &message(to, None)).await.unwrap().status, StatusCode::OK);
    }
    let answer = client.send("1002", TOKEN_A, &message("4", None)).await.unwrap();
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, Some(80007)));
    let usage: Value =
        serde_json::from_str(answer.headers["x-business-use-case-usage"].to_str().unwrap()).unwrap();
    assert_eq!(usage["wa"][0]["type"], "whatsapp");
    assert_eq!(usage["wa"][0]["estimated_time_to_regain_access"], 60);
    assert_eq!(client.send("2001", TOKEN_B, &message("4", None)).await.unwrap().status, StatusCode::OK);
    assert_eq!(sim.stats().violations.waba, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn forced_errors_carry_their_headers_and_respect_the_number_filter() {
    let usage =
        r#"{"102290129340398":[{"type":"whatsapp","call_count":100,"estimated_time_to_regain_access":2}]}"#;
    let mut cfg = config(1_000);
    cfg.faults.forced = vec![ForcedError {
        code: 80007,
        http_status: 400,
        probability: 1.0,
        headers: vec![("x-business-use-case-usage".into(), usage.into())],
        phone_number_id: Some("1001".into()),
    }];
    let sim = start(cfg).await;
    let mut client = h1(sim.local_addr()).await;
    let answer = client.send("1001", TOKEN_A, &message("1", None)).await.unwrap();
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, Some(80007)));
    assert_eq!(answer.headers["x-business-use-case-usage"], usage);
    assert_eq!(client.send("1002", TOKEN_A, &message("1", None)).await.unwrap().status, StatusCode::OK);
    let stats = sim.stats();
    assert_eq!(errors(&stats, "80007"), 1);
    assert_eq!(stats.violations.waba, 0, "a forced error is not the sender's fault");
    sim.shutdown().await;
}

#[tokio::test]
async fn transient_permanent_and_storm_faults() {
    let mut cfg = config(1_000);
    cfg.faults = Faults { transient: 1.0, ..Faults::default() };
    let sim = start(cfg).await;
    let mut client = h2(sim.local_addr()).await;
    for i in 0..30 {
        let answer = client.send("1001", TOKEN_A, &message(&format!("{i}"), None)).await.unwrap();
        assert!(answer.status.is_server_error());
        if answer.body.is_object() {
            assert_eq!(answer.code(), Some(131000));
        }
    }
    let stats = sim.stats();
    let counts = [errors(&stats, "131000"), errors(&stats, "http_500"), errors(&stats, "http_503")];
    assert_eq!(counts.iter().sum::<u64>(), 30);
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    sim.shutdown().await;

    let mut cfg = config(1_000);
    cfg.faults.permanent = 1.0;
    let sim = start(cfg).await;
    let mut client = h1(sim.local_addr()).await;
    let answer = client.send("1001", TOKEN_A, &message("1", None)).await.unwrap();
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, Some(131026)));
    sim.shutdown().await;

    let mut cfg = config(1_000);
    cfg.faults.throttle_storm = 1.0;
    let sim = start(cfg).await;
    let mut client = h1(sim.local_addr()).await;
    for i in 0..3 {
        let answer = client.send("1001", TOKEN_A, &message(&format!("{i}"), None)).await.unwrap();
        assert_eq!(answer.code(), Some(130429));
    }
    let stats = sim.stats();
    assert_eq!(stats.storms, 1);
    assert_eq!(stats.violations.phone, 0, "a storm is not the sender's fault");
    sim.shutdown().await;
}

#[tokio::test]
async fn hang_holds_the_stream_until_the_client_gives_up() {
    let mut cfg = config(1_000);
    cfg.faults.hang = 1.0;
    let sim = start(cfg).await;
    let mut client = h2(sim.local_addr()).await;
    let body = message("1", None);
    let pending = tokio::time::timeout(Duration::from_millis(300), client.send("1001", TOKEN_A, &body));
    assert!(pending.await.is_err(), "a hung request must not be answered");
    let stats = sim.stats();
    assert_eq!((stats.hangs, stats.accepted), (1, 0));
    // Shutdown does not wait for hanging requests.
    let started = Instant::now();
    let addr = sim.local_addr();
    sim.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
}

#[tokio::test]
async fn reset_fails_the_request_over_both_protocols() {
    let mut cfg = config(1_000);
    cfg.faults.reset = 1.0;
    let sim = start(cfg).await;
    let mut client = h2(sim.local_addr()).await;
    assert!(client.send("1001", TOKEN_A, &message("1", None)).await.is_err());
    let mut client = h1(sim.local_addr()).await;
    assert!(client.send("1001", TOKEN_A, &message("2", None)).await.is_err());
    let stats = sim.stats();
    assert_eq!((stats.resets, stats.accepted, stats.requests), (2, 0, 2));
    sim.shutdown().await;
}

#[tokio::test]
async fn goaway_finishes_in_flight_and_closes_the_http2_connection() {
    let mut cfg = config(1_000);
    cfg.faults.goaway = 1.0;
    cfg.latency = Latency::Fixed(Duration::from_millis(100));
    let sim = start(cfg).await;
    let (mut client, conn) = h2_with_conn(sim.local_addr()).await;
    // The request that triggered the GOAWAY is still answered.
    let answer = client.send("1001", TOKEN_A, &message("1", None)).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    // The client observes the GOAWAY: its connection ends cleanly and refuses new streams.
    let ended = tokio::time::timeout(Duration::from_secs(2), conn).await.expect("connection closed");
    assert!(ended.unwrap().is_ok(), "graceful, not an error");
    assert!(client.send("1001", TOKEN_A, &message("2", None)).await.is_err());
    // A new connection works (and gets its own GOAWAY).
    let mut client = h2(sim.local_addr()).await;
    assert_eq!(client.send("1001", TOKEN_A, &message("3", None)).await.unwrap().status, StatusCode::OK);
    let stats = sim.stats();
    assert_eq!((stats.goaways, stats.accepted), (2, 2));
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicate_job_ids_are_detected() {
    let sim = start(config(1_000)).await;
    let mut client = h2(sim.local_addr()).await;
    for (to, job) in [("1", "job-a"), ("2", "job-b"), ("3", "job-a"), ("4", "job-a")] {
        assert_eq!(
            client.send("1001", TOKEN_A, &message(to, Some(job))).await.unwrap().status,
            StatusCode::OK
        );
    }
    // A refused request is not an acceptance, so not a duplicate.
    assert_eq!(client.send("1001", TOKEN_B, &message("5", Some("job-b"))).await.unwrap().code(), Some(190));
    let stats = sim.stats();
    assert_eq!(stats.duplicate_job_ids, ["job-a"]);
    assert_eq!(stats.duplicate_count, 2);
    assert_eq!((stats.requests, stats.accepted), (5, 4));
    sim.shutdown().await;
}

#[tokio::test]
async fn max_concurrent_streams_is_advertised() {
    let mut cfg = config(10_000);
    cfg.max_concurrent_streams = 10;
    cfg.latency = Latency::Fixed(Duration::from_millis(200));
    let sim = start(cfg).await;
    let mut client = h2(sim.local_addr()).await;
    // One round trip first, so the client has the server's SETTINGS; before
    // that it assumes no limit and the server refuses the excess streams.
    assert_eq!(client.send("1001", TOKEN_A, &message("warm-up", None)).await.unwrap().status, StatusCode::OK);
    let Client::H2(sender) = client else { unreachable!() };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut client = Client::H2(sender.clone());
        tasks.push(tokio::spawn(async move {
            client.send("1001", TOKEN_A, &message(&format!("{i}"), None)).await.map(|a| a.status)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), StatusCode::OK);
    }
    // 30 requests, 10 at a time, 200 ms each: at least three rounds.
    assert!(started.elapsed() >= Duration::from_millis(580), "{:?}", started.elapsed());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_requests_over_http2_are_all_answered() {
    let mut cfg = config(100_000);
    cfg.latency = Latency::Fixed(Duration::from_millis(200));
    let sim = start(cfg).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..20 {
        let Client::H2(sender) = h2(sim.local_addr()).await else { unreachable!() };
        for i in 0..100 {
            let mut client = Client::H2(sender.clone());
            let job = format!("job-{c}-{i}");
            tasks.push(tokio::spawn(async move {
                client
                    .send("1001", TOKEN_A, &message(&format!("1555{c:02}{i:03}"), Some(&job)))
                    .await
                    .map(|a| a.status)
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), StatusCode::OK);
    }
    let elapsed = started.elapsed();
    // All pending at once: far less than 2000 × 200 ms, or even 20 rounds.
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let stats = sim.stats();
    assert_eq!((stats.requests, stats.accepted, stats.http2_requests), (2000, 2000, 2000));
    assert_eq!(stats.duplicate_count, 0);
    sim.shutdown().await;
}

/// Whether a plain TCP client at `addr` gets an HTTP answer to `GET
/// /healthz` within a second: false when the connection is refused, or
/// closed (or silent) without one.
async fn answers_over_tcp(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = TcpStream::connect(addr).await else { return false };
    let request = b"GET /healthz HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && answer.starts_with(b"HTTP/1.1 200")
}

/// Polls [`answers_over_tcp`] every 20 ms until it equals `answering`, for
/// up to `limit`; when it did, if it did.
async fn until_answering(addr: SocketAddr, answering: bool, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if answers_over_tcp(addr).await == answering {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_refuses_connections_drops_open_ones_then_serves_again() {
    const OUTAGE: Duration = Duration::from_millis(800);
    let mut cfg = config(1_000);
    // Long enough that the request below is still waiting for its answer
    // when the outage begins.
    cfg.latency = Latency::Fixed(Duration::from_secs(2));
    let sim = start(cfg).await;
    let addr = sim.local_addr();
    assert!(answers_over_tcp(addr).await);
    let (client, conn) = h2_with_conn(addr).await;
    let mut in_flight = client;
    let pending =
        tokio::spawn(async move { in_flight.send("1001", TOKEN_A, &message("1", Some("job-1"))).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats().requests == 0 {
        assert!(Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let began = Instant::now();
    sim.refuse_connections(OUTAGE).await;
    let during = sim.stats();
    // The request was judged (accepted) but its answer never comes: the
    // connection is dropped, without GOAWAY, well before the 2 s latency.
    let answer = tokio::time::timeout(Duration::from_secs(1), pending).await.expect("no answer, at once");
    assert!(answer.unwrap().is_err(), "a request in flight got an answer during the outage");
    let ended = tokio::time::timeout(Duration::from_secs(1), conn).await.expect("the open connection closed");
    assert!(ended.unwrap().is_err(), "closed abruptly, not gracefully");
    // New connections are refused while it lasts.
    match TcpStream::connect(addr).await {
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused),
        Ok(_) => assert!(began.elapsed() >= OUTAGE, "a connection was accepted during the outage"),
    }
    assert!(!answers_over_tcp(addr).await || began.elapsed() >= OUTAGE);
    assert_eq!((during.outages, during.accepted, during.requests), (1, 1, 1));

    let serving = until_answering(addr, true, OUTAGE + Duration::from_secs(5)).await;
    let serving = serving.expect("listening again after the outage");
    assert!(serving - began >= OUTAGE, "listening again after {:?}", serving - began);
    let mut client = h2(addr).await;
    let answer = client.send("1001", TOKEN_A, &message("2", Some("job-2"))).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let after = sim.stats();
    assert_eq!((after.outages, after.accepted, after.requests), (1, 2, 2));
    sim.shutdown().await;
}

/// A request body that sends its first bytes and then never ends.
struct HalfSent(bool);

impl hyper::body::Body for HalfSent {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.0 {
            return std::task::Poll::Pending;
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b"{\"to\":")))))
    }
}

/// A request whose body was still arriving when the outage began never
/// reached the simulator's side of the cut: it is not judged or counted,
/// although hyper's handler for it runs on after the connection is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_off_by_an_outage_is_not_counted() {
    let sim = start(config(1_000)).await;
    let io = TokioIo::new(TcpStream::connect(sim.local_addr()).await.unwrap());
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let request = Request::post("/v21.0/1001/messages")
        .header("host", "sim")
        .header("authorization", format!("Bearer {TOKEN_A}"))
        .body(HalfSent(false))
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(request).await });
    // Time for the server to start the request's handler, which then waits
    // for the rest of the body (nothing observable tells when).
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.refuse_connections(Duration::from_millis(500)).await;
    assert!(tokio::time::timeout(Duration::from_secs(2), pending).await.expect("ended").unwrap().is_err());
    // Time for the orphaned handler to see its body fail and finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = sim.stats();
    assert_eq!((stats.requests, stats.outages), (0, 1), "{stats:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_outage_comes_at_its_time_and_ends() {
    let after = Duration::from_millis(700);
    let duration = Duration::from_millis(700);
    let mut cfg = config(1_000);
    cfg.faults.outage = Some(Outage { after, duration });
    let started = Instant::now();
    let sim = start(cfg).await;
    let addr = sim.local_addr();
    let refused = until_answering(addr, false, after + Duration::from_secs(5)).await;
    let refused = refused.expect("connections refused at the configured time");
    assert!(refused - started >= after, "refused after {:?}", refused - started);
    let serving = until_answering(addr, true, duration + Duration::from_secs(5)).await;
    let serving = serving.expect("listening again after the outage");
    assert!(serving - started >= after + duration, "serving again after {:?}", serving - started);
    let mut client = h2(addr).await;
    assert_eq!(client.send("1001", TOKEN_A, &message("1", None)).await.unwrap().status, StatusCode::OK);
    assert_eq!(sim.stats().outages, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_first_request_of_each_job_is_timed_whatever_its_answer() {
    let sim = start(config(1_000)).await;
    let mut client = h2(sim.local_addr()).await;
    let before = std::time::SystemTime::now();
    let refused = client.send("1001", TOKEN_B, &message("1", Some("job-a"))).await.unwrap();
    assert_eq!(refused.code(), Some(190));
    let between = std::time::SystemTime::now();
    assert_eq!(
        client.send("1001", TOKEN_A, &message("2", Some("job-a"))).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(client.send("1001", TOKEN_A, &message("3", None)).await.unwrap().status, StatusCode::OK);
    let first = sim.first_requests();
    assert_eq!(first.len(), 1, "{first:?}");
    let at = first["job-a"];
    assert!(before <= at && at <= between, "the refused request is the first");
    sim.shutdown().await;
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let sim = start(config(10)).await;
    let addr = sim.local_addr();
    drop(sim);
    // The accept loop notices on its next poll.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    let mut cfg = config(10);
    cfg.numbers[0].waba_id = "nope".into();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Simulator::start(cfg, listener).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let mut cfg = config(10);
    cfg.faults.hang = 1.5;
    assert!(cfg.validate().is_err());
    assert!(example_config().validate().is_ok());
}

#[test]
fn config_round_trips_through_toml_and_the_documented_shape_parses() {
    let mut cfg = example_config();
    cfg.seed = Some(42);
    cfg.faults.outage = Some(Outage { after: Duration::from_secs(60), duration: Duration::from_secs(30) });
    cfg.faults.forced.push(ForcedError {
        code: 131048,
        http_status: 400,
        probability: 0.5,
        headers: vec![("x-a".into(), "b".into())],
        phone_number_id: None,
    });
    let text = toml::to_string(&cfg).unwrap();
    let back: SimConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, cfg, "{text}");

    let documented = r#"
        pair_interval_ms = 60
        pair_burst = 45
        max_concurrent_streams = 50
        seed = 42
        latency = { fixed_ms = 0 }

        [[numbers]]
        id = "106540352242922"
        waba_id = "102290129340398"

        [[wabas]]
        id = "102290129340398"
        token = "sim-token-waba-a"

        [faults]
        transient = 0.001
        outage = { after_ms = 60000, duration_ms = 120000 }

        [[faults.forced]]
        code = 80007
        phone_number_id = "106540352242922"
        headers = [["x-business-use-case-usage", '{"102290129340398":[]}']]
    "#;
    let cfg: SimConfig = toml::from_str(documented).unwrap();
    assert_eq!(cfg.pair_interval, Duration::from_millis(60));
    assert_eq!(cfg.latency, Latency::Fixed(Duration::ZERO));
    assert_eq!(cfg.numbers[0].mps, 80);
    assert_eq!(cfg.wabas[0].hourly_cap, 1_800_000);
    assert_eq!(cfg.faults.forced[0].http_status, 400);
    assert_eq!(cfg.faults.forced[0].probability, 1.0);
    let outage = Outage { after: Duration::from_secs(60), duration: Duration::from_secs(120) };
    assert_eq!(cfg.faults.outage, Some(outage));
    assert!(cfg.validate().is_ok());

    let meta: SimConfig = toml::from_str("latency = { meta_scale = 0.01 }").unwrap();
    assert_eq!(meta.latency, Latency::Meta { scale: 0.01 });
    assert_eq!(meta.pair_interval, Duration::from_secs(6));
    assert!(toml::from_str::<SimConfig>("pair_interval = 5").is_err(), "unknown keys are refused");

    let defaults = SimConfig::default();
    assert_eq!((defaults.pair_burst, defaults.max_concurrent_streams), (45, 100));
    assert_eq!(defaults.latency, Latency::Meta { scale: 1.0 });
    assert_eq!(defaults.faults, Faults::default());
}
