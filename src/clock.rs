//! Time, in one place: the wall clock the issuer stamps tokens and manifests
//! with, and the steady time its background work is scheduled on. The
//! server reads the wall clock only through a [`Clock`] passed in, so tests
//! drive rotation with a [`ManualClock`] instead of sleeping.
//!
//! Imports nothing of the crate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A future that resolves once a clock has reached a point.
pub type Wait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The two times a server needs.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The wall clock: token times, manifest times, metrics.
    fn now(&self) -> SystemTime;
    /// Steady time since the clock was made, never going back and never
    /// jumping with the wall clock: what schedules are measured in.
    fn elapsed(&self) -> Duration;
    /// Resolves once [`elapsed`](Clock::elapsed) has reached `at`.
    fn wait_until(&self, at: Duration) -> Wait<'_>;
}

/// A shared clock, as the server's parts hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }

    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn wait_until(&self, at: Duration) -> Wait<'_> {
        Box::pin(tokio::time::sleep_until((self.start + at).into()))
    }
}

/// A clock that moves only when told: [`advance`](ManualClock::advance)
/// moves both times, as time passing does; [`jump`](ManualClock::jump)
/// moves the wall clock alone, as a clock set wrong does.
pub struct ManualClock {
    wall: Mutex<SystemTime>,
    elapsed: tokio::sync::watch::Sender<Duration>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("wall", &self.now())
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl ManualClock {
    /// A clock that reads `wall` until moved.
    pub fn new(wall: SystemTime) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            wall: Mutex::new(wall),
            elapsed: tokio::sync::watch::Sender::new(Duration::ZERO),
        })
    }

    /// Time passes: both clocks move on by `by`, and whatever waits for
    /// that point wakes.
    pub fn advance(&self, by: Duration) {
        self.jump(by);
        self.elapsed.send_modify(|e| *e += by);
    }

    /// The wall clock alone moves on by `by` (set wrong, or by NTP).
    pub fn jump(&self, by: Duration) {
        let mut wall = self.wall.lock().unwrap_or_else(|e| e.into_inner());
        *wall += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.wall.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.borrow()
    }

    fn wait_until(&self, at: Duration) -> Wait<'_> {
        let mut moved = self.elapsed.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock, which outlives this.
            let _ = moved.wait_for(|e| *e >= at).await;
        })
    }
}

/// The system's wall clock, for the client side and the one-shot commands:
/// they run once, on the host's own time, and have no clock to be handed.
pub fn system_now() -> SystemTime {
    SystemTime::now()
}

/// Whole seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_its_waiters_only_when_it_gets_there() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = ManualClock::new(t0);
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.wait_until(Duration::from_secs(10)).await })
        };
        clock.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // A jump of the wall clock is no passing of time.
        clock.jump(Duration::from_secs(86400));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_secs(1));
        waiter.await.unwrap();
        assert_eq!(clock.elapsed(), Duration::from_secs(10));
        assert_eq!(clock.now(), t0 + Duration::from_secs(86410));
    }
}
