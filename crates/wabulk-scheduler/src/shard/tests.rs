use std::collections::BTreeMap;

use proptest::prelude::*;
use wabulk_limits::PairRule;

use super::*;
use wabulk_model::Priority;

const SEC: u64 = 1_000;

fn ms(n: u64) -> Moment {
    Moment::from_millis(n)
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        pair_rule: PairRule { interval: Duration::from_secs(6), burst: 45, margin: Duration::ZERO },
        mps_margin_percent: 0.0,
        ..SchedulerConfig::default()
    }
}

/// A shard with a log of what it handed out, driven poll by poll.
struct Harness {
    shard: Shard<u64>,
    sends: Vec<(Moment, Dispatch<u64>)>,
    expired: Vec<(Moment, u64)>,
    next_job: u64,
    /// The latest instant the shard was polled or given a job at.
    now: Moment,
}

impl Harness {
    fn new(config: SchedulerConfig) -> Self {
        Self::with_registry(config, Arc::new(WabaRegistry::new(1_000_000)))
    }

    fn with_registry(config: SchedulerConfig, wabas: Arc<WabaRegistry>) -> Self {
        Self {
            shard: Shard::new(Arc::new(config), wabas),
            sends: Vec::new(),
            expired: Vec::new(),
            next_job: 0,
            now: Moment::ZERO,
        }
    }

    fn enqueue(&mut self, phone: u64, recipient: u64, mps: u32, now: Moment) -> u64 {
        self.enqueue_with(phone, recipient, mps, None, None, now)
    }

    fn enqueue_with(
        &mut self,
        phone: u64,
        recipient: u64,
        mps: u32,
        not_before: Option<Moment>,
        expires_at: Option<Moment>,
        now: Moment,
    ) -> u64 {
        self.enqueue_envelope(
            Envelope {
                phone,
                recipient,
                waba: 7,
                mps,
                not_before,
                expires_at,
                priority: Priority::Normal,
                job: 0,
            },
            now,
        )
    }

    fn enqueue_waba(&mut self, phone: u64, recipient: u64, waba: u64, now: Moment) -> u64 {
        let envelope = Envelope {
            phone,
            recipient,
            waba,
            mps: 80,
            not_before: None,
            expires_at: None,
            priority: Priority::Normal,
            job: 0,
        };
        self.enqueue_envelope(envelope, now)
    }

    /// Enqueues `envelope` with the next job number in place of its own.
    fn enqueue_envelope(&mut self, envelope: Envelope<u64>, now: Moment) -> u64 {
        let job = self.next_job;
        self.next_job += 1;
        self.now = self.now.max(now);
        self.shard.enqueue(Envelope { job, ..envelope }, now);
        job
    }

    /// Polls at `now` and returns the indices of the new sends in `sends`.
    fn poll(&mut self, now: Moment) -> std::ops::Range<usize> {
        let start = self.sends.len();
        self.now = self.now.max(now);
        let mut out = Vec::new();
        // Rounds repeat while numbers still have work at this instant.
        while self.shard.next_wake(now).is_some_and(|at| at <= now) {
            self.shard.poll(now, &mut out);
        }
        for ready in out {
            match ready {
                Ready::Send(dispatch) => self.sends.push((now, dispatch)),
                Ready::Expired { job, .. } => self.expired.push((now, job)),
            }
        }
        start..self.sends.len()
    }

    /// Polls at every wake-up until `end`, finishing each send at once.
    fn run_until(&mut self, end: Moment) {
        let mut now = self.now.max(self.sends.last().map_or(ms(0), |(at, _)| *at));
        while let Some(at) = self.shard.next_wake(now) {
            if at > end {
                break;
            }
            // A timer already overdue fires now, not back in time.
            now = at.max(now);
            for i in self.poll(now) {
                let ticket = self.sends[i].1.ticket;
                self.shard.finish(ticket, now);
            }
        }
    }

    fn send_times(&self, recipient: u64) -> Vec<u64> {
        self.sends
            .iter()
            .filter(|(_, d)| d.ticket.recipient == recipient)
            .map(|(t, _)| t.as_millis())
            .collect()
    }
}

#[test]
fn a_new_number_waits_one_second_then_sends() {
    let mut h = Harness::new(config());
    h.enqueue(1, 100, 80, ms(0));
    assert!(h.poll(ms(0)).is_empty(), "another instance may have used the last second");
    assert_eq!(h.shard.next_wake(ms(0)), Some(ms(SEC)));
    assert_eq!(h.poll(ms(SEC)).len(), 1);
}

#[test]
fn idle_recipient_is_not_delayed_by_a_busy_one() {
    let mut h = Harness::new(config());
    for _ in 0..100 {
        h.enqueue(1, 100, 80, ms(0));
    }
    // Recipient 100 uses its whole burst of 45 and then owes 270 s.
    h.run_until(ms(20 * SEC));
    assert_eq!(h.send_times(100).len(), 45);
    h.enqueue(1, 200, 80, ms(20 * SEC));
    let sent = h.poll(ms(20 * SEC));
    assert_eq!(sent.len(), 1, "the idle recipient goes at once");
    assert_eq!(h.sends[sent.start].1.ticket.recipient, 200);
}

