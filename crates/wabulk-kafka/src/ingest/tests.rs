//! The lease bookkeeping without a broker: the state transitions the polling
//! thread and the rebalance callbacks drive, called directly.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::lease::Lease;
use super::{Assignment, Shared, State};
use crate::KafkaSettings;

fn shared(revoke_timeout: Duration) -> (Arc<Shared>, mpsc::UnboundedReceiver<Assignment>) {
    with_settings(KafkaSettings { revoke_timeout, ..KafkaSettings::default() })
}

fn with_settings(settings: KafkaSettings) -> (Arc<Shared>, mpsc::UnboundedReceiver<Assignment>) {
    let (assignments, events) = mpsc::unbounded_channel();
    (Arc::new(Shared::new(&settings, assignments)), events)
}

/// What each record of these tests costs against the budget in bytes.
const RECORD_BYTES: usize = 1_000;

/// As the polling thread and `next` hand the record out: a lease, or `None`
/// when the record is skipped or dropped.
fn hand_out(shared: &Shared, partition: i32, offset: i64) -> Option<Lease> {
    let ownership = shared.buffer(partition, RECORD_BYTES)?;
    shared.hand_out(ownership, partition, offset, RECORD_BYTES)
}

fn leases(shared: &Shared, partition: i32, offsets: std::ops::Range<i64>) -> Vec<Lease> {
    offsets.map(|offset| hand_out(shared, partition, offset).expect("handed out")).collect()
}

fn owned_leases(state: &State, partition: i32) -> usize {
    state.owned[&partition].leases
}

/// The revoked partition's leases say so, the other's do not; the wait
/// ends once each is released, done or dropped, and a dropped one leaves
/// its offset unresolved.
#[test]
fn a_revocation_settles_once_every_lease_is_released() {
    let (shared, _events) = shared(Duration::from_secs(10));
    shared.assign(&[0, 1], Default::default());
    let mut revoked = leases(&shared, 0, 0..3);
    let kept = leases(&shared, 1, 0..1);
    assert_eq!(shared.lock().in_memory(), 4);
    shared.lock().mark_revoked(&[0]);
    assert!(revoked.iter().all(Lease::is_revoked));
    assert!(!kept[0].is_revoked());
    assert!(hand_out(&shared, 0, 3).is_none(), "no more records of a revoked partition");

    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        revoked.remove(0).done();
        drop(revoked.remove(0));
        thread::sleep(Duration::from_millis(50));
        revoked.remove(0).done();
    });
    let started = Instant::now();
    let (state, unsettled, waited) =
        shared.wait_settled(shared.lock(), &[0], |state, p| owned_leases(state, p) > 0);
    assert!(unsettled.is_empty() && waited);
    assert!(started.elapsed() < Duration::from_secs(5), "woken, not timed out");
    let owned = &state.owned[&0];
    assert_eq!(owned.tracker.watermark(), Some(1), "the dropped lease's offset is not done");
    assert_eq!(owned.tracker.pending(), 1);
    assert_eq!(state.in_memory(), 2, "the dropped job and the other partition's");
    drop(state);
    releaser.join().unwrap();
}

/// After the revocation completed, a late `done` is ignored, and a lease
/// that outlives the consumer releases nothing.
#[test]
fn a_lease_released_after_its_ownership_ended_is_ignored() {
    let (shared, _events) = shared(Duration::from_secs(10));
    shared.assign(&[0], Default::default());
    let mut late = leases(&shared, 0, 0..2);
    {
        let mut state = shared.lock();
        state.mark_revoked(&[0]);
        state.give_up(&[0], false, Instant::now());
        assert!(state.owned.is_empty() && state.lost.is_empty());
        assert_eq!(state.in_memory(), 0);
    }
    late.remove(0).done();
    let state = shared.lock();
    assert!(state.owned.is_empty() && state.lost.is_empty());
    assert_eq!(state.in_memory(), 0);
    drop(state);
    drop(shared);
    assert!(late[0].is_revoked());
    late.remove(0).done();
}

/// A lost ownership keeps counting its leases, remembers its late dones,
/// and its next assignment here skips them; the old leases do not count
/// for the new ownership.
#[test]
fn a_lost_ownership_is_settled_by_its_leases_and_its_late_dones_are_skipped() {
    let (shared, _events) = shared(Duration::from_millis(100));
    shared.assign(&[0], Default::default());
    let mut old = leases(&shared, 0, 0..5);
    old.remove(0).done();
    {
        let mut state = shared.lock();
        state.mark_revoked(&[0]);
        state.give_up(&[0], true, Instant::now());
        assert_eq!(state.lost[&0].leases, 4);
    }
    assert!(old.iter().all(Lease::is_revoked));
    old.remove(0).done(); // offset 1
    drop(old.remove(0)); // offset 2: given up
    {
        let state = shared.lock();
        assert_eq!(state.lost[&0].leases, 2);
        assert_eq!(state.lost[&0].finished_count(), 2, "offsets 0 and 1");
    }
    let (state, unsettled, _) = shared
        .wait_settled(shared.lock(), &[0], |state, p| state.lost.get(&p).is_some_and(|lost| lost.leases > 0));
    assert_eq!(unsettled, vec![0], "two leases still out hold the next assignment");
    drop(state);

    shared.assign(&[0], Default::default());
    let (three, four) = (old.remove(0), old.remove(0));
    assert_eq!((three.offset(), four.offset()), (3, 4));
    // Done after the re-assignment, before the record is read again.
    three.done();
    let handed: Vec<Lease> = (0..5).filter_map(|o| hand_out(&shared, 0, o)).collect();
    assert_eq!(
        handed.iter().map(Lease::offset).collect::<Vec<_>>(),
        vec![2, 4],
        "the lost dones are skipped"
    );
    assert!(!handed.iter().any(Lease::is_revoked));
    drop(four);
    let state = shared.lock();
    assert_eq!(owned_leases(&state, 0), 2, "the old lease did not count for the new ownership");
    assert!(state.lost.is_empty());
}

