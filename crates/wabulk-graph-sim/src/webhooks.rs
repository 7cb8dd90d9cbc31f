//! The simulator as Meta's webhook sender: for every accepted message, the
//! statuses that follow (`sent` at once, `delivered` or `failed` after a
//! lognormal delay, `read` for a fraction later), posted in signed
//! notifications to the configured URL, as Meta does: now and then a status
//! twice or out of order, and every notification that is not answered 2xx
//! posted again with backoff until it is.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Latency;
use crate::latency;

/// Where and how the simulator posts status notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `http://host:port/path` of the receiver; `None`: no webhooks.
    pub url: Option<String>,
    /// Signs each body (`X-Hub-Signature-256`).
    pub app_secret: String,
    /// From acceptance to `delivered` (or `failed`).
    pub delivered_after: Latency,
    /// From `delivered` to `read`, for the `read_fraction` that are read.
    pub read_after: Latency,
    pub read_fraction: f64,
    /// Messages that end `failed` (131026, undeliverable) instead of delivered.
    pub failed_fraction: f64,
    /// Statuses posted a second time, a little later (Meta does).
    pub duplicate_fraction: f64,
    /// Statuses in one notification at most.
    pub max_statuses_per_post: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            app_secret: String::new(),
            delivered_after: Latency::Meta { scale: 2.0 },
            read_after: Latency::Meta { scale: 4.0 },
            read_fraction: 0.5,
            failed_fraction: 0.02,
            duplicate_fraction: 0.01,
            max_statuses_per_post: 100,
        }
    }
}

/// An accepted message, as the webhook task learns of it.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) wamid: String,
    pub(crate) phone_number_id: String,
    pub(crate) waba_id: String,
    pub(crate) recipient: String,
    pub(crate) callback_data: Option<String>,
}

/// What the webhook task is told.
#[derive(Debug)]
pub(crate) enum Order {
    /// A message was accepted: its statuses follow.
    Accepted(Accepted),
    /// A change of an account or number (`account_update`,
    /// `phone_number_quality_update`, ...), posted as it is, in order with
    /// the statuses.
    Account { waba_id: String, field: String, value: Value },
}

/// Counters of the webhook side, shared with the stats.
#[derive(Debug, Default)]
pub(crate) struct WebhookCounters {
    /// Statuses in notifications the receiver answered 2xx.
    pub(crate) statuses_delivered: AtomicU64,
    /// Notification posts that failed (connection error or non-2xx).
    pub(crate) posts_failed: AtomicU64,
}

struct Due {
    at: Instant,
    seq: u64,
    phone_number_id: String,
    waba_id: String,
    status: Value,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Runs until `shutdown` turns true.
pub(crate) async fn run(
    config: WebhookConfig,
    seed: Option<u64>,
    mut orders: mpsc::UnboundedReceiver<Order>,
    counters: Arc<WebhookCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(url) = config.url.clone() else { return };
    let Some(target) = Target::parse(&url) else {
        tracing::error!(%url, "simulator webhooks: not an http://host:port/path URL; no webhooks sent");
        return;
    };
    let mut rng = seed.map_or_else(StdRng::from_os_rng, |s| StdRng::seed_from_u64(s ^ 0x5eed));
    let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    // Notifications waiting to be posted, oldest first, with their status
    // counts; the head is retried until the receiver takes it.
    let mut outbox: VecDeque<(Vec<u8>, u64)> = VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    let mut retry_at: Option<Instant> = None;
    let mut seq = 0u64;
    loop {
        let next_due = due.peek().map(|Reverse(d)| d.at);
        let wake = match (retry_at, outbox.is_empty()) {
            (Some(at), false) => Some(next_due.map_or(at, |d| d.min(at))),
            (None, false) => Some(Instant::now()),
            _ => next_due,
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            order = orders.recv() => {
                match order {
                    Some(Order::Accepted(message)) => plan(&config, &mut rng, &mut due, &mut seq, message),
                    Some(Order::Account { waba_id, field, value }) => {
                        let body = json!({ "object": "whatsapp_business_account", "entry": [{
                            "id": waba_id, "time": std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                            "changes": [{ "field": field, "value": value }] }] });
                        outbox.push_back((serde_json::to_vec(&body).expect("JSON"), 0));
                    }
                    None => return,
                }
                continue;
            }
            () = sleep_until(wake) => {}
        }
        let now = Instant::now();
        // Due statuses into notifications.
        let mut batch: Vec<Due> = Vec::new();
        while due.peek().is_some_and(|Reverse(d)| d.at <= now) {
            batch.push(due.pop().expect("peeked").0);
            if batch.len() == config.max_statuses_per_post {
                outbox.push_back((notification(&batch), batch.len() as u64));
                batch.clear();
            }
        }
        if !batch.is_empty() {
            outbox.push_back((notification(&batch), batch.len() as u64));
        }
        if retry_at.is_some_and(|at| at > now) {
            continue;
        }
        while let Some((body, statuses)) = outbox.front() {
            let statuses = *statuses;
            match target.post(body, &config.app_secret).await {
                Ok(()) => {
                    counters.statuses_delivered.fetch_add(statuses, Ordering::Relaxed);
                    outbox.pop_front();
                    backoff = Duration::from_millis(100);
                    retry_at = None;
                }
                Err(error) => {
                    counters.posts_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "simulator webhooks: the receiver did not take a notification; retrying");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The statuses one accepted message will have, each at its time.
fn plan(
    config: &WebhookConfig,
    rng: &mut StdRng,
    due: &mut BinaryHeap<Reverse<Due>>,
    seq: &mut u64,
    m: Accepted,
) {
    let now = Instant::now();
    let mut push = |at: Instant, state: &str, extra: Option<Value>| {
        let mut status = json!({
            "id": m.wamid, "status": state, "recipient_id": m.recipient.trim_start_matches('+'),
            "timestamp": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() + (at - now).as_secs())
                .to_string(),
        });
        if let Some(data) = &m.callback_data {
            status["biz_opaque_callback_data"] = json!(data);
        }
        if let Some(extra) = extra {
            status["errors"] = extra;
        }
        *seq += 1;
        due.push(Reverse(Due {
            at,
            seq: *seq,
            phone_number_id: m.phone_number_id.clone(),
            waba_id: m.waba_id.clone(),
            status,
        }));
    };
    push(now, "sent", None);
    let settled = now + latency::sample(&config.delivered_after, rng);
    let failed = rng.random_bool(config.failed_fraction.clamp(0.0, 1.0));
    if failed {
        let errors = json!([{ "code": 131026, "title": "Message undeliverable",
            "message": "Message undeliverable", "error_data": { "details": "The recipient cannot receive it." } }]);
        push(settled, "failed", Some(errors));
    } else {
        push(settled, "delivered", None);
        if rng.random_bool(config.read_fraction.clamp(0.0, 1.0)) {
            push(settled + latency::sample(&config.read_after, rng), "read", None);
        }
    }
    if rng.random_bool(config.duplicate_fraction.clamp(0.0, 1.0)) {
        // The settled status again, after the read (out of order).
        let again = if failed { "failed" } else { "delivered" };
        let errors = failed.then(|| json!([{ "code": 131026, "title": "Message undeliverable" }]));
        push(settled + Duration::from_millis(rng.random_range(1..=2000)), again, errors);
    }
}

/// A number's statuses in one notification.
type Change = (String, Vec<Value>);

/// One notification: one entry per WABA, one change per number, as Meta
/// groups them.
fn notification(batch: &[Due]) -> Vec<u8> {
    let mut entries: Vec<(String, Vec<Change>)> = Vec::new();
    for d in batch {
        let entry = match entries.iter_mut().find(|(w, _)| *w == d.waba_id) {
            Some(entry) => entry,
            None => {
                entries.push((d.waba_id.clone(), Vec::new()));
                entries.last_mut().expect("just pushed")
            }
        };
        match entry.1.iter_mut().find(|(p, _)| *p == d.phone_number_id) {
            Some(change) => change.1.push(d.status.clone()),
            None => entry.1.push((d.phone_number_id.clone(), vec![d.status.clone()])),
        }
    }
    let entry: Vec<Value> = entries
        .into_iter()
        .map(|(waba, changes)| {
            let changes: Vec<Value> = changes
                .into_iter()
                .map(|(phone, statuses)| {
                    json!({ "field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": phone, "phone_number_id": phone },
                    "statuses": statuses } })
                })
                .collect();
            json!({ "id": waba, "changes": changes })
        })
        .collect();
    serde_json::to_vec(&json!({ "object": "whatsapp_business_account", "entry": entry })).expect("JSON")
}

/// The receiver's address and path.
struct Target {
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Option<Target> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) =
            rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        (!authority.is_empty()).then(|| Target { authority: authority.to_owned(), path })
    }