#[test]
fn pair_waits_for_its_debt_with_its_later_jobs() {
    let mut h = Harness::new(config());
    for _ in 0..47 {
        h.enqueue(1, 100, 1000, ms(0));
    }
    h.run_until(ms(600 * SEC));
    let times = h.send_times(100);
    assert_eq!(times.len(), 47);
    // The burst began at 1 s; 45 messages are repaid 45 × 6 s later.
    assert_eq!(times[44], SEC + 44);
    assert_eq!(times[45], SEC + 270 * SEC);
    // Repaid: a new burst begins at once (the number's burst tolerance allows it).
    assert_eq!(times[46], SEC + 270 * SEC);
}

#[test]
fn not_before_and_expiry_are_honoured() {
    let mut h = Harness::new(config());
    let late = h.enqueue_with(1, 100, 80, Some(ms(5 * SEC)), None, ms(0));
    let stale = h.enqueue_with(1, 200, 80, None, Some(ms(500)), ms(0));
    h.run_until(ms(10 * SEC));
    assert_eq!(h.expired, vec![(ms(SEC), stale)]);
    assert_eq!(h.sends.len(), 1);
    assert_eq!((h.sends[0].0, h.sends[0].1.job), (ms(5 * SEC), late));
    assert_eq!(h.shard.held(), 0);
}

#[test]
fn a_job_waiting_behind_its_pair_expires_on_time() {
    let mut h = Harness::new(config());
    for _ in 0..45 {
        h.enqueue(1, 100, 1000, ms(0));
    }
    let doomed = h.enqueue_with(1, 100, 1000, None, Some(ms(60 * SEC)), ms(0));
    h.run_until(ms(100 * SEC));
    assert_eq!(h.expired, vec![(ms(60 * SEC), doomed)]);
}

#[test]
fn pair_retry_penalises_only_that_pair() {
    let mut h = Harness::new(config());
    h.enqueue(1, 100, 80, ms(0));
    h.enqueue(1, 100, 80, ms(0));
    let first = h.poll(ms(SEC));
    let dispatch = h.sends.remove(first.start).1;
    let verdict = h.shard.retry(
        dispatch.ticket,
        dispatch.job,
        Scope::Pair,
        RetryReason::PairLimit,
        Duration::ZERO,
        ms(SEC),
    );
    assert!(verdict.is_ok());
    h.enqueue(1, 200, 80, ms(SEC));
    // The number's pacing (80/s) is the only wait for another recipient.
    let other = h.poll(ms(SEC + 13));
    assert_eq!(h.sends[other.start].1.ticket.recipient, 200, "other recipients are not slowed");
    h.run_until(ms(20 * SEC));
    let again: Vec<_> = h.sends.iter().filter(|(_, d)| d.ticket.recipient == 100).collect();
    // The penalty (4^0 s) is shorter than the pair's own debt from the send
    // at 1 s, so the job goes again when that is repaid; first, with its
    // attempt counted, and its successor right behind it.
    assert_eq!(again[0].0, ms(7 * SEC));
    assert_eq!((again[0].1.job, again[0].1.attempt), (dispatch.job, 2));
    assert_eq!(again[1].1.job, dispatch.job + 1);
}

#[test]
fn number_retry_pauses_every_recipient_of_the_number() {
    let mut h = Harness::new(config());
    h.enqueue(1, 100, 80, ms(0));
    let first = h.poll(ms(SEC));
    let dispatch = h.sends.remove(first.start).1;
    h.shard
        .retry(
            dispatch.ticket,
            dispatch.job,
            Scope::Number,
            RetryReason::Transient,
            Duration::from_secs(3),
            ms(SEC),
        )
        .unwrap();
    h.enqueue(1, 200, 80, ms(SEC));
    h.enqueue(2, 300, 80, ms(0));
    let sent = h.poll(ms(SEC));
    let phones: Vec<_> = sent.map(|i| h.sends[i].1.ticket.phone).collect();
    assert_eq!(phones, vec![2], "only the other number sends");
    h.run_until(ms(10 * SEC));
    assert_eq!(h.send_times(100), vec![4 * SEC]);
    assert_eq!(h.send_times(200), vec![4 * SEC]);
}

