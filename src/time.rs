//! Instants as stores write them: whole milliseconds since the Unix epoch.
// Each store uses the conversions it needs; builds with only some stores
// leave the others unused.
#![cfg_attr(not(all(feature = "redis", feature = "postgres")), allow(dead_code))]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `at` in milliseconds since the Unix epoch (negative before it), saturating
/// at the ends of `i64`.
pub(crate) fn unix_millis(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The same for stores that keep unsigned counts: instants before the epoch
/// become 0.
pub(crate) fn unix_millis_u64(at: SystemTime) -> u64 {
    u64::try_from(unix_millis(at)).unwrap_or(0)
}

/// The instant `ms` milliseconds from the Unix epoch, or `None` outside what
/// `SystemTime` can hold.
pub(crate) fn from_unix_millis(ms: i64) -> Option<SystemTime> {
    let offset = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

/// The instant `ms` milliseconds after the Unix epoch.
pub(crate) fn from_unix_millis_u64(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_at_millisecond_precision() {
        for ms in [0, 1, 1_700_000_000_123, -1_500] {
            assert_eq!(unix_millis(from_unix_millis(ms).unwrap()), ms);
        }
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_999);
        assert_eq!(unix_millis(t), 1_700_000_000_123);
        assert_eq!(unix_millis_u64(from_unix_millis_u64(42)), 42);
        assert_eq!(unix_millis_u64(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
