//! The pool of HTTP/2 connections to the one Graph API host.
//!
//! hyper and reqwest put every request for a host on one HTTP/2 connection,
//! which caps the requests in flight at the server's stream limit (often
//! 100), while one 1000-mps number at 1–2 s latency needs about 2000. This
//! pool opens connections as demand grows, never puts more streams on a
//! connection than min(configured, the server's SETTINGS_MAX_CONCURRENT_STREAMS),
//! and replaces connections that die or go away.
//!
//! A send goes through two gates:
//! 1. `gate`, a FIFO semaphore of `max_connections × max_streams` permits:
//!    when the pool is full, sends queue here fairly, in arrival order;
//! 2. a free stream on an open connection (the least loaded one), picked under
//!    the `state` lock. A permit holder that finds none (connections still
//!    opening, or the server allows fewer streams than configured) registers
//!    as waiting, may start a new connection, and sleeps on `wake`. Wake-ups
//!    are FIFO too; only when the server allows fewer streams than configured
//!    does the gate admit more sends than fit, and then a newly admitted send
//!    may take a freed stream before an older waiter (never for long: the
//!    waiter is woken again by the next release).
//!
//! Each connection has one task that drives it and sends keep-alive PINGs;
//! when that task ends, or a request sees the connection fail or go away, the
//! connection leaves the pool and later sends open a new one.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{Ping, Reason};
use http::{HeaderMap, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::Target;
use crate::transport::{open_tunnel, tls_failure, Tunnel};

/// Response bodies of `/messages` are a few hundred bytes; anything past this
/// is drained (to keep flow control going) but not kept.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Pool counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open and usable now.
    pub connections: usize,
    /// Streams in use now (requests on the wire).
    pub in_flight: usize,
    /// Connections successfully opened since the start.
    pub opened_total: u64,
    /// Connections removed from the pool because they failed, were closed by
    /// the server, went away (GOAWAY) or stopped answering PINGs.
    pub broken_total: u64,
    /// Streams the server refused (RST_STREAM REFUSED_STREAM). The server did
    /// not process them, so each was re-sent on another stream; a non-zero
    /// figure means the pool overshot the server's stream limit.
    pub refused_total: u64,
    /// Connection attempts that failed (TCP, TLS, handshake or timeout).
    pub connect_errors_total: u64,
}

/// What the pool needs from the sender configuration.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    pub(crate) max_streams: usize,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where connections go.
    target: Arc<Target>,
    /// Present for https targets only.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Present when connections go through an HTTP CONNECT proxy.
    tunnel: Option<Tunnel>,
    config: PoolConfig,
    /// Fair (FIFO) admission when every stream of every connection is busy.
    gate: Arc<Semaphore>,
    /// The connection list and the bookkeeping of the decision to open one.
    /// A std mutex: it is held only for short, synchronous sections and never
    /// across an `.await`, so it cannot stall the runtime.
    state: Mutex<State>,
    /// Wakes sends waiting for a stream: one on each stream release, all when
    /// a connection opens, fails to open or leaves the pool.
    wake: Notify,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicUsize,
    opened_total: AtomicU64,
    broken_total: AtomicU64,
    refused_total: AtomicU64,
    connect_errors_total: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// Usable connections; a connection is removed as soon as it is known
    /// to be broken or going away.
    conns: Vec<Conn>,
    /// Connection attempts under way: their future capacity counts against
    /// the demand, so a burst of 2000 sends opens 20 connections, not 2000.
    opening: usize,
    /// Sends holding a gate permit but no stream.
    waiting: usize,
    /// Streams a new connection is expected to offer: min(configured, what
    /// the server advertised last). Sizes the decision to open.
    expected_streams: usize,
    /// Bumped on each failed connection attempt, so that waiters can tell
    /// that the attempt they were counting on failed.
    connect_failures: u64,
    /// The last connection error, returned to the sends it strands.
    last_connect_error: String,
    next_id: u64,
}

/// One pooled connection, as the pool sees it (the driver task owns the
/// socket).
#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    /// Cloned per request; h2 multiplexes the clones on the connection.
    send: SendRequest<Bytes>,
    shared: Arc<ConnShared>,
}

#[derive(Debug, Default)]
struct ConnShared {
    /// Streams of this connection in use: compared with the stream limit.
    in_flight: AtomicUsize,
    /// Set once the connection is known to be unusable, before it leaves the
    /// list, so a concurrent registration does not add a dead connection.
    closed: AtomicBool,
}

