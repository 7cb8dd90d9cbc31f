//! Campaign control (CONTRACT §12): the value on the compacted control
//! topic, keyed by campaign, whose latest record is the campaign's state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a campaign may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    /// Its jobs are sent (the state of a campaign never controlled).
    Active,
    /// Its jobs wait (parked) and go out once it is active again.
    Paused,
    /// Its unsent jobs end with the result `cancelled`; for good.
    Cancelled,
}

impl CampaignState {
    pub fn label(self) -> &'static str {
        match self {
            CampaignState::Active => "active",
            CampaignState::Paused => "paused",
            CampaignState::Cancelled => "cancelled",
        }
    }
}

/// One state change, as written by `wabulk campaign ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub campaign: String,
    pub state: CampaignState,
    pub at: DateTime<Utc>,
    /// Who asked (free text, for people reading the topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Control {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a control record always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_as_the_contract_shows() {
        let text =
            r#"{ "campaign": "nov-shipping", "state": "paused", "at": "2026-11-21T10:05:00Z", "by": "ops" }"#;
        let control: Control = serde_json::from_str(text).unwrap();
        assert_eq!(control.state, CampaignState::Paused);
        assert_eq!(control.by.as_deref(), Some("ops"));
        let again: Control = serde_json::from_slice(&control.to_json()).unwrap();
        assert_eq!(again, control);
        assert!(serde_json::from_str::<Control>(
            r#"{ "campaign": "c", "state": "stopped", "at": "2026-11-21T10:05:00Z" }"#
        )
        .is_err());
    }
}
