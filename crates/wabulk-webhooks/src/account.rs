//! Meta's account events, and what each changes in sending.
//!
//! The receiver writes every change of a notification that is not about a
//! message ([`crate::notification::Event`]) whole to the account events
//! topic, compacted, keyed so that the latest event of each kind survives
//! per account ([`AccountEvent::key`]); every engine instance reads the
//! topic from its start and applies [`AccountEvent::changes`]. The receiver
//! stays stateless, and the events reach every instance, whichever owns the
//! number, and again after a restart.
//!
//! What is acted on (anything else is logged and kept on the topic):
//! - `phone_number_quality_update` with `event: THROUGHPUT_UPGRADE`: the
//!   number (named by its displayed number only) may send at the upgraded tier;
//! - `account_update` with `DISABLED_UPDATE` (`ban_info.waba_ban_state`
//!   `DISABLE` or `SCHEDULE_FOR_DISABLE` hold the WABA, `REINSTATE` lifts it),
//!   `ACCOUNT_DELETED` (held for good) and `ACCOUNT_RESTRICTION` (a messaging
//!   restriction holds it until its `expiration`);
//! - `business_capability_update` and the quality update's
//!   `max_daily_conversations_per_business`: the portfolio's messaging limit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::notification::Event;

/// One account event as it travels on the account events topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// The change's `field`, e.g. `account_update`.
    pub field: String,
    /// The WABA it concerns (the notification entry's id).
    pub waba_id: Option<String>,
    /// The change's `value`, as Meta sent it.
    pub value: Value,
    pub received_at: String,
}

/// What an account event changes in sending.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountChange {
    /// Meta raised the number's throughput; it is named by its displayed
    /// number (digits only).
    ThroughputUpgrade { display_phone_number: String },
    /// The WABA may send nothing (`until`: when a restriction ends; `None`:
    /// until another event lifts it). `why` is Meta's event, for the log.
    Hold { waba_id: String, until: Option<DateTime<Utc>>, why: String },
    /// A ban lifted (`REINSTATE`) or a restriction list that is empty now.
    Release { waba_id: String },
    /// The business portfolio's messaging limit: unique recipients of
    /// business-initiated messages per moving 24 h (`None`: unlimited).
    MessagingLimit { waba_id: String, limit: Option<u64> },
}

