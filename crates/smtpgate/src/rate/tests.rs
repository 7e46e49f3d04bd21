use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn interval_and_tolerance_come_from_rate_and_burst() {
    let gcra = Gcra::new(3, secs(60), 2);
    assert_eq!(gcra.interval(), secs(20));
    assert_eq!(gcra.tolerance(), secs(20));
    assert_eq!(Gcra::new(3, secs(60), 1).tolerance(), Duration::ZERO);
    // Whole microseconds, as the shared store counts: 60 s / 7 = 8.571428571 s.
    assert_eq!(Gcra::new(7, secs(60), 1).interval(), Duration::from_micros(8_571_428));
}

#[test]
fn admit_refuses_without_counting_and_says_how_long() {
    let gcra = Gcra::new(60, secs(60), 1);
    let mut b = Buckets::new(10);
    let t0 = Instant::now();
    assert_eq!(b.take("k", &gcra, Mode::Admit, t0), Decision::Allowed);
    let almost = t0 + Duration::from_millis(999);
    assert_eq!(
        b.take("k", &gcra, Mode::Admit, almost),
        Decision::Denied(Duration::from_millis(1))
    );
    assert_eq!(b.get("k"), Some(t0 + secs(1)), "a refusal is not counted");
    assert_eq!(b.take("k", &gcra, Mode::Admit, t0 + secs(1)), Decision::Allowed);
}

#[test]
fn a_burst_comes_at_once_then_the_rate() {
    let gcra = Gcra::new(3, secs(60), 3);
    let mut b = Buckets::new(10);
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(b.take("k", &gcra, Mode::Admit, t0), Decision::Allowed);
    }
    assert_eq!(b.take("k", &gcra, Mode::Admit, t0), Decision::Denied(secs(20)));
    assert_eq!(b.take("k", &gcra, Mode::Admit, t0 + secs(20)), Decision::Allowed);
}

#[test]
fn reserve_hands_out_slots_in_order_of_asking() {
    let gcra = Gcra::new(60, secs(60), 1);
    let mut b = Buckets::new(10);
    let t0 = Instant::now();
    assert_eq!(b.take("k", &gcra, Mode::Reserve, t0), Decision::Allowed);
    assert_eq!(b.take("k", &gcra, Mode::Reserve, t0), Decision::Wait(secs(1)));
    assert_eq!(b.take("k", &gcra, Mode::Reserve, t0), Decision::Wait(secs(2)));
    let later = t0 + Duration::from_millis(1500);
    assert_eq!(
        b.take("k", &gcra, Mode::Reserve, later),
        Decision::Wait(Duration::from_millis(1500))
    );
    // With a burst, a reservation waits only until it is within the tolerance.
    let burst = Gcra::new(60, secs(60), 3);
    let mut b = Buckets::new(10);
    for _ in 0..3 {
        assert_eq!(b.take("k", &burst, Mode::Reserve, t0), Decision::Allowed);
    }
    assert_eq!(b.take("k", &burst, Mode::Reserve, t0), Decision::Wait(secs(1)));
}

#[test]
fn tracked_keys_are_bounded_and_idle_ones_forgotten() {
    let mut t = Buckets::<String>::new(3);
    let gcra = Gcra::new(1, secs(10), 1);
    let now = Instant::now();
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        let at = now + secs(i as u64);
        t.set(*key, gcra.decide(Mode::Admit, None, at).1.unwrap());
    }
    // "a" is the closest to being forgotten: it makes room for "d".
    t.set("d", gcra.decide(Mode::Admit, None, now + secs(3)).1.unwrap());
    assert_eq!(t.len(), 3);
    assert_eq!(t.get("a"), None);
    assert!(t.get("b").is_some() && t.get("d").is_some());
    // Once their allowance is full again they go by themselves.
    t.forget_expired(now + secs(11));
    assert_eq!(t.len(), 2);
    t.forget_expired(now + secs(13));
    assert_eq!(t.len(), 0);
}

#[test]
fn a_key_set_again_moves_in_the_index() {
    let mut t = Buckets::<String>::new(2);
    let now = Instant::now();
    t.set("a", now + secs(1));
    t.set("b", now + secs(2));
    t.set("a", now + secs(3));
    // "b" is now the closest to being forgotten.
    t.set("c", now + secs(4));
    assert_eq!(t.get("b"), None);
    assert_eq!(t.get("a"), Some(now + secs(3)));
    t.forget_expired(now + secs(3));
    assert_eq!(t.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn keyed_rate_admits_a_minute_s_worth_at_once() {
    let rate = KeyedRate::per_minute(2, 10);
    assert!(rate.admit("a") && rate.admit("a"));
    assert!(!rate.admit("a"));
    assert!(rate.admit("b"));
    tokio::time::advance(secs(30)).await;
    assert!(rate.admit("a"));
    assert!(!rate.admit("a"));
}
