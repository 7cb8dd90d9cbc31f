//! `Sender`: one POST per call over the pool, every result classified into an
//! [`Outcome`] (for a token check, one GET into a [`TokenCheck`]). The
//! transport-side classes (timeout, connection) are decided here; HTTP
//! answers go to [`crate::classify`].

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use tokio::time::{timeout_at, Instant};
use wabulk_model::{ApiError, ErrorCode, FailReason, NumericId, Outcome, RetryReason, Scope};

use crate::classify::{classify_token_check, classify_with_cap, request_backoff};
use crate::config::{SenderConfig, SenderError, Target};
use crate::departure::DepartureGate;
use crate::pool::{Pool, PoolConfig, PoolError, PoolStats, StreamError};
use crate::token::{AccessToken, TokenCheck};
use crate::transport::{route, tls_config};

/// How many times a request the server provably did not process (refused
/// stream, connection gone before it left) is put on another stream before
/// the send reports a connection error. Each try costs no quota.
const MAX_REDISPATCH: u32 = 2;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const WABULK_AGENT: HeaderValue = HeaderValue::from_static(concat!("wabulk/", env!("CARGO_PKG_VERSION")));

/// Sends messages to the Graph API over a pool of HTTP/2 connections.
/// Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Timeouts and the backoff cap are read on every send.
    config: SenderConfig,
    /// Builds each request's URI.
    target: Arc<Target>,
    pool: Pool,
}

/// Why a send got no HTTP answer.
#[derive(Debug)]
enum TransportError {
    Timeout,
    /// The connection failed after the request went out.
    Broken(String),
    /// The request never left (or provably was not processed).
    Connection(String),
}

impl Sender {
    /// Checks the configuration and prepares the pool; no connection is made
    /// until the first send (so this works outside a Tokio runtime).
    pub fn new(config: SenderConfig) -> Result<Sender, SenderError> {
        config.validate()?;
        let target = Arc::new(Target::parse(&config.base_url)?);
        let tls = if target.tls { Some(tls_config(config.ca_file.as_deref())?) } else { None };
        let tunnel = route(&config, &target)?;
        let pool_config = PoolConfig {
            max_streams: config.max_streams_per_connection as usize,
            max_connections: config.max_connections as usize,
            connect_timeout: config.connect_timeout,
            keepalive_interval: config.keepalive_interval,
            keepalive_timeout: config.keepalive_timeout,
        };
        let pool = Pool::new(target.clone(), tls, tunnel, pool_config);
        Ok(Sender { inner: Arc::new(Inner { config, target, pool }) })
    }

    /// One `POST {base_url}/{phone_number_id}/messages` with the JSON `body`.
    /// `attempt` is 1 for the first try of a job (it drives the request-scope
    /// backoff). `gate`, the number's [`DepartureGate`], is passed just
    /// before the request takes a stream (and again if it is re-sent). Never panics; every result is
    /// classified.
    pub async fn send(
        &self,
        phone_number_id: NumericId,
        token: &AccessToken,
        body: Bytes,
        attempt: u32,
        gate: Option<&DepartureGate>,
    ) -> Outcome {
        let config = &self.inner.config;
        let cap = config.max_request_backoff;
        let uri = match self.inner.target.messages_uri(phone_number_id.get()) {
            Ok(uri) => uri,
            Err(e) => {
                return Outcome::Failed {
                    reason: FailReason::Unclassified,
                    error: engine_error("invalid_request", format!("cannot build the request URI: {e}")),
                }
            }
        };
        let Some(authorization) = bearer(token) else {
            // Every send with this token would fail the same way: stop the
            // WABA until the operator fixes it.
            return Outcome::Halt { scope: Scope::Waba, error: unusable_token() };
        };
        match self.exchange(Method::POST, &uri, &authorization, body, gate).await {
            Ok(answer) => classify_with_cap(answer.status, &answer.headers, &answer.body, attempt, cap),
            Err(transport) => {
                let reason = transport.reason();
                let mut error = transport.into_error(config.request_timeout);
                if reason == RetryReason::Timeout {
                    error.message.push_str("; the message may have been sent");
                }
                Outcome::Retry { scope: Scope::Request, after: request_backoff(attempt, cap), reason, error }
            }
        }
    }