/// Forty requests that left together are all answered 130429: the number
/// is slowed down once (half its tier), not halved forty times; a request
/// sent after that and refused again halves it again.
#[test]
fn the_130429s_of_one_bunch_slow_the_number_once() {
    let mut h = Harness::new(config());
    for recipient in 0..100 {
        h.enqueue(1, recipient, 1000, ms(0));
    }
    for t in 0..100 {
        h.poll(ms(SEC + t));
    }
    let sent: Vec<Dispatch<u64>> = h.sends.drain(..).map(|(_, dispatch)| dispatch).collect();
    assert!(sent.len() >= 40, "{} sent in the first 100 ms", sent.len());
    let retry = |h: &mut Harness, dispatch: Dispatch<u64>, at| {
        h.shard.retry(
            dispatch.ticket,
            dispatch.job,
            Scope::Number,
            RetryReason::NumberLimit,
            Duration::ZERO,
            at,
        )
    };
    let answered = ms(SEC + 500);
    for dispatch in sent.into_iter().take(40) {
        retry(&mut h, dispatch, answered).unwrap();
    }
    assert_eq!(h.shard.numbers[&1].limiter.effective_limit(answered), 500, "one bunch, one halving");
    h.enqueue(1, 1_000, 1000, ms(3 * SEC));
    h.poll(ms(3 * SEC));
    let later = h.sends.pop().expect("the number sends again, slower").1;
    retry(&mut h, later, ms(3 * SEC + 500)).unwrap();
    assert_eq!(
        h.shard.numbers[&1].limiter.effective_limit(ms(3 * SEC + 500)),
        250,
        "refused at half rate too"
    );
}

#[test]
fn waba_pause_reaches_numbers_in_other_shards() {
    let wabas = Arc::new(WabaRegistry::new(1_000_000));
    let mut a = Harness::with_registry(config(), Arc::clone(&wabas));
    let mut b = Harness::with_registry(config(), Arc::clone(&wabas));
    a.enqueue(1, 100, 80, ms(0));
    b.enqueue(2, 200, 80, ms(0));
    let sent = a.poll(ms(SEC));
    let dispatch = a.sends.remove(sent.start).1;
    a.shard
        .retry(
            dispatch.ticket,
            dispatch.job,
            Scope::Waba,
            RetryReason::WabaLimit,
            Duration::from_secs(60),
            ms(SEC),
        )
        .unwrap();
    assert!(b.poll(ms(SEC)).is_empty(), "number 2 shares WABA 7");
    b.run_until(ms(120 * SEC));
    assert_eq!(b.send_times(200), vec![61 * SEC]);
}

#[test]
fn halt_keeps_jobs_until_the_waba_is_resumed() {
    let wabas = Arc::new(WabaRegistry::new(1_000_000));
    let mut h = Harness::with_registry(config(), Arc::clone(&wabas));
    h.enqueue(1, 100, 80, ms(0));
    h.enqueue(1, 200, 80, ms(0));
    h.poll(ms(SEC));
    h.poll(ms(SEC + 13));
    assert_eq!(h.sends.len(), 2, "paced 12.5 ms apart");
    let (_, first) = h.sends.remove(0);
    h.shard.halt(first.ticket, first.job, ms(SEC));
    h.shard.finish(h.sends[0].1.ticket, ms(SEC));
    h.run_until(ms(100 * SEC));
    assert_eq!(h.sends.len(), 1, "nothing more is sent while halted");
    assert_eq!(h.shard.held(), 1, "the halted job is kept");
    wabas.resume(7);
    h.shard.wake_halted();
    let resent = h.poll(ms(100 * SEC));
    assert_eq!(h.sends[resent.start].1.job, first.job);
}

#[test]
fn a_retry_of_an_unknown_ticket_hands_the_job_back() {
    let mut h = Harness::new(config());
    let ticket = Ticket { phone: 1, recipient: 100 };
    let answer = h.shard.retry(ticket, 7, Scope::Request, RetryReason::Transient, Duration::ZERO, ms(0));
    assert_eq!(answer, Err(7), "nothing of that pair is in flight");
    assert_eq!(h.shard.held(), 0);
}

#[test]
fn purge_drops_queued_jobs_but_not_those_in_flight() {
    let mut h = Harness::new(config());
    for recipient in [100, 200] {
        for _ in 0..3 {
            h.enqueue(1, recipient, 1000, ms(0));
        }
    }
    h.poll(ms(SEC));
    h.poll(ms(SEC + 1));
    let in_flight: Vec<u64> = h.sends.iter().map(|(_, d)| d.job).collect();
    assert_eq!(in_flight, vec![0, 3], "one in flight per pair");
    // Drop even-numbered jobs: 0 is in flight and stays; 2 and 4 go.
    let mut taken = h.shard.purge(&|job| job % 2 == 0);
    taken.sort_unstable();
    assert_eq!(taken, vec![2, 4]);
    assert_eq!(h.shard.held(), 4);
    h.run_until(ms(2 * SEC));
    for (_, dispatch) in h.sends.drain(..2).collect::<Vec<_>>() {
        h.shard.finish(dispatch.ticket, ms(2 * SEC));
    }
    h.run_until(ms(3 * SEC));
    let mut jobs: Vec<u64> = h.sends.iter().map(|(_, d)| d.job).collect();
    jobs.sort_unstable();
    assert_eq!(jobs, vec![1, 5]);
    assert_eq!(h.shard.held(), 0);
}

const HOUR: u64 = 3_600 * SEC;

