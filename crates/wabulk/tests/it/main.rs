//! End-to-end tests of the engine: embedded Kafka (librdkafka's mock
//! cluster), the Graph API simulator (cleartext or HTTPS), and the engine either in this process
//! or as a `wabulk run` child process, all on 127.0.0.1. Each test starts its
//! own cluster and simulator, so they run in parallel without sharing state.

mod account;
mod campaign_cli;
mod campaigns;
mod connectivity;
mod crash;
mod demo;
mod dlq;
mod faults;
mod harness;
mod order;
mod outage;
mod pacing;
mod parking;
mod priority;
mod reload;
mod scale;
mod secrets;
mod send;
mod webhooks;
