//! The ingest stage: Kafka record → parse (bad input → dead letter) → route
//! (not acceptable → `rejected`) → park (a `not_before` far ahead) or
//! scheduler.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wabulk_kafka::{Ingest, Lease, Record};
use wabulk_limits::{Clock, Moment};
use wabulk_model::{ApiError, ErrorCode, Exit, FailReason, Job, Priority, RejectReason};
use wabulk_scheduler::{Command, Envelope, Scheduler, TokioClock, WabaRegistry};
use wabulk_telemetry::Metrics;

use wabulk_model::{CampaignState, Control};
use wabulk_webhooks::account::{AccountChange, AccountEvent};

use super::account::{describe_limit, Accounts, HoldChange};
use super::backlog::{Arrival, Backlogs, Decision, BACKLOG, WABA_CAP};
use super::campaigns::{paused_recheck_at, CampaignStates, HeldJobs};
use super::settle::{parked_since, Settle};
use super::shutdown::Shutdown;
use super::{LiveChange, Pending};
use crate::setup::EngineSetup;

pub(super) struct IngestStage {
    pub(super) setup: Arc<EngineSetup>,
    /// Which WABAs are halted: their new jobs are parked at once.
    pub(super) registry: Arc<WabaRegistry>,
    pub(super) clock: TokioClock,
    pub(super) ingest: Arc<Ingest>,
    pub(super) scheduler: Scheduler<Pending>,
    pub(super) settle: Settle,
    pub(super) metrics: Arc<Metrics>,
    /// What each number holds in memory, and which of its pairs have a job
    /// parked behind its backlog.
    pub(super) backlogs: Backlogs,
    /// Where the scheduler gives back the queued jobs of a WABA that may
    /// make no call for longer than `park_after` or that Meta stopped, to be
    /// parked.
    pub(super) capped_tx: mpsc::UnboundedSender<Vec<Pending>>,
    /// Which WABAs Meta stopped (account events).
    pub(super) accounts: Accounts,
    /// Partitions a mis-keyed job was logged for: once each.
    pub(super) mis_keyed_logged: std::collections::HashSet<i32>,
    /// Each controlled campaign's state (shared with the send stage).
    pub(super) campaigns: Arc<CampaignStates>,
    /// With parking off: paused campaigns' jobs.
    pub(super) held_jobs: HeldJobs,
}

/// What the ingest stage is told besides its records.
pub(super) struct Inputs {
    /// Jobs the scheduler gave back to be parked (a closed WABA, a stopped
    /// campaign).
    pub(super) capped: mpsc::UnboundedReceiver<Vec<Pending>>,
    pub(super) account_events: mpsc::UnboundedReceiver<AccountEvent>,
    pub(super) controls: mpsc::UnboundedReceiver<Control>,
    pub(super) live_changes: mpsc::UnboundedReceiver<LiveChange>,
}

/// The parking reason of a job whose WABA Meta stopped.
const ACCOUNT: &str = "account";

/// The parking reason of a job whose campaign is paused.
const PAUSED: &str = "paused";

