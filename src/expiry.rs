//! Idle and absolute timeouts, and when an idle deadline is worth refreshing.

use std::time::{Duration, SystemTime};

/// A session's lifetime as of the current request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expiry {
    /// When the session was created.
    pub created_at: SystemTime,
    /// When it expires if no request refreshes it (the idle deadline, capped by
    /// the absolute one).
    pub expires_at: SystemTime,
    /// When it expires whatever happens: creation plus the absolute timeout.
    pub absolute_deadline: SystemTime,
}

/// The timeouts a layer applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub idle: Duration,
    pub absolute: Duration,
    /// Push the idle deadline back only when that gains at least this much;
    /// `None`: a quarter of the idle timeout, whatever it is set to.
    pub refresh_interval: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::new(Duration::from_secs(30 * 60), Duration::from_secs(8 * 3600))
    }
}

impl Timeouts {
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Self {
            idle,
            absolute,
            refresh_interval: None,
        }
    }

    pub fn refresh_interval(&self) -> Duration {
        self.refresh_interval.unwrap_or(self.idle / 4)
    }

    pub fn absolute_deadline(&self, created_at: SystemTime) -> SystemTime {
        created_at + self.absolute
    }

    /// The expiry a session gets when a request touches it `now`.
    pub fn deadline(&self, created_at: SystemTime, now: SystemTime) -> SystemTime {
        (now + self.idle).min(self.absolute_deadline(created_at))
    }

    /// Whether a session that expires at `expires_at` is due for an idle refresh
    /// `now`, and if so its new deadline.
    pub fn refresh(
        &self,
        created_at: SystemTime,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let next = self.deadline(created_at, now);
        let gain = next.duration_since(expires_at).ok()?;
        (!gain.is_zero() && gain >= self.refresh_interval()).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn deadline_slides_with_activity_but_never_past_the_absolute_timeout() {
        let t = Timeouts::new(30 * MIN, 60 * MIN);
        let created = SystemTime::UNIX_EPOCH + 1000 * MIN;
        assert_eq!(t.deadline(created, created), created + 30 * MIN);
        assert_eq!(t.deadline(created, created + 20 * MIN), created + 50 * MIN);
        assert_eq!(t.deadline(created, created + 45 * MIN), created + 60 * MIN);
    }

    #[test]
    fn refresh_is_throttled_to_the_interval() {
        let t = Timeouts::new(40 * MIN, 600 * MIN);
        let created = SystemTime::UNIX_EPOCH + 1000 * MIN;
        let expires = created + 40 * MIN;
        assert_eq!(t.refresh(created, expires, created + 5 * MIN), None);
        assert_eq!(
            t.refresh(created, expires, created + 10 * MIN),
            Some(created + 50 * MIN)
        );
    }

    #[test]
    fn no_refresh_once_capped_by_the_absolute_deadline() {
        let t = Timeouts::new(30 * MIN, 60 * MIN);
        let created = SystemTime::UNIX_EPOCH + 1000 * MIN;
        let capped = created + 60 * MIN;
        assert_eq!(t.refresh(created, capped, created + 50 * MIN), None);
    }
}
