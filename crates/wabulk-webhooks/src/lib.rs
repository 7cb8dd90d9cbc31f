//! Meta's status webhooks into Kafka: the delivery lifecycle after `sent`.
//!
//! Meta reports what became of each message (`delivered`, `read`, `failed`
//! with its error) and users' replies through webhook notifications. The
//! receiver checks each one's signature ([`AppSecret`]), reads it
//! ([`notification::parse`]) and writes one record per status to
//! `wabulk.statuses` (joined to the job through `biz_opaque_callback_data`,
//! which the engine sets to the job id) and one per inbound message to
//! `wabulk.inbound`, answering Meta only once Kafka has them all.

pub mod account;
pub mod notification;
mod receiver;
mod signature;
mod tls;

pub use receiver::{serve, Receiver, ReceiverConfig, VerifyToken};
pub use signature::{AppSecret, SignatureError};
pub use tls::{ServerTls, TlsFilesError};