/// How often the WABAs with jobs in memory are looked at for a closed hour.
const CAP_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl IngestStage {
    /// Reads until the stop begins or the consumer ends (which begins the
    /// stop); returns the consumer's error, if that was it, and the writes
    /// still under way, which the caller waits for within the deadline.
    pub(super) async fn run(
        mut self,
        shutdown: Shutdown,
        Inputs { mut capped, mut account_events, mut controls, mut live_changes }: Inputs,
    ) -> (Option<wabulk_kafka::KafkaError>, JoinSet<()>) {
        let mut writes = JoinSet::new();
        let mut cap_check = tokio::time::interval(CAP_CHECK_EVERY);
        cap_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failure = loop {
            tokio::select! {
                biased;
                () = shutdown.begun() => break None,
                // Reap finished writes so the set stays small.
                Some(_) = writes.join_next(), if !writes.is_empty() => {}
                Some(jobs) = capped.recv() => self.park_capped(&mut writes, jobs),
                Some(event) = account_events.recv() => {
                    for change in event.changes() {
                        self.on_account_change(change);
                    }
                }
                Some(control) = controls.recv() => self.on_control(&mut writes, &control),
                Some(change) = live_changes.recv() => self.on_live_change(change),
                _ = cap_check.tick() => {
                    self.release_expired_restrictions();
                    self.take_capped_jobs();
                }
                record = self.ingest.next() => match record {
                    Ok((record, lease)) => self.on_record(&mut writes, record, lease),
                    Err(error) => {
                        tracing::error!(%error, "the Kafka consumer stopped; stopping the engine");
                        shutdown.begin();
                        break Some(error);
                    }
                },
            }
        };
        (failure, writes)
    }

    fn on_record(&mut self, writes: &mut JoinSet<()>, record: Record, lease: Lease) {
        self.metrics.jobs_consumed.inc();
        let received_at = Utc::now();
        let job = match Job::parse(&record.payload, &self.setup.parse) {
            Ok(job) => job,
            Err(err) => {
                self.metrics.dlq.with_label_values(&[err.reason()]).inc();
                tracing::debug!(partition = record.partition, offset = record.offset, error = %err, "dead letter");
                self.settle.dead_letter(writes, record, lease, err.to_string());
                return;
            }
        };
        if !keyed_by_number(record.key.as_deref(), &job) {
            self.mis_keyed(&record, &job);
        }
        let routed = match route(&self.setup, &job) {
            Ok(_) if job.not_before.is_some_and(|at| at - received_at > max_wait(&self.setup)) => {
                Err(RejectReason::NotBeforeTooFar)
            }
            routed => routed,
        };
        let (waba, mps) = match routed {
            Ok(routed) => routed,
            Err(reason) => {
                let pending = Pending::new(job, lease, 0, received_at, None);
                self.settle.exit(writes, pending, Exit::Rejected(reason), 0);
                return;
            }
        };
        let parked_since = record.returned.as_ref().and_then(|returned| parked_since(returned.since_ms));
        let (halted, held) = (self.registry.is_halted(waba), self.registry.is_held(waba));
        if (halted || held) && waited_too_long(&self.setup, parked_since, received_at) {
            let pending = Pending::new(job, lease, waba, received_at, parked_since);
            let exit = if halted { halted_too_long(&self.setup) } else { held_too_long(&self.setup) };
            self.settle.exit(writes, pending, exit, 0);
            return;
        }
        let stopped = job.campaign.as_deref().map(|campaign| self.campaigns.state(campaign));
        let expired = job.expires_at.is_some_and(|at| at <= received_at);
        match stopped {
            Some(CampaignState::Cancelled) => {
                let pending = Pending::new(job, lease, waba, received_at, parked_since);
                self.settle.exit(writes, pending, Exit::Cancelled, 0);
                return;
            }
            // An expired job goes on, to end `expired`.
            Some(CampaignState::Paused) if !expired => {
                if self.settle.can_park() {
                    let due = paused_recheck_at(parked_since, received_at);
                    let due = job.expires_at.map_or(due, |expires| expires.min(due));
                    self.settle.park(writes, record, lease, due, PAUSED);
                } else {
                    self.held_jobs.hold(Pending::new(job, lease, waba, received_at, parked_since));
                }
                return;
            }
            _ => {}
        }
        let bytes = lease.bytes();
        if let Some((due, reason)) = self.parking_of(&job, (waba, mps), &record, bytes, received_at) {
            self.settle.park(writes, record, lease, due, reason);
            return;
        }
        let hold = Some(self.backlogs.hold((job.phone_number_id.get(), waba), bytes));
        let pending = Pending { _hold: hold, ..Pending::new(job, lease, waba, received_at, parked_since) };
        self.enqueue(pending, mps);
    }

    /// A job whose record key is not its number: counted, and logged once
    /// per partition (the producer's mistake is usually systematic).
    fn mis_keyed(&mut self, record: &Record, job: &Job) {
        self.metrics.mis_keyed_jobs.inc();
        if self.mis_keyed_logged.insert(record.partition) {
            let key = record.key.as_deref().map(String::from_utf8_lossy);
            tracing::warn!(
                partition = record.partition,
                offset = record.offset,
                key = key.as_deref().unwrap_or("(none)"),
                phone_number_id = job.phone_number_id.get(),
                "a job's record key is not its phone_number_id: its number may be read by two instances, \
                 which breaks its limits; key jobs by phone_number_id (logged once per partition)"
            );
        }
    }

    /// Hands a job to the scheduler, where it waits for its limits.
    fn enqueue(&self, pending: Pending, mps: u32) {
        let now = self.clock.now();
        let envelope = Envelope {
            phone: pending.job.phone_number_id.get(),
            recipient: pending.job.to.get(),
            waba: pending.waba,
            mps,
            not_before: pending.job.not_before.map(|at| moment_of(now, at)),
            expires_at: pending.job.expires_at.map(|at| moment_of(now, at)),
            priority: pending.job.priority,
            job: pending,
        };
        // Fails only while shutting down; the record is then read again.
        let _ = self.scheduler.send(Command::Enqueue(envelope));
    }

    /// Whether the job waits in Kafka rather than in memory, until when and
    /// why: a `not_before` further than `park_after` away (until then), a
    /// halted WABA (until the next check of its token), or a number over its
    /// share of memory (`backlog`: until its jobs in memory have gone; or
    /// behind a job of its pair parked for that). Never later than its
    /// `expires_at`, so that it comes back to expire on time; a job already
    /// expired is never parked: the scheduler expires it at once.
    fn parking_of(
        &mut self,
        job: &Job,
        (waba, mps): (u64, u32),
        record: &Record,
        bytes: usize,
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, &'static str)> {
        let parking = self.setup.parking.as_ref().filter(|_| self.settle.can_park())?;
        if job.expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        let until = |due: DateTime<Utc>| job.expires_at.map_or(due, |expires| expires.min(due));
        if let Some(not_before) = job.not_before {
            let park_after = chrono::Duration::from_std(parking.park_after).unwrap_or(chrono::Duration::MAX);
            if not_before - now > park_after {
                return Some((until(not_before), "not_before"));
            }
        }
        if self.registry.is_halted(waba) {
            return Some((halted_until(&self.setup, job, now), "halted"));
        }
        if self.registry.is_held(waba) {
            return Some((until(self.accounts.recheck_at(waba, now)), ACCOUNT));
        }
        let arrival = Arrival {
            returned_due_ms: record
                .returned
                .as_ref()
                .filter(|returned| [BACKLOG, WABA_CAP].contains(&returned.reason.as_str()))
                .and_then(|returned| i64::try_from(returned.due_ms).ok()),
            urgent: job.priority == Priority::High,
            ..Arrival::new((job.phone_number_id.get(), waba), job.to.get(), mps, bytes, now)
        };
        if let Some((opens, cap)) = self.closed_longer_than(waba, parking.park_after, now) {
            return Some((until(self.backlogs.park_for_waba(&arrival, opens, cap)), WABA_CAP));
        }
        match self.backlogs.decide(&arrival) {
            Decision::Admit => None,
            Decision::Park(due) => Some((until(due), BACKLOG)),
        }
    }

    /// When `waba` may call again (wall-clock time, `now` being the
    /// present), and its hourly cap, if it may make no call for longer than
    /// `longer_than`: its rolling hour is at the cap, or an 80007 pause runs.
    fn closed_longer_than(
        &self,
        waba: u64,
        longer_than: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, u64)> {
        let moment = self.clock.now();
        let (opens, cap) = self.registry.closed_until(waba, moment)?;
        let wait = opens.saturating_since(moment);
        (wait > longer_than)
            .then(|| (now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX), cap))
    }

    /// Asks the scheduler for the queued jobs of every WABA that holds jobs
    /// in memory and may make no call for longer than `park_after`, to be
    /// parked (they come back on `capped`). Jobs read while it stays closed
    /// are parked as they come (`parking_of`).
    fn take_capped_jobs(&self) {
        let Some(parking) = self.setup.parking.as_ref().filter(|_| self.settle.can_park()) else { return };
        let now = Utc::now();
        for waba in self.backlogs.wabas_in_memory() {
            if self.closed_longer_than(waba, parking.park_after, now).is_some() {
                let matching = Arc::new(move |p: &Pending| p.waba == waba);
                let _ = self.scheduler.send(Command::Purge { matching, to: Some(self.capped_tx.clone()) });
            }
        }
    }

    /// Jobs taken back from the scheduler: those of a cancelled campaign end
    /// `cancelled`, those of a paused one are parked (held in memory with
    /// parking off), those of a WABA Meta stopped are parked until it is
    /// looked at again, and those of a closed WABA (in its pairs' order)
    /// until it may call again, spaced at its hourly cap's rate. A WABA open
    /// again by now (its jobs raced the purge) gets its jobs back in memory.
    fn park_capped(&mut self, writes: &mut JoinSet<()>, jobs: Vec<Pending>) {
        let now = Utc::now();
        let mut to_park = Vec::with_capacity(jobs.len());
        let mut held = Vec::new();
        let mut paused = Vec::new();
        for pending in jobs {
            match self.campaigns.of(&pending) {
                CampaignState::Cancelled => {
                    self.settle.exit(writes, pending, Exit::Cancelled, 0);
                    continue;
                }
                CampaignState::Paused if self.settle.can_park() => {
                    let due = paused_recheck_at(pending.parked_since, now);
                    let due = pending.job.expires_at.map_or(due, |expires| expires.min(due));
                    paused.push((pending, due));
                    continue;
                }
                CampaignState::Paused => {
                    self.held_jobs.hold(pending);
                    continue;
                }
                CampaignState::Active => {}
            }
            if self.registry.is_held(pending.waba) {
                let due = self.accounts.recheck_at(pending.waba, now);
                let due = pending.job.expires_at.map_or(due, |expires| expires.min(due));
                held.push((pending, due));
                continue;
            }
            let Some((opens, cap)) = self.closed_longer_than(pending.waba, std::time::Duration::ZERO, now)
            else {
                // Routed when it was read: its tier is the same now.
                let mps = route(&self.setup, &pending.job).map_or(self.setup.default_mps, |(_, mps)| mps);
                self.enqueue(pending, mps);
                continue;
            };
            let job = &pending.job;
            let arrival = Arrival::new((job.phone_number_id.get(), pending.waba), job.to.get(), 0, 0, now);
            let due = self.backlogs.park_for_waba(&arrival, opens, cap);
            let due = job.expires_at.map_or(due, |expires| expires.min(due));
            to_park.push((pending, due));
        }
        if !to_park.is_empty() {
            self.settle.park_jobs(writes, to_park, WABA_CAP);
        }
        if !held.is_empty() {
            self.settle.park_jobs(writes, held, ACCOUNT);
        }
        if !paused.is_empty() {
            self.settle.park_jobs(writes, paused, PAUSED);
        }
    }

    /// A campaign's state changed: a paused or cancelled campaign's queued
    /// jobs are taken back from the scheduler (parked, or ended
    /// `cancelled`, in `park_capped`); a resumed one's jobs held in memory
    /// go to the scheduler again.
    fn on_control(&mut self, writes: &mut JoinSet<()>, control: &Control) {
        let Some(before) = self.campaigns.apply(control) else { return };
        let campaign = control.campaign.as_str();
        tracing::info!(
            campaign,
            from = before.label(),
            to = control.state.label(),
            by = control.by.as_deref().unwrap_or("-"),
            "campaign state changed"
        );
        match control.state {
            CampaignState::Active => {
                for pending in self.held_jobs.release(campaign) {
                    let mps = route(&self.setup, &pending.job).map_or(self.setup.default_mps, |(_, mps)| mps);
                    self.enqueue(pending, mps);
                }
            }
            CampaignState::Paused | CampaignState::Cancelled => {
                if control.state == CampaignState::Cancelled {
                    for pending in self.held_jobs.release(campaign) {
                        self.settle.exit(writes, pending, Exit::Cancelled, 0);
                    }
                }
                let name = campaign.to_owned();
                let matching = Arc::new(move |p: &Pending| p.job.campaign.as_deref() == Some(name.as_str()));
                let _ = self.scheduler.send(Command::Purge { matching, to: Some(self.capped_tx.clone()) });
            }
        }
    }

    /// Applies what one of Meta's account events changes (`account.rs`).
    fn on_account_change(&mut self, change: AccountChange) {
        let now = Utc::now();
        match change {
            AccountChange::ThroughputUpgrade { display_phone_number } => self.upgrade(&display_phone_number),
            AccountChange::Hold { waba_id, until, why } => {
                let Ok(waba) = waba_id.parse::<u64>() else { return };
                if self.accounts.apply(waba, Some(until), now) == HoldChange::Hold {
                    self.hold(waba, &why, until);
                } else {
                    self.release(waba);
                }
            }
            AccountChange::Release { waba_id } => {
                let Ok(waba) = waba_id.parse::<u64>() else { return };
                if self.accounts.apply(waba, None, now) == HoldChange::Release {
                    self.release(waba);
                }
            }
            AccountChange::MessagingLimit { waba_id, limit } => {
                let gauge =
                    self.metrics.messaging_limit.with_label_values(&[self.metrics.waba_label(&waba_id)]);
                let value = limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
                if gauge.get() != value {
                    gauge.set(value);
                    self.metrics.account_changes.with_label_values(&["messaging_limit"]).inc();
                    tracing::info!(%waba_id, limit = %describe_limit(limit), "Meta announced the messaging limit of this WABA's business portfolio");
                }
            }
        }
    }

    /// Applies a reloaded setting: a number's tier (scheduler, departure
    /// gate, jobs read from now), a WABA's cap (its hour still counts).
    fn on_live_change(&self, change: LiveChange) {
        match change {
            LiveChange::Tier { phone, mps } => {
                if self.setup.scheduler.tiers.set(phone, mps) {
                    let _ = self.scheduler.send(Command::SetTier { phone, mps });
                    let label = phone.to_string();
                    let gauge =
                        self.metrics.phone_rate_limit.with_label_values(&[self.metrics.phone_label(&label)]);
                    gauge.set(i64::from(mps));
                    tracing::info!(phone_number_id = phone, mps, "reloaded: the number's tier");
                }
            }
            LiveChange::Cap { waba, hourly_cap } => {
                self.registry.set_cap(waba, hourly_cap);
                tracing::info!(waba_id = waba, hourly_cap, "reloaded: the WABA's hourly call cap");
            }
        }
    }

    /// Meta raised a number's throughput: its tier is raised at once, in the
    /// scheduler and at its departure gate, and for every job read from now.
    fn upgrade(&self, display_phone_number: &str) {
        let Some(&phone) = self.setup.displayed.get(display_phone_number) else {
            tracing::warn!(
                display_phone_number,
                "Meta raised the throughput of a number no [[phones]] entry names by display_phone_number; \
                 its tier is unchanged"
            );
            return;
        };
        let tiers = &self.setup.scheduler.tiers;
        let configured = self.setup.phones.get(&phone).map_or(self.setup.default_mps, |p| p.mps);
        let current = tiers.get(phone).unwrap_or(configured);
        let mps = self.setup.upgraded_mps;
        if mps <= current || !tiers.set(phone, mps) {
            return;
        }
        let _ = self.scheduler.send(Command::SetTier { phone, mps });
        let label = phone.to_string();
        self.metrics
            .phone_rate_limit
            .with_label_values(&[self.metrics.phone_label(&label)])
            .set(i64::from(mps));
        self.metrics.account_changes.with_label_values(&["throughput_upgrade"]).inc();
        tracing::info!(
            phone_number_id = phone,
            from = current,
            to = mps,
            "Meta raised this number's throughput; its tier is raised now"
        );
    }

    /// Meta stopped the WABA: nothing more is sent for it; its queued jobs
    /// are parked (and new ones as they are read) until it is released.
    fn hold(&self, waba: u64, why: &str, until: Option<DateTime<Utc>>) {
        if !self.registry.hold(waba) {
            return;
        }
        let label = waba.to_string();
        self.metrics.waba_held.with_label_values(&[self.metrics.waba_label(&label)]).set(1);
        self.metrics.account_changes.with_label_values(&["hold"]).inc();
        let until = until.map_or_else(|| "until Meta lifts it".to_owned(), |at| at.to_rfc3339());
        tracing::error!(waba_id = waba, event = why, %until, "Meta stopped this WABA; sending for it has stopped and its jobs wait (parked in Kafka when parking is on)");
        if self.settle.can_park() {
            let matching = Arc::new(move |p: &Pending| p.waba == waba);
            let _ = self.scheduler.send(Command::Purge { matching, to: Some(self.capped_tx.clone()) });
        }
    }

    fn release(&self, waba: u64) {
        if !self.registry.release(waba) {
            return;
        }
        let _ = self.scheduler.send(Command::Resume);
        let label = waba.to_string();
        self.metrics.waba_held.with_label_values(&[self.metrics.waba_label(&label)]).set(0);
        self.metrics.account_changes.with_label_values(&["release"]).inc();
        tracing::info!(
            waba_id = waba,
            "Meta lifted the stop of this WABA; sending resumes (parked jobs as they come back)"
        );
    }

    fn release_expired_restrictions(&mut self) {
        for waba in self.accounts.expired(Utc::now()) {
            self.release(waba);
        }
    }
}

