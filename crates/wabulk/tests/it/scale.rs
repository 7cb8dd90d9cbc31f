//! The engine against its surroundings at scale: the only Kafka broker going
//! away mid-run and coming back (for less, and for longer, than the consumer
//! session), and two engines sharing one consumer group
//! while one of them is SIGKILLed and restarted (partitions move twice).
//! Nothing is lost, no number exceeds its tier at the simulator, and the
//! duplicates are reported and bounded by what the tiers send in the time a
//! sent job stays uncommitted ([`ExposureWindow`]) or, without a kill or a
//! lost assignment, by the outage.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use wabulk_graph_sim::{Latency, SimStats};
use wabulk_loadgen::LoadReport;

use crate::harness::{
    by_id, distinct_ids, finish_load, free_port, http_get, init_logs, is_sent, limits_report, load, sample,
    sim_config, start_load, status_counts, violations, wait_for, Collector, EngineProcess, EngineToml,
    ExposureWindow, InProcessEngine, Number, Program, Stack, TempDir, JOBS, MPS_MARGIN, RESULTS,
    SHORT_SESSION_TIMEOUT_MS,
};

/// The mock cluster's only broker (librdkafka numbers mock brokers from 1).
const BROKER: i32 = 1;

/// Every job id of the load, checked unique.
async fn load_ids(load: tokio::task::JoinHandle<LoadReport>) -> HashSet<String> {
    let report = finish_load(load).await;
    let ids: HashSet<String> = report.job_ids.iter().cloned().collect();
    assert_eq!(ids.len() as u64, report.written, "job ids are unique");
    ids
}

/// Accepted requests per number at the simulator.
fn accepted_by_number(stats: &SimStats) -> BTreeMap<String, u64> {
    stats.numbers.iter().map(|(id, n)| (id.clone(), n.accepted)).collect()
}

/// What the results say about loss and duplicates.
struct Outcome {
    missing: Vec<String>,
    duplicate_results: usize,
    sent_twice: usize,
}

fn outcome(ids: &HashSet<String>, all: &[wabulk_model::JobResult]) -> Outcome {
    let grouped = by_id(all);
    let mut missing: Vec<String> = ids.iter().filter(|id| !grouped.contains_key(*id)).cloned().collect();
    missing.sort();
    assert!(grouped.keys().all(|id| ids.contains(id)), "a result for a job that was never written");
    Outcome {
        missing,
        duplicate_results: all.len() - grouped.len(),
        sent_twice: grouped
            .values()
            .map(|rs| rs.iter().filter(|r| is_sent(r)).count().saturating_sub(1))
            .sum(),
    }
}

/// Per number, the most arrivals in any 1 s window must not exceed its tier.
fn assert_tiers_kept(stats: &SimStats, numbers: &[Number]) {
    for number in numbers {
        let seen = stats.numbers.get(&number.id).unwrap_or_else(|| panic!("no stats for {}", number.id));
        assert!(
            seen.max_in_any_1s_window <= u64::from(number.mps),
            "{} had {} arrivals in 1 s against a tier of {}: {}",
            number.id,
            seen.max_in_any_1s_window,
            number.mps,
            limits_report(stats)
        );
    }
    assert_eq!(stats.violations.phone, 0, "per-number limit broken: {}", limits_report(stats));
    assert_eq!(violations(stats), 0, "limits broken: {}", limits_report(stats));
}

/// `wabulk_results_total{status="sent"}` of an in-process engine.
/// After an outage: every job written has a result (`all_in`: within the
/// wait), and every one is `sent`.
fn assert_every_job_sent(all_in: bool, found: &Outcome, all: &[wabulk_model::JobResult]) {
    assert!(
        all_in && found.missing.is_empty(),
        "{} jobs without a result after the outage, e.g. {:?}",
        found.missing.len(),
        &found.missing[..found.missing.len().min(10)]
    );
    assert!(all.iter().all(is_sent), "every job is sent: {:?}", status_counts(all));
}

/// The start of an outage test: two 80/s numbers on a four-partition stack,
/// an in-process engine, a results reader that reads on through broker
/// errors, and 1500 jobs written at 200/s, 300 of whose results are in.
struct OutageRun {
    numbers: [Number; 2],
    tiers: u32,
    stack: Stack,
    engine: InProcessEngine,
    results: Collector,
    started: Instant,
    load: tokio::task::JoinHandle<LoadReport>,
}