#[test]
fn the_idle_bound_covers_the_pair_rule_and_an_hour() {
    // Meta's rule: 45 × 6.05 s of debt, less than the 1024 s penalty: an hour.
    assert_eq!(forget_after(PairRule::default()), Duration::from_secs(3_600));
    // A debt longer than an hour is waited out, with a debt and a minute to spare.
    let long = PairRule { interval: Duration::from_secs(600), burst: 10, margin: Duration::ZERO };
    assert_eq!(forget_after(long), Duration::from_secs(6_000 + 600 + 60));
}

#[test]
fn an_idle_number_is_forgotten_and_comes_back_as_a_new_one() {
    let mut h = Harness::new(config());
    h.enqueue(1, 100, 80, ms(0));
    h.run_until(ms(2 * SEC));
    assert_eq!((h.sends.len(), h.shard.held(), h.shard.numbers()), (1, 0, 1));
    // Answered at 1 s: kept until an hour after that, then forgotten on time.
    h.poll(ms(SEC + HOUR - 1));
    assert_eq!(h.shard.numbers(), 1);
    assert_eq!(h.shard.next_wake(ms(SEC + HOUR - 1)), Some(ms(SEC + HOUR)));
    h.poll(ms(SEC + HOUR));
    assert_eq!(h.shard.numbers(), 0);
    assert_eq!(h.shard.next_wake(ms(SEC + HOUR)), None, "nothing left to look at");

    // Back with a backlog: exactly what a shard that never met it does.
    let back = 2 * HOUR;
    let mut fresh = Harness::new(config());
    for recipient in 0..60 {
        for _ in 0..2 {
            h.enqueue(1, 100 + recipient, 80, ms(back));
            fresh.enqueue(1, 100 + recipient, 80, ms(back));
        }
    }
    h.sends.clear();
    h.run_until(ms(back + 20 * SEC));
    fresh.run_until(ms(back + 20 * SEC));
    let times = |h: &Harness| h.sends.iter().map(|(t, d)| (t.as_millis(), d.ticket)).collect::<Vec<_>>();
    assert_eq!(times(&h), times(&fresh));
    // Nothing for a second, then no burst: the second send is one interval later.
    let first: Vec<u64> = h.sends.iter().take(2).map(|(t, _)| t.as_millis()).collect();
    assert_eq!(first, vec![back + SEC, back + SEC + 12]);
    let all: Vec<u64> = h.sends.iter().map(|(t, _)| t.as_millis()).collect();
    for (i, &t) in all.iter().enumerate() {
        assert!(all[i..].iter().take_while(|&&u| u < t + SEC).count() <= 80);
    }
    assert_eq!(h.sends.len(), 120);
}

#[test]
fn a_queued_job_keeps_its_number() {
    let mut h = Harness::new(config());
    h.enqueue(1, 100, 80, ms(0));
    h.run_until(ms(2 * SEC));
    // Queued before the look at forgetting it, due long after.
    h.enqueue_with(1, 200, 80, Some(ms(3 * HOUR)), None, ms(10 * SEC));
    h.poll(ms(SEC + HOUR));
    h.poll(ms(2 * HOUR + SEC));
    assert_eq!(h.shard.numbers(), 1);
    h.run_until(ms(3 * HOUR + SEC));
    assert_eq!(h.send_times(200), vec![3 * HOUR], "sent as queued, not as a new number");
    h.poll(ms(4 * HOUR - 1));
    assert_eq!(h.shard.numbers(), 1, "an hour from the answer to the last send");
    h.poll(ms(4 * HOUR));
    assert_eq!(h.shard.numbers(), 0);
}

#[test]
fn a_job_in_flight_keeps_its_number() {
    let mut h = Harness::new(config());
    h.enqueue(1, 100, 80, ms(0));
    let sent = h.poll(ms(SEC));
    assert_eq!(sent.len(), 1);
    for hour in 1..5 {
        h.poll(ms(hour * HOUR + SEC));
        assert_eq!(h.shard.numbers(), 1);
    }
    // The late answer counts as a use: another hour from it.
    let ticket = h.sends[0].1.ticket;
    h.shard.finish(ticket, ms(5 * HOUR));
    h.poll(ms(6 * HOUR - 1));
    assert_eq!(h.shard.numbers(), 1);
    h.poll(ms(6 * HOUR));
    assert_eq!(h.shard.numbers(), 0);
}

#[test]
fn a_halted_number_is_kept_until_resumed() {
    let wabas = Arc::new(WabaRegistry::new(1_000_000));
    let mut h = Harness::with_registry(config(), Arc::clone(&wabas));
    // Two numbers of WABA 7; the token fails on number 1's send.
    h.enqueue(1, 100, 80, ms(0));
    h.enqueue(2, 200, 80, ms(0));
    let sent = h.poll(ms(SEC));
    let dispatches: Vec<_> = h.sends.drain(sent).map(|(_, d)| d).collect();
    for dispatch in dispatches {
        match dispatch.ticket.phone {
            1 => h.shard.halt(dispatch.ticket, dispatch.job, ms(SEC)),
            _ => h.shard.finish(dispatch.ticket, ms(SEC)),
        }
    }
    h.poll(ms(SEC));
    // Number 1's job is purged (its partition went away): both hold nothing,
    // number 1 stopped by the halt, number 2 idle but of the halted WABA.
    assert_eq!(h.shard.purge(&|_| true).len(), 1);
    for hour in 1..4 {
        h.poll(ms(hour * HOUR + 2 * SEC));
        assert_eq!(h.shard.numbers(), 2, "hour {hour}");
    }
    wabas.resume(7);
    h.shard.wake_halted();
    h.poll(ms(4 * HOUR));
    assert_eq!(h.shard.numbers(), 2);
    // Looked at again an hour after the last look found them halted, at the latest.
    h.poll(ms(5 * HOUR + 2 * SEC));
    assert_eq!(h.shard.numbers(), 0);
}

