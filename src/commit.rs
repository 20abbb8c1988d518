//! What saving a session at the end of a request must do, decided without
//! touching the store: a pure function of the session's state, the timeouts
//! and the time, so every case is unit-tested. [`Session::commit`] carries the
//! plan out.
//!
//! [`Session::commit`]: crate::Session

use std::time::SystemTime;

use crate::expiry::Timeouts;
use crate::id::{SessionId, StorageKey};
use crate::store::{ChangeSet, Data, Record, Version};

/// A session that exists in the store, as this request found it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stored {
    pub id: SessionId,
    pub key: StorageKey,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
    /// The version the client's cookie says it last wrote, if any.
    pub seen: Option<Version>,
}

/// What a request left behind, taken out of the session once it is done.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The session the request works on, if it is in the store.
    pub stored: Option<Stored>,
    /// A session the request destroyed.
    pub ended: Option<StorageKey>,
    /// The user of the session the request destroyed, for its event.
    pub ended_user: Option<String>,
    pub changes: ChangeSet,
    pub cycle: bool,
    /// The contents of a session that is not stored yet.
    pub data: Data,
    pub user: Option<String>,
    /// The session has a lifetime of its own (its cookie persists).
    pub lifetime: bool,
    /// The timeouts that apply to it: its own, or the layer's.
    pub timeouts: Timeouts,
}

/// The store write, at most one, after any delete.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Nothing to write (and no cookie to send, unless a delete asks to
    /// remove it).
    Nothing,
    /// Store a new session under a fresh ID.
    Create(Record),
    /// Move the stored session to a fresh ID, applying the changes.
    Rotate(Stored, ChangeSet),
    /// Apply the request's changes (and the new expiry).
    Save(Stored, ChangeSet),
    /// Only push the idle deadline back.
    Touch(Stored, ChangeSet),
}

/// What committing a request does, in order.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    /// Delete this session first (the request destroyed it) and remove the
    /// cookie, unless the step issues a new one.
    pub delete: Option<StorageKey>,
    pub step: Step,
}

impl Plan {
    /// What the plan writes, as spans name it; `None` when it writes nothing.
    pub fn label(&self) -> Option<&'static str> {
        Some(match &self.step {
            Step::Nothing if self.delete.is_none() => return None,
            Step::Nothing => "delete",
            Step::Create(_) => "create",
            Step::Rotate(..) => "rotate",
            Step::Save(..) => "save",
            Step::Touch(..) => "touch",
        })
    }

    /// The stored session the plan starts from, if any.
    pub fn key(&self) -> Option<&StorageKey> {
        match &self.step {
            Step::Rotate(stored, _) | Step::Save(stored, _) | Step::Touch(stored, _) => {
                Some(&stored.key)
            }
            Step::Nothing | Step::Create(_) => self.delete.as_ref(),
        }
    }
}

/// Whether a request on the stored session leaves nothing to write at `now`
/// (no change, no new ID, no idle refresh due): what [`plan`] decides as
/// [`Step::Nothing`] for it, checked without taking anything out of the
/// session, so the most common request (a read) builds no [`Pending`].
pub(crate) fn writes_nothing(
    stored: &Stored,
    changes: &ChangeSet,
    cycle: bool,
    timeouts: &Timeouts,
    now: SystemTime,
) -> bool {
    !cycle
        && changes.is_touch_only()
        && timeouts
            .refresh(stored.created_at, stored.expires_at, now)
            .is_none()
}