impl Conn {
    /// Streams this connection may carry now: the server can lower its
    /// SETTINGS_MAX_CONCURRENT_STREAMS at any time, so it is read each time.
    fn limit(&self, configured: usize) -> usize {
        configured.min(self.send.current_max_send_streams())
    }
}

/// Why the pool could not provide a stream.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PoolError {
    #[error("cannot connect: {0}")]
    Connect(String),
}

/// Why a stream did not produce an answer.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The request was provably not processed (it never left, or the server
    /// refused the stream): it may go out again on another stream.
    NotProcessed(h2::Error),
    /// The exchange failed after the request went out: the outcome is unknown.
    Failed(h2::Error),
}

/// An HTTP answer with its body read.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A stream slot on one connection; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct Slot {
    conn: Conn,
    pool: Arc<Inner>,
    /// Released after the connection's count (field drop order follows
    /// `Drop::drop`), so the next permit holder finds the stream free.
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub(crate) fn new(
        target: Arc<Target>,
        tls: Option<Arc<rustls::ClientConfig>>,
        tunnel: Option<Tunnel>,
        config: PoolConfig,
    ) -> Self {
        let permits = config.max_connections * config.max_streams;
        let state = State {
            conns: Vec::new(),
            opening: 0,
            waiting: 0,
            expected_streams: config.max_streams,
            connect_failures: 0,
            last_connect_error: String::new(),
            next_id: 0,
        };
        let inner = Inner {
            target,
            tls,
            tunnel,
            config,
            gate: Arc::new(Semaphore::new(permits)),
            state: Mutex::new(state),
            wake: Notify::new(),
            counters: Counters::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        PoolStats {
            connections: self.inner.lock().conns.len(),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            opened_total: c.opened_total.load(Ordering::Relaxed),
            broken_total: c.broken_total.load(Ordering::Relaxed),
            refused_total: c.refused_total.load(Ordering::Relaxed),
            connect_errors_total: c.connect_errors_total.load(Ordering::Relaxed),
        }
    }

    /// A free stream, opening a connection when every open one is full.
    /// Cancel-safe: dropping the future releases whatever it held.
    pub(crate) async fn acquire(&self) -> Result<Slot, PoolError> {
        let inner = &self.inner;
        let permit =
            inner.gate.clone().acquire_owned().await.map_err(|_| PoolError::Connect("pool closed".into()))?;
        let mut waiting: Option<Waiting> = None;
        loop {
            // Registered before looking at the state, so a wake-up between
            // the look and the sleep is not lost.
            let mut notified = pin!(inner.wake.notified());
            notified.as_mut().enable();
            let mut open = None;
            {
                let mut st = inner.lock();
                if let Some(conn) = st.pick(inner.config.max_streams) {
                    if let Some(w) = waiting.take() {
                        w.leave(&mut st);
                    }
                    drop(st);
                    inner.counters.in_flight.fetch_add(1, Ordering::Relaxed);
                    return Ok(Slot { conn, pool: inner.clone(), _permit: permit });
                }
                let w = waiting.get_or_insert_with(|| Waiting::join(inner, &mut st));
                if w.seen_failures != st.connect_failures && st.conns.is_empty() && st.opening == 0 {
                    // Every attempt this send was counting on failed and none
                    // is left: report it rather than wait for a timeout.
                    let error = st.last_connect_error.clone();
                    if let Some(w) = waiting.take() {
                        w.leave(&mut st);
                    }
                    return Err(PoolError::Connect(error));
                }
                let room_for_more = st.conns.len() + st.opening < inner.config.max_connections;
                if room_for_more && st.waiting > st.opening * st.expected_streams {
                    st.opening += 1;
                    st.next_id += 1;
                    open = Some(st.next_id);
                }
            }
            if let Some(id) = open {
                // Spawned so that the attempt finishes (and serves the other
                // waiters) even if this send is cancelled meanwhile.
                tokio::spawn(open_connection(inner.clone(), id));
            }
            notified.await;
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock cannot leave the state half-updated in a
        // way that matters more than stopping all sends would.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a connection out of the pool; counts it once.
    fn remove(&self, id: u64, why: &str) {
        let removed = {
            let mut st = self.lock();
            let before = st.conns.len();
            st.conns.retain(|c| c.id != id);
            before != st.conns.len()
        };
        if removed {
            self.counters.broken_total.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(connection = id, reason = why, "HTTP/2 connection left the pool");
            self.wake.notify_waiters();
        }
    }
}

impl State {
    /// Takes a stream on the least loaded connection that has one free.
    fn pick(&mut self, configured: usize) -> Option<Conn> {
        let mut best: Option<(usize, &Conn)> = None;
        for conn in &self.conns {
            if conn.shared.closed.load(Ordering::Relaxed) {
                continue;
            }
            let used = conn.shared.in_flight.load(Ordering::Relaxed);
            let room = conn.limit(configured).saturating_sub(used);
            if room > 0 && best.is_none_or(|(r, _)| room > r) {
                best = Some((room, conn));
            }
        }
        let conn = best?.1;
        // Only `pick` increments, and only under the lock, so the room seen
        // above cannot have been taken meanwhile (releases only add room).
        conn.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(conn.clone())
    }
}

/// A send counted in `State::waiting`; leaves the count however the wait ends.
#[derive(Debug)]
struct Waiting {
    pool: Arc<Inner>,
    seen_failures: u64,
    active: bool,
}

impl Waiting {
    fn join(pool: &Arc<Inner>, st: &mut State) -> Self {
        st.waiting += 1;
        Self { pool: pool.clone(), seen_failures: st.connect_failures, active: true }
    }

    /// Leaves while the caller already holds the lock.
    fn leave(mut self, st: &mut State) {
        st.waiting -= 1;
        self.active = false;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.active {
            self.pool.lock().waiting -= 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conn.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.pool.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.pool.wake.notify_one();
    }
}

impl Slot {
    /// One request/response exchange on this stream, body included. No
    /// timeout here: the caller bounds the whole exchange.
    pub(crate) async fn exchange(&self, request: Request<()>, body: Bytes) -> Result<Answer, StreamError> {
        let send = self.conn.send.clone();
        // An error here or from `send_request` means nothing was sent: the
        // connection went away (GOAWAY), died, or ran out of stream ids.
        let mut send = send.ready().await.map_err(|e| self.not_sent(e))?;
        let end_of_stream = body.is_empty();
        let (response, mut stream) =
            send.send_request(request, end_of_stream).map_err(|e| self.not_sent(e))?;
        if !end_of_stream {
            // Buffered by h2 and sent as flow control allows.
            stream.send_data(body, true).map_err(|e| self.failed(e))?;
        }
        let response = response.await.map_err(|e| self.failed(e))?;
        let (parts, mut recv) = response.into_parts();
        let mut body = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(|e| self.failed(e))?;
            // Give the window back, or the connection stalls once 64 KiB of
            // responses have been read.
            let _ = recv.flow_control().release_capacity(chunk.len());
            let keep = chunk.len().min(MAX_RESPONSE_BODY.saturating_sub(body.len()));
            body.extend_from_slice(&chunk[..keep]);
        }
        Ok(Answer { status: parts.status, headers: parts.headers, body: body.freeze() })
    }

    fn not_sent(&self, error: h2::Error) -> StreamError {
        self.break_conn(&error);
        StreamError::NotProcessed(error)
    }

    fn failed(&self, error: h2::Error) -> StreamError {
        if error.is_reset() {
            // A stream-level reset leaves the connection healthy.
            if error.is_remote() && error.reason() == Some(Reason::REFUSED_STREAM) {
                // RFC 9113 §8.7: a refused stream was not processed.
                self.pool.counters.refused_total.fetch_add(1, Ordering::Relaxed);
                return StreamError::NotProcessed(error);
            }
            return StreamError::Failed(error);
        }
        self.break_conn(&error);
        if error.is_go_away() && error.is_remote() {
            // RFC 9113 §6.8: streams above a GOAWAY's last stream id were not
            // processed (h2 fails only those with the GOAWAY's error), so the
            // request may go again at once on another connection.
            return StreamError::NotProcessed(error);
        }
        StreamError::Failed(error)
    }

    /// Takes the connection out of the pool so no new request picks it;
    /// requests still on it finish or fail on their own.
    fn break_conn(&self, error: &h2::Error) {
        self.conn.shared.closed.store(true, Ordering::Relaxed);
        self.pool.remove(self.conn.id, &error.to_string());
    }
}

/// Opens connection `id` within the connect timeout and adds it to the pool,
/// or records the failure; either way the waiters are woken.
async fn open_connection(pool: Arc<Inner>, id: u64) {
    let result = match tokio::time::timeout(pool.config.connect_timeout, connect(&pool, id)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no connection within {:?}", pool.config.connect_timeout)),
    };
    {
        let mut st = pool.lock();
        st.opening -= 1;
        match result {
            // A connection that died during the handshake is already closed:
            // its driver's removal ran before this lock, so it is skipped here.
            Ok(conn) if !conn.shared.closed.load(Ordering::Relaxed) => {
                st.expected_streams = conn.limit(pool.config.max_streams).max(1);
                tracing::debug!(connection = id, streams = st.expected_streams, "HTTP/2 connection opened");
                st.conns.push(conn);
                pool.counters.opened_total.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                st.connect_failures += 1;
                st.last_connect_error = "connection closed during the handshake".into();
                pool.counters.connect_errors_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(connection = id, %error, "cannot open HTTP/2 connection to the Graph API");
                st.connect_failures += 1;
                st.last_connect_error = error;
                pool.counters.connect_errors_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    pool.wake.notify_waiters();
}

/// TCP (direct or through a proxy's CONNECT tunnel) (+ TLS with ALPN h2) +
/// HTTP/2 handshake + the server's SETTINGS.
async fn connect(pool: &Arc<Inner>, id: u64) -> Result<Conn, String> {
    let target = &pool.target;
    let tcp = match &pool.tunnel {
        None => TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("TCP connect to {}:{}: {e}", target.host, target.port))?,
        Some(tunnel) => open_tunnel(tunnel, target).await?,
    };
    // Requests are small and latency-bound: do not let Nagle hold them back.
    tcp.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    match &pool.tls {
        None => handshake(pool, id, tcp).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("TLS server name {:?}: {e}", target.host))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| tls_failure(&target.host, &e))?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(format!("{} did not negotiate HTTP/2 (ALPN h2)", target.host));
            }
            handshake(pool, id, stream).await
        }
    }
}

