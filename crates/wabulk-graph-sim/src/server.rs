//! The HTTP side: accept loop → one task per connection (TLS first in the
//! HTTPS mode; then HTTP/1.1 or HTTP/2, detected per connection) → [`handle`]
//! per request, which
//! judges the request under the ledger lock, then waits out the latency outside it.
//!
//! Judging happens at arrival and the answer only after the latency, so thousands
//! of requests can be pending at once while the limits see their true arrival
//! order.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::{Faults, SimConfig};
use crate::latency;
use crate::ledger::{Arrival, Ledger, PairState};
use crate::respond::{self, Body, GraphError};
use crate::stats::SimStats;
use crate::tls::SimTls;
use crate::webhooks::{self, Accepted, Order, WebhookCounters};

/// Largest request body read; Cloud API message bodies are a few kilobytes, so
/// anything bigger is answered 100 instead of being buffered.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A client that has not finished its TLS handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How soon listening is tried again when the address cannot be bound at the
/// end of an outage (another socket took the port meanwhile).
const REBIND_RETRY: Duration = Duration::from_millis(50);

/// Listen backlog of the socket bound again after an outage (tokio's default
/// for `TcpListener::bind`).
const LISTEN_BACKLOG: u32 = 1024;

/// Starts simulators. (A namespace: all state lives in the [`SimHandle`].)
#[derive(Debug, Clone, Copy, Default)]
pub struct Simulator;

