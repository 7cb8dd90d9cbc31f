//! What `/healthz` and `/readyz` answer (CONTRACT §8).
//!
//! Liveness needs no state: the process answering is the answer. Readiness is
//! three flags the engine's stages set as their state changes, read by the HTTP
//! handler; plain atomics suffice because each flag stands alone and a scrape
//! that sees one flag a moment late is harmless.

use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness of the engine: ready when it is consuming the jobs topic and able
/// to send to the Graph API. Shared as `Arc<Health>` between the stages that
/// set the flags and [`crate::serve`].
#[derive(Debug, Default)]
pub struct Health {
    /// Set by the Kafka stage: the consumer has joined its group and is
    /// reading (cleared while shutting down, so load balancers and
    /// orchestrators stop counting on this instance before it exits).
    consuming: AtomicBool,
    /// Set by the sending stage: the Graph API is reachable and at least one
    /// token is usable (cleared when every WABA is halted or no connection can
    /// be opened).
    sending: AtomicBool,
    /// Set while Kafka refuses some of the engine's writes for good (too
    /// large, unknown topic, not authorised): those jobs cannot finish until
    /// an operator acts, so the instance must not look healthy.
    writes_refused: AtomicBool,
}

impl Health {
    /// Not ready: neither consuming nor able to send until told otherwise.
    pub fn new() -> Health {
        Health::default()
    }

    /// Records whether the engine is consuming the jobs topic.
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// Records whether the engine is able to send to the Graph API.
    pub fn set_sending(&self, sending: bool) {
        self.sending.store(sending, Ordering::Relaxed);
    }

    /// Records whether Kafka refuses some of the engine's writes for good.
    pub fn set_writes_refused(&self, refused: bool) {
        self.writes_refused.store(refused, Ordering::Relaxed);
    }

    /// Consuming, able to send, and Kafka takes the engine's writes.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the engine is not ready, in one line, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.writes_refused.load(Ordering::Relaxed) {
            return Some(
                "Kafka refuses some of the engine's writes (see the log and wabulk_produce_refusals_total)",
            );
        }
        let consuming = self.consuming.load(Ordering::Relaxed);
        let sending = self.sending.load(Ordering::Relaxed);
        match (consuming, sending) {
            (true, true) => None,
            (false, true) => Some("not consuming the jobs topic"),
            (true, false) => Some("not able to send to the Graph API"),
            (false, false) => Some("not consuming the jobs topic and not able to send to the Graph API"),
        }
    }
}
