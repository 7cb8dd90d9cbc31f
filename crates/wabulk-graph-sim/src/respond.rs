//! Answers in Meta's exact shapes: the success body, the Graph API error envelope
//! and the bare HTTP failures. Senders branch on `error.code`, so every error the
//! simulator produces goes through [`GraphError`] and carries the right code.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;

use crate::config::ForcedError;
use crate::ledger::WabaOver;

/// The one response body type: every answer is small and complete.
pub(crate) type Body = Full<Bytes>;

/// A Graph API error, before it is given a trace id and serialized.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GraphError {
    pub(crate) status: StatusCode,
    pub(crate) code: i64,
    pub(crate) message: String,
    pub(crate) details: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl GraphError {
    fn new(status: StatusCode, code: i64, message: &str, details: impl Into<String>) -> GraphError {
        GraphError { status, code, message: message.to_owned(), details: details.into(), headers: Vec::new() }
    }

    /// Code 100 for anything malformed: unknown number, bad path, bad body.
    pub(crate) fn invalid(details: impl Into<String>) -> GraphError {
        GraphError::new(StatusCode::BAD_REQUEST, 100, "(#100) Invalid parameter", details)
    }

    /// Meta's answer for a request (`method`: `"post"`, `"get"`) to an id it
    /// does not know.
    pub(crate) fn unknown_number(id: &str, method: &str) -> GraphError {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            100,
            &format!(
                "Unsupported {method} request. Object with ID '{id}' does not exist, cannot be loaded due to \
                 missing permissions, or does not support this operation."
            ),
            format!("Unsupported {method} request"),
        )
    }

    pub(crate) fn not_found(path: &str) -> GraphError {
        let mut e = GraphError::invalid(format!("Unknown path components: {path}"));
        e.status = StatusCode::NOT_FOUND;
        e
    }

    pub(crate) fn bad_token() -> GraphError {
        GraphError::new(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            "The access token is missing, malformed or not the token of this number's WhatsApp Business Account.",
        )
    }

    /// 130429 for a number over its throughput (or inside a storm).
    pub(crate) fn throughput(storm: bool) -> GraphError {
        let details = if storm {
            "Cloud API message throughput has been reached (simulated throttle storm)."
        } else {
            "Cloud API message throughput has been reached."
        };
        GraphError::new(StatusCode::BAD_REQUEST, 130429, "(#130429) Rate limit hit", details)
    }

    pub(crate) fn pair(retry_in: Duration) -> GraphError {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            131056,
            "(#131056) (Business Account, Consumer Account) pair rate limit hit",
            format!(
                "Message failed to send because there were too many messages sent from this phone number to \
                 the same phone number in a short period of time. The pair is free again in {} ms.",
                retry_in.as_millis()
            ),
        )
    }

    /// 80007 with the `x-business-use-case-usage` header Meta sends with it.
    pub(crate) fn waba(over: &WabaOver) -> GraphError {
        let minutes = over.regain_in.as_secs().div_ceil(60).max(1);
        let usage = json!({
            over.waba_id.as_str(): [{
                "type": "whatsapp",
                "call_count": over.call_pct,
                "total_cputime": 0,
                "total_time": 0,
                "estimated_time_to_regain_access": minutes,
            }]
        });
        let mut e = GraphError::new(
            StatusCode::BAD_REQUEST,
            80007,
            "(#80007) Rate limit issues",
            "The WhatsApp Business Account has reached its rate limit.",
        );
        e.headers.push(("x-business-use-case-usage".to_owned(), usage.to_string()));
        e
    }

    pub(crate) fn transient() -> GraphError {
        GraphError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            131000,
            "(#131000) Something went wrong",
            "Message failed to send due to an unknown error. (simulated transient fault)",
        )
    }

    pub(crate) fn undeliverable() -> GraphError {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            131026,
            "(#131026) Message undeliverable",
            "Message failed to send because of an unknown error with the recipient (simulated).",
        )
    }

    pub(crate) fn forced(forced: &ForcedError) -> GraphError {
        let status = StatusCode::from_u16(forced.http_status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut e = GraphError::new(
            status,
            forced.code,
            &format!("(#{}) Simulated error", forced.code),
            "Forced by the simulator configuration.",
        );
        e.headers.clone_from(&forced.headers);
        e
    }

    /// The key this error is counted under in `errors_by_code`.
    pub(crate) fn stats_key(&self) -> String {
        self.code.to_string()
    }

    pub(crate) fn into_response(self, fbtrace_id: &str) -> Response<Body> {
        let body = json!({
            "error": {
                "message": self.message,
                "type": "OAuthException",
                "code": self.code,
                "error_data": { "messaging_product": "whatsapp", "details": self.details },
                "fbtrace_id": fbtrace_id,
            }
        });
        let mut response = json_response(self.status, &body);
        for (name, value) in self.headers {
            // A header from the configuration that HTTP cannot carry is skipped
            // rather than failing the request: the error code still goes out.
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// Meta's success body.
pub(crate) fn accepted(to: &str, wamid: &str) -> Response<Body> {
    let body = json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": to, "wa_id": to }],
        "messages": [{ "id": wamid }],
    });
    json_response(StatusCode::OK, &body)
}

/// A phone number node read with a valid token (`GET /{version}/{id}`). Only
/// `id`: what `?fields=id` asks for, and all the simulator knows of a number.
pub(crate) fn node(id: &str) -> Response<Body> {
    json_response(StatusCode::OK, &json!({ "id": id }))
}

/// A bare HTTP failure as a load balancer in front of the Graph API sends it: no
/// JSON, so the sender must classify it by status.
pub(crate) fn bare_status(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(status.canonical_reason().unwrap_or("error"))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    // Serializing plain data into a Vec cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