#[test]
fn a_number_sent_to_within_the_hour_is_kept() {
    let mut h = Harness::new(config());
    // One message every 59 minutes, to changing recipients, for ten hours.
    let every = 59 * 60 * SEC;
    for i in 0..10 {
        let at = ms(i * every);
        h.enqueue(1, 100 + i, 80, at);
        h.run_until(ms(i * every + 2 * SEC));
        assert_eq!(h.shard.numbers(), 1);
        h.poll(ms((i + 1) * every - 1));
        assert_eq!(h.shard.numbers(), 1, "after message {i}");
    }
    assert_eq!(h.sends.len(), 10);
    // The first was held back as a new number's; the others went at once.
    assert_eq!(h.send_times(100), vec![SEC]);
    assert_eq!(h.send_times(101), vec![every]);
}

#[test]
fn a_pause_or_slow_down_keeps_its_number_until_it_ends() {
    let mut h = Harness::new(SchedulerConfig { slow_down_for: Duration::from_secs(3 * 3_600), ..config() });
    h.enqueue(1, 100, 80, ms(0));
    h.enqueue(2, 200, 80, ms(0));
    let sent = h.poll(ms(SEC));
    let dispatches: Vec<_> = h.sends.drain(sent).map(|(_, d)| d).collect();
    for dispatch in dispatches {
        // Number 1: paused two hours. Number 2: slowed down (by a 130429) for three.
        let (reason, after) = match dispatch.ticket.phone {
            1 => (RetryReason::Transient, Duration::from_secs(2 * 3_600)),
            _ => (RetryReason::NumberLimit, Duration::ZERO),
        };
        h.shard.retry(dispatch.ticket, dispatch.job, Scope::Number, reason, after, ms(SEC)).unwrap();
    }
    // Their jobs leave (purged), the pause and the slow-down stay.
    assert_eq!(h.shard.purge(&|_| true).len(), 2);
    h.poll(ms(SEC));
    h.poll(ms(2 * HOUR));
    assert!(h.shard.numbers.contains_key(&1) && h.shard.numbers.contains_key(&2));
    h.poll(ms(2 * HOUR + SEC));
    assert!(!h.shard.numbers.contains_key(&1), "forgotten when its pause ends");
    assert!(h.shard.numbers.contains_key(&2), "still slowed down");
    h.poll(ms(3 * HOUR + SEC - 1));
    assert!(h.shard.numbers.contains_key(&2));
    h.run_until(ms(5 * HOUR));
    assert_eq!(h.shard.numbers(), 0, "forgotten once the slow-down is over");
}

#[test]
fn a_pair_debt_longer_than_an_hour_keeps_its_number() {
    let rule = PairRule { interval: Duration::from_secs(1_800), burst: 10, margin: Duration::ZERO };
    let mut h = Harness::new(SchedulerConfig { pair_rule: rule, ..config() });
    for _ in 0..10 {
        h.enqueue(1, 100, 80, ms(0));
    }
    h.run_until(ms(2 * SEC));
    assert_eq!(h.send_times(100).len(), 10, "one burst, repaid 5 h after it began");
    let forget = forget_after(rule);
    assert!(forget > Duration::from_secs(5 * 3_600));
    let last = h.sends.last().unwrap().0;
    h.poll(last + forget - Duration::from_millis(1));
    assert_eq!(h.shard.numbers(), 1);
    h.poll(last + forget);
    assert_eq!(h.shard.numbers(), 0);
}

