//! When to refresh, and how long to back off: small pure functions, so the maths is
//! tested on its own (property tests) and shared by account creation and the
//! lifecycle engine.

use std::time::Duration;

use rand::Rng;

/// Tokens living less than this get a proportional window instead of the fixed one.
const SHORT_LIVED: i64 = 10 * 60 * 1000;

/// The proactive refresh time for a token that expires at `expires_at` (unix ms):
/// `expires_at - uniform(window_min, window_max)`. A token that lives less than ten
/// minutes is refreshed between 50% and 75% of its remaining life instead, so it
/// is never refreshed the moment it is issued. Never before `now`.
pub fn next_refresh_at(
    now: i64,
    expires_at: i64,
    window_min: Duration,
    window_max: Duration,
    rng: &mut impl Rng,
) -> i64 {
    let life = expires_at - now;
    if life <= 0 {
        return now;
    }
    let ahead = if life < SHORT_LIVED {
        rng.gen_range(life / 4..=life / 2)
    } else {
        let (min, max) = (window_min.as_millis() as i64, window_max.as_millis() as i64);
        rng.gen_range(min..=max.max(min)).min(life)
    };
    (expires_at - ahead).max(now)
}

/// Delay before retry number `failures` (1 = first retry): `base · 2^(failures-1)`
/// capped at `max`, with "equal jitter" (uniform in the upper half) so replicas and
/// accounts that failed together do not retry together.
pub fn backoff(failures: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let exponent = failures.saturating_sub(1).min(32);
    let full = base.saturating_mul(1u32 << exponent.min(31)).min(max);
    let half = full / 2;
    half + Duration::from_millis(rng.gen_range(0..=half.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    const MIN: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(180);

    proptest! {
        #[test]
        fn refresh_is_inside_the_window(now in 0i64..1_000_000_000_000, life in 0i64..100_000_000, seed: u64) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let at = next_refresh_at(now, now + life, MIN, MAX, &mut rng);
            prop_assert!(at >= now);
            prop_assert!(at <= now + life);
            if life >= SHORT_LIVED {
                prop_assert!(now + life - at >= 60_000 && now + life - at <= 180_000);
            } else if life > 0 {
                prop_assert!(at - now >= life / 2 && at - now <= life * 3 / 4 + 1);
            }
        }

        #[test]
        fn backoff_grows_and_is_capped(failures in 1u32..200, seed: u64) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let base = Duration::from_secs(5);
            let max = Duration::from_secs(3 * 3600);
            let delay = backoff(failures, base, max, &mut rng);
            let full = base.saturating_mul(1u32 << (failures - 1).min(31)).min(max);
            prop_assert!(delay >= full / 2 && delay <= full);
        }
    }

    /// 10,000 tokens issued in the same second: their refreshes spread over the
    /// whole window, not onto one instant.
    #[test]
    fn ten_thousand_tokens_issued_together_spread_across_the_window() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let now = 1_800_000_000_000;
        let expires = now + 3_600_000;
        let mut buckets = [0u32; 12]; // 10-second buckets over the 120-second window
        for _ in 0..10_000 {
            let ahead = expires - next_refresh_at(now, expires, MIN, MAX, &mut rng);
            let bucket = ((ahead - 60_000) / 10_000).min(11) as usize;
            buckets[bucket] += 1;
        }
        // Uniform would be 833 per bucket; allow generous noise, forbid clumping.
        for (i, count) in buckets.iter().enumerate() {
            assert!((650..=1020).contains(count), "bucket {i}: {count} ({buckets:?})");
        }
        let distinct_seconds: std::collections::HashSet<i64> = (0..10_000)
            .map(|_| next_refresh_at(now, expires, MIN, MAX, &mut rng) / 1000)
            .collect();
        assert!(
            distinct_seconds.len() > 100,
            "{} distinct seconds",
            distinct_seconds.len()
        );
    }

    #[test]
    fn backoff_doubles_per_failure() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let base = Duration::from_secs(5);
        let delays: Vec<u64> = (1..=6)
            .map(|f| backoff(f, base, Duration::from_secs(3600), &mut rng).as_secs())
            .collect();
        for (i, window) in delays.windows(2).enumerate() {
            assert!(window[1] >= window[0], "not growing at {i}: {delays:?}");
        }
        assert!(delays[5] >= 80, "{delays:?}");
    }
}
