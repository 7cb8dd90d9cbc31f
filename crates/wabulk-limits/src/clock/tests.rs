use super::*;

#[test]
fn conversions() {
    assert_eq!(Moment::from_millis(1500).as_nanos(), 1_500_000_000);
    assert_eq!(Moment::from_nanos(1_999_999).as_millis(), 1);
    assert_eq!(Moment::from_secs_f64(1.5), Moment::from_millis(1500));
    assert_eq!(Moment::from_secs_f64(-3.0), Moment::ZERO);
    assert_eq!(Moment::from_secs_f64(f64::NAN), Moment::ZERO);
    assert_eq!(Moment::from_secs_f64(1e30), Moment::MAX);
    assert_eq!(Moment::from_millis(u64::MAX), Moment::MAX);
    assert_eq!(Moment::from_secs(2), Moment::from_millis(2000));
}

#[test]
fn arithmetic_saturates() {
    let t = Moment::from_millis(10);
    assert_eq!(t + Duration::from_millis(5), Moment::from_millis(15));
    assert_eq!(t - Duration::from_millis(15), Moment::ZERO);
    assert_eq!(Moment::MAX + Duration::from_secs(1), Moment::MAX);
    assert_eq!(t + Duration::MAX, Moment::MAX);
    assert_eq!(t.saturating_since(Moment::from_millis(4)), Duration::from_millis(6));
    assert_eq!(t.saturating_since(Moment::from_millis(40)), Duration::ZERO);
}

#[test]
fn fake_clock_clones_share_time() {
    let a = FakeClock::new(Moment::from_secs(1));
    let b = a.clone();
    a.advance(Duration::from_millis(250));
    assert_eq!(b.now(), Moment::from_millis(1250));
    b.set(Moment::from_millis(7));
    assert_eq!(a.now(), Moment::from_millis(7));
}

#[test]
fn monotonic_clock_does_not_go_back() {
    let c = MonotonicClock::new();
    let a = c.now();
    let b = c.now();
    assert!(b >= a);
}

#[test]
fn not_until_wait_time() {
    let n = NotUntil(Moment::from_millis(30));
    assert_eq!(n.earliest(), Moment::from_millis(30));
    assert_eq!(n.wait_time_from(Moment::from_millis(10)), Duration::from_millis(20));
    assert_eq!(n.wait_time_from(Moment::from_millis(40)), Duration::ZERO);
}
