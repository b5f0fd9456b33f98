//! When to mint again: renewal at 80 % of a token's life (less jitter for
//! `token --refresh`), and the backoff after failures, for `token` and
//! `agent` alike.
//!
//! Pure timing on the monotonic clock; no I/O, nothing of the server side.

use std::time::{Duration, Instant};

use super::Issued;

/// Up to 5 % of `life`, so a fleet started together does not renew together.
pub(super) fn jitter(life: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let r = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX); // 0..=1
    life.mul_f64(0.05 * r)
}

/// No token is renewed sooner than this after it was minted, however short
/// it lives: a token too short to renew in time must not become a tight loop.
pub(super) const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// Delays between attempts that failed, or that gave a token too short to
/// renew in time: 1 s, doubling to 30 s.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    pub(super) fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub(super) fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        wait
    }

    pub(super) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// When `token --refresh` mints again after writing `issued`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Renewal {
    /// At 80 % of the token's life less `jitter`, this long from now.
    In(Duration),
    /// The token lives too short for that: after this backoff instead.
    TooShort(Duration),
}

pub(super) fn renewal(
    issued: &Issued,
    jitter: Duration,
    now: Instant,
    backoff: &mut Backoff,
) -> Renewal {
    let at = issued.renew_at().checked_sub(jitter).unwrap_or(now);
    let wait = at.saturating_duration_since(now);
    if wait < MIN_RENEWAL_INTERVAL {
        Renewal::TooShort(backoff.step().max(MIN_RENEWAL_INTERVAL))
    } else {
        backoff.reset();
        Renewal::In(wait)
    }
}

/// A duration in whole seconds, to log.
pub(super) fn seconds(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(life: Duration, since: Instant) -> Issued {
        crate::client::mint::issued_for_tests(life, since)
    }

    #[test]
    fn refresh_renews_at_80_percent_of_the_life_counted_from_the_mint() {
        let since = Instant::now();
        let mut backoff = Backoff::new();
        let token = issued(Duration::from_secs(100), since);
        let later = since + Duration::from_secs(10);
        assert_eq!(
            renewal(&token, Duration::from_secs(2), later, &mut backoff),
            Renewal::In(Duration::from_secs(68))
        );
    }

    #[test]
    fn refresh_waits_at_least_a_second_and_backs_off_on_tokens_too_short_to_renew() {
        let since = Instant::now();
        let mut backoff = Backoff::new();
        let waits: Vec<_> = (0..7)
            .map(|_| {
                renewal(
                    &issued(Duration::ZERO, since),
                    Duration::ZERO,
                    since,
                    &mut backoff,
                )
            })
            .collect();
        let expected = [1, 2, 4, 8, 16, 30, 30].map(|s| Renewal::TooShort(Duration::from_secs(s)));
        assert_eq!(waits, expected);
        // Past the renewal time (a slow write): the same.
        let token = issued(Duration::from_secs(10), since);
        let late = since + Duration::from_secs(20);
        assert_eq!(
            renewal(&token, Duration::ZERO, late, &mut backoff),
            Renewal::TooShort(Duration::from_secs(30))
        );
        // A token that lives long enough ends the backoff.
        let token = issued(Duration::from_secs(10), since);
        assert_eq!(
            renewal(&token, Duration::ZERO, since, &mut backoff),
            Renewal::In(Duration::from_secs(8))
        );
        assert_eq!(backoff.step(), Duration::from_secs(1));
    }
}
