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
    let settings = KafkaSettings { revoke_timeout, ..KafkaSettings::default() };
    let (assignments, events) = mpsc::unbounded_channel();
    (Arc::new(Shared::new(&settings, assignments)), events)
}

/// As the polling thread and `next` hand the record out: a lease, or `None`
/// when the record is skipped or dropped.
fn hand_out(shared: &Shared, partition: i32, offset: i64) -> Option<Lease> {
    let ownership = shared.buffer(partition)?;
    shared.hand_out(ownership, partition, offset)
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
