//! The engine's HTTP endpoints (CONTRACT §8): `GET /metrics`, `GET /healthz`,
//! `GET /readyz`, served over HTTP/1.1 until the caller's shutdown future
//! resolves.
//!
//! HTTP/1.1 only: Prometheus and orchestrator probes speak it, and leaving out
//! HTTP/2 keeps this small listener simple. Every connection task lives in a
//! `JoinSet` owned by [`serve`], so nothing outlives it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::{Health, Metrics};

/// Connections served at once. Scrapers and probes open a handful; the cap
/// bounds memory if something opens many. While it is reached, new
/// connections wait in the listen backlog. Raising it admits more concurrent
/// clients at a few KiB each; lowering it below the number of scrapers and
/// probes makes them queue.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request headers; frees the slot of
/// a client that connects and says nothing (1 s .. 60 s is sensible: lower
/// drops slow links, higher lets idle sockets hold slots longer).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to finish the TLS handshake. Each handshake
/// runs in its connection's own task, so a slow or silent client holds only
/// its own slot, and only this long.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after an accept error such as file-descriptor exhaustion, so that the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long, after shutdown, the responses in progress may take to finish
/// before their connections are dropped. A scrape takes milliseconds; this
/// only bounds the engine's exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// `Content-Type` of `/metrics`: the Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// `Content-Type` of the probe answers and error bodies.
const PLAIN_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Serves `GET /metrics` (text format, `text/plain; version=0.0.4`),
/// `GET /healthz` (200 `ok` while the process runs) and `GET /readyz` (200
/// when consuming and able to send, else 503 with a one-line reason) on
/// `listener` until `shutdown` resolves. Other paths answer 404, other methods
/// on these paths 405 (`HEAD` is accepted wherever `GET` is).
///
/// When `shutdown` resolves it stops accepting, lets the responses in progress
/// finish (for at most 2 s) and returns.
///
/// Accept errors (an aborted handshake, file descriptors exhausted) are logged
/// and retried rather than returned: losing the metrics endpoint must not stop
/// the engine, and those conditions pass. The `io::Result` is kept so that a
/// future fatal condition can be reported without changing the signature.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_admin(listener, metrics, health, None, shutdown).await
}

/// An operator's request to `/admin/...`: what the admin handler needs.
#[derive(Debug)]
pub struct AdminRequest {
    pub method: Method,
    pub path: String,
    /// The `Authorization` header, as sent.
    pub authorization: Option<HeaderValue>,
}

/// Answers admin requests with a status and a one-line text; it checks the
/// credentials itself.
pub type AdminHandler = Arc<
    dyn Fn(AdminRequest) -> std::pin::Pin<Box<dyn Future<Output = (StatusCode, String)> + Send>>
        + Send
        + Sync,
>;

/// [`serve`], with `/admin/...` answered by `admin` (404 without one).
pub async fn serve_with_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    admin: Option<AdminHandler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let handler = move |req: Request<Incoming>| {
        let admin_call = req.uri().path().starts_with("/admin/").then(|| {
            let request = AdminRequest {
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
                authorization: req.headers().get(hyper::header::AUTHORIZATION).cloned(),
            };
            admin.as_ref().map(|admin| admin(request))
        });
        let response = match admin_call {
            None => Some(respond(&req, &metrics, &health)),
            Some(None) => {
                Some(plain(StatusCode::NOT_FOUND, "not found: no admin token is configured\n".into()))
            }
            Some(Some(_)) => None,
        };
        async move {
            match (response, admin_call.flatten()) {
                (Some(response), _) => response,
                (None, Some(call)) => {
                    let (status, text) = call.await;
                    plain(status, format!("{text}\n"))
                }
                (None, None) => plain(StatusCode::NOT_FOUND, "not found\n".into()),
            }
        }
    };
    serve_http1(listener, None, MAX_CONNECTIONS, DRAIN_TIMEOUT, handler, shutdown).await
}

/// An HTTP/1.1 server: `handler` answers each request, at most
/// `max_connections` connections are served at once (more wait in the listen
/// backlog), headers must arrive within 10 s, and when `shutdown` resolves it
/// stops accepting and lets the responses in progress finish for at most
/// `drain`. Accept errors are logged and retried. Shared with the webhook
/// receiver.
///
/// With `tls`, every connection is HTTPS: its handshake (at most 10 s) runs
/// in the connection's task, and one that fails or times out closes that
/// connection only. The configuration's ALPN list should offer `http/1.1`
/// alone, since that is all this server speaks.
pub async fn serve_http1<H, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
    drain: Duration,
    handler: H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let tls = tls.map(TlsAcceptor::from);
    // Ends the handshakes still pending when shutdown begins: a silent client
    // must not hold the drain for the handshake timeout.
    let (stop_handshakes, handshakes_stopped) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);

    loop {
        tokio::select! {
            // Shutdown first, so that a steady stream of connections cannot
            // delay it; then reap finished connections before accepting new
            // ones, which keeps `connections.len()` an honest count.
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept(), if connections.len() < max_connections => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        if !is_per_connection(&err) {
                            warn!(error = %err, "HTTP listener: accept failed; retrying");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                        continue;
                    }
                };
                let handler = handler.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                // Taken here, not in the task, so that a shutdown that begins
                // while the task starts still reaches this connection.
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tls = tls.clone();
                let mut handshakes_stopped = handshakes_stopped.clone();
                connections.spawn(async move {
                    let served = match tls {
                        None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await,
                        Some(acceptor) => {
                            let handshake = tokio::select! {
                                stream = tls_handshake(&acceptor, stream, peer) => stream,
                                _ = handshakes_stopped.wait_for(|&stopped| stopped) => None,
                            };
                            let Some(stream) = handshake else { return };
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await
                        }
                    };
                    // A client going away mid-response is its business, not an
                    // engine problem: debug level.
                    if let Err(err) = served {
                        debug!(error = %err, "HTTP connection ended with an error");
                    }
                });
            }
        }
    }

    // Stop accepting at once: new connections are refused rather than left
    // waiting in the backlog while the engine exits.
    drop(listener);
    let _ = stop_handshakes.send(true);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        debug!("HTTP connections still open after the drain timeout; dropping them");
    }
    connections.shutdown().await;
    Ok(())
}

/// The server side of one TLS handshake, or `None` when it failed or took
/// too long. A client refusing our certificate is worth a warning (the
/// configured chain may be incomplete); anything else (a port scan, plain
/// HTTP sent to the HTTPS port) is the client's business.
async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            let alert = err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
            if let Some(rustls::Error::AlertReceived(alert)) = alert {
                warn!(%peer, ?alert, "TLS handshake refused by the client; is the certificate chain complete and trusted?");
            } else {
                debug!(%peer, error = %err, "TLS handshake failed");
            }
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Accept errors that concern one incoming connection only (the next accept
/// may well succeed at once), as opposed to resource exhaustion.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Routes one request. Synchronous: every answer is built from in-memory state.
fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return plain(StatusCode::NOT_FOUND, "not found\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        "/healthz" => plain(StatusCode::OK, "ok\n".into()),
        _ => match health.not_ready_reason() {
            None => plain(StatusCode::OK, "ready\n".into()),
            Some(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PLAIN_CONTENT_TYPE));
    response
}
