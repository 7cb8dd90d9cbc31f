//! End-to-end tests of the sender against real servers on 127.0.0.1:0 over
//! HTTP/2 (cleartext, and TLS in tls.rs): the Graph API simulator for the error table and the
//! pool's behaviour under load and faults, and small hand-made h2 servers for
//! what the simulator cannot do (stop answering PINGs, never handshake).

mod errors;
mod peers;
mod pool;
mod tls;
mod token;

use std::time::Duration;

use bytes::Bytes;
use wabulk_graph_sim::{Latency, SimConfig, SimHandle, SimNumber, SimWaba, Simulator};
use wabulk_model::{NumericId, Outcome};
use wabulk_sender::{AccessToken, Sender, SenderConfig};

pub(crate) const NUMBER: u64 = 106540352242922;
pub(crate) const WABA: &str = "102290129340398";
pub(crate) const TOKEN: &str = "sim-token-waba-a";

/// A simulator with one fast number (plus `extra` numbers of the same WABA)
/// and no latency, for tests to adjust.
pub(crate) fn sim_config() -> SimConfig {
    SimConfig {
        numbers: vec![SimNumber { id: NUMBER.to_string(), mps: 100_000, waba_id: WABA.into() }],
        wabas: vec![SimWaba { id: WABA.into(), token: TOKEN.into(), hourly_cap: 100_000_000 }],
        latency: Latency::Fixed(Duration::ZERO),
        seed: Some(7),
        ..SimConfig::default()
    }
}

pub(crate) async fn start(config: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(config, listener).await.unwrap()
}

/// A sender pointed at `base_url` with short timeouts, then `adjust`ed.
pub(crate) fn sender(base_url: String, adjust: impl FnOnce(&mut SenderConfig)) -> Sender {
    let mut config = SenderConfig {
        base_url,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..SenderConfig::default()
    };
    adjust(&mut config);
    Sender::new(config).unwrap()
}

pub(crate) fn token() -> AccessToken {
    AccessToken::new(TOKEN.into())
}

/// A text message to recipient `to` (distinct recipients keep clear of the
/// pair rule).
pub(crate) fn body(to: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"messaging_product":"whatsapp","to":"{to}","type":"text","text":{{"body":"hello"}}}}"#
    ))
}

pub(crate) async fn send_to(sender: &Sender, number: u64, to: u64) -> Outcome {
    sender.send(NumericId::new(number), &token(), body(to), 1, None).await
}

/// `n` sends at once, to distinct recipients; outcomes in recipient order.
pub(crate) async fn send_many(sender: &Sender, n: u64) -> Vec<Outcome> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let sender = sender.clone();
        set.spawn(async move { (i, send_to(&sender, NUMBER, 15_550_000_000 + i).await) });
    }
    let mut outcomes = Vec::with_capacity(n as usize);
    while let Some(joined) = set.join_next().await {
        outcomes.push(joined.unwrap());
    }
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

pub(crate) fn is_sent(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Sent { wamid } if wamid.starts_with("wamid."))
}
