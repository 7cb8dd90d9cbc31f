//! The webhook receiver as `wabulk run` and `wabulk webhooks` start it: the
//! `[webhooks]` section and its secrets resolved, a producer, a listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use wabulk_kafka::JobWriter;
use wabulk_telemetry::Metrics;
use wabulk_webhooks::{AppSecret, Receiver, ReceiverConfig, VerifyToken};

use crate::config::Config;

/// Binds `[webhooks] listen` and serves the receiver until `shutdown`, over
/// HTTPS when `tls_cert_file` and `tls_key_file` are set. Fails when the
/// section is absent, a secret's variable is not set, or the certificate and
/// key cannot be used.
pub async fn start(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let webhooks = config.webhooks.as_ref().context("the configuration has no [webhooks] section")?;
    // A file wins over its variable; surrounding whitespace is not part of it.
    let secret = |file: &Option<String>, file_key: &str, var: &str, var_key: &str| match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("{file_key}: cannot read {path}"))
            .map(|text| text.trim().to_owned())
            .and_then(|text| {
                anyhow::ensure!(!text.is_empty(), "{file_key}: {path} is empty");
                Ok(text)
            }),
        None => env(var)
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{var_key}: the variable {var} is not set")),
    };
    let app_secret = secret(
        &webhooks.app_secret_file,
        "webhooks.app_secret_file",
        &webhooks.app_secret_env,
        "webhooks.app_secret_env",
    )?;
    let verify_token = secret(
        &webhooks.verify_token_file,
        "webhooks.verify_token_file",
        &webhooks.verify_token_env,
        "webhooks.verify_token_env",
    )?;
    let receiver_config = ReceiverConfig {
        path: webhooks.path.clone(),
        app_secret: AppSecret::new(app_secret),
        verify_token: VerifyToken::new(verify_token),
        statuses_topic: webhooks.statuses_topic.clone(),
        inbound_topic: webhooks.inbound_topic.clone(),
        account_events_topic: config.kafka.account_events_topic.clone(),
        dlq_topic: config.kafka.dlq_topic.clone(),
        max_body_bytes: webhooks.max_body_bytes,
        body_timeout: Duration::from_millis(webhooks.body_timeout_ms),
    };
    // Read again, not only by validation: the files may have changed since.
    let tls = webhooks.server_tls()?;
    let producer = JobWriter::connect(&config.kafka.brokers, &config.kafka.properties)
        .context("cannot start the webhook receiver's Kafka producer")?;
    let listener = tokio::net::TcpListener::bind(&webhooks.listen)
        .await
        .with_context(|| format!("webhooks.listen: cannot bind {}", webhooks.listen))?;
    let address = listener.local_addr().context("webhooks.listen")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%address, path = %webhooks.path, scheme, "receiving Meta's webhooks");
    let receiver = Arc::new(Receiver::new(receiver_config, producer, metrics));
    Ok(tokio::spawn(wabulk_webhooks::serve(listener, tls, receiver, shutdown)))
}
