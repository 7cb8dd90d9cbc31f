//! `Sender::check_token` end to end: the simulator for the Graph API's
//! answers (accepted, refused, accepted again once the token is fixed), and
//! hand-made HTTP/2 peers for what it does not answer (a bare 500, silence).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use wabulk_model::{ErrorCode, NumericId};
use wabulk_sender::{AccessToken, TokenCheck};

use crate::peers::{listen, serve};
use crate::{is_sent, send_to, sender, sim_config, start, token, NUMBER, TOKEN, WABA};

/// The result, after checking that its `Debug` never shows the token.
fn shown(check: TokenCheck, token: &str) -> TokenCheck {
    let debug = format!("{check:?}");
    assert!(!debug.contains(token), "{debug}");
    check
}

#[tokio::test]
async fn accepted_refused_and_accepted_again_once_the_token_is_fixed() {
    let sim = start(sim_config()).await;
    let sender = sender(sim.base_url(), |_| {});
    let number = NumericId::new(NUMBER);

    assert_eq!(shown(sender.check_token(number, &token()).await, TOKEN), TokenCheck::Accepted);

    // The operator's token stops working (revoked, permissions removed).
    sim.set_token(WABA, "sim-token-regranted").unwrap();
    match shown(sender.check_token(number, &token()).await, TOKEN) {
        TokenCheck::Refused(error) => assert_eq!(error.code, ErrorCode::Graph(190)),
        other => panic!("{other:?}"),
    }
    // Fixed on Meta's side: the same token works again.
    sim.set_token(WABA, TOKEN).unwrap();
    assert_eq!(sender.check_token(number, &token()).await, TokenCheck::Accepted);

    // A wrong token is refused the same way.
    let wrong = "not-the-token";
    match shown(sender.check_token(number, &AccessToken::new(wrong.into())).await, wrong) {
        TokenCheck::Refused(error) => assert_eq!(error.code, ErrorCode::Graph(190)),
        other => panic!("{other:?}"),
    }
    // An unknown number is no verdict on the token.
    match sender.check_token(NumericId::new(42), &token()).await {
        TokenCheck::Unknown(error) => assert_eq!(error.code, ErrorCode::Graph(100)),
        other => panic!("{other:?}"),
    }

    // Checks and sends share one pool, and the checks are no messages.
    assert!(is_sent(&send_to(&sender, NUMBER, 15_551_234_567).await));
    assert_eq!(sender.pool_stats().opened_total, 1);
    let stats = sim.stats();
    assert_eq!((stats.token_checks, stats.token_checks_refused), (5, 2));
    assert_eq!((stats.requests, stats.accepted), (1, 1));
    sim.shutdown().await;
}

/// What goes on the wire: a bodiless HTTP/2 GET of the number's node with
/// the bearer token. A bare 500 (no Graph error) says nothing about it.
#[tokio::test]
async fn request_on_the_wire_and_a_bare_500_is_unknown() {
    let (listener, url) = listen().await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(serve(listener, false, move |_, request, mut respond| {
        let (parts, body) = request.into_parts();
        let _ = seen_tx.send((parts, body.is_end_stream()));
        let response = Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).body(()).unwrap();
        let mut stream = respond.send_response(response, false).unwrap();
        stream.send_data(Bytes::from_static(b"upstream failed"), true).unwrap();
    }));
    let sender = sender(url, |_| {});
    match shown(sender.check_token(NumericId::new(NUMBER), &token()).await, TOKEN) {
        TokenCheck::Unknown(error) => assert_eq!(error.code, ErrorCode::Engine("http_500".into())),
        other => panic!("{other:?}"),
    }
    let (parts, bodiless) = seen_rx.recv().await.unwrap();
    assert_eq!(parts.method, http::Method::GET);
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_eq!(parts.uri.path(), format!("/v21.0/{NUMBER}"));
    assert_eq!(parts.uri.query(), Some("fields=id"));
    assert_eq!(parts.headers["authorization"], format!("Bearer {TOKEN}"));
    assert!(!parts.headers.contains_key("content-type"));
    assert!(bodiless);
}

#[tokio::test]
async fn refused_connection_is_unknown() {
    // Bind then drop a listener: the port is (almost certainly) closed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sender = sender(format!("http://127.0.0.1:{port}/v21.0"), |_| {});
    match shown(sender.check_token(NumericId::new(NUMBER), &token()).await, TOKEN) {
        TokenCheck::Unknown(error) => {
            assert_eq!(error.code, ErrorCode::Engine("connection".into()));
            assert!(error.message.contains("cannot connect"), "{}", error.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(sender.pool_stats().connect_errors_total >= 1);
}

#[tokio::test]
async fn no_answer_in_time_is_unknown() {
    let (listener, url) = listen().await;
    // Held, never answered, so the stream stays open.
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(serve(listener, false, move |_, _request, respond| keep.lock().unwrap().push(respond)));
    let sender = sender(url, |c| c.request_timeout = Duration::from_millis(200));
    match shown(sender.check_token(NumericId::new(NUMBER), &token()).await, TOKEN) {
        TokenCheck::Unknown(error) => {
            assert_eq!(error.code, ErrorCode::Engine("timeout".into()));
            // Nothing was sent, so nothing "may have been sent".
            assert!(!error.message.contains("message"), "{}", error.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(held.lock().unwrap().len(), 1);
}