/// As the committer thread takes positions (acknowledged at once).
fn commit(shared: &Shared) -> Vec<super::commit::Position> {
    let mut state = shared.lock();
    let positions = state.take_positions(super::commit::CommitScope::Changed);
    shared.apply_pauses(&mut state);
    state.record_commit(&positions, true, Instant::now());
    positions
}

fn paused(shared: &Shared, partition: i32) -> bool {
    shared.lock().owned[&partition].paused
}

/// How many offsets read from 0 on, the odd ones done and the even ones
/// not, make the metadata pass `bytes` (what `encode` writes for them).
fn odd_done_until_past(bytes: usize) -> i64 {
    (1..)
        .step_by(2)
        .map(|last: i64| last + 1)
        .find(|&read| {
            let odd = (1..read).step_by(2).map(|o| o..=o);
            crate::finished::encode(0, odd).text.len() > bytes
        })
        .unwrap()
}

/// The sum of the commit listener's deltas: jobs done and not yet committed.
fn count_uncommitted(shared: &Shared) -> Arc<std::sync::atomic::AtomicI64> {
    let uncommitted = Arc::new(std::sync::atomic::AtomicI64::new(0));
    shared.lock().commits.listener = Some(Box::new({
        let uncommitted = uncommitted.clone();
        move |delta, _| {
            uncommitted.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        }
    }));
    uncommitted
}