impl OutageRun {
    /// `name` tells the group and job ids apart.
    async fn start(name: &str) -> OutageRun {
        init_logs();
        let numbers = [Number::new("106540352242922", 80), Number::new("106540352242923", 80)];
        let tiers: u32 = numbers.iter().map(|n| n.mps).sum();
        let stack = Stack::start(sim_config(&numbers, Latency::Meta { scale: 0.05 }), 4).await;
        let mut toml = EngineToml::new(&stack, &format!("it-{name}"), &numbers);
        toml.limits.push(MPS_MARGIN.into());
        let engine = InProcessEngine::start(toml.setup());
        let results = Collector::start_through_errors(&stack.brokers(), RESULTS);
        let started = Instant::now();
        let load = start_load(&stack.brokers(), load(&numbers, &[1.0; 2], 1_500, 200.0, name));
        let flowing = results.wait_until(Duration::from_secs(60), |records| records.len() >= 300).await;
        assert!(flowing, "only {} results in 60 s before the outage", results.len());
        OutageRun { numbers, tiers, stack, engine, results, started, load }
    }
}

fn written(engine: &InProcessEngine) -> u64 {
    engine.metrics.results.get_metric_with_label_values(&["sent"]).map_or(0, |c| c.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_mid_run_loses_nothing() {
    let OutageRun { numbers, tiers, stack, engine, results, started, load } =
        OutageRun::start("outage").await;
    let down_at = started.elapsed();
    let results_at_down = results.len();
    let accepted_at_down = stack.sim.stats().accepted;
    stack.kafka.broker_down(BROKER);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let results_at_up = results.len();
    let accepted_at_up = stack.sim.stats().accepted;
    let written_at_up = written(&engine);
    stack.kafka.broker_up(BROKER);
    let up = Instant::now();
    assert!(engine.running(), "the engine stopped during the outage");
    // A reader connected after the outage: how soon the results written
    // during and after it are readable, apart from the old reader's reconnection.
    let fresh = Collector::start_through_errors(&stack.brokers(), RESULTS);
    let issued = usize::try_from(written_at_up).expect("a count");
    let limit = Duration::from_secs(60);
    let ((readable, fresh_read_after), (resumed, first_result_after)) = tokio::join!(
        async {
            let ok = fresh.wait_until(limit, |records| distinct_ids(records) >= issued).await;
            (ok, up.elapsed())
        },
        async {
            let ok = results.wait_until(limit, |records| records.len() > results_at_up).await;
            (ok, up.elapsed())
        }
    );
    assert!(readable, "the results issued by broker_up were not all readable 60 s after it");
    assert!(
        resumed,
        "the first reader read nothing in 60 s after the broker came back; the engine has issued {} \
         results, the simulator accepted {} (at broker_up {accepted_at_up})",
        written(&engine),
        stack.sim.stats().accepted
    );

    // Progress resumes: the simulator accepts more jobs, and 200 results
    // issued after broker_up become readable.
    let sending = wait_for(limit, || stack.sim.stats().accepted > accepted_at_up + 100).await;
    assert!(sending, "the engine did not send 100 more jobs in 60 s after the broker came back");
    let more_after = fresh.wait_until(limit, |records| distinct_ids(records) >= issued + 200).await;
    assert!(more_after, "fewer than 200 new results in 60 s after the broker came back");

    let ids = load_ids(load).await;
    let all_in =
        results.wait_until(Duration::from_secs(90), |records| distinct_ids(records) >= ids.len()).await;
    let elapsed = started.elapsed();
    assert!(engine.running(), "the engine stopped after the outage");
    engine.stop().await;
    let all = results.results();
    results.stop().await;
    fresh.stop().await;
    let stats = stack.stop().await;

    let found = outcome(&ids, &all);
    println!(
        "broker outage: down at {:.1} s for 3 s with {results_at_down} results and {accepted_at_down} \
         accepted; during it {} results read, accepted {accepted_at_down} -> {accepted_at_up}; {written_at_up} results issued by the engine by broker_up; all readable by a new reader {:.2} s after \
         broker_up; the first reader read again {:.2} s after it; \
         {} jobs, {} results ({:?}) in {:.1} s; duplicate results {} (sent twice {}), simulator duplicates \
         {}; {}",
        down_at.as_secs_f64(),
        results_at_up - results_at_down,
        fresh_read_after.as_secs_f64(),
        first_result_after.as_secs_f64(),
        ids.len(),
        all.len(),
        status_counts(&all),
        elapsed.as_secs_f64(),
        found.duplicate_results,
        found.sent_twice,
        stats.duplicate_count,
        limits_report(&stats)
    );
    assert_every_job_sent(all_in, &found, &all);
    // No process died and no partition moved, so the only possible repeats
    // are re-sent requests; allow what 3 s of both tiers could put in flight.
    let bound = u64::from(tiers) * 3;
    assert!(
        stats.duplicate_count <= bound && found.duplicate_results as u64 <= bound,
        "more duplicates than could have been in flight: simulator {}, results {}, bound {bound}",
        stats.duplicate_count,
        found.duplicate_results
    );
    assert_tiers_kept(&stats, &numbers);
}

/// The `partitions assigned` lines of a child engine's log.
fn assignments(engine: &EngineProcess) -> Vec<String> {
    engine
        .log_lines(&["partitions "])
        .into_iter()
        .filter(|line| line.contains("partitions assigned") || line.contains("partitions revoked"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_share_a_group_and_survive_a_kill() {
    init_logs();
    // Four numbers whose keys spread over the four partitions.
    let numbers = [
        Number::new("106540352242922", 50),
        Number::new("106540352242923", 50),
        Number::new("106540352242924", 50),
        Number::new("106540352242925", 50),
    ];
    let tiers: u32 = numbers.iter().map(|n| n.mps).sum();
    let latency = Latency::Meta { scale: 0.05 };
    let window = ExposureWindow::new(latency);
    let stack = Stack::start(sim_config(&numbers, latency), 4).await;
    let dir = TempDir::new("two-engines");
    let mut toml = EngineToml::new(&stack, "it-two-engines", &numbers);
    toml.limits.push(MPS_MARGIN.into());
    toml.short_session();
    let config = toml.write(dir.path());
    let jobs = Collector::start(&stack.brokers(), JOBS);
    let results = Collector::start(&stack.brokers(), RESULTS);
    let started = Instant::now();
    let mut survivor = EngineProcess::spawn(Program::Wabulk, &config, dir.path(), 0);
    let mut victim = EngineProcess::spawn(Program::Wabulk, &config, dir.path(), 1);
    let load = start_load(&stack.brokers(), load(&numbers, &[1.0; 4], 3_000, 200.0, "two"));

    // Both engines own partitions and every number is being sent.
    let both = wait_for(Duration::from_secs(60), || {
        let stats = stack.sim.stats();
        !assignments(&survivor).is_empty()
            && !assignments(&victim).is_empty()
            && numbers.iter().all(|n| stats.numbers.get(&n.id).is_some_and(|s| s.accepted > 0))
    })
    .await;
    assert!(
        both,
        "not both engines busy in 60 s: {:?} / {:?}\n{}\n{}",
        assignments(&survivor),
        assignments(&victim),
        survivor.log_tail(20),
        victim.log_tail(20)
    );
    let busy = results.wait_until(Duration::from_secs(60), |records| records.len() >= 300).await;
    assert!(busy, "only {} results in 60 s", results.len());
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    assert!(victim.running(), "engine 1 exited by itself:\n{}", victim.log_tail(30));
    let victim_assignments = assignments(&victim);
    victim.kill();
    let killed_at = started.elapsed();
    let at_kill = accepted_by_number(&stack.sim.stats());
    let results_at_kill = results.len();

    // The survivor takes every partition once the victim's session expires:
    // every number is sent again (by the only engine left).
    let taken_over = wait_for(Duration::from_secs(60), || {
        let now = accepted_by_number(&stack.sim.stats());
        at_kill.iter().all(|(id, &n)| now.get(id).copied().unwrap_or(0) > n + 20)
    })
    .await;
    let takeover_took = started.elapsed() - killed_at;
    assert!(taken_over, "not every number sent again after the kill in 60 s:\n{}", survivor.log_tail(30));

    // Restart the victim: partitions move back to it.
    let mut restarted = EngineProcess::spawn(Program::Wabulk, &config, dir.path(), 2);
    let restarted_at = started.elapsed();
    let rejoined = wait_for(Duration::from_secs(60), || {
        assignments(&restarted).iter().any(|line| line.contains("assigned") && !line.contains("[]"))
    })
    .await;
    let rejoin_took = started.elapsed() - restarted_at;
    assert!(rejoined, "the restarted engine got no partition in 60 s:\n{}", restarted.log_tail(30));

    let ids = load_ids(load).await;
    let all_in =
        results.wait_until(Duration::from_secs(90), |records| distinct_ids(records) >= ids.len()).await;
    let elapsed = started.elapsed();
    let survivor_running = survivor.running();
    let restarted_running = restarted.running();
    survivor.terminate();
    restarted.terminate();
    let survivor_exit = survivor.wait_exit(Duration::from_secs(20));
    let restarted_exit = restarted.wait_exit(Duration::from_secs(20));
    let all = results.results();
    let job_records = jobs.records();
    results.stop().await;
    jobs.stop().await;
    let stats = stack.stop().await;

    let mut partitions: BTreeMap<String, BTreeMap<i32, usize>> = BTreeMap::new();
    for record in &job_records {
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        *partitions.entry(key).or_default().entry(record.partition).or_default() += 1;
    }
    let used: HashSet<i32> = partitions.values().flat_map(|by| by.keys().copied()).collect();
    assert_eq!(used.len(), 4, "the numbers' keys do not spread over the 4 partitions: {partitions:?}");
    let found = outcome(&ids, &all);
    // One kill: what the victim sent and had not yet committed, at most every
    // tier (the victim's share is smaller) over one exposure window; the
    // graceful hand-backs of the rebalances commit first and repeat nothing.
    let bound = window.allowed(tiers);
    println!(
        "two engines: jobs by number and partition {partitions:?}; engine 1 {victim_assignments:?} killed at \
         {:.1} s with {results_at_kill} results; every number sent again by engine 0 {:.1} s after the kill; \
         restarted at {:.1} s, assigned after {:.1} s: {:?}; engine 0: {:?}; {} jobs, {} results ({:?}) in \
         {:.1} s; duplicate results {} (sent twice {}), simulator duplicates {} (bound {bound}: {tiers} \
         msg/s × {window}); {}",
        killed_at.as_secs_f64(),
        takeover_took.as_secs_f64(),
        restarted_at.as_secs_f64(),
        rejoin_took.as_secs_f64(),
        assignments(&restarted),
        assignments(&survivor),
        ids.len(),
        all.len(),
        status_counts(&all),
        elapsed.as_secs_f64(),
        found.duplicate_results,
        found.sent_twice,
        stats.duplicate_count,
        limits_report(&stats)
    );
    assert!(
        all_in && found.missing.is_empty(),
        "{} jobs without a result, e.g. {:?}",
        found.missing.len(),
        &found.missing[..found.missing.len().min(10)]
    );
    assert!(all.iter().all(is_sent), "every job is sent: {:?}", status_counts(&all));
    assert!(
        stats.duplicate_count <= bound && found.duplicate_results as u64 <= bound,
        "more duplicates than could have been in flight: simulator {}, results {}, bound {bound}",
        stats.duplicate_count,
        found.duplicate_results
    );
    assert_tiers_kept(&stats, &numbers);
    assert!(survivor_running && restarted_running, "an engine exited by itself");
    for (name, exit) in [("engine 0", survivor_exit), ("engine 2", restarted_exit)] {
        assert!(matches!(exit, Some(status) if status.success()), "{name} did not stop cleanly: {exit:?}");
    }
}

/// The only broker goes down for 10 s, longer than the engine's 6 s consumer
/// session (`wabulk run` with `[kafka.properties]` setting it): the session
/// expires while jobs are in flight and results wait for the broker, the
/// assignment is lost (librdkafka revokes it as lost, which the engine logs),
/// and when the broker is back the engine rejoins, gets its partitions again
/// and re-reads from its last commit. Nothing is lost, progress resumes, and
/// what is sent twice is bounded by what the tiers send in one exposure
/// window: the jobs sent during the outage, whose results are acknowledged
/// only after the assignment was lost, are not sent again, because `Ingest`
/// keeps what a lost assignment finished and skips it when the partitions
/// come back (before that, every one of them was: ~865).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_longer_than_the_session_loses_nothing() {
    init_logs();
    let session = Duration::from_millis(SHORT_SESSION_TIMEOUT_MS);
    let numbers = [Number::new("106540352242922", 80), Number::new("106540352242923", 80)];
    let tiers: u32 = numbers.iter().map(|n| n.mps).sum();
    let latency = Latency::Meta { scale: 0.05 };
    let window = ExposureWindow::new(latency);
    let stack = Stack::start(sim_config(&numbers, latency), 4).await;
    let dir = TempDir::new("long-outage");
    let mut toml = EngineToml::new(&stack, "it-long-outage", &numbers);
    toml.limits.push(MPS_MARGIN.into());
    toml.short_session();
    let port = free_port();
    toml.http_listen = format!("127.0.0.1:{port}");
    let config = toml.write(dir.path());
    let mut engine = EngineProcess::spawn(Program::Wabulk, &config, dir.path(), 0);
    let results = Collector::start_through_errors(&stack.brokers(), RESULTS);
    let started = Instant::now();
    let load = start_load(&stack.brokers(), load(&numbers, &[1.0; 2], 1_500, 200.0, "long-outage"));
    let flowing = results.wait_until(Duration::from_secs(60), |records| records.len() >= 300).await;
    assert!(flowing, "only {} results in 60 s before the outage:\n{}", results.len(), engine.log_tail(30));
    let lost_before = engine.log_lines(&["partitions revoked", "lost=true"]).len();

    let outage = session + Duration::from_secs(4);
    let accepted_at_down = stack.sim.stats().accepted;
    let duplicates_at_down = stack.sim.stats().duplicate_count;
    let down_at = started.elapsed();
    stack.kafka.broker_down(BROKER);
    tokio::time::sleep(outage).await;
    let accepted_at_up = stack.sim.stats().accepted;
    stack.kafka.broker_up(BROKER);
    let up = Instant::now();
    assert!(engine.running(), "the engine stopped during the outage:\n{}", engine.log_tail(30));

    // Progress resumes: the simulator accepts 100 more jobs.
    let limit = Duration::from_secs(60);
    let sending = wait_for(limit, || stack.sim.stats().accepted > accepted_at_up + 100).await;
    let resumed_after = up.elapsed();
    assert!(
        sending,
        "the engine did not send 100 more jobs in 60 s after the broker came back:\n{}",
        engine.log_tail(30)
    );
    // The scenario: the session expired, librdkafka revoked the assignment
    // as lost, and the partitions came back to the engine.
    let lost = engine.log_lines(&["partitions revoked", "lost=true"]);
    assert!(
        lost.len() > lost_before,
        "the assignment was not lost during a {:.0} s outage with a {:.0} s session:\n{}",
        outage.as_secs_f64(),
        session.as_secs_f64(),
        engine.log_tail(40)
    );
    // The consumer's own account, in order: assigned, lost, assigned again.
    let ownership = engine.log_lines(&["wabulk_kafka::ingest::rebalance: partitions"]);
    let lost_at = ownership.iter().rposition(|line| line.contains("lost=true")).expect("logged above");
    let assigned = ownership[lost_at..].iter().filter(|line| line.contains("partitions assigned")).count();
    assert!(assigned > 0, "the partitions were not assigned again after the loss: {ownership:?}");

    let ids = load_ids(load).await;
    let all_in =
        results.wait_until(Duration::from_secs(120), |records| distinct_ids(records) >= ids.len()).await;
    let elapsed = started.elapsed();
    assert!(engine.running(), "the engine stopped after the outage:\n{}", engine.log_tail(30));
    let metrics = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
        .await
        .expect("scrape")
        .expect("the engine serves /metrics");
    let uncommitted_at_end = sample(&metrics, "wabulk_uncommitted_jobs");
    engine.terminate();
    let exit = engine.wait_exit(Duration::from_secs(20));
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;

    let found = outcome(&ids, &all);
    let sent_during = accepted_at_up - accepted_at_down;
    // Not `+ sent_during`: those jobs' results were acknowledged after the
    // loss, and the lost assignment's finished offsets are skipped.
    let bound = window.allowed(tiers);
    println!(
        "long outage: down at {:.1} s for {:.0} s (session {:.0} s); accepted during it {sent_during}; \
         ownership: {ownership:?}; 100 more accepted {:.1} s after broker_up; {} \
         jobs, {} results ({:?}) in {:.1} s; duplicate results {} (sent twice {}), simulator duplicates {} \
         ({} before the outage), bound {bound} ({tiers} msg/s × {window}); uncommitted at the end \
         {uncommitted_at_end:?}; {}",
        down_at.as_secs_f64(),
        outage.as_secs_f64(),
        session.as_secs_f64(),
        resumed_after.as_secs_f64(),
        ids.len(),
        all.len(),
        status_counts(&all),
        elapsed.as_secs_f64(),
        found.duplicate_results,
        found.sent_twice,
        stats.duplicate_count,
        duplicates_at_down,
        limits_report(&stats)
    );
    assert_every_job_sent(all_in, &found, &all);
    assert!(
        stats.duplicate_count <= bound && found.duplicate_results as u64 <= bound,
        "more duplicates than one lost assignment can cause: simulator {}, results {}, bound {bound} \
         ({sent_during} sent during the outage)",
        stats.duplicate_count,
        found.duplicate_results
    );
    assert_eq!(uncommitted_at_end, Some(0.0), "every acknowledged job is committed once the broker is back");
    assert_tiers_kept(&stats, &numbers);
    assert!(matches!(exit, Some(status) if status.success()), "the engine did not stop cleanly: {exit:?}");
}