    /// Whether the Graph API accepts `token` for `phone_number_id` now: one
    /// `GET {base_url}/{phone_number_id}?fields=id` over the same pool, with
    /// the same `Authorization` as a send. It reads the number's node and sends
    /// nothing, so it is no message: it passes no departure gate. The answer
    /// goes through the send's error table ([`TokenCheck`]); never panics.
    pub async fn check_token(&self, phone_number_id: NumericId, token: &AccessToken) -> TokenCheck {
        let uri = match self.inner.target.token_check_uri(phone_number_id.get()) {
            Ok(uri) => uri,
            Err(e) => {
                return TokenCheck::Unknown(engine_error(
                    "invalid_request",
                    format!("cannot build the request URI: {e}"),
                ))
            }
        };
        let Some(authorization) = bearer(token) else { return TokenCheck::Refused(unusable_token()) };
        match self.exchange(Method::GET, &uri, &authorization, Bytes::new(), None).await {
            Ok(answer) => classify_token_check(answer.status, &answer.headers, &answer.body),
            Err(transport) => TokenCheck::Unknown(transport.into_error(self.inner.config.request_timeout)),
        }
    }

    /// Open connections, streams in use and lifetime counters of the pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// Gets a stream, sends, reads the answer. A request the server provably
    /// did not process goes out again on another stream (up to
    /// [`MAX_REDISPATCH`] times).
    async fn exchange(
        &self,
        method: Method,
        uri: &Uri,
        authorization: &HeaderValue,
        body: Bytes,
        gate: Option<&DepartureGate>,
    ) -> Result<crate::pool::Answer, TransportError> {
        let config = &self.inner.config;
        // Waiting for a stream is bounded apart from the exchange: at worst
        // a connection attempt plus one full exchange of whoever holds the
        // stream we wait for. Past that the pool is wedged, and no request
        // went out, so it is a connection error, not a timeout. It starts
        // once the request first left its departure gate.
        let mut acquire_deadline: Option<Instant> = None;
        let mut exchange_deadline: Option<Instant> = None;
        let mut last_error = String::new();
        for _ in 0..=MAX_REDISPATCH {
            if let Some(gate) = gate {
                // Before the stream is taken: a request held here keeps no
                // stream from others, and a connection that goes away
                // meanwhile does not catch it. Taking a free stream is
                // immediate, so little comes between departure and write.
                // Each dispatch passes again: a re-sent request is counted
                // twice, which errs on the safe side.
                gate.pass().await;
            }
            let acquire_by = *acquire_deadline
                .get_or_insert_with(|| Instant::now() + config.connect_timeout + config.request_timeout);
            let slot = match timeout_at(acquire_by, self.inner.pool.acquire()).await {
                Ok(Ok(slot)) => slot,
                Ok(Err(PoolError::Connect(e))) => {
                    return Err(TransportError::Connection(format!("cannot connect: {e}")))
                }
                Err(_) => {
                    return Err(TransportError::Connection(format!(
                        "no free HTTP/2 stream within {:?}",
                        config.connect_timeout + config.request_timeout
                    )))
                }
            };
            // The request timeout runs from the first time the request got a
            // stream, across re-dispatches, to the end of the body.
            let deadline = *exchange_deadline.get_or_insert_with(|| Instant::now() + config.request_timeout);
            let request = build_request(&method, uri, authorization, !body.is_empty());
            match timeout_at(deadline, slot.exchange(request, body.clone())).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(StreamError::NotProcessed(e))) => {
                    tracing::debug!(error = %e, "request not processed; sending it on another stream");
                    last_error = format!("not processed by the server: {e}");
                }
                Ok(Err(StreamError::Failed(e))) => {
                    return Err(TransportError::Broken(connection_message(&e)))
                }
                Err(_) => return Err(TransportError::Timeout),
            }
        }
        Err(TransportError::Connection(last_error))
    }
}

impl TransportError {
    fn reason(&self) -> RetryReason {
        match self {
            TransportError::Timeout => RetryReason::Timeout,
            TransportError::Broken(_) => RetryReason::Broken,
            TransportError::Connection(_) => RetryReason::Connection,
        }
    }

    fn into_error(self, request_timeout: std::time::Duration) -> ApiError {
        match self {
            TransportError::Timeout => {
                engine_error("timeout", format!("no answer within {request_timeout:?}"))
            }
            TransportError::Broken(message) | TransportError::Connection(message) => {
                engine_error("connection", message)
            }
        }
    }
}

/// `with_body`: the JSON content type is declared only when a body follows.
fn build_request(method: &Method, uri: &Uri, authorization: &HeaderValue, with_body: bool) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(AUTHORIZATION, authorization.clone());
    if with_body {
        headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    }
    headers.insert(USER_AGENT, WABULK_AGENT);
    request
}