#[test]
fn an_unknown_wabas_cell_goes_with_its_last_number_and_hour() {
    let wabas = Arc::new(WabaRegistry::new(1_000_000));
    wabas.register(5, 1_000_000, 1);
    let mut h = Harness::with_registry(config(), Arc::clone(&wabas));
    // Number 1 sends for configured WABA 5, number 2 for unknown WABA 9.
    h.enqueue_waba(1, 100, 5, ms(0));
    h.enqueue_waba(2, 100, 9, ms(0));
    h.run_until(ms(2 * SEC));
    assert_eq!(h.sends.len(), 2);
    assert_eq!(wabas.len(), 2);
    // Sent and answered at 1 s: the numbers go an hour later...
    assert_eq!(wabas.sweep(ms(HOUR)), 0, "number 2 still holds WABA 9");
    h.poll(ms(SEC + HOUR));
    assert_eq!(h.shard.numbers(), 0);
    // ...but the call made at 1 s counts until its 100 ms bucket is an hour old.
    assert_eq!(wabas.sweep(ms(SEC + HOUR + 99)), 0);
    assert_eq!(wabas.sweep(ms(SEC + HOUR + 100)), 1);
    assert_eq!(wabas.len(), 1);
    assert_eq!(wabas.usage(ms(SEC + HOUR + 100)).into_iter().map(|(w, ..)| w).collect::<Vec<_>>(), vec![5]);
    assert_eq!(wabas.sweep(ms(100 * HOUR)), 0, "a configured WABA stays");
    // Named again: a new cell, and a new number, which sends as new.
    h.enqueue_waba(2, 100, 9, ms(2 * HOUR));
    h.run_until(ms(2 * HOUR + 2 * SEC));
    assert_eq!(h.sends.last().map(|(t, d)| (t.as_millis(), d.waba)), Some((2 * HOUR + SEC, 9)));
    assert_eq!(wabas.len(), 2);
}

/// A tiny deterministic generator (xorshift64*), so that the traffic below
/// needs no seed from outside.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Six hours of jobs for random numbers and random unknown WABAs (a producer
/// gone wrong), plus one configured number that keeps sending: the shard and
/// the registry hold what the last hour or so brought, never more.
#[test]
fn random_numbers_and_wabas_keep_the_state_bounded() {
    let wabas = Arc::new(WabaRegistry::new(1_000_000));
    wabas.register(5, 1_000_000, 1);
    let mut h = Harness::with_registry(config(), Arc::clone(&wabas));
    let mut rng = Rng(0x5eed);
    // One job every 20 s for a new random number and WABA; sweeps every minute.
    let every = 20 * SEC;
    let sweep_every = 60 * SEC;
    // A number answered at a + 1 s is forgotten at a + 1 s + 1 h; its WABA's
    // call leaves the window by a + 1.1 s + 1 h and the next sweep drops it.
    let numbers_bound = (SEC + HOUR) / every + 1 + 1;
    let wabas_bound = (SEC + 100 + HOUR + sweep_every) / every + 1 + 1;
    let (mut most_numbers, mut most_wabas) = (0, 0);
    let mut next_sweep = sweep_every;
    let end = 6 * HOUR;
    let mut now = 0;
    while now < end + 2 * HOUR {
        if now < end {
            let (phone, waba) = (rng.next() | 1 << 63, rng.next() >> 1);
            h.enqueue_waba(phone, rng.next(), waba, ms(now));
            // The configured number, to a new recipient every time.
            h.enqueue_waba(7, now, 5, ms(now));
        }
        let next = now + every;
        // On to the next arrival, the registry swept every minute on the way.
        while next_sweep < next {
            h.run_until(ms(next_sweep));
            wabas.sweep(ms(next_sweep));
            next_sweep += sweep_every;
        }
        h.run_until(ms(next - 1));
        let (numbers, cells) = (h.shard.numbers(), wabas.len());
        assert!(numbers <= numbers_bound as usize, "{numbers} numbers before {next} ms");
        assert!(cells <= wabas_bound as usize, "{cells} WABAs before {next} ms");
        most_numbers = most_numbers.max(numbers);
        most_wabas = most_wabas.max(cells);
        now = next;
    }
    assert_eq!(h.shard.held(), 0);
    assert_eq!(h.sends.len() as u64, 2 * end / every);
    // The bounds are reached, so they are the real size, not a loose ceiling.
    assert!(most_numbers + 3 >= numbers_bound as usize, "at most {most_numbers} numbers");
    assert!(most_wabas + 3 >= wabas_bound as usize, "at most {most_wabas} WABAs");
    // Two hours after the last job only the configured WABA remains.
    assert_eq!((h.shard.numbers(), wabas.len()), (0, 1));
}

/// What the test does with one send.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Accept,
    Retry(Scope, u64),
}

fn arb_answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        8 => Just(Answer::Accept),
        1 => (prop_oneof![Just(Scope::Pair), Just(Scope::Request), Just(Scope::Number), Just(Scope::Waba)], 0u64..3_000)
            .prop_map(|(scope, after)| Answer::Retry(scope, after)),
    ]
}