    /// One signed POST on a fresh connection; `Ok` on a 2xx answer. Signed
    /// here rather than with the receiver's `AppSecret`: the referee shares
    /// no code with what it judges.
    async fn post(&self, body: &[u8], secret: &str) -> Result<(), String> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
        mac.update(body);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&self.authority))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = http::Request::post(&self.path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-hub-signature-256", signature)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
            .await
            .map_err(|_| "no answer within 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(waba: &str, phone: &str, wamid: &str) -> Due {
        Due {
            at: Instant::now(),
            seq: 0,
            phone_number_id: phone.into(),
            waba_id: waba.into(),
            status: json!({ "id": wamid, "status": "sent" }),
        }
    }

    #[tokio::test]
    async fn notifications_group_by_waba_and_number() {
        let body = notification(&[
            due("w1", "p1", "a"),
            due("w1", "p2", "b"),
            due("w2", "p3", "c"),
            due("w1", "p1", "d"),
        ]);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["entry"].as_array().unwrap().len(), 2);
        assert_eq!(value["entry"][0]["changes"].as_array().unwrap().len(), 2);
        assert_eq!(value["entry"][0]["changes"][0]["value"]["statuses"].as_array().unwrap().len(), 2);
        assert_eq!(value["entry"][1]["changes"][0]["value"]["statuses"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn every_message_is_sent_then_settled_once_and_sometimes_read() {
        let config = WebhookConfig {
            delivered_after: Latency::Fixed(Duration::from_millis(10)),
            read_after: Latency::Fixed(Duration::from_millis(10)),
            duplicate_fraction: 0.0,
            ..WebhookConfig::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let mut heap = BinaryHeap::new();
        let mut seq = 0;
        for i in 0..1000 {
            let m = Accepted {
                wamid: format!("w{i}"),
                phone_number_id: "p".into(),
                waba_id: "w".into(),
                recipient: "+1555".into(),
                callback_data: Some(format!("job-{i}")),
            };
            plan(&config, &mut rng, &mut heap, &mut seq, m);
        }
        let statuses: Vec<Value> = heap.into_sorted_vec().into_iter().map(|Reverse(d)| d.status).collect();
        let count = |s: &str| statuses.iter().filter(|v| v["status"] == s).count();
        assert_eq!(count("sent"), 1000);
        assert_eq!(count("delivered") + count("failed"), 1000);
        assert!((5..60).contains(&count("failed")), "about 2 % fail: {}", count("failed"));
        assert!((400..600).contains(&count("read")), "about half are read: {}", count("read"));
        assert!(statuses.iter().all(|v| v["biz_opaque_callback_data"].as_str().is_some()));
    }
}
