//! The shared store's GCRA (`gcra.lua`) against the local one ([`crate::rate`]): one sequence of
//! (time, key, rate) requests through both must get identical decisions.

use tokio::time::Instant;

use super::*;
use crate::rate::{Buckets, Gcra, Mode};

/// The server clock's microseconds at the start of the sequence: a real one's size, so the
/// script's arithmetic (Lua numbers are doubles) is tried at the magnitude it meets in service.
const EPOCH_US: u64 = 1_767_225_600_000_000;

/// `gcra.lua` with the time the test gives instead of the server's (`ARGV[4]`).
fn gcra_at_given_time() -> redis::Script {
    redis::Script::new(concat!(
        include_str!("../gcra.lua"),
        "return gcra(KEYS[1], tonumber(ARGV[4]), ARGV)\n"
    ))
}

/// A small deterministic generator (xorshift64), so a failure replays.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test]
async fn the_shared_gcra_decides_as_the_local_one() {
    let server = RedisServer::start();
    let mut raw = server.raw().await;
    let script = gcra_at_given_time();
    // Every interval is several seconds, so no key expires in Redis (by the real clock) while
    // the sequence, which runs in well under a second, still needs it.
    let rates = [
        Gcra::new(6, Duration::from_secs(60), 1),
        Gcra::new(3, Duration::from_secs(60), 3),
        Gcra::new(7, Duration::from_secs(60), 2),
        Gcra::new(1, Duration::from_secs(3600), 1),
        Gcra::new(360, Duration::from_secs(3600), 5),
    ];
    let keys = ["a", "b", "c"];
    let mut local = Buckets::<String>::new(100);
    let base = Instant::now();
    let mut random = Sequence(0x5eed_1234_abcd_ef01);
    let (mut now_us, mut last_delay) = (0u64, Duration::ZERO);
    let mut seen = [0usize; 3];
    for i in 0..2000 {
        now_us += match random.next(4) {
            0 => 0,
            // Exactly when the last early request would be on time, and a microsecond before.
            1 => u64::try_from(last_delay.as_micros()).unwrap(),
            2 => u64::try_from(last_delay.as_micros()).unwrap().saturating_sub(1),
            _ => random.next(30_000_000),
        };
        let key = keys[random.next(3) as usize];
        let gcra = rates[random.next(rates.len() as u64) as usize];
        let mode = if random.next(4) == 0 {
            Mode::Reserve
        } else {
            Mode::Admit
        };

        let want = local.take(key, &gcra, mode, base + Duration::from_micros(now_us));
        let (interval_us, tolerance_us, mode_arg) = gcra_args(&gcra, mode);
        let (kind, wait_us): (i64, i64) = script
            .key(format!("{PREFIX}:gcra:{key}"))
            .arg(interval_us)
            .arg(tolerance_us)
            .arg(mode_arg)
            .arg(EPOCH_US + now_us)
            .invoke_async(&mut raw)
            .await
            .expect("gcra.lua");
        assert_eq!(
            decision(kind, wait_us),
            Some(want),
            "request {i}: {key} at {now_us} µs, {gcra:?}, {mode:?}"
        );
        seen[kind as usize] += 1;
        last_delay = want.delay();
    }
    assert!(
        seen.iter().all(|&n| n >= 100),
        "allowed, wait, denied: {seen:?} (the sequence should try each often)"
    );
}