impl Simulator {
    /// Serves on `listener` (HTTP/1.1 and HTTP/2 cleartext prior knowledge on one
    /// port; with `tls`, HTTPS with ALPN `h2` and `http/1.1`) until the handle
    /// is shut down or dropped. Fails with `InvalidInput` when the
    /// configuration does not validate.
    pub async fn start(config: SimConfig, listener: TcpListener) -> io::Result<SimHandle> {
        config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let local_addr = listener.local_addr()?;
        let tls = if config.tls { Some(SimTls::generate()?) } else { None };
        let acceptor = tls.as_ref().map(|tls| TlsAcceptor::from(Arc::clone(&tls.server)));
        let ca_pem = tls.map(|tls| tls.ca_pem);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (outages_tx, outages_rx) = mpsc::unbounded_channel();
        let (webhooks_tx, webhooks_rx) = mpsc::unbounded_channel();
        let webhook_config = config.webhooks.clone();
        let seed = config.seed;
        let enabled = webhook_config.url.is_some();
        let scheduled_outage = config.faults.outage;
        let shared = Arc::new(Shared::new(config, shutdown_rx.clone(), enabled.then_some(webhooks_tx)));
        if enabled {
            tokio::spawn(webhooks::run(
                webhook_config,
                seed,
                webhooks_rx,
                Arc::clone(&shared.webhook_counters),
                shutdown_rx.clone(),
            ));
        }

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(shared.config.max_concurrent_streams)
            // Resets are an injected fault here, not abuse: without this, hyper
            // would GOAWAY a connection after 1024 of them and skew the counts.
            .max_local_error_reset_streams(None);

        if let Some(outage) = scheduled_outage {
            tokio::spawn(outage_at(outage, outages_tx.clone(), shutdown_rx.clone()));
        }
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            Arc::new(builder),
            acceptor,
            shutdown_rx,
            outages_rx,
        ));
        tracing::info!(%local_addr, https = ca_pem.is_some(), "graph api simulator listening");
        Ok(SimHandle {
            local_addr,
            shared,
            ca_pem,
            shutdown: shutdown_tx,
            outages: outages_tx,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the simulator too (without waiting).
pub struct SimHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    /// The CA of the HTTPS mode's certificate; `None` in cleartext.
    ca_pem: Option<String>,
    shutdown: watch::Sender<bool>,
    /// Orders to the accept loop to refuse connections for a while.
    outages: mpsc::UnboundedSender<OutageOrder>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl SimHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://IP:PORT/v21.0` (`https://` in the HTTPS mode), ready to be a
    /// sender's `graph.base_url`. A wildcard listen address is replaced by
    /// loopback, since nobody can connect to it.
    pub fn base_url(&self) -> String {
        let ip = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if self.ca_pem.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/v21.0", SocketAddr::new(ip, self.local_addr.port()))
    }

    /// The PEM of the CA that signed the HTTPS mode's certificate (what a
    /// client's `graph.ca_file` holds); `None` in cleartext.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Writes [`SimHandle::ca_pem`] to `path`; `InvalidInput` in cleartext.
    pub fn write_ca_pem(&self, path: &std::path::Path) -> io::Result<()> {
        let pem = self.ca_pem().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the simulator serves cleartext: it has no CA")
        })?;
        std::fs::write(path, pem)
    }

    /// The same data as `GET /__sim/stats`.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// When the first `/messages` request carrying each
    /// `biz_opaque_callback_data` (the engine puts the job id there) arrived,
    /// by the wall clock, whatever its answer: a test compares it with the
    /// job's `not_before` to catch a job sent early. Not in `/__sim/stats`:
    /// it has one entry per job.
    pub fn first_requests(&self) -> HashMap<String, SystemTime> {
        self.shared.lock().ledger.first_requests()
    }

    /// Refuses connections for `duration`, as when Meta's edge is
    /// unreachable: the listening socket is closed (connection attempts are
    /// refused) and every open connection is dropped without an answer,
    /// requests in flight included; then the simulator listens on the same
    /// address again. Returns once the socket and the connections are closed,
    /// so whatever the caller does next happens during the outage. A second
    /// outage ordered during one makes it last until the later end.
    pub async fn refuse_connections(&self, duration: Duration) {
        let (begun, started) = oneshot::channel();
        if self.outages.send(OutageOrder { duration, begun: Some(begun) }).is_ok() {
            // An error means the simulator stopped: nothing listens anyway.
            let _ = started.await;
        }
    }

    /// Makes `token` the one every number of WABA `waba_id` must carry, from
    /// the next request on (sends and token checks alike); the old one is
    /// answered 190 from then on. Lets a test revoke a token and grant it
    /// again, as an operator fixing permissions would.
    pub fn set_token(&self, waba_id: &str, token: &str) -> Result<(), UnknownWaba> {
        if !self.shared.config.wabas.iter().any(|w| w.id == waba_id) {
            return Err(UnknownWaba(waba_id.to_owned()));
        }
        let mut tokens = self.shared.tokens.write().unwrap_or_else(PoisonError::into_inner);
        for (number, waba) in &self.shared.wabas_of {
            if waba == waba_id {
                tokens.insert(number.clone(), token.to_owned());
            }
        }
        Ok(())
    }

    /// Meta's throughput upgrade of a number: from now on it may send `mps`
    /// messages per second (the referee judges it so), and, with webhooks
    /// configured, a `phone_number_quality_update` (`THROUGHPUT_UPGRADE`)
    /// announces it, naming the number by its displayed number, which in
    /// the simulator is its id.
    pub fn upgrade_number(&self, phone_number_id: &str, mps: u32) -> Result<(), UnknownNumber> {
        let waba_id = self
            .shared
            .wabas_of
            .get(phone_number_id)
            .ok_or_else(|| UnknownNumber(phone_number_id.to_owned()))?;
        self.shared.lock().ledger.set_mps(phone_number_id, mps);
        let value = serde_json::json!({ "display_phone_number": phone_number_id, "event": "THROUGHPUT_UPGRADE",
            "current_limit": "TIER_UNLIMITED" });
        self.post_account_event(waba_id, "phone_number_quality_update", value);
        Ok(())
    }

    /// Posts one change of `field` (`account_update`, ...) for `waba_id`, as
    /// Meta's webhooks would, in order with the statuses; `false` when the
    /// simulator sends no webhooks. Changes nothing else: a ban's effect on
    /// sends is not simulated.
    pub fn post_account_event(&self, waba_id: &str, field: &str, value: serde_json::Value) -> bool {
        let order = Order::Account { waba_id: waba_id.to_owned(), field: field.to_owned(), value };
        self.shared.webhooks.as_ref().is_some_and(|webhooks| webhooks.send(order).is_ok())
    }

    /// Stops accepting, drops every connection (pending and hanging requests
    /// included) and waits until the accept loop is gone.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            // A panic in the accept loop has already been reported by tokio.
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// [`SimHandle::set_token`] named a WABA the simulator was not started with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown waba {0:?}")]
pub struct UnknownWaba(pub String);

/// [`SimHandle::upgrade_number`] named a number the simulator was not started with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown number {0:?}")]
pub struct UnknownNumber(pub String);