/// When a job of a halted WABA comes back to look again: after the next
/// token check, or at its `expires_at` if sooner.
pub(super) fn halted_until(setup: &EngineSetup, job: &Job, now: DateTime<Utc>) -> DateTime<Utc> {
    let recheck =
        now + chrono::Duration::from_std(setup.token_check_interval).unwrap_or(chrono::Duration::MAX);
    job.expires_at.map_or(recheck, |expires| expires.min(recheck))
}

/// Whether a job of a halted WABA, first parked at `since`, has waited
/// longer than `parking.max_wait_days` (the horizon of a `not_before`): it
/// then fails rather than wait for ever for a token that is not coming.
pub(super) fn waited_too_long(setup: &EngineSetup, since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    waited_longer(max_wait(setup), since, now)
}

fn waited_longer(limit: chrono::Duration, since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    since.is_some_and(|since| now - since > limit)
}

/// The exit of a job whose WABA's token stayed refused past the horizon.
pub(super) fn halted_too_long(setup: &EngineSetup) -> Exit {
    Exit::Failed {
        reason: FailReason::AccountBlocked,
        error: ApiError {
            code: ErrorCode::Engine("waba_halted".into()),
            message: format!(
                "the WABA's token was refused for more than {} days (parking.max_wait_days) while the job waited",
                setup.max_wait.as_secs() / 86_400
            ),
        },
    }
}