impl AccountEvent {
    pub fn new(event: &Event, received_at: DateTime<Utc>) -> AccountEvent {
        AccountEvent {
            field: event.field.clone(),
            waba_id: event.waba_id.clone(),
            value: event.value.clone(),
            received_at: received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// Its key on the compacted topic: the field, Meta's event kind, the
    /// WABA, and for a number's quality update the number. A later event of
    /// the same kind replaces the earlier one (a `REINSTATE` its `DISABLE`).
    pub fn key(&self) -> String {
        let waba = self.waba_id.as_deref().unwrap_or("-");
        let kind = str_at(&self.value, "event").unwrap_or("-");
        match self.field.as_str() {
            "phone_number_quality_update" => {
                let number = str_at(&self.value, "display_phone_number").unwrap_or("-");
                format!("{}:{waba}:{number}", self.field)
            }
            _ => format!("{}:{kind}:{waba}", self.field),
        }
    }

    /// What it changes; nothing for kinds that change no sending.
    pub fn changes(&self) -> Vec<AccountChange> {
        let value = &self.value;
        let waba_id = self.waba_id.clone();
        let mut changes = Vec::new();
        match (self.field.as_str(), str_at(value, "event")) {
            ("phone_number_quality_update", event) => {
                if event == Some("THROUGHPUT_UPGRADE") {
                    if let Some(display) = str_at(value, "display_phone_number") {
                        let digits: String = display.chars().filter(char::is_ascii_digit).collect();
                        changes.push(AccountChange::ThroughputUpgrade { display_phone_number: digits });
                    }
                }
                if let (Some(waba_id), Some(limit)) =
                    (waba_id, value.get("max_daily_conversations_per_business"))
                {
                    if let Some(limit) = messaging_limit(limit) {
                        changes.push(AccountChange::MessagingLimit { waba_id, limit });
                    }
                }
            }
            ("account_update", Some(event)) => {
                let Some(waba_id) = waba_id else { return changes };
                match event {
                    "DISABLED_UPDATE" => {
                        let states = strings(value.pointer("/ban_info/waba_ban_state"));
                        if states.iter().any(|s| s == "REINSTATE") {
                            changes.push(AccountChange::Release { waba_id });
                        } else if states.iter().any(|s| s == "DISABLE" || s == "SCHEDULE_FOR_DISABLE") {
                            let why = format!("DISABLED_UPDATE {}", states.join(","));
                            changes.push(AccountChange::Hold { waba_id, until: None, why });
                        }
                    }
                    "ACCOUNT_DELETED" => {
                        changes.push(AccountChange::Hold { waba_id, until: None, why: event.to_owned() });
                    }
                    "ACCOUNT_RESTRICTION" => changes.push(restriction(value, waba_id)),
                    _ => {}
                }
            }
            ("business_capability_update", _) => {
                let limit = value
                    .get("max_daily_conversations_per_business")
                    .or_else(|| value.get("max_daily_conversation_per_phone"))
                    .and_then(messaging_limit);
                if let (Some(waba_id), Some(limit)) = (waba_id, limit) {
                    changes.push(AccountChange::MessagingLimit { waba_id, limit });
                }
            }
            _ => {}
        }
        changes
    }
}

/// `ACCOUNT_RESTRICTION`: a restriction on messaging holds the WABA until
/// the latest such one expires; only other restrictions (adding numbers)
/// or none lift it. Meta names the list `restriction_info` (an array); an
/// object or the name `restrictions` is read too.
fn restriction(value: &Value, waba_id: String) -> AccountChange {
    let list = value.get("restriction_info").or_else(|| value.get("restrictions"));
    let items: Vec<&Value> = match list {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(item @ Value::Object(_)) => vec![item],
        _ => Vec::new(),
    };
    let messaging: Vec<&Value> = items
        .into_iter()
        .filter(|item| str_at(item, "restriction_type").is_some_and(|kind| kind.contains("MESSAGING")))
        .collect();
    if messaging.is_empty() {
        return AccountChange::Release { waba_id };
    }
    // A restriction whose end cannot be read holds until lifted.
    let ends: Option<Vec<DateTime<Utc>>> =
        messaging.iter().map(|item| item.get("expiration").and_then(instant)).collect();
    let until = ends.and_then(|ends| ends.into_iter().max());
    let kinds: Vec<&str> = messaging.iter().filter_map(|item| str_at(item, "restriction_type")).collect();
    AccountChange::Hold { waba_id, until, why: format!("ACCOUNT_RESTRICTION {}", kinds.join(",")) }
}

/// Meta's messaging limit, as a tier name (`TIER_2K`) or a number;
/// `Some(None)` for `TIER_UNLIMITED`, `None` when it cannot be read.
fn messaging_limit(value: &Value) -> Option<Option<u64>> {
    if let Some(n) = value.as_u64() {
        return Some(Some(n));
    }
    let tier = value.as_str()?.strip_prefix("TIER_")?;
    if tier == "UNLIMITED" {
        return Some(None);
    }
    let (digits, scale) = match tier.strip_suffix('K') {
        Some(thousands) => (thousands, 1_000),
        None => (tier, 1),
    };
    digits.parse::<u64>().ok().map(|n| Some(n * scale))
}

/// Unix seconds (a number or a string of digits) or RFC 3339.
fn instant(value: &Value) -> Option<DateTime<Utc>> {
    let seconds = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    match seconds {
        Some(seconds) => DateTime::from_timestamp(seconds, 0),
        None => DateTime::parse_from_rfc3339(value.as_str()?).ok().map(|t| t.with_timezone(&Utc)),
    }
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key)?.as_str()
}

/// A string or an array of strings (Meta has sent `waba_ban_state` as both).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(field: &str, waba: &str, value: Value) -> AccountEvent {
        AccountEvent {
            field: field.into(),
            waba_id: Some(waba.into()),
            value,
            received_at: "2026-12-03T10:00:00.000Z".into(),
        }
    }

    #[test]
    fn a_throughput_upgrade_names_the_displayed_number() {
        let upgrade = event(
            "phone_number_quality_update",
            "102290129340398",
            json!({ "display_phone_number": "+1 555-078-3881", "event": "THROUGHPUT_UPGRADE",
                    "current_limit": "TIER_UNLIMITED", "max_daily_conversations_per_business": "TIER_10K" }),
        );
        assert_eq!(
            upgrade.changes(),
            vec![
                AccountChange::ThroughputUpgrade { display_phone_number: "15550783881".into() },
                AccountChange::MessagingLimit { waba_id: "102290129340398".into(), limit: Some(10_000) },
            ]
        );
        assert_eq!(upgrade.key(), "phone_number_quality_update:102290129340398:+1 555-078-3881");
        let onboarding = event(
            "phone_number_quality_update",
            "1",
            json!({ "display_phone_number": "15550783881", "event": "ONBOARDING" }),
        );
        assert_eq!(onboarding.changes(), vec![]);
    }

    #[test]
    fn a_ban_holds_the_waba_and_a_reinstatement_lifts_it_under_the_same_key() {
        let ban = event(
            "account_update",
            "7",
            json!({ "event": "DISABLED_UPDATE", "ban_info": { "waba_ban_state": ["DISABLE"], "waba_ban_date": "2026-12-03" } }),
        );
        assert!(matches!(&ban.changes()[..], [AccountChange::Hold { until: None, .. }]));
        let reinstated = event(
            "account_update",
            "7",
            json!({ "event": "DISABLED_UPDATE", "ban_info": { "waba_ban_state": "REINSTATE" } }),
        );
        assert_eq!(reinstated.changes(), vec![AccountChange::Release { waba_id: "7".into() }]);
        assert_eq!(ban.key(), reinstated.key(), "compaction keeps only the latest");
        let violation = event("account_update", "7", json!({ "event": "ACCOUNT_VIOLATION" }));
        assert_eq!(violation.changes(), vec![]);
        assert_ne!(violation.key(), ban.key(), "a violation never hides a ban");
    }

    #[test]
    fn a_messaging_restriction_holds_until_it_expires() {
        let restricted = event(
            "account_update",
            "7",
            json!({ "event": "ACCOUNT_RESTRICTION", "restriction_info": [
                { "restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1_800_000_000 },
                { "restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": 1_900_000_000 } ] }),
        );
        let until = DateTime::from_timestamp(1_800_000_000, 0);
        assert!(matches!(&restricted.changes()[..], [AccountChange::Hold { until: u, .. }] if *u == until));
        let other_only = event(
            "account_update",
            "7",
            json!({ "event": "ACCOUNT_RESTRICTION", "restrictions": {
                "restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": "2026-12-12T07:09:27.000Z" } }),
        );
        assert_eq!(other_only.changes(), vec![AccountChange::Release { waba_id: "7".into() }]);
    }

    #[test]
    fn messaging_limits_read_as_tiers_or_numbers() {
        let tiers = [
            ("TIER_250", Some(Some(250))),
            ("TIER_2K", Some(Some(2_000))),
            ("TIER_100K", Some(Some(100_000))),
        ];
        for (tier, limit) in tiers {
            assert_eq!(messaging_limit(&json!(tier)), limit);
        }
        assert_eq!(messaging_limit(&json!("TIER_UNLIMITED")), Some(None));
        assert_eq!(messaging_limit(&json!(1000)), Some(Some(1000)));
        assert_eq!(messaging_limit(&json!("TIER_NOT_SET")), None);
        let capability =
            event("business_capability_update", "7", json!({ "max_daily_conversation_per_phone": 250 }));
        assert_eq!(
            capability.changes(),
            vec![AccountChange::MessagingLimit { waba_id: "7".into(), limit: Some(250) }]
        );
    }
}
