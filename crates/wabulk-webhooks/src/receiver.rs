//! The receiver: `GET {path}` answers Meta's verification handshake, `POST
//! {path}` takes notifications (CONTRACT §8).
//!
//! A notification is answered 200 only once Kafka acknowledged every record
//! it carries, so Meta's retries (for up to 7 days) cover any failure here:
//! a Kafka error answers 500 and Meta sends it again. The receiver keeps no
//! state, so several can sit behind one load balancer.
//!
//! Bad input: a missing or wrong signature answers 401 and publishes
//! nothing; a body over `max_body_bytes` answers 413; a body that does not
//! arrive within `body_timeout` answers 408; a body with a good signature
//! that cannot be read (Meta adds kinds) goes whole to the DLQ and answers
//! 200, so it is neither lost nor sent again for ever.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use wabulk_kafka::{JobWriter, KafkaError};
use wabulk_model::DlqRecord;
use wabulk_telemetry::Metrics;

use crate::account::AccountEvent;
use crate::notification::{parse, Parsed};
use crate::signature::AppSecret;
use crate::tls::ServerTls;

/// Open connections at most; past it new ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A dead letter's payload is cut beyond this, so that it fits a Kafka
/// message (1,000,000 bytes by default) whatever its JSON escaping.
const MAX_DEAD_LETTER_PAYLOAD: usize = 128 * 1024;
/// How long connections may finish their requests once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The verification token Meta's dashboard was given; never printed.
#[derive(Clone)]
pub struct VerifyToken(String);

impl VerifyToken {
    pub fn new(token: impl Into<String>) -> VerifyToken {
        VerifyToken(token.into())
    }
}

impl std::fmt::Debug for VerifyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyToken(***)")
    }
}

/// Everything the receiver needs.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// `/webhooks/whatsapp` by default.
    pub path: String,
    pub app_secret: AppSecret,
    pub verify_token: VerifyToken,
    pub statuses_topic: String,
    pub inbound_topic: String,
    /// Where account events go, for every engine instance to apply
    /// (`crate::account`).
    pub account_events_topic: String,
    /// Where bodies with a good signature that cannot be read go.
    pub dlq_topic: String,
    /// Larger bodies answer 413. Meta's notifications are a few kilobytes.
    pub max_body_bytes: usize,
    /// A body must arrive whole within this; slow or endless ones answer 408.
    pub body_timeout: Duration,
}

impl ReceiverConfig {
    pub const DEFAULT_PATH: &'static str = "/webhooks/whatsapp";
    pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
}

/// The receiver's state: its configuration, a producer and the metrics.
#[derive(Debug)]
pub struct Receiver {
    config: ReceiverConfig,
    producer: JobWriter,
    metrics: Arc<Metrics>,
}

/// How one POST ended, as the `outcome` label of `wabulk_webhook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    BadSignature,
    Malformed,
    KafkaError,
    TooLarge,
    Timeout,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadSignature => "bad_signature",
            Outcome::Malformed => "malformed",
            Outcome::KafkaError => "kafka_error",
            Outcome::TooLarge => "too_large",
            Outcome::Timeout => "timeout",
        }
    }
}

impl Receiver {
    pub fn new(config: ReceiverConfig, producer: JobWriter, metrics: Arc<Metrics>) -> Receiver {
        Receiver { config, producer, metrics }
    }