/// State shared by every connection of one simulator.
struct Shared {
    config: SimConfig,
    /// Number id → its WABA's token. Apart from the ledger so that
    /// authentication takes only a read lock; written by
    /// [`SimHandle::set_token`] alone.
    tokens: RwLock<HashMap<String, String>>,
    /// Arrival times are measured from here. tokio's clock, so that tests with a
    /// paused runtime control it.
    start: Instant,
    /// A std mutex is enough: nothing awaits while holding it, and one lock gives
    /// the arrivals the total order the limits are judged in.
    state: Mutex<State>,
    /// Turns true at shutdown; hanging requests wait on it.
    shutdown: watch::Receiver<bool>,
    /// Accepted messages for the webhook task, when webhooks are configured.
    webhooks: Option<mpsc::UnboundedSender<Order>>,
    webhook_counters: Arc<WebhookCounters>,
    /// Number id → its WABA id, for the notifications.
    wabas_of: HashMap<String, String>,
}

struct State {
    ledger: Ledger,
    rng: StdRng,
}

impl Shared {
    fn new(
        config: SimConfig,
        shutdown: watch::Receiver<bool>,
        webhooks: Option<mpsc::UnboundedSender<Order>>,
    ) -> Shared {
        let waba_tokens: HashMap<&str, &str> =
            config.wabas.iter().map(|w| (w.id.as_str(), w.token.as_str())).collect();
        let tokens = config
            .numbers
            .iter()
            .filter_map(|n| waba_tokens.get(n.waba_id.as_str()).map(|t| (n.id.clone(), (*t).to_owned())))
            .collect();
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let ledger = Ledger::new(&config);
        let wabas_of = config.numbers.iter().map(|n| (n.id.clone(), n.waba_id.clone())).collect();
        Shared {
            config,
            tokens: RwLock::new(tokens),
            start: Instant::now(),
            state: Mutex::new(State { ledger, rng }),
            shutdown,
            webhooks,
            webhook_counters: Arc::default(),
            wabas_of,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The ledger stays consistent between statements, so a panic elsewhere
        // while holding the lock does not make its data unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `given` is the token of `number`'s WABA.
    fn token_ok(&self, number: &str, given: Option<&str>) -> bool {
        let Some(given) = given else { return false };
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        tokens.get(number).is_some_and(|expected| expected == given)
    }

    fn stats(&self) -> SimStats {
        let mut stats = self.lock().ledger.snapshot();
        stats.webhook_statuses_delivered = self.webhook_counters.statuses_delivered.load(Ordering::Relaxed);
        stats.webhook_posts_failed = self.webhook_counters.posts_failed.load(Ordering::Relaxed);
        stats
    }
}

/// Per-connection state the request handlers need.
struct ConnCtx {
    /// Wakes the connection task to start a graceful shutdown (GOAWAY).
    goaway: Notify,
    /// Whether a GOAWAY was already injected, so it is counted once per connection.
    goaway_sent: AtomicBool,
    /// Outages begun when the connection was accepted. Once another begins
    /// the connection is dropped, but a handler hyper spawned may still be
    /// reading its request; it must then not be judged: the request never
    /// reached Meta's side of the cut.
    outages_at_accept: u64,
}

impl ConnCtx {
    fn new(outages_at_accept: u64) -> ConnCtx {
        ConnCtx { goaway: Notify::new(), goaway_sent: AtomicBool::new(false), outages_at_accept }
    }

    /// Whether an outage dropped this connection. Read under the ledger
    /// lock, under which an outage is counted before its connections go.
    fn cut_off(&self, ledger: &Ledger) -> bool {
        ledger.outages() != self.outages_at_accept
    }
}

/// The service's error: makes hyper reset the stream (HTTP/2) or drop the
/// connection (HTTP/1.1). Only ever returned on purpose.
#[derive(Debug, thiserror::Error)]
#[error("simulated reset")]
struct ResetFault;

/// An order to refuse connections for `duration`; `begun` is told once the
/// listener and the connections are closed.
struct OutageOrder {
    duration: Duration,
    begun: Option<oneshot::Sender<()>>,
}

/// `faults.outage`: orders the outage when its time comes.
async fn outage_at(
    outage: crate::config::Outage,
    orders: mpsc::UnboundedSender<OutageOrder>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::select! {
        () = stopped(&mut shutdown) => {}
        () = tokio::time::sleep(outage.after) => {
            let _ = orders.send(OutageOrder { duration: outage.duration, begun: None });
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    mut outages: mpsc::UnboundedReceiver<OutageOrder>,
) {
    // Bound again at this address when an outage ends.
    let local_addr = listener.local_addr();
    let mut listener = Some(listener);
    // While `Some`, the outage lasts (and no socket listens) until then.
    let mut outage_until: Option<Instant> = None;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Also completes when the handle is dropped (the sender goes away).
            () = stopped(&mut shutdown) => break,
            Some(order) = outages.recv() => {
                let until = Instant::now() + order.duration;
                outage_until = Some(outage_until.map_or(until, |current| current.max(until)));
                if listener.take().is_some() {
                    shared.lock().ledger.count_outage();
                    tracing::info!(duration = ?order.duration, "graph api simulator refusing connections");
                }
                // Dropping a connection's task closes its socket: the client
                // gets no answer for what it has in flight.
                connections.shutdown().await;
                if let Some(begun) = order.begun {
                    let _ = begun.send(());
                }
            }
            () = sleep_until(outage_until) => match &local_addr {
                Ok(addr) => match listen_again(*addr) {
                    Ok(again) => {
                        listener = Some(again);
                        outage_until = None;
                        tracing::info!(%addr, "graph api simulator listening again");
                    }
                    Err(error) => {
                        // The port was taken meanwhile (a client's ephemeral
                        // port): try again until it is free.
                        tracing::warn!(%error, %addr, "cannot listen again yet");
                        outage_until = Some(Instant::now() + REBIND_RETRY);
                    }
                },
                Err(error) => {
                    tracing::error!(%error, "the listener had no address: the outage never ends");
                    outage_until = None;
                }
            },
            accepted = accept_on(listener.as_ref()) => match accepted {
                Ok((stream, _peer)) => {
                    let outages = {
                        let mut state = shared.lock();
                        state.ledger.count_connection();
                        state.ledger.outages()
                    };
                    connections.spawn(accept_connection(
                        stream,
                        Arc::clone(&shared),
                        Arc::clone(&builder),
                        tls.clone(),
                        outages,
                    ));
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// The next connection on `listener`; never completes without one (during
/// an outage).
async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Completes at `until`; never when `None`.
async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// A listener on `addr` again. `SO_REUSEADDR`, because the connections the
/// outage closed leave this port's side in TIME_WAIT.
fn listen_again(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Completes when shutdown is signalled or the handle is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it at once.
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// The TLS handshake in the HTTPS mode, in the connection's own task so a
/// slow client never holds up the accept loop; then [`serve_connection`].
async fn accept_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    outages: u64,
) {
    // Answers are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let ctx = Arc::new(ConnCtx::new(outages));
    let Some(tls) = tls else { return serve_connection(stream, shared, builder, ctx).await };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => serve_connection(stream, shared, builder, ctx).await,
        // A client that does not trust the certificate ends here.
        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

async fn serve_connection<S>(
    stream: S,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    ctx: Arc<ConnCtx>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let ctx = Arc::clone(&ctx);
        service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&ctx), req))
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = ctx.goaway.notified() => {
            // GOAWAY (HTTP/1.1: no keep-alive); streams in flight still finish.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

async fn handle(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ResetFault> {
    if req.method() == Method::POST {
        if let Some(number) = messages_path(req.uri().path()) {
            let number = number.to_owned();
            return messages(&shared, &ctx, number, req).await;
        }
    }
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => respond::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/__sim/stats") => respond::json_response(StatusCode::OK, &shared.stats()),
        (&Method::GET, path) => match node_path(path) {
            Some(number) => token_check(&shared, &ctx, number, bearer_token(&req))?,
            None => GraphError::not_found(path).into_response("simulator"),
        },
        (_, path) => GraphError::not_found(path).into_response("simulator"),
    };
    Ok(response)
}

/// `GET /{version}/{phone_number_id}` (any query: `?fields=id` is what a
/// sender asks), the read a sender makes to learn whether a token works.
/// Answered at once, without latency or faults, and counted apart from
/// messages: no limit sees it.
fn token_check(
    shared: &Shared,
    ctx: &ConnCtx,
    number: &str,
    given: Option<&str>,
) -> Result<Response<Body>, ResetFault> {
    let known = shared.wabas_of.contains_key(number);
    let accepted = known && shared.token_ok(number, given);
    let fbtrace_id = {
        let mut guard = shared.lock();
        let State { ledger, rng } = &mut *guard;
        if ctx.cut_off(ledger) {
            return Err(ResetFault);
        }
        ledger.count_token_check(known && !accepted);
        trace_id(rng)
    };
    Ok(match (known, accepted) {
        (false, _) => GraphError::unknown_number(number, "get").into_response(&fbtrace_id),
        (true, false) => GraphError::bad_token().into_response(&fbtrace_id),
        (true, true) => respond::node(number),
    })
}

/// `/{version}/{phone_number_id}` → the number id.
fn node_path(path: &str) -> Option<&str> {
    let mut parts = path.strip_prefix('/')?.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(version), Some(number), None) if !version.is_empty() && !number.is_empty() => Some(number),
        _ => None,
    }
}

/// Meta's `fbtrace_id`: 23 random alphanumerics.
fn trace_id(rng: &mut StdRng) -> String {
    (0..23).map(|_| char::from(rng.sample(rand::distr::Alphanumeric))).collect()
}

/// `/{version}/{phone_number_id}/messages` → the number id.
fn messages_path(path: &str) -> Option<&str> {
    let mut parts = path.strip_prefix('/')?.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(version), Some(number), Some("messages"), None)
            if !version.is_empty() && !number.is_empty() =>
        {
            Some(number)
        }
        _ => None,
    }
}

/// The parts of a message body the referee needs.
#[derive(Debug)]
struct Message {
    to: String,
    callback_data: Option<String>,
}

/// What the judge decided, carried out after the lock is released.
enum Action {
    Answer(Response<Body>),
    Hang,
    Reset,
}

async fn messages(
    shared: &Shared,
    ctx: &ConnCtx,
    number: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ResetFault> {
    let http2 = req.version() == Version::HTTP_2;
    let auth_ok = shared.token_ok(&number, bearer_token(&req));
    // The body is read before judging, so "arrival" is the moment the whole
    // request is in; for bodies of a few kilobytes that is the same instant.
    let message = read_message(req.into_body()).await;

    let (action, delay) = judge(shared, ctx, &number, auth_ok, message, http2);
    match action {
        Action::Answer(response) => {
            tokio::time::sleep(delay).await;
            Ok(response)
        }
        Action::Reset => {
            tokio::time::sleep(delay).await;
            Err(ResetFault)
        }
        Action::Hang => {
            // Held until the client gives up (hyper then drops this future) or the
            // simulator stops; a dropped handle also ends the wait.
            stopped(&mut shared.shutdown.clone()).await;
            Err(ResetFault)
        }
    }
}

/// The judge's decision on one request.
enum Verdict<'m> {
    Error(GraphError),
    /// A bare HTTP failure without a JSON body.
    Bare(StatusCode),
    /// Accepted; the pair-rule state to commit.
    Accept(PairState, &'m Message),
    Hang,
    Reset,
}

/// Judges one request at its arrival under the lock, counts it, and returns what
/// to do and how long to wait first.
fn judge(
    shared: &Shared,
    ctx: &ConnCtx,
    number: &str,
    auth_ok: bool,
    message: Result<Message, String>,
    http2: bool,
) -> (Action, Duration) {
    let config = &shared.config;
    let mut guard = shared.lock();
    let State { ledger, rng } = &mut *guard;
    if ctx.cut_off(ledger) {
        // Not counted: see `ConnCtx::outages_at_accept`.
        return (Action::Reset, Duration::ZERO);
    }
    let t = shared.start.elapsed();
    let delay = latency::sample(&config.latency, rng);
    let fbtrace_id = trace_id(rng);

    // GOAWAY does not change this request's answer, so it has its own roll.
    let goaway = config.faults.goaway;
    if goaway > 0.0 && rng.random_bool(goaway) && !ctx.goaway_sent.swap(true, Ordering::Relaxed) {
        ledger.count_goaway();
        ctx.goaway.notify_one();
    }

    let Some(n) = ledger.number_index(number) else {
        ledger.arrive_unknown(http2);
        let error = GraphError::unknown_number(number, "post");
        ledger.count_error(&error.stats_key());
        return (Action::Answer(error.into_response(&fbtrace_id)), delay);
    };
    let arrival = ledger.arrive(n, t, http2);
    if let Some(callback_data) = message.as_ref().ok().and_then(|m| m.callback_data.as_deref()) {
        ledger.note_request(callback_data, SystemTime::now());
    }

    let verdict = match &message {
        _ if !auth_ok => Verdict::Error(GraphError::bad_token()),
        Err(details) => Verdict::Error(GraphError::invalid(details.clone())),
        Ok(message) => verdict(ledger, rng, &config.faults, n, number, t, &arrival, message),
    };
    let action = match verdict {
        Verdict::Error(error) => {
            ledger.count_error(&error.stats_key());
            Action::Answer(error.into_response(&fbtrace_id))
        }
        Verdict::Bare(status) => {
            ledger.count_error(&format!("http_{}", status.as_u16()));
            Action::Answer(respond::bare_status(status))
        }
        Verdict::Accept(pair, message) => {
            let seq = ledger.accept(n, &message.to, t, pair, message.callback_data.as_deref());
            let wamid = format!("wamid.SIM{seq:016X}");
            if let Some(webhooks) = &shared.webhooks {
                let _ = webhooks.send(Order::Accepted(Accepted {
                    wamid: wamid.clone(),
                    phone_number_id: number.to_owned(),
                    waba_id: shared.wabas_of.get(number).cloned().unwrap_or_default(),
                    recipient: message.to.clone(),
                    callback_data: message.callback_data.clone(),
                }));
            }
            Action::Answer(respond::accepted(&message.to, &wamid))
        }
        Verdict::Hang => {
            ledger.count_hang();
            Action::Hang
        }
        Verdict::Reset => {
            ledger.count_reset();
            Action::Reset
        }
    };
    (action, delay)
}

/// The checks for an authenticated, well-formed request, in the order Meta's
/// edge plausibly applies them: throughput, WABA cap, storm, pair rule; then, for
/// a request that passed them all, the injected faults.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn verdict<'m>(
    ledger: &mut Ledger,
    rng: &mut StdRng,
    faults: &Faults,
    n: usize,
    number: &str,
    t: Duration,
    arrival: &Arrival,
    message: &'m Message,
) -> Verdict<'m> {
    if arrival.phone_over {
        return Verdict::Error(GraphError::throughput(false));
    }
    if let Some(over) = &arrival.waba_over {
        return Verdict::Error(GraphError::waba(over));
    }
    if ledger.in_storm(n, t, faults.throttle_storm, rng) {
        return Verdict::Error(GraphError::throughput(true));
    }
    let pair = match ledger.check_pair(n, &message.to, t) {
        Ok(pair) => pair,
        Err(free_at) => return Verdict::Error(GraphError::pair(free_at.saturating_sub(t))),
    };

    // Passed every limit: now Meta's own failures, if any.
    let forced = faults.forced.iter().find(|f| {
        f.phone_number_id.as_deref().is_none_or(|id| id == number)
            && f.probability > 0.0
            && rng.random_bool(f.probability)
    });
    if let Some(forced) = forced {
        return Verdict::Error(GraphError::forced(forced));
    }
    // One roll over the cumulative probabilities keeps each rate exact while
    // they sum to at most 1.
    let roll: f64 = rng.random();
    let mut threshold = faults.hang;
    if roll < threshold {
        return Verdict::Hang;
    }
    threshold += faults.reset;
    if roll < threshold {
        return Verdict::Reset;
    }
    threshold += faults.transient;
    if roll < threshold {
        return match rng.random_range(0..3) {
            0 => Verdict::Error(GraphError::transient()),
            1 => Verdict::Bare(StatusCode::INTERNAL_SERVER_ERROR),
            _ => Verdict::Bare(StatusCode::SERVICE_UNAVAILABLE),
        };
    }
    threshold += faults.permanent;
    if roll < threshold {
        return Verdict::Error(GraphError::undeliverable());
    }
    Verdict::Accept(pair, message)
}

fn bearer_token(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Reads and checks the body; `Err` carries the details of the 100 answer.
async fn read_message(body: Incoming) -> Result<Message, String> {
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("The request body could not be read: {e}"))?
        .to_bytes();
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("The request body is not valid JSON: {e}"))?;
    if value.get("messaging_product").and_then(|v| v.as_str()) != Some("whatsapp") {
        return Err("The parameter messaging_product is required and must be \"whatsapp\".".to_owned());
    }
    let to = match value.get("to").and_then(|v| v.as_str()) {
        Some(to) if !to.is_empty() => to.to_owned(),
        _ => return Err("The parameter to is required.".to_owned()),
    };
    let callback_data = value.get("biz_opaque_callback_data").and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Message { to, callback_data })
}
