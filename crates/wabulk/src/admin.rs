//! The admin endpoints on `http.listen` (CONTRACT §8), for `wabulk run`:
//! `POST /admin/reload` (as SIGHUP) and
//! `POST /admin/campaigns/{campaign}/{pause|resume|cancel}` (as `wabulk
//! campaign`), each with `Authorization: Bearer <admin token>`. Without an
//! admin token configured they answer 404.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wabulk::config::Config;
use wabulk::reload::{self, Reloader};
use wabulk_model::CampaignState;
use wabulk_telemetry::{AdminHandler, AdminRequest, Method, StatusCode};

use crate::cli::campaign::write_change;

/// The admin token, kept as its digest: comparing digests takes the same
/// time whatever the presented token shares with it, and the token itself
/// is never kept in memory longer than reading it.
struct AdminToken([u8; 32]);

impl AdminToken {
    fn matches(&self, authorization: Option<&[u8]>) -> bool {
        let presented = authorization.and_then(|value| value.strip_prefix(b"Bearer "));
        presented.is_some_and(|token| <[u8; 32]>::from(Sha256::digest(token.trim_ascii())) == self.0)
    }
}

/// The admin token from `http.admin_token_file`, else `http.admin_token_env`;
/// `None` when neither gives one (the endpoints are then off).
fn read_token(config: &Config) -> anyhow::Result<Option<AdminToken>> {
    let text = match &config.http.admin_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("http.admin_token_file: cannot read {path}"))?,
        ),
        None => std::env::var(&config.http.admin_token_env).ok(),
    };
    Ok(text
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .map(|t| AdminToken(Sha256::digest(t.as_bytes()).into())))
}

/// The handler, or `None` when no admin token is configured.
pub(crate) fn handler(
    config: Config,
    reloader: Arc<Mutex<Reloader>>,
) -> anyhow::Result<Option<AdminHandler>> {
    let Some(token) = read_token(&config)? else {
        tracing::info!(
            variable = %config.http.admin_token_env,
            "admin endpoints off: no admin token is set"
        );
        return Ok(None);
    };
    let shared = Arc::new((token, config, reloader));
    Ok(Some(Arc::new(move |request: AdminRequest| {
        let shared = Arc::clone(&shared);
        Box::pin(async move {
            let (token, config, reloader) = &*shared;
            if !token.matches(request.authorization.as_ref().map(|v| v.as_bytes())) {
                return (
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: Authorization: Bearer <admin token>".to_owned(),
                );
            }
            answer(request, config, reloader).await
        })
    })))
}

async fn answer(request: AdminRequest, config: &Config, reloader: &Mutex<Reloader>) -> (StatusCode, String) {
    let segments: Vec<&str> = request.path.trim_start_matches("/admin/").split('/').collect();
    let route = match segments.as_slice() {
        ["reload"] => None,
        ["campaigns", campaign, action] => match *action {
            "pause" => Some((*campaign, CampaignState::Paused)),
            "resume" => Some((*campaign, CampaignState::Active)),
            "cancel" => Some((*campaign, CampaignState::Cancelled)),
            _ => return (StatusCode::NOT_FOUND, format!("not found: no campaign action {action:?}")),
        },
        _ => return (StatusCode::NOT_FOUND, "not found".to_owned()),
    };
    if request.method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use POST".to_owned());
    }
    match route {
        None => match reload::lock(reloader).reload_and_log("the admin endpoint") {
            Ok(changes) => {
                (StatusCode::OK, format!("reloaded: {changes} tiers and caps changed, tokens read again"))
            }
            Err(error) => (StatusCode::CONFLICT, format!("refused, nothing changed: {error:#}")),
        },
        Some((campaign, state)) => {
            let campaign = percent_encoding::percent_decode_str(campaign).decode_utf8_lossy().into_owned();
            if !(1..=128).contains(&campaign.chars().count()) {
                return (StatusCode::BAD_REQUEST, "a campaign has 1 to 128 characters".to_owned());
            }
            match write_change(config, campaign, state, Some("admin endpoint".to_owned())).await {
                Ok(Ok(written)) => (StatusCode::OK, written),
                Ok(Err(refusal)) => (StatusCode::CONFLICT, format!("refused: {refusal}")),
                Err(error) => (StatusCode::BAD_GATEWAY, format!("not written: {error:#}")),
            }
        }
    }
}
