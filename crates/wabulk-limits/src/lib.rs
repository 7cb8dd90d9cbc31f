//! Pure rate limiters for the WhatsApp Cloud API limits (docs/platform.md
//! "Limits"): the throughput of one business number ([`NumberLimiter`], and
//! [`DepartureWindow`] where its requests leave), the budget of each
//! (number, recipient) pair ([`PairBudgets`]) and the rolling-hour call cap of a
//! WABA ([`WabaWindow`]).
//!
//! Nothing here does I/O, spawns, locks or reads a clock: every decision takes
//! the current [`Moment`] as an argument, so the scheduler owns time and tests
//! drive it with a [`FakeClock`]. A refusal is a value, [`NotUntil`], naming the
//! exact instant at which the same request would be allowed if nothing else
//! changes.

mod clock;
mod departure;
mod number;
mod pair;
mod waba;

pub use clock::{Clock, FakeClock, Moment, MonotonicClock, NotUntil};
pub use departure::{DepartureWindow, WindowAllowance};
pub use number::NumberLimiter;
pub use pair::{PairBudgets, PairRule, PairRuleError};
pub use waba::WabaWindow;