/// Checks the pair rule literally (docs/platform.md "The pair rule, exactly")
/// on a list of send times.
fn pair_rule_holds(times: &[u64], interval: u64, burst: u32) -> Result<(), String> {
    let (mut repaid_at, mut burst_start, mut burst_len) = (0u64, 0u64, 0u32);
    for (i, &t) in times.iter().enumerate() {
        if i == 0 || t >= repaid_at {
            (burst_start, burst_len, repaid_at) = (t, 1, t + interval);
        } else if t < burst_start + interval && burst_len < burst {
            burst_len += 1;
            repaid_at += interval;
        } else {
            return Err(format!("send {i} at {t} ms breaks the pair rule (repaid at {repaid_at})"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random arrivals for two numbers and a handful of recipients, random
    /// answers, random poll times: no 1-s window over the number's limit, the
    /// pair rule never broken, every pair's jobs in order, nothing lost. Some
    /// arrivals come two hours later, when their number is usually forgotten:
    /// it then starts again as a new number.
    #[test]
    fn limits_order_and_accounting_hold(
        arrivals in proptest::collection::vec(
            (0u64..2, 0u64..40, 0u64..20_000, prop_oneof![3 => Just(0), 1 => Just(2 * HOUR)]),
            1..600,
        ),
        answers in proptest::collection::vec(arb_answer(), 64),
        steps in proptest::collection::vec(1u64..400, 64),
    ) {
        let tiers = [20u32, 80];
        let mut h = Harness::new(config());
        let mut arrivals: Vec<(u64, u64, u64)> =
            arrivals.into_iter().map(|(phone, recipient, at, wave)| (phone, recipient, at + wave)).collect();
        arrivals.sort_by_key(|&(_, _, at)| at);
        let mut arrivals = arrivals.into_iter().peekable();
        let mut order: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
        let mut sends: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
        let mut per_number: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut pair_times: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
        let mut finished = 0usize;
        let mut gave_up = 0usize;
        let mut now = 0u64;
        let mut step = 0usize;
        let mut in_flight: Vec<Dispatch<u64>> = Vec::new();
        // Numbers met so far, and (number, instant) of each return after being forgotten.
        let mut met = std::collections::BTreeSet::new();
        let mut returns = Vec::new();
        while now < 2 * HOUR + 4_000_000 {
            while let Some(&(phone, recipient, at)) = arrivals.peek() {
                if at > now { break; }
                arrivals.next();
                if !met.insert(phone) && !h.shard.numbers.contains_key(&phone) {
                    returns.push((phone, now));
                }
                let job = h.enqueue(phone, 1_000 + recipient, tiers[phone as usize], ms(now));
                order.entry((phone, recipient + 1_000)).or_default().push(job);
            }
            // Answer what was in flight since the previous step.
            for dispatch in in_flight.drain(..) {
                let answer = answers[(dispatch.job as usize + dispatch.attempt as usize) % answers.len()];
                match answer {
                    Answer::Accept => { h.shard.finish(dispatch.ticket, ms(now)); finished += 1; }
                    // The owner gives up after 10 requests, as the engine does with its budget.
                    Answer::Retry(..) if dispatch.attempt >= 10 => { h.shard.finish(dispatch.ticket, ms(now)); gave_up += 1; }
                    Answer::Retry(scope, after) => {
                        let queued = h.shard.retry(dispatch.ticket, dispatch.job, scope, RetryReason::Transient, Duration::from_millis(after), ms(now));
                        prop_assert!(queued.is_ok());
                    }
                }
            }
            let range = h.poll(ms(now));
            for i in range {
                let (at, ref dispatch) = h.sends[i];
                let key = (dispatch.ticket.phone, dispatch.ticket.recipient);
                sends.entry(key).or_default().push(dispatch.job);
                pair_times.entry(key).or_default().push(at.as_millis());
                per_number.entry(dispatch.ticket.phone).or_default().push(at.as_millis());
            }
            in_flight.extend(h.sends.drain(..).map(|(_, d)| d));
            // Jump to the next wake-up or a random step, whichever is sooner.
            let next = now + steps[step % steps.len()];
            step += 1;
            let wake = h.shard.next_wake(ms(now)).map(Moment::as_millis).filter(|&at| at > now);
            now = wake.map_or(next, |at| next.min(at));
            // Nothing held: on to the next arrival or timer without stepping.
            if in_flight.is_empty() && h.shard.held() == 0 {
                if let Some(&(_, _, at)) = arrivals.peek() {
                    now = now.max(wake.map_or(at, |wake| wake.min(at)));
                }
            }
            if arrivals.peek().is_none() && in_flight.is_empty() && h.shard.held() == 0 { break; }
        }
        prop_assert_eq!(h.shard.held(), 0, "every job left the scheduler");
        prop_assert_eq!(finished + gave_up, order.values().map(Vec::len).sum::<usize>());
        for (phone, times) in &per_number {
            let limit = tiers[*phone as usize] as usize;
            for (i, &t) in times.iter().enumerate() {
                let in_window = times[i..].iter().take_while(|&&u| u < t + SEC).count();
                prop_assert!(in_window <= limit, "number {} sent {} in the second from {} ms", phone, in_window, t);
            }
        }
        for (key, jobs) in &sends {
            // Collapse repeats of one job (its retries): what is left is the read order.
            let mut firsts = jobs.clone();
            firsts.dedup();
            let expected: Vec<u64> = order[key].iter().copied().filter(|j| firsts.contains(j)).collect();
            prop_assert_eq!(&firsts, &expected, "pair {:?} out of order", key);
        }
        for (key, times) in &pair_times {
            prop_assert_eq!(pair_rule_holds(times, 6 * SEC, 45), Ok(()), "pair {:?}", key);
        }
        // A forgotten number came back as a new one: nothing in its first second.
        for (phone, at) in returns {
            let first = per_number[&phone].iter().find(|&&t| t >= at);
            prop_assert!(first.is_none_or(|&t| t >= at + SEC), "number {} back at {} ms sent at {:?}", phone, at, first);
        }
        // And an hour after their last use, no number is left.
        h.poll(ms(now + HOUR));
        prop_assert_eq!(h.shard.numbers(), 0);
    }
}

/// The most sends of `phone` in any window of `window_ms` (ending at a send).
fn fullest_window(h: &Harness, phone: u64, window_ms: u64) -> usize {
    let times: Vec<u64> =
        h.sends.iter().filter(|(_, d)| d.ticket.phone == phone).map(|(t, _)| t.as_millis()).collect();
    (0..times.len())
        .map(|i| times[..=i].iter().filter(|&&t| t + window_ms > times[i]).count())
        .max()
        .unwrap_or(0)
}

fn sends_between(h: &Harness, phone: u64, from_ms: u64, to_ms: u64) -> usize {
    h.sends
        .iter()
        .filter(|(t, d)| d.ticket.phone == phone && (from_ms..to_ms).contains(&t.as_millis()))
        .count()
}

#[test]
fn a_raised_tier_applies_to_a_queued_number_and_to_one_met_later() {
    let tiers = Arc::new(crate::LiveTiers::default());
    let mut h = Harness::new(SchedulerConfig { tiers: Arc::clone(&tiers), ..config() });
    for recipient in 0..3_000 {
        h.enqueue(1, recipient, 80, ms(0));
    }
    h.run_until(ms(3 * SEC));
    assert!(fullest_window(&h, 1, SEC) <= 80);
    assert!(tiers.set(1, 1000));
    h.shard.set_tier(1, 1000);
    h.run_until(ms(5 * SEC));
    assert!(fullest_window(&h, 1, SEC) <= 1000, "never over the new tier");
    let last_second = sends_between(&h, 1, 4 * SEC, 5 * SEC);
    assert!(last_second >= 950, "{last_second} sends in a second at 1000/s");

    // Number 2's envelopes still say 80: the live tier wins.
    assert!(tiers.set(2, 1000));
    for recipient in 0..3_000 {
        h.enqueue(2, recipient, 80, ms(5 * SEC));
    }
    h.run_until(ms(8 * SEC));
    assert!(fullest_window(&h, 2, SEC) <= 1000);
    let second = sends_between(&h, 2, 7 * SEC, 8 * SEC);
    assert!(second >= 950, "{second} sends in a second at 1000/s");
}

#[test]
fn a_held_waba_sends_nothing_until_released() {
    let wabas = Arc::new(WabaRegistry::new(1_000_000));
    let mut h = Harness::with_registry(config(), Arc::clone(&wabas));
    for recipient in 0..100 {
        h.enqueue(1, recipient, 80, ms(0));
    }
    h.run_until(ms(SEC));
    assert!(wabas.hold(7));
    assert!(!wabas.hold(7), "already held");
    let sent = h.sends.len();
    h.run_until(ms(60 * SEC));
    assert_eq!(h.sends.len(), sent, "nothing sent while held");
    assert_eq!(h.shard.held(), 100 - sent, "its jobs are kept");
    assert!(wabas.release(7));
    h.shard.wake_halted();
    h.run_until(ms(63 * SEC));
    assert_eq!(h.sends.len(), 100);
}

#[test]
fn ready_high_jobs_go_before_normal_and_normal_before_bulk_in_pair_order() {
    let mut h = Harness::new(config());
    let enqueue = |h: &mut Harness, recipient: u64, priority: Priority| {
        let envelope = Envelope {
            phone: 1,
            recipient,
            waba: 7,
            mps: 20,
            not_before: None,
            expires_at: None,
            priority,
            job: 0,
        };
        h.enqueue_envelope(envelope, ms(0))
    };
    let bulk: Vec<u64> = (0..40).map(|r| enqueue(&mut h, 1_000 + r, Priority::Bulk)).collect();
    let normal: Vec<u64> = (0..5).map(|r| enqueue(&mut h, 2_000 + r, Priority::Normal)).collect();
    let high: Vec<u64> = (0..3).map(|r| enqueue(&mut h, 3_000 + r, Priority::High)).collect();
    // Recipient 1000 already has a bulk job at its head: its high job waits
    // behind it, in the bulk lane, to keep the pair's order.
    let behind_bulk = enqueue(&mut h, 1_000, Priority::High);
    h.run_until(ms(10 * SEC));
    let order: Vec<u64> = h.sends.iter().map(|(_, d)| d.job).collect();
    assert_eq!(order.len(), 49);
    assert_eq!(&order[..3], &high[..], "high first, in arrival order");
    assert_eq!(&order[3..8], &normal[..], "then normal");
    assert_eq!(order[8], bulk[0], "then bulk");
    assert_eq!(order[9], behind_bulk, "its pair's head once the bulk job before it went: high again");
    assert_eq!(&order[10..], &bulk[1..], "then the rest of bulk");
    assert!(fullest_window(&h, 1, SEC) <= 20, "the lanes share the number's rate");
}