/// The exit of a job whose WABA Meta kept stopped past the horizon.
fn held_too_long(setup: &EngineSetup) -> Exit {
    Exit::Failed {
        reason: FailReason::AccountBlocked,
        error: ApiError {
            code: ErrorCode::Engine("waba_held".into()),
            message: format!(
                "Meta kept the WABA stopped (banned or restricted) for more than {} days (parking.max_wait_days) \
                 while the job waited",
                setup.max_wait.as_secs() / 86_400
            ),
        },
    }
}

/// The furthest `not_before` accepted.
fn max_wait(setup: &EngineSetup) -> chrono::Duration {
    chrono::Duration::from_std(setup.max_wait).unwrap_or(chrono::Duration::MAX)
}

/// Which WABA sends this job and at what rate, or why it is not accepted.
fn route(setup: &EngineSetup, job: &Job) -> Result<(u64, u32), RejectReason> {
    match setup.phones.get(&job.phone_number_id.get()) {
        Some(phone) => match job.waba_id {
            Some(waba) if waba.get() != phone.waba => Err(RejectReason::WabaMismatch),
            _ => Ok((phone.waba, live_tier(setup, job.phone_number_id.get()).unwrap_or(phone.mps))),
        },
        None if setup.strict_phones => Err(RejectReason::UnknownPhoneNumber),
        None => {
            let waba = job.waba_id.ok_or(RejectReason::UnknownWaba)?.get();
            if setup.tokens.get(waba).is_none() {
                return Err(RejectReason::UnknownWaba);
            }
            Ok((waba, setup.default_mps))
        }
    }
}

