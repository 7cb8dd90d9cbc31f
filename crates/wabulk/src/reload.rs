//! Steering a running engine: SIGHUP reloads the configuration file, and
//! token files are read again every few seconds.
//!
//! A reload applies what may change live (each number's tier, each WABA's
//! hourly cap, the tokens) and refuses anything else, naming the key
//! (`Config::refuse_live_change`); a refused or invalid file leaves the
//! running configuration as it was. Tokens are replaced in place
//! (`Tokens::replace`): the next request sends the new one, and a WABA
//! halted for a refused token is checked again at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use wabulk_config::setup::{TokenSet, Tokens};
use wabulk_config::Config;
use wabulk_model::NumericId;
use wabulk_telemetry::Metrics;

use crate::engine::LiveChange;

/// How often token files are read again.
const TOKEN_FILES_EVERY: Duration = Duration::from_secs(2);

/// The running configuration and where its changes go.
pub struct Reloader {
    path: PathBuf,
    running: Config,
    tokens: Arc<Tokens>,
    changes: mpsc::UnboundedSender<LiveChange>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        tokens: Arc<Tokens>,
        changes: mpsc::UnboundedSender<LiveChange>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader { path, running, tokens, changes, metrics }
    }

    /// [`Reloader::reload`], logged: what changed, or why nothing did.
    pub fn reload_and_log(&mut self, asked_by: &str) -> anyhow::Result<usize> {
        let result = self.reload();
        match &result {
            Ok(changes) => tracing::info!(
                path = %self.path.display(),
                changes,
                asked_by,
                "configuration reloaded (tiers and caps changed: {changes}; tokens read again)"
            ),
            Err(error) => tracing::error!(
                path = %self.path.display(),
                error = format!("{error:#}"),
                asked_by,
                "configuration reload refused; the running configuration is unchanged"
            ),
        }
        result
    }

    /// Reads the file again and applies it, or says why not; the running
    /// configuration is unchanged on any error.
    pub fn reload(&mut self) -> anyhow::Result<usize> {
        let result = self.try_reload();
        let outcome = if result.is_ok() { "applied" } else { "refused" };
        self.metrics.config_reloads.with_label_values(&[outcome]).inc();
        result
    }

    fn try_reload(&mut self) -> anyhow::Result<usize> {
        let new = Config::load(&self.path, std::env::vars())?;
        self.running.refuse_live_change(&new)?;
        let tokens = TokenSet::read(&new, &|var| std::env::var(var).ok())?;
        let changes = live_changes(&self.running, &new);
        for change in &changes {
            // Fails only once the engine has stopped.
            let _ = self.changes.send(change.clone());
        }
        self.running = new;
        self.replace_tokens(tokens);
        Ok(changes.len())
    }

    /// Reads the tokens again (files change; variables do not) and replaces
    /// those that changed. An unreadable file keeps the token in use.
    pub fn refresh_tokens(&mut self) {
        match TokenSet::read(&self.running, &|var| std::env::var(var).ok()) {
            Ok(tokens) => self.replace_tokens(tokens),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "a token could not be read again; the one in use stays"
            ),
        }
    }

    fn replace_tokens(&self, tokens: TokenSet) {
        let (wabas, default) = self.tokens.replace(tokens);
        for waba in &wabas {
            tracing::info!(waba_id = waba, "the WABA's access token was replaced");
        }
        if default {
            tracing::info!("the default access token was replaced");
        }
        self.metrics.token_replacements.inc_by(wabas.len() as u64 + u64::from(default));
    }
}

/// The reloader, whoever held it last: a panic under the lock leaves the
/// running configuration as it was (it is replaced only once applied).
pub fn lock(reloader: &Mutex<Reloader>) -> MutexGuard<'_, Reloader> {
    reloader.lock().unwrap_or_else(|e| e.into_inner())
}

/// What differs between two configurations that may change live: each
/// number's tier and each WABA's cap.
fn live_changes(old: &Config, new: &Config) -> Vec<LiveChange> {
    let mut changes = Vec::new();
    for (before, after) in old.phones.iter().zip(&new.phones) {
        let mps = after.mps.unwrap_or(new.limits.default_mps);
        if before.mps.unwrap_or(old.limits.default_mps) != mps {
            let phone = NumericId::parse(&after.id).expect("validated").get();
            changes.push(LiveChange::Tier { phone, mps });
        }
    }
    let mut wabas: Vec<&str> = new.phones.iter().map(|p| p.waba_id.as_str()).collect();
    wabas.sort_unstable();
    wabas.dedup();
    for waba_id in wabas {
        let hourly_cap = new.waba_cap(waba_id);
        if old.waba_cap(waba_id) != hourly_cap {
            let waba = NumericId::parse(waba_id).expect("validated").get();
            changes.push(LiveChange::Cap { waba, hourly_cap });
        }
    }
    changes
}

/// Reloads on every SIGHUP and reads token files every few seconds, until
/// `stop` resolves. The reloader is shared with the admin endpoint.
pub async fn watch(reloader: Arc<Mutex<Reloader>>, stop: impl std::future::Future<Output = ()>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the configuration cannot be reloaded");
            None
        }
    };
    let mut token_files = tokio::time::interval(TOKEN_FILES_EVERY);
    token_files.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            Some(()) = async { hangups.as_mut()?.recv().await } => {
                let _ = lock(&reloader).reload_and_log("SIGHUP");
            }
            _ = token_files.tick() => lock(&reloader).refresh_tokens(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, "test", std::iter::empty()).expect("a valid configuration")
    }

    const BASE: &str = r#"
        [limits]
        default_mps = 80
        [[phones]]
        id = "1001"
        waba_id = "77"
        [[phones]]
        id = "1002"
        waba_id = "77"
        mps = 20
        [[wabas]]
        id = "77"
        hourly_call_cap = 1000
    "#;

    #[test]
    fn tiers_and_caps_change_live_and_the_rest_is_refused_by_name() {
        let old = config(BASE);
        let raised = config(
            &BASE
                .replace("mps = 20", "mps = 1000")
                .replace("hourly_call_cap = 1000", "hourly_call_cap = 5000"),
        );
        old.refuse_live_change(&raised).expect("tiers and caps change live");
        assert_eq!(
            live_changes(&old, &raised),
            [LiveChange::Tier { phone: 1002, mps: 1000 }, LiveChange::Cap { waba: 77, hourly_cap: 5000 }]
        );
        let cases = [
            (BASE.replace("default_mps = 80", "default_mps = 90"), "limits.default_mps"),
            (format!("[kafka]\njobs_topic = \"other\"\n{BASE}"), "kafka.jobs_topic"),
            (BASE.replace("id = \"1002\"", "id = \"1003\""), "phones"),
            (format!("{BASE}\n[http]\nlisten = \"127.0.0.1:1\"\n"), "http.listen"),
        ];
        for (text, key) in cases {
            let error = old.refuse_live_change(&config(&text)).expect_err(key).to_string();
            assert!(error.starts_with(key), "{key}: {error}");
        }
    }
}