/// `Bearer <token>`, marked sensitive so HPACK never indexes it.
fn bearer(token: &AccessToken) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn connection_message(error: &h2::Error) -> String {
    if error.is_go_away() {
        format!("the server closed the connection (GOAWAY) before answering: {error}")
    } else if error.is_reset() {
        format!("the server reset the stream: {error}")
    } else {
        format!("connection error: {error}")
    }
}

/// A token `bearer` cannot put in a header. The token itself is not shown.
fn unusable_token() -> ApiError {
    engine_error("invalid_token", "the access token contains characters not allowed in an HTTP header".into())
}

fn engine_error(code: &str, message: String) -> ApiError {
    ApiError { code: ErrorCode::Engine(code.to_owned()), message }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn new_rejects_bad_urls_and_works_without_a_runtime() {
        assert!(Sender::new(SenderConfig { base_url: "mailto:x".into(), ..SenderConfig::default() }).is_err());
        let sender = Sender::new(SenderConfig::default()).unwrap();
        assert_eq!(sender.pool_stats(), PoolStats::default());
    }

    #[test]
    fn bearer_header_is_sensitive_and_refuses_bad_tokens() {
        let value = bearer(&AccessToken::new("abc".into())).unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value, "Bearer abc");
        assert!(bearer(&AccessToken::new("line\nbreak".into())).is_none());
    }

    #[tokio::test]
    async fn invalid_token_halts_without_showing_it() {
        let sender = Sender::new(SenderConfig {
            base_url: "http://127.0.0.1:9/v21.0".into(),
            ..SenderConfig::default()
        })
        .unwrap();
        let outcome =
            sender.send(NumericId::new(1), &AccessToken::new("sec\nret".into()), Bytes::new(), 1, None).await;
        match outcome {
            Outcome::Halt { scope: Scope::Waba, error } => {
                assert_eq!(error.code, ErrorCode::Engine("invalid_token".into()));
                assert!(!error.message.contains("sec"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unusable_token_is_refused_by_a_check_without_showing_it() {
        let sender = Sender::new(SenderConfig {
            base_url: "http://127.0.0.1:9/v21.0".into(),
            ..SenderConfig::default()
        })
        .unwrap();
        let check = sender.check_token(NumericId::new(1), &AccessToken::new("sec\nret".into())).await;
        match &check {
            TokenCheck::Refused(error) => assert_eq!(error.code, ErrorCode::Engine("invalid_token".into())),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{check:?}").contains("sec"));
        // Nothing went out.
        assert_eq!(sender.pool_stats(), PoolStats::default());
    }

    #[test]
    fn get_requests_declare_no_content_type() {
        let uri: Uri = "http://h/v21.0/1?fields=id".parse().unwrap();
        let authorization = bearer(&AccessToken::new("t".into())).unwrap();
        let request = build_request(&Method::GET, &uri, &authorization, false);
        assert_eq!(request.method(), Method::GET);
        assert!(!request.headers().contains_key(CONTENT_TYPE));
        assert_eq!(request.headers()[AUTHORIZATION], "Bearer t");
        let request = build_request(&Method::POST, &uri, &authorization, true);
        assert_eq!(request.headers()[CONTENT_TYPE], "application/json");
    }

    #[tokio::test]
    async fn refused_connection_is_a_connection_retry() {
        // Bind then drop a listener: the port is (almost certainly) closed.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let config =
            SenderConfig { base_url: format!("http://127.0.0.1:{port}/v21.0"), ..SenderConfig::default() };
        let sender = Sender::new(config).unwrap();
        let token = AccessToken::new("t".into());
        let outcomes = futures_join_all(&sender, &token, 20).await;
        for outcome in outcomes {
            match outcome {
                Outcome::Retry { scope: Scope::Request, reason: RetryReason::Connection, error, after } => {
                    assert_eq!(error.code, ErrorCode::Engine("connection".into()));
                    assert!(after <= Duration::from_millis(500));
                }
                other => panic!("{other:?}"),
            }
        }
        let stats = sender.pool_stats();
        assert_eq!((stats.connections, stats.in_flight, stats.opened_total), (0, 0, 0));
        assert!(stats.connect_errors_total >= 1);
    }

    async fn futures_join_all(sender: &Sender, token: &AccessToken, n: usize) -> Vec<Outcome> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (sender, token) = (sender.clone(), token.clone());
            set.spawn(async move {
                sender.send(NumericId::new(1), &token, Bytes::from_static(b"{}"), 1, None).await
            });
        }
        let mut out = Vec::new();
        while let Some(outcome) = set.join_next().await {
            out.push(outcome.unwrap());
        }
        out
    }
}