/// Whether the record's key is the job's number (digits compared as a number).
fn keyed_by_number(key: Option<&[u8]>, job: &Job) -> bool {
    key.and_then(|key| std::str::from_utf8(key).ok())
        .and_then(|key| key.parse::<u64>().ok())
        .is_some_and(|key| key == job.phone_number_id.get())
}

/// A tier raised while running, if any (one atomic load when none was).
fn live_tier(setup: &EngineSetup, phone: u64) -> Option<u32> {
    let tiers = &setup.scheduler.tiers;
    if tiers.version() == 0 {
        return None;
    }
    tiers.get(phone)
}

/// A wall-clock instant as a scheduler moment (never before `now`).
fn moment_of(now: Moment, at: DateTime<Utc>) -> Moment {
    match (at - Utc::now()).to_std() {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a job that says when it was first parked can have waited too
    /// long, and only past the limit.
    #[test]
    fn a_halted_job_waits_up_to_the_horizon() {
        let limit = chrono::Duration::days(30);
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(!waited_longer(limit, None, now));
        assert!(!waited_longer(limit, Some(now - limit), now));
        assert!(waited_longer(limit, Some(now - limit - chrono::Duration::seconds(1)), now));
        let from_header = crate::engine::settle::parked_since(Some(now.timestamp_millis() as u64));
        assert_eq!(from_header, Some(now));
    }
}
