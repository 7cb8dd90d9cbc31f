use std::collections::BTreeMap;

use proptest::prelude::*;
use wabulk_limits::PairRule;

use super::*;

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
        let job = self.next_job;
        self.next_job += 1;
        let envelope = Envelope { phone, recipient, waba: 7, mps, not_before, expires_at, job };
        self.shard.enqueue(envelope, now);
        job
    }

    /// Polls at `now` and returns the indices of the new sends in `sends`.
    fn poll(&mut self, now: Moment) -> std::ops::Range<usize> {
        let start = self.sends.len();
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
        let mut now = ms(0).max(self.sends.last().map_or(ms(0), |(at, _)| *at));
        while let Some(at) = self.shard.next_wake(now) {
            if at > end {
                break;
            }
            now = at;
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
    assert_eq!(h.shard.purge(&|job| job % 2 == 0), 2);
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
    /// pair rule never broken, every pair's jobs in order, nothing lost.
    #[test]
    fn limits_order_and_accounting_hold(
        arrivals in proptest::collection::vec((0u64..2, 0u64..40, 0u64..20_000), 1..600),
        answers in proptest::collection::vec(arb_answer(), 64),
        steps in proptest::collection::vec(1u64..400, 64),
    ) {
        let tiers = [20u32, 80];
        let mut h = Harness::new(config());
        let mut arrivals = arrivals;
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
        while now < 4_000_000 {
            while let Some(&(phone, recipient, at)) = arrivals.peek() {
                if at > now { break; }
                arrivals.next();
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
            now = match h.shard.next_wake(ms(now)) {
                Some(at) if at.as_millis() > now => next.min(at.as_millis()),
                _ => next,
            };
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
    }
}
