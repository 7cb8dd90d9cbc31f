//! Small hand-made HTTP/2 servers (the `h2` crate's server side) for what the
//! simulator does not do: check the request on the wire, refuse streams, stop
//! answering PINGs, never complete the handshake.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::Reason;
use http::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use wabulk_model::{ErrorCode, Outcome, RetryReason, Scope};

use crate::{is_sent, send_to, sender, NUMBER};

const ACCEPTED: &[u8] = br#"{"messaging_product":"whatsapp","contacts":[{"input":"1","wa_id":"1"}],"messages":[{"id":"wamid.PEER"}]}"#;

fn answer(mut respond: SendResponse<Bytes>, body: &'static [u8]) {
    let response = Response::builder().status(StatusCode::OK).header("content-type", "application/json");
    let mut stream = respond.send_response(response.body(()).unwrap(), false).unwrap();
    stream.send_data(Bytes::from_static(body), true).unwrap();
}

/// Accepts connections on `listener` and hands each request to `handle`
/// (with the connection's index); `after_first` stops polling a connection
/// after its first request, so it no longer answers anything, PINGs included.
pub(crate) async fn serve<F>(listener: TcpListener, after_first_freeze: bool, handle: F)
where
    F: Fn(usize, Request<h2::RecvStream>, SendResponse<Bytes>) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let mut index = 0;
    loop {
        let Ok((socket, _)) = listener.accept().await else { return };
        let handle = handle.clone();
        let conn_index = index;
        index += 1;
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(socket).await else { return };
            while let Some(Ok((request, respond))) = conn.accept().await {
                handle(conn_index, request, respond);
                if after_first_freeze {
                    // Flush the answer, then keep the socket open but silent.
                    let _ = tokio::time::timeout(Duration::from_millis(50), conn.accept()).await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            }
        });
    }
}

pub(crate) async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v21.0", listener.local_addr().unwrap());
    (listener, url)
}

#[tokio::test]
async fn request_on_the_wire_is_what_the_graph_api_expects() {
    let (listener, url) = listen().await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(serve(listener, false, move |_, request, respond| {
        let (parts, _) = request.into_parts();
        let _ = seen_tx.send(parts);
        answer(respond, ACCEPTED);
    }));
    let sender = sender(url, |_| {});
    let outcome = send_to(&sender, NUMBER, 15_551_234_567).await;
    assert_eq!(outcome, Outcome::Sent { wamid: "wamid.PEER".into() });
    let parts = seen_rx.recv().await.unwrap();
    assert_eq!(parts.method, http::Method::POST);
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_eq!(parts.uri.path(), format!("/v21.0/{NUMBER}/messages"));
    assert_eq!(parts.headers["authorization"], format!("Bearer {}", crate::TOKEN));
    assert_eq!(parts.headers["content-type"], "application/json");
}

/// REFUSED_STREAM means "not processed" (RFC 9113 §8.7): the sender puts
/// the request on another stream itself and counts the refusal.
#[tokio::test]
async fn refused_streams_are_sent_again() {
    let (listener, url) = listen().await;
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(serve(listener, false, move |_, _request, mut respond| {
        // Refuse every other stream.
        if counter.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
            respond.send_reset(Reason::REFUSED_STREAM);
        } else {
            answer(respond, ACCEPTED);
        }
    }));
    let sender = sender(url, |_| {});
    for to in 0..5 {
        let outcome = send_to(&sender, NUMBER, 15_551_234_567 + to).await;
        assert!(is_sent(&outcome), "{outcome:?}");
    }
    assert_eq!(requests.load(Ordering::Relaxed), 10);
    let stats = sender.pool_stats();
    assert_eq!(stats.refused_total, 5);
    // A refused stream says nothing bad about the connection.
    assert_eq!((stats.opened_total, stats.broken_total), (1, 0));
}

