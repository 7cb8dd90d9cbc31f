//! A stand-in for the WhatsApp Cloud API (`POST /{version}/{phone_number_id}/messages`)
//! that the demo, the integration tests and the capacity runs point the engine at.
//!
//! It is also the referee: it enforces the platform limits (docs/platform.md
//! "Limits") with its own, deliberately simple accounting — no code shared with
//! `wabulk-limits` — and counts every breach in [`SimStats::violations`]. A
//! sender that paces correctly ends a run with zero violations whatever faults
//! were injected.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use wabulk_graph_sim::{example_config, Simulator};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let sim = Simulator::start(example_config(), listener).await?;
//! println!("point graph.base_url at {}", sim.base_url()); // http://127.0.0.1:PORT/v21.0
//! // ... run the sender ...
//! let stats = sim.stats(); // same as GET /__sim/stats
//! assert_eq!(stats.violations.phone + stats.violations.pair + stats.violations.waba, 0);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! - `POST /{version}/{phone_number_id}/messages`: the send. Any version segment.
//! - `GET /{version}/{phone_number_id}` (any query string, e.g. `?fields=id`):
//!   the number's node, which a sender reads to learn whether a token works
//!   (see [Token checks](#token-checks)).
//! - `GET /__sim/stats`: [`SimStats`] as JSON.
//! - `GET /healthz`: `ok`.
//!
//! HTTP/1.1 and HTTP/2 cleartext with prior knowledge are served on the same port;
//! with `tls = true`, HTTPS instead (ALPN `h2` and `http/1.1`), with a CA and a
//! server certificate for `127.0.0.1`, `::1` and `localhost` made at start
//! ([`SimHandle::ca_pem`] is the CA a client trusts).
//!
//! # How a request is judged
//!
//! At arrival (once its body is in), under one lock, in this order:
//!
//! 1. Unknown number → 100 (HTTP 400). Nothing else is counted for it.
//! 2. The arrival is recorded against the number's 1 s window and its WABA's
//!    rolling hour, whatever its answer will be (CONTRACT §6). More than `mps`
//!    arrivals in a half-open 1 s window, or more than `hourly_cap` in an hour,
//!    counts one violation (`phone` / `waba`) even if the answer is another error.
//! 3. `Authorization` is not `Bearer <token of the number's WABA>` → 190 (HTTP 401).
//! 4. Body not JSON, `messaging_product` not `"whatsapp"`, or no `to` → 100.
//! 5. Over the number's throughput → 130429; over the WABA cap → 80007 with an
//!    `x-business-use-case-usage` header.
//! 6. Inside an injected throttle storm → 130429 (not a violation).
//! 7. The pair rule, exactly as docs/platform.md states it ("The pair rule,
//!    exactly"), with `pair_interval` and `pair_burst` → 131056 and a `pair`
//!    violation. Only accepted messages borrow from a pair: a request that
//!    failed for any reason reached no recipient.
//! 8. Injected faults: `forced` errors, then hang / reset / transient / permanent.
//! 9. Otherwise accepted: 200 with a unique `wamid.SIM…`; a
//!    `biz_opaque_callback_data` accepted before is recorded as a duplicate.
//!
//! The answer is then sent after the configured latency, so thousands of
//! requests can be pending at once while their arrival order is what was judged.
//!
//! # Token checks
//!
//! `GET /{version}/{phone_number_id}` answers as Meta does: with `Bearer <token
//! of the number's WABA>`, `200 {"id":"<phone_number_id>"}`; with a wrong or
//! missing token, the same 401 / 190 body a send gets; for an unknown number,
//! 400 / 100 (`Unsupported get request`). It is answered at once, without
//! latency or faults, and is not a message: it is counted only in
//! [`SimStats::token_checks`] (and `token_checks_refused`), never in `requests`
//! or `errors_by_code`, and no window or cap sees it.
//!
//! [`SimHandle::set_token`] changes the token a WABA's numbers expect while the
//! simulator runs, so a test can refuse a sender's token and then accept it
//! again, as when an operator re-grants the token's permissions.
//!
//! # Outages
//!
//! [`SimHandle::refuse_connections`] (or `faults.outage` in the
//! configuration, at a set time after the start) makes the Graph API
//! unreachable for a while: the listening socket is closed, so connection
//! attempts are refused, and every open connection is dropped without an
//! answer, requests in flight included (those already judged stay counted,
//! accepted ones too: their answers are lost, as when a network path fails
//! after Meta took the request; those whose body was still arriving are
//! never judged nor counted). Afterwards the simulator listens on the
//! same address again. A sender sees connection failures only, never an
//! HTTP error; [`SimStats::outages`] counts them.
//!
//! [`SimHandle::first_requests`] gives, per `biz_opaque_callback_data` (the
//! engine's job id), when the first request carrying it arrived (wall
//! clock), so that a test can tell a job sent before its `not_before`.
//!
//! # Configuration (TOML)
//!
//! [`SimConfig`] is plain serde data; every key is optional except inside
//! `[[numbers]]`, `[[wabas]]` and `[[faults.forced]]`. Durations are integer
//! milliseconds. Scalar keys must come before the tables, as TOML requires:
//!
//! ```toml
//! pair_interval_ms = 6000        # default 6000; the pair rule's interval
//! pair_burst = 45                # default 45
//! max_concurrent_streams = 100   # default 100 (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
//! tls = false                    # default false; true: HTTPS with a CA made at start
//! seed = 42                      # optional; deterministic randomness
//! latency = { meta_scale = 1.0 } # default; or { fixed_ms = 0 } for raw throughput
//!
//! [[numbers]]
//! id = "106540352242922"
//! waba_id = "102290129340398"
//! mps = 1000                     # default 80
//!
//! [[wabas]]
//! id = "102290129340398"
//! token = "sim-token-waba-a"
//! hourly_cap = 3600000           # default 1800000
//!
//! [faults]                       # all default to 0 / empty
//! transient = 0.001              # 131000 (HTTP 500), bare 500 or bare 503
//! permanent = 0.0                # 131026
//! throttle_storm = 0.0           # per number per second: a 2 s storm of 130429
//! hang = 0.0                     # never answer
//! reset = 0.0                    # RST_STREAM / dropped connection
//! goaway = 0.0                   # GOAWAY on the connection, answer still sent
//! outage = { after_ms = 60000, duration_ms = 30000 }   # optional: connections refused
//!                                # from 60 s after the start, for 30 s
//!
//! [[faults.forced]]
//! code = 80007
//! http_status = 400              # default 400
//! probability = 0.01             # default 1.0
//! phone_number_id = "106540352242922"   # optional: only this number
//! headers = [["x-business-use-case-usage", '{"102290129340398":[{"type":"whatsapp","call_count":100,"estimated_time_to_regain_access":2}]}']]
//! ```
//!
//! Unknown keys are rejected, so a typo does not silently fall back to a default.

mod config;
mod latency;
mod ledger;
mod respond;
mod server;
mod stats;
mod tls;
mod webhooks;

pub use config::{
    example_config, ConfigError, Faults, ForcedError, Latency, Outage, SimConfig, SimNumber, SimWaba,
};
pub use server::{SimHandle, Simulator, UnknownNumber, UnknownWaba};
pub use stats::{NumberStats, SimStats, Violations, DUPLICATE_LIST_CAP};
pub use webhooks::WebhookConfig;