/// Offset 0 of partition 0 is never done while the odd offsets above it
/// are, and the even ones wait: partition 0 stops being read exactly once
/// its metadata passes `WINDOW_PAUSE_BYTES`, partition 1 keeps being read,
/// and partition 0 resumes only once the watermark has swept enough of the
/// window back under `WINDOW_RESUME_BYTES`. No commit ever leaves a range
/// out, and every job done is reported committed.
#[test]
fn a_full_window_pauses_its_partition_only_and_nothing_is_left_out() {
    let (shared, _events) = shared(Duration::from_secs(10));
    let uncommitted = count_uncommitted(&shared);
    shared.assign(&[0, 1], Default::default());
    let bound = odd_done_until_past(crate::finished::WINDOW_PAUSE_BYTES);
    // 3,000 bytes of ",1,3,5,...": over 700 ranges.
    assert!(bound > 1_400, "{bound}");

    let (mut held, mut read0, mut read1) = (Vec::new(), 0i64, 0i64);
    // As the polling thread: a paused partition is not read.
    while read1 < 4 * bound {
        if !paused(&shared, 0) {
            let lease = hand_out(&shared, 0, read0).expect("handed out");
            if read0 % 2 == 1 {
                lease.done();
            } else {
                held.push(lease);
            }
            read0 += 1;
        }
        assert!(!paused(&shared, 1));
        hand_out(&shared, 1, read1).expect("handed out").done();
        read1 += 1;
        commit(&shared);
    }
    assert_eq!(read0, bound, "partition 0 stops at the bound derived from the encoder");
    assert_eq!(shared.lock().paused_counts(), super::PausedCounts { memory: 0, share: 0, window: 1, any: 1 });

    // The lowest offset done: the watermark moves to 2, the window is still
    // full.
    held.remove(0).done();
    commit(&shared);
    assert!(paused(&shared, 0), "hysteresis: not resumed while above the resume size");
    // Sweep the waiting jobs in order until the partition resumes.
    let mut swept = 0;
    while paused(&shared, 0) {
        held.remove(0).done();
        commit(&shared);
        swept += 1;
    }
    let state = shared.lock();
    let (watermark, encoded) = state.owned[&0].position().unwrap();
    assert!(encoded.text.len() <= crate::finished::WINDOW_RESUME_BYTES);
    assert_eq!(watermark, 2 * (swept + 1));
    drop(state);

    // The rest of the run, all done: nothing was ever left out.
    for lease in held.drain(..) {
        lease.done();
    }
    for offset in read0..read0 + 5_000 {
        hand_out(&shared, 0, offset).unwrap().done();
    }
    let positions = commit(&shared);
    assert_eq!(positions.iter().find(|p| p.partition == 0).map(|p| p.offset), Some(read0 + 5_000));
    let state = shared.lock();
    assert_eq!(state.commits.overflows, 0, "no metadata ever left a range out");
    assert_eq!(state.paused_counts(), super::PausedCounts::default());
    assert!(state.owned.values().all(|o| o.done_at.is_empty()));
    assert_eq!(uncommitted.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// The defensive path: jobs already read finish in an order whose ranges
/// pass the cap. The commit leaves the highest out, counts it, and those
/// jobs are not reported committed until a commit lists them.
#[test]
fn ranges_left_out_of_the_metadata_stay_uncommitted() {
    let (shared, _events) = shared(Duration::from_secs(10));
    let uncommitted = count_uncommitted(&shared);
    shared.assign(&[0], Default::default());
    // All read before any commit measures the window.
    let mut leases = leases(&shared, 0, 0..4_000);
    let odd: Vec<Lease> = {
        let (odd, even): (Vec<Lease>, Vec<Lease>) = leases.drain(..).partition(|l| l.offset() % 2 == 1);
        leases = even;
        odd
    };
    let done = odd.len() as i64;
    odd.into_iter().for_each(Lease::done);
    let positions = commit(&shared);
    let from = positions[0].left_out_from.expect("left out");
    let listed = (1..from).step_by(2).count() as i64;
    assert!(listed > 0 && listed < done);
    assert_eq!(shared.lock().commits.overflows, 1);
    assert!(paused(&shared, 0), "the window is full");
    assert_eq!(uncommitted.load(std::sync::atomic::Ordering::Relaxed), done - listed);
    assert_eq!(shared.lock().owned[&0].done_at.len() as i64, done - listed);
    // The waiting jobs done: everything is committed.
    leases.drain(..).for_each(Lease::done);
    commit(&shared);
    assert_eq!(uncommitted.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(!paused(&shared, 0));
}

/// Bytes held come back to 0 whichever way a record leaves: done, dropped,
/// skipped, or its partition revoked with leases out (their late release
/// then changes nothing).
#[test]
fn the_bytes_held_return_to_zero_however_records_leave() {
    let (shared, _events) = shared(Duration::from_secs(10));
    shared.assign(&[0, 1], Default::default());
    let mut zero = leases(&shared, 0, 0..3);
    let one = leases(&shared, 1, 0..2);
    assert_eq!(shared.lock().bytes, 5 * RECORD_BYTES);
    zero.remove(0).done();
    drop(zero.remove(0));
    assert_eq!(shared.lock().bytes, 3 * RECORD_BYTES);
    {
        let mut state = shared.lock();
        state.mark_revoked(&[1]);
        state.give_up(&[1], false, Instant::now());
        assert_eq!(state.bytes, RECORD_BYTES, "partition 1's bytes left with it");
    }
    drop(one);
    assert_eq!(shared.lock().bytes, RECORD_BYTES);
    // A record of a revoked partition polled before its revocation: dropped
    // at hand-out, and its bytes with it.
    let ownership = shared.buffer(0, RECORD_BYTES).unwrap();
    shared.lock().mark_revoked(&[0]);
    assert!(shared.hand_out(ownership, 0, 3, RECORD_BYTES).is_none());
    drop(zero);
    assert_eq!(shared.lock().bytes, 0);
}

/// With four partitions, one holding slow jobs is paused alone at twice its
/// even share of the bytes, and resumed below four fifths of it; the budget
/// in bytes pauses all of them, whatever the record count.
#[test]
fn a_partition_over_its_share_is_paused_alone() {
    let budget = 40 * RECORD_BYTES;
    let settings = KafkaSettings { max_in_memory_bytes: budget, ..KafkaSettings::default() };
    let (shared, _events) = with_settings(settings);
    shared.assign(&[0, 1, 2, 3], Default::default());
    // Share: 2 × 40 / 4 = 20 records.
    let mut slow = leases(&shared, 0, 0..19);
    assert_eq!(shared.lock().paused_counts().share, 0);
    slow.extend(leases(&shared, 0, 19..20));
    let counts = shared.lock().paused_counts();
    assert_eq!((counts.share, counts.memory, counts.any), (1, 0, 1), "{counts:?}");
    assert!(shared.lock().owned[&0].paused && !shared.lock().owned[&1].paused);

    // The others are read up to the budget, then all pause.
    let mut others = leases(&shared, 1, 0..19);
    assert_eq!(shared.lock().paused_counts().memory, 0);
    others.extend(leases(&shared, 2, 0..1));
    let counts = shared.lock().paused_counts();
    assert_eq!((counts.memory, counts.any), (4, 4), "{counts:?}");

    // Below four fifths of the share is 15 records: the fifth release
    // resumes it, while the budget still holds everyone (35 of 40 is over
    // 32).
    for _ in 0..4 {
        slow.pop().unwrap().done();
    }
    assert!(shared.lock().owned[&0].over_share);
    slow.pop().unwrap().done();
    assert!(!shared.lock().owned[&0].over_share);
    assert!(shared.lock().owned[&0].paused, "still paused for the budget");
    drop(others);
    let state = shared.lock();
    assert_eq!(state.paused_counts().any, 0, "{:?}", state.paused_counts());
    assert!(state.owned.values().all(|o| !o.paused));
}
