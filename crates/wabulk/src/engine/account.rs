//! Meta's account events, applied to sending (`wabulk_webhooks::account`).
//!
//! Every instance reads the whole account events topic (`whole_topic.rs`)
//! and the ingest stage applies each event's changes ([`Accounts`]): a
//! raised tier, a WABA held or released, a messaging limit recorded. The
//! topic is compacted, so a restart applies the latest state again before
//! the first job is read.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Which WABAs Meta stopped, and why, as far as this instance has read.
#[derive(Debug)]
pub(super) struct Accounts {
    /// Held until an event lifts it (banned, deleted).
    banned: HashSet<u64>,
    /// Restricted from messaging until then.
    restricted: HashMap<u64, DateTime<Utc>>,
    /// Parked jobs of a WABA held with no end come back this often to look
    /// again (`parking.held_recheck_ms`).
    recheck: chrono::TimeDelta,
}

/// What a change means for a WABA's hold.
#[derive(Debug, PartialEq)]
pub(super) enum HoldChange {
    Hold,
    Release,
}

impl Accounts {
    pub(super) fn new(recheck: Duration) -> Accounts {
        Accounts {
            banned: HashSet::new(),
            restricted: HashMap::new(),
            recheck: chrono::TimeDelta::from_std(recheck).unwrap_or(chrono::TimeDelta::MAX),
        }
    }

    /// Records a hold (`until`: a restriction's end) or a release, and says
    /// whether the WABA is to be held or released now.
    pub(super) fn apply(
        &mut self,
        waba: u64,
        hold: Option<Option<DateTime<Utc>>>,
        now: DateTime<Utc>,
    ) -> HoldChange {
        match hold {
            Some(None) => {
                self.banned.insert(waba);
            }
            Some(Some(until)) if until > now => {
                self.restricted.insert(waba, until);
            }
            Some(Some(_)) | None => {
                self.banned.remove(&waba);
                self.restricted.remove(&waba);
            }
        }
        if self.is_held(waba, now) {
            HoldChange::Hold
        } else {
            HoldChange::Release
        }
    }

    fn is_held(&self, waba: u64, now: DateTime<Utc>) -> bool {
        self.banned.contains(&waba) || self.restricted.get(&waba).is_some_and(|until| *until > now)
    }

    /// Restrictions that ended by `now`: those WABAs are released unless
    /// banned.
    pub(super) fn expired(&mut self, now: DateTime<Utc>) -> Vec<u64> {
        let ended: Vec<u64> =
            self.restricted.iter().filter(|(_, until)| **until <= now).map(|(&waba, _)| waba).collect();
        for waba in &ended {
            self.restricted.remove(waba);
        }
        ended.into_iter().filter(|waba| !self.banned.contains(waba)).collect()
    }

    /// When a job of a held WABA comes back to look again: the restriction's
    /// end, or one recheck interval from now if sooner.
    pub(super) fn recheck_at(&self, waba: u64, now: DateTime<Utc>) -> DateTime<Utc> {
        let later = now.checked_add_signed(self.recheck).unwrap_or(DateTime::<Utc>::MAX_UTC);
        match self.restricted.get(&waba) {
            Some(until) if !self.banned.contains(&waba) => (*until).min(later),
            _ => later,
        }
    }
}

/// How a messaging limit reads in the log.
pub(super) fn describe_limit(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| format!("{n} recipients per 24 h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_outlasts_a_restriction_and_a_release_lifts_both() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut accounts = Accounts::new(Duration::from_secs(600));
        let recheck = chrono::TimeDelta::minutes(10);
        let soon = now + chrono::TimeDelta::minutes(5);
        assert_eq!(accounts.apply(7, Some(Some(soon)), now), HoldChange::Hold);
        assert_eq!(accounts.recheck_at(7, now), soon, "back when the restriction ends");
        assert_eq!(accounts.apply(7, Some(None), now), HoldChange::Hold);
        assert_eq!(accounts.recheck_at(7, now), now + recheck, "banned: no end known");
        assert_eq!(accounts.expired(soon), Vec::<u64>::new(), "still banned");
        assert_eq!(accounts.apply(7, None, now), HoldChange::Release);
        assert_eq!(accounts.apply(8, Some(Some(soon)), now), HoldChange::Hold);
        assert_eq!(accounts.expired(now), Vec::<u64>::new());
        assert_eq!(accounts.expired(soon), vec![8]);
        assert_eq!(accounts.apply(9, Some(Some(now)), now), HoldChange::Release, "already over");
    }
}