/// A server that refuses everything: after the allowed re-dispatches the
/// send reports a connection retry.
#[tokio::test]
async fn endless_refusals_end_as_a_connection_retry() {
    let (listener, url) = listen().await;
    tokio::spawn(serve(listener, false, |_, _request, mut respond| {
        respond.send_reset(Reason::REFUSED_STREAM)
    }));
    let sender = sender(url, |_| {});
    match send_to(&sender, NUMBER, 15_551_234_567).await {
        Outcome::Retry { scope: Scope::Request, reason: RetryReason::Connection, error, .. } => {
            assert_eq!(error.code, ErrorCode::Engine("connection".into()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sender.pool_stats().refused_total, 3);
}

/// The server drops the TCP connection with three requests in flight: each
/// is a `broken` retry (the outcome is unknown), the connection leaves the
/// pool, and the next send succeeds on a new one.
#[tokio::test]
async fn dropped_connection_fails_in_flight_requests_and_is_replaced() {
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(socket).await.unwrap();
        let mut held = Vec::new();
        while held.len() < 3 {
            held.push(conn.accept().await.unwrap().unwrap());
        }
        // The socket goes first, so no RST_STREAM is written: the client sees
        // the connection end under its requests.
        drop(conn);
        drop(held);
        serve(listener, false, |_, _request, respond| answer(respond, ACCEPTED)).await;
    });
    let sender = sender(url, |_| {});
    let mut set = tokio::task::JoinSet::new();
    for to in 0..3 {
        let sender = sender.clone();
        set.spawn(async move { send_to(&sender, NUMBER, 15_551_234_567 + to).await });
    }
    while let Some(outcome) = set.join_next().await {
        match outcome.unwrap() {
            Outcome::Retry { scope: Scope::Request, reason: RetryReason::Broken, error, .. } => {
                assert_eq!(error.code, ErrorCode::Engine("connection".into()));
            }
            other => panic!("{other:?}"),
        }
    }
    let stats = sender.pool_stats();
    assert_eq!((stats.opened_total, stats.broken_total, stats.connections, stats.in_flight), (1, 1, 0, 0));
    assert!(is_sent(&send_to(&sender, NUMBER, 15_551_234_999).await));
    assert_eq!(sender.pool_stats().opened_total, 2);
}

/// A peer that stops answering PINGs is found by the keep-alive and
/// replaced before a request has to time out on it.
#[tokio::test]
async fn keepalive_replaces_a_silent_connection() {
    let (listener, url) = listen().await;
    tokio::spawn(serve(listener, true, |_, _request, respond| answer(respond, ACCEPTED)));
    let sender = sender(url, |c| {
        c.keepalive_interval = Duration::from_millis(100);
        c.keepalive_timeout = Duration::from_millis(200);
    });
    assert!(is_sent(&send_to(&sender, NUMBER, 15_551_234_567).await));
    assert_eq!(sender.pool_stats().connections, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stats = sender.pool_stats();
    assert_eq!((stats.connections, stats.broken_total), (0, 1), "{stats:?}");
    // The next send opens a fresh connection.
    assert!(is_sent(&send_to(&sender, NUMBER, 15_551_234_568).await));
    assert_eq!(sender.pool_stats().opened_total, 2);
}

/// A server that accepts TCP but never speaks HTTP/2: the connect timeout
/// ends the wait and the send is a connection retry.
#[tokio::test]
async fn connect_timeout_is_a_connection_retry() {
    let (listener, url) = listen().await;
    let sender = sender(url, |c| c.connect_timeout = Duration::from_millis(200));
    let started = std::time::Instant::now();
    let outcome = send_to(&sender, NUMBER, 15_551_234_567).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    match outcome {
        Outcome::Retry { scope: Scope::Request, reason: RetryReason::Connection, error, .. } => {
            assert!(error.message.contains("no connection within"), "{}", error.message);
        }
        other => panic!("{other:?}"),
    }
    let stats = sender.pool_stats();
    assert_eq!((stats.connect_errors_total, stats.connections, stats.in_flight), (1, 0, 0));
    drop(listener);
}
