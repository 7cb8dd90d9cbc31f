//! Campaign control applied (CONTRACT §12): every instance reads the whole
//! control topic (`whole_topic.rs`) and keeps each campaign's latest state
//! here. The ingest stage parks a paused campaign's jobs (or, with parking
//! off, keeps them here until it resumes) and ends a cancelled one's with the
//! result `cancelled`; the send stage looks again just before a request, so
//! that nothing already on its way to the sender goes out after a pause.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use chrono::{DateTime, TimeDelta, Utc};
use wabulk_model::{CampaignState, Control};

use super::Pending;

/// A paused job comes back after at least this long…
const PAUSED_RECHECK_MIN: TimeDelta = TimeDelta::seconds(5);
/// …and at most this long: a resumed campaign's parked jobs go out within it.
const PAUSED_RECHECK_MAX: TimeDelta = TimeDelta::minutes(10);

/// Each controlled campaign's state, shared by the ingest and send stages.
#[derive(Debug, Default)]
pub(super) struct CampaignStates {
    states: RwLock<HashMap<String, CampaignState>>,
    /// Whether any campaign is paused or cancelled: while none is, a job's
    /// campaign costs one atomic load.
    any_stopped: AtomicBool,
}

impl CampaignStates {
    /// A campaign's state; `Active` for one never controlled.
    pub(super) fn state(&self, campaign: &str) -> CampaignState {
        if !self.any_stopped.load(Ordering::Acquire) {
            return CampaignState::Active;
        }
        let states = self.states.read().unwrap_or_else(|e| e.into_inner());
        states.get(campaign).copied().unwrap_or(CampaignState::Active)
    }

    /// The state of a job's campaign (`Active` without one).
    pub(super) fn of(&self, pending: &Pending) -> CampaignState {
        pending.job.campaign.as_deref().map_or(CampaignState::Active, |campaign| self.state(campaign))
    }

    /// Applies a control record; returns the state it replaced when it
    /// changed one. A cancelled campaign stays cancelled.
    pub(super) fn apply(&self, control: &Control) -> Option<CampaignState> {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        let before = states.get(&control.campaign).copied().unwrap_or(CampaignState::Active);
        if before == control.state || before == CampaignState::Cancelled {
            return None;
        }
        states.insert(control.campaign.clone(), control.state);
        let stopped = states.values().any(|state| *state != CampaignState::Active);
        self.any_stopped.store(stopped, Ordering::Release);
        Some(before)
    }
}

/// When a paused job comes back to look again: after as long as it has
/// waited since it was first parked (so a long pause costs few moves), at
/// least [`PAUSED_RECHECK_MIN`] and at most [`PAUSED_RECHECK_MAX`].
pub(super) fn paused_recheck_at(parked_since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    let waited = parked_since.map_or(TimeDelta::zero(), |since| now - since);
    now + waited.clamp(PAUSED_RECHECK_MIN, PAUSED_RECHECK_MAX)
}

/// With parking off: the jobs of paused campaigns, in the order they were
/// held, until their campaign resumes or is cancelled.
#[derive(Debug, Default)]
pub(super) struct HeldJobs(HashMap<String, Vec<Pending>>);

impl HeldJobs {
    pub(super) fn hold(&mut self, pending: Pending) {
        let campaign = pending.job.campaign.clone().unwrap_or_default();
        self.0.entry(campaign).or_default().push(pending);
    }

    pub(super) fn release(&mut self, campaign: &str) -> Vec<Pending> {
        self.0.remove(campaign).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(campaign: &str, state: CampaignState) -> Control {
        Control { campaign: campaign.into(), state, at: Utc::now(), by: None }
    }

    #[test]
    fn a_campaign_pauses_resumes_and_stays_cancelled() {
        let states = CampaignStates::default();
        assert_eq!(states.state("a"), CampaignState::Active);
        assert_eq!(states.apply(&control("a", CampaignState::Paused)), Some(CampaignState::Active));
        assert_eq!(states.apply(&control("a", CampaignState::Paused)), None, "no change");
        assert_eq!(states.state("a"), CampaignState::Paused);
        assert_eq!(states.state("b"), CampaignState::Active);
        assert_eq!(states.apply(&control("a", CampaignState::Active)), Some(CampaignState::Paused));
        assert!(!states.any_stopped.load(Ordering::Relaxed), "back to the fast path");
        assert_eq!(states.apply(&control("a", CampaignState::Cancelled)), Some(CampaignState::Active));
        assert_eq!(states.apply(&control("a", CampaignState::Active)), None, "cancelled for good");
        assert_eq!(states.state("a"), CampaignState::Cancelled);
    }

    #[test]
    fn a_paused_job_looks_again_after_as_long_as_it_waited_within_bounds() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(paused_recheck_at(None, now), now + PAUSED_RECHECK_MIN);
        assert_eq!(paused_recheck_at(Some(now - TimeDelta::seconds(40)), now), now + TimeDelta::seconds(40));
        assert_eq!(paused_recheck_at(Some(now - TimeDelta::hours(3)), now), now + PAUSED_RECHECK_MAX);
    }
}
