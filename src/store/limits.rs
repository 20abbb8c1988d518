//! What bounds a session: its size (counted the same way by the layer and by
//! every store), the number of sessions one user may hold, and the stored
//! format a record was written in.

use std::num::NonZeroU32;

use super::{ChangeSet, Data, StoreError};

/// The size limit of one session, by default, in the layer and in every store
/// of this crate: 64 KiB of keys and JSON text. A session is read on every
/// request that uses it, so it should hold references (a user ID, a cart ID),
/// not documents.
pub const DEFAULT_MAX_SESSION_BYTES: usize = 64 * 1024;

/// The newest stored format this release reads and the one it writes.
///
/// Format 1 is the layout every release so far has written. Stores record a
/// format only when it differs from 1 (its absence *is* format 1), so today's
/// records cost nothing extra; a record marked with a later format, written by
/// a newer release, is refused with [`StoreError::UnsupportedFormat`]
/// rather than misread or overwritten.
///
/// [`StoreError::UnsupportedFormat`]: super::StoreError::UnsupportedFormat
pub const STORED_FORMAT: u32 = 1;

/// The bytes one session entry counts for: its key and its JSON text, which is
/// what every store holds for it (stores add a few bytes of their own per
/// record, which are not counted).
pub fn entry_bytes(key: &str, json: &str) -> usize {
    key.len() + json.len()
}

/// The bytes a session's data counts for: the sum of [`entry_bytes`] over its
/// entries.
pub fn data_bytes(data: &Data) -> usize {
    data.iter().map(|(k, v)| entry_bytes(k, v)).sum()
}

impl ChangeSet {
    /// The size of `data` once this change set is applied to it: the reference
    /// accounting stores must match when they refuse a write over their limit.
    pub fn bytes_after(&self, data: &Data) -> usize {
        let mut bytes = data_bytes(data);
        for key in self.removed() {
            if let Some(json) = data.get(key) {
                bytes -= entry_bytes(key, json);
            }
        }
        for (key, json) in self.inserted() {
            if let Some(old) = data.get(key) {
                bytes -= entry_bytes(key, old);
            }
            bytes += entry_bytes(key, json);
        }
        bytes
    }

    /// True when the change set sets a value. Only such writes are refused
    /// for size: a write that only removes keys, moves the expiry or changes
    /// the user always goes through, so a session over a lowered limit can
    /// still shrink and stay alive.
    pub fn sets_values(&self) -> bool {
        self.inserted().len() > 0
    }
}

/// What a store does when a session is about to join a user who already holds
/// the maximum number of sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CapPolicy {
    /// End the user's oldest sessions to make room: the new login wins (the
    /// common "at most N devices" rule).
    EvictOldest,
    /// Refuse the new login with [`StoreError::TooManySessions`]: the user
    /// must log out elsewhere first.
    ///
    /// [`StoreError::TooManySessions`]: super::StoreError::TooManySessions
    Refuse,
}

/// A cap on the live sessions of one user, applied atomically by the store
/// when a change set attaches a session to a user
/// ([`ChangeSet::cap_user_sessions`]).
///
/// # Examples
/// ```
/// use std::num::NonZeroU32;
/// use unstuck::store::{CapPolicy, SessionCap};
///
/// let three_devices = SessionCap::new(NonZeroU32::new(3).unwrap(), CapPolicy::EvictOldest);
/// assert_eq!(three_devices.max(), 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionCap {
    max: NonZeroU32,
    policy: CapPolicy,
}

impl SessionCap {
    /// At most `max` live sessions per user; `policy` says what happens to a
    /// login beyond that.
    pub const fn new(max: NonZeroU32, policy: CapPolicy) -> Self {
        Self { max, policy }
    }

    /// The most sessions a user may hold.
    pub const fn max(self) -> u32 {
        self.max.get()
    }

    /// What happens to a login beyond the cap.
    pub const fn policy(self) -> CapPolicy {
        self.policy
    }

    /// Given `held` live sessions of a user other than the one joining, how
    /// many of the oldest must end for it to join: `Ok(0)` when there is room.
    ///
    /// # Errors
    /// [`StoreError::TooManySessions`] when the user is at the cap and the
    /// policy refuses.
    pub fn to_evict(self, held: usize) -> Result<usize, StoreError> {
        let max = self.max.get() as usize;
        if held < max {
            Ok(0)
        } else if self.policy == CapPolicy::Refuse {
            Err(StoreError::TooManySessions { max: self.max() })
        } else {
            Ok(held + 1 - max)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn data(pairs: &[(&str, &str)]) -> Data {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn sizes_count_keys_and_json_text_after_the_changes() {
        let held = data(&[("a", "123"), ("bb", "\"x\"")]);
        assert_eq!(data_bytes(&held), 4 + 5);
        let mut changes = ChangeSet::new(SystemTime::UNIX_EPOCH);
        changes
            .remove("a")
            .remove("missing")
            .insert("bb", "1")
            .insert("c", "22");
        assert_eq!(changes.bytes_after(&held), 3 + 3);
        let mut applied = crate::store::Record {
            data: held,
            user: None,
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
        };
        changes.apply_to(&mut applied);
        assert_eq!(data_bytes(&applied.data), 6, "the reference agrees");
    }

    #[test]
    fn caps_evict_just_enough_or_refuse() {
        let two = NonZeroU32::new(2).unwrap();
        let evict = SessionCap::new(two, CapPolicy::EvictOldest);
        assert_eq!(evict.to_evict(0).unwrap(), 0);
        assert_eq!(evict.to_evict(1).unwrap(), 0);
        assert_eq!(evict.to_evict(2).unwrap(), 1);
        assert_eq!(evict.to_evict(5).unwrap(), 4);
        let refuse = SessionCap::new(two, CapPolicy::Refuse);
        assert_eq!(refuse.to_evict(1).unwrap(), 0);
        assert!(matches!(
            refuse.to_evict(2),
            Err(StoreError::TooManySessions { max: 2 })
        ));
    }
}