/// Decides what to write for `pending` at `now`, under the session's timeouts.
pub(crate) fn plan(pending: Pending, now: SystemTime) -> Plan {
    let Pending {
        stored,
        ended,
        mut changes,
        cycle,
        data,
        user,
        timeouts,
        ..
    } = pending;
    let step = match stored {
        // A session not stored yet is stored only once it holds something.
        None if data.is_empty() && user.is_none() => Step::Nothing,
        None => Step::Create(Record {
            data,
            user,
            created_at: now,
            expires_at: timeouts.deadline(now, now),
        }),
        Some(stored) => {
            changes.set_expires_at(timeouts.deadline(stored.created_at, now));
            if cycle {
                Step::Rotate(stored, changes)
            } else if !changes.is_touch_only() {
                Step::Save(stored, changes)
            } else {
                match timeouts.refresh(stored.created_at, stored.expires_at, now) {
                    Some(refreshed) => {
                        changes.set_expires_at(refreshed);
                        Step::Touch(stored, changes)
                    }
                    None => Step::Nothing,
                }
            }
        }
    };
    Plan {
        delete: ended,
        step,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::UserChange;

    const MIN: Duration = Duration::from_secs(60);

    fn timeouts() -> Timeouts {
        // Refresh interval: a quarter of idle, 10 minutes.
        Timeouts::new(40 * MIN, 600 * MIN)
    }

    fn at(minutes: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + 1_000_000 * MIN + minutes * MIN
    }

    /// A session created at minute 0, last refreshed to expire at minute 40.
    fn stored() -> Stored {
        let id = SessionId::generate();
        Stored {
            key: id.storage_key(),
            id,
            created_at: at(0),
            expires_at: at(40),
            seen: None,
        }
    }

    fn pending(stored: Option<Stored>) -> Pending {
        Pending {
            stored,
            ended: None,
            ended_user: None,
            changes: ChangeSet::new(SystemTime::UNIX_EPOCH),
            cycle: false,
            data: Data::new(),
            user: None,
            lifetime: false,
            timeouts: timeouts(),
        }
    }

    #[test]
    fn writes_nothing_agrees_with_the_plan() {
        let mut cases = Vec::new();
        for minute in [1, 9, 10, 30] {
            cases.push((pending(Some(stored())), minute));
            let mut changed = pending(Some(stored()));
            changed.changes.insert("a", "1");
            cases.push((changed, minute));
            let mut removed = pending(Some(stored()));
            removed.changes.remove("a");
            cases.push((removed, minute));
            let mut user = pending(Some(stored()));
            user.changes.set_user(UserChange::Clear);
            cases.push((user, minute));
            let mut cycled = pending(Some(stored()));
            cycled.cycle = true;
            cases.push((cycled, minute));
        }
        let mut nothing = 0;
        for (p, minute) in cases {
            let stored = p.stored.clone().unwrap();
            let says = writes_nothing(&stored, &p.changes, p.cycle, &p.timeouts, at(minute));
            let planned = plan(p, at(minute));
            assert_eq!(says, planned.step == Step::Nothing, "{planned:?}");
            nothing += usize::from(says);
        }
        // Untouched before the refresh interval (minutes 1 and 9) only.
        assert_eq!(nothing, 2);
    }

    #[test]
    fn an_untouched_new_session_writes_nothing() {
        let plan = plan(pending(None), at(1));
        assert_eq!(plan.step, Step::Nothing);
        assert_eq!(plan.delete, None);
    }

    #[test]
    fn a_new_session_with_data_or_a_user_is_created_with_an_idle_deadline() {
        let mut p = pending(None);
        p.data.insert("a".into(), "1".into());
        let Step::Create(record) = plan(p, at(3)).step else {
            panic!("expected a create");
        };
        assert_eq!((record.created_at, record.expires_at), (at(3), at(43)));

        let mut p = pending(None);
        p.user = Some("alice".into());
        assert!(matches!(plan(p, at(3)).step, Step::Create(_)));
    }

    #[test]
    fn a_destroyed_session_is_deleted_and_a_fresh_one_created_only_with_data() {
        let old = stored().key;
        let mut p = pending(None);
        p.ended = Some(old.clone());
        let plan_a = plan(p, at(5));
        assert_eq!(plan_a.delete.as_ref(), Some(&old));
        assert_eq!(plan_a.step, Step::Nothing);

        let mut p = pending(None);
        p.ended = Some(old.clone());
        p.data.insert("notice".into(), "\"bye\"".into());
        let plan_b = plan(p, at(5));
        assert_eq!(plan_b.delete, Some(old));
        assert!(matches!(plan_b.step, Step::Create(_)));
    }

    #[test]
    fn a_plan_names_what_it_writes_and_the_session_it_starts_from() {
        assert_eq!(plan(pending(None), at(1)).label(), None);
        let old = stored();
        let mut p = pending(None);
        p.ended = Some(old.key.clone());
        let delete = plan(p, at(1));
        assert_eq!(
            (delete.label(), delete.key()),
            (Some("delete"), Some(&old.key))
        );
        let mut p = pending(Some(old.clone()));
        p.cycle = true;
        let rotate = plan(p, at(1));
        assert_eq!(
            (rotate.label(), rotate.key()),
            (Some("rotate"), Some(&old.key))
        );
        let mut p = pending(None);
        p.user = Some("alice".into());
        let create = plan(p, at(1));
        assert_eq!((create.label(), create.key()), (Some("create"), None));
    }

    #[test]
    fn changes_are_saved_with_the_slid_deadline() {
        let mut p = pending(Some(stored()));
        p.changes.insert("a", "1");
        let Step::Save(_, changes) = plan(p, at(5)).step else {
            panic!("expected a save");
        };
        assert_eq!(changes.expires_at(), at(45));
    }

    #[test]
    fn a_user_change_alone_is_a_save() {
        let mut p = pending(Some(stored()));
        p.changes.set_user(UserChange::Set("bob".into()));
        assert!(matches!(plan(p, at(1)).step, Step::Save(..)));
    }

    #[test]
    fn a_cycled_id_rotates_even_without_changes() {
        let mut p = pending(Some(stored()));
        p.cycle = true;
        let Step::Rotate(_, changes) = plan(p, at(2)).step else {
            panic!("expected a rotation");
        };
        assert_eq!(changes.expires_at(), at(42));
    }

    #[test]
    fn reads_touch_the_session_only_once_the_refresh_interval_is_gained() {
        let plan_early = plan(pending(Some(stored())), at(9));
        assert_eq!(plan_early.step, Step::Nothing, "gains 9 of 10 minutes");
        let Step::Touch(_, changes) = plan(pending(Some(stored())), at(10)).step else {
            panic!("expected a touch");
        };
        assert_eq!(changes.expires_at(), at(50));
        assert!(changes.is_touch_only());
    }

    #[test]
    fn no_deadline_ever_passes_the_absolute_timeout() {
        let mut late = stored();
        late.expires_at = at(590);
        let mut p = pending(Some(late.clone()));
        p.changes.insert("a", "1");
        let Step::Save(_, changes) = plan(p, at(580)).step else {
            panic!("expected a save");
        };
        assert_eq!(changes.expires_at(), at(600));
        late.expires_at = at(600);
        let capped = plan(pending(Some(late)), at(595));
        assert_eq!(capped.step, Step::Nothing, "nothing left to gain");
    }
}