    /// One request, answered.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != self.config.path {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        match *req.method() {
            Method::GET => self.verify(req.uri().query().unwrap_or_default()),
            Method::POST => {
                let (status, outcome) = self.notification(req).await;
                self.metrics.webhook_requests.with_label_values(&[outcome.label()]).inc();
                plain(status, if status.is_success() { "ok\n" } else { "refused\n" })
            }
            _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        }
    }

    /// Meta's handshake: `hub.mode=subscribe`, our verify token, and the
    /// challenge to echo.
    fn verify(&self, query: &str) -> Response<Full<Bytes>> {
        let (mut mode, mut token, mut challenge) = (None, None, None);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "hub.mode" => mode = Some(value),
                "hub.verify_token" => token = Some(value),
                "hub.challenge" => challenge = Some(value),
                _ => {}
            }
        }
        match (mode.as_deref(), token, challenge) {
            (Some("subscribe"), Some(token), Some(challenge)) if *token == self.config.verify_token.0 => {
                Response::new(Full::new(Bytes::from(challenge.into_owned())))
            }
            _ => plain(StatusCode::FORBIDDEN, "verification refused\n"),
        }
    }

    async fn notification(&self, req: Request<Incoming>) -> (StatusCode, Outcome) {
        let signature = req.headers().get("x-hub-signature-256").map(|v| v.as_bytes().to_vec());
        let limited = Limited::new(req.into_body(), self.config.max_body_bytes);
        let body = match tokio::time::timeout(self.config.body_timeout, limited.collect()).await {
            Err(_) => return (StatusCode::REQUEST_TIMEOUT, Outcome::Timeout),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                return (StatusCode::PAYLOAD_TOO_LARGE, Outcome::TooLarge)
            }
            Ok(Err(_)) => return (StatusCode::BAD_REQUEST, Outcome::Malformed),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        if let Err(error) = self.config.app_secret.verify(&body, signature.as_deref()) {
            tracing::warn!(%error, "webhook refused: bad signature; nothing published");
            return (StatusCode::UNAUTHORIZED, Outcome::BadSignature);
        }
        let received_at = Utc::now();
        let published = match parse(&body, received_at) {
            Ok(parsed) => self.publish(parsed, received_at).await.map(|()| Outcome::Ok),
            Err(error) => {
                tracing::warn!(%error, bytes = body.len(), "a signed webhook could not be read; its body goes to the DLQ");
                self.dead_letter(&error.to_string(), &body).await.map(|()| Outcome::Malformed)
            }
        };
        match published {
            Ok(outcome) => (StatusCode::OK, outcome),
            Err(error) => {
                tracing::warn!(%error, "a webhook's records were not acknowledged by Kafka; Meta will send it again");
                (StatusCode::INTERNAL_SERVER_ERROR, Outcome::KafkaError)
            }
        }
    }

    /// Every record of the notification, acknowledged by Kafka.
    async fn publish(&self, parsed: Parsed, received_at: DateTime<Utc>) -> Result<(), KafkaError> {
        let config = &self.config;
        let statuses =
            parsed.statuses.iter().map(|status| {
                let json = serde_json::to_vec(status).expect("a status record always serialises");
                async move {
                    self.producer.send(&config.statuses_topic, Some(status.key().as_bytes()), &json).await
                }
            });
        let inbound = parsed.inbound.iter().map(|message| {
            self.producer.send(&config.inbound_topic, Some(message.phone_number_id.as_bytes()), &message.json)
        });
        let events = parsed.events.iter().map(|event| {
            let event = AccountEvent::new(event, received_at);
            let json = serde_json::to_vec(&event).expect("an account event always serialises");
            async move {
                self.producer.send(&config.account_events_topic, Some(event.key().as_bytes()), &json).await
            }
        });
        try_join_all(statuses).await?;
        try_join_all(inbound).await?;
        try_join_all(events).await?;
        for status in &parsed.statuses {
            self.metrics.count_status(status.phone_number_id.as_deref(), &status.status);
            if status.status == "failed" {
                // Meta's `errors[].code`, one count per error.
                let errors = status.errors.as_ref().and_then(serde_json::Value::as_array);
                let codes =
                    errors.into_iter().flatten().map(|e| e.get("code").and_then(serde_json::Value::as_i64));
                self.metrics.count_failed_status(codes);
            }
        }
        for event in &parsed.events {
            tracing::info!(
                field = %event.field,
                waba_id = event.waba_id.as_deref().unwrap_or("?"),
                value = %event.value,
                "account event from Meta; written to the account events topic"
            );
        }
        Ok(())
    }

    /// The raw body as a dead letter (CONTRACT §4): `topic` names the
    /// receiver's path, with no partition or offset (-1); cut to its first
    /// [`MAX_DEAD_LETTER_PAYLOAD`] bytes, with its size and digest, beyond.
    async fn dead_letter(&self, error: &str, body: &[u8]) -> Result<(), KafkaError> {
        let topic = format!("webhook:{}", self.config.path);
        let letter = DlqRecord::with_payload_cap(error, topic, -1, -1, None, body, MAX_DEAD_LETTER_PAYLOAD);
        self.producer.send(&self.config.dlq_topic, None, &letter.to_json()).await.map(|_| ())
    }
}

/// Serves the receiver on `listener` (HTTPS with `tls`, else plain HTTP)
/// until `shutdown` resolves, then lets the requests in progress finish (at
/// most 10 s).
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    receiver: Arc<Receiver>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let handler = move |req: Request<Incoming>| {
        let receiver = Arc::clone(&receiver);
        async move { receiver.handle(req).await }
    };
    let tls = tls.map(|tls| tls.config());
    wabulk_telemetry::serve_http1(listener, tls, MAX_CONNECTIONS, DRAIN_TIMEOUT, handler, shutdown).await
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