async fn handshake<T>(pool: &Arc<Inner>, id: u64, io: T) -> Result<Conn, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        // Until the server's SETTINGS arrive, assume the configured figure
        // (h2 would otherwise assume no limit).
        .initial_max_send_streams(pool.config.max_streams)
        .enable_push(false)
        .handshake::<T, Bytes>(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let ping_pong = connection.ping_pong().ok_or("HTTP/2 PING handle already taken")?;
    let shared = Arc::new(ConnShared::default());
    let (ready_tx, ready_rx) = oneshot::channel();
    let driver = Driver {
        pool: Arc::downgrade(pool),
        id,
        shared: shared.clone(),
        keepalive_interval: pool.config.keepalive_interval,
        keepalive_timeout: pool.config.keepalive_timeout,
    };
    tokio::spawn(driver.run(connection, ping_pong, ready_tx));
    match ready_rx.await {
        Ok(Ok(())) => Ok(Conn { id, send, shared }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err("connection closed during the handshake".into()),
    }
}

/// The task that owns one connection: drives its frames, pings it, and takes
/// it out of the pool when it ends.
#[derive(Debug)]
struct Driver {
    /// Weak, so that dropping the last `Sender` drops the `SendRequest`s and
    /// lets the connections close.
    pool: Weak<Inner>,
    id: u64,
    shared: Arc<ConnShared>,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

impl Driver {
    async fn run<T>(
        self,
        mut connection: h2::client::Connection<T, Bytes>,
        mut ping_pong: h2::PingPong,
        ready: oneshot::Sender<Result<(), String>>,
    ) where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let keepalive = async {
            // The server sends its SETTINGS first and h2 applies them before
            // reading on, so once this PING is answered the stream limit is
            // known and the connection can take requests without refusals.
            if let Err(e) = ping_pong.ping(Ping::opaque()).await {
                let _ = ready.send(Err(format!("first HTTP/2 PING: {e}")));
                return format!("first PING failed: {e}");
            }
            let _ = ready.send(Ok(()));
            loop {
                tokio::time::sleep(self.keepalive_interval).await;
                match tokio::time::timeout(self.keepalive_timeout, ping_pong.ping(Ping::opaque())).await {
                    Ok(Ok(_pong)) => {}
                    Ok(Err(e)) => return format!("keep-alive PING failed: {e}"),
                    Err(_) => return format!("no PING answer within {:?}", self.keepalive_timeout),
                }
            }
        };
        let why = tokio::select! {
            result = &mut connection => match result {
                Ok(()) => "closed".to_owned(),
                Err(e) => e.to_string(),
            },
            why = keepalive => why,
        };
        // Dropping `connection` on return closes the socket and fails the
        // streams still on it.
        self.shared.closed.store(true, Ordering::Relaxed);
        if let Some(pool) = self.pool.upgrade() {
            pool.remove(self.id, &why);
        }
    }
}
