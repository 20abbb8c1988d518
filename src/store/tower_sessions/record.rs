//! How a tower-sessions record is laid out in our stores, shared by both
//! tower-sessions versions: the storage key derived from their session ID, and
//! their whole data map kept as one JSON value.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::id::StorageKey;
use crate::store::{ChangeSet, Record};

/// The one key of our record that holds a tower-sessions session's whole data
/// map, as a JSON object.
pub(crate) const DATA_KEY: &str = "tower_sessions.data";

/// Prepended to a tower-sessions ID before hashing. Our own session IDs are
/// hashed bare (32 bytes), theirs with this tag (26 + 16 bytes), so the two kinds
/// of storage key can never coincide and both kinds of session share one store.
const DOMAIN: &[u8] = b"unstuck:tower-sessions:v1\0";

/// The storage key of the tower-sessions session whose ID is `id` (the `i128`
/// inside their `Id`): SHA-256 of a domain tag and the ID, like every storage key.
pub(crate) fn storage_key(id: i128) -> StorageKey {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update(id.to_le_bytes());
    StorageKey::parse(&URL_SAFE_NO_PAD.encode(hasher.finalize()))
        .expect("an unpadded base64url SHA-256 digest has the form of a storage key")
}

/// The new record our store keeps for a tower-sessions session created now.
pub(crate) fn new_record(
    data: &HashMap<String, Value>,
    expiry_date: OffsetDateTime,
) -> Result<Record, serde_json::Error> {
    Ok(Record {
        data: HashMap::from([(DATA_KEY.to_owned(), serde_json::to_string(data)?)]),
        user: None,
        created_at: SystemTime::now(),
        expires_at: expiry_date.into(),
    })
}

/// The change set that replaces a tower-sessions session's data and expiry:
/// one key, so the replacement is atomic in every store.
pub(crate) fn replacement(
    data: &HashMap<String, Value>,
    expiry_date: OffsetDateTime,
) -> Result<ChangeSet, serde_json::Error> {
    let mut changes = ChangeSet::new(expiry_date.into());
    changes.insert(DATA_KEY, serde_json::to_string(data)?);
    Ok(changes)
}

/// Why a record in our store is not a tower-sessions session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotTheirs {
    /// The record has no tower-sessions data key.
    #[error("the stored session holds no tower-sessions data")]
    Missing,
    /// The data key does not hold a JSON object.
    #[error("the stored tower-sessions data does not decode: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The expiry lies outside what tower-sessions can represent (years
    /// -9999 to 9999); only a damaged or forged record holds one.
    #[error("the stored session's expiry is out of range")]
    ExpiryOutOfRange,
}

/// `at` as tower-sessions' expiry date, or `None` outside its range
/// (`OffsetDateTime::from` panics there).
pub(crate) fn expiry_date(at: SystemTime) -> Option<OffsetDateTime> {
    let nanos = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok()?,
        Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// The data map and expiry of a tower-sessions session kept in `record`.
pub(crate) fn parts(
    record: &Record,
) -> Result<(HashMap<String, Value>, OffsetDateTime), NotTheirs> {
    let json = record.data.get(DATA_KEY).ok_or(NotTheirs::Missing)?;
    let data = serde_json::from_str(json)?;
    let expiry = expiry_date(record.expires_at).ok_or(NotTheirs::ExpiryOutOfRange)?;
    Ok((data, expiry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionId;

    #[test]
    fn storage_keys_are_stable_distinct_and_never_the_id() {
        let id = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef_i128;
        assert_eq!(storage_key(id), storage_key(id));
        assert_ne!(storage_key(id), storage_key(id + 1));
        assert!(!storage_key(id).as_str().contains(&id.to_string()));
        // Our own IDs hash 32 bytes without the tag: a different input length,
        // so no tower-sessions key can equal one of ours.
        assert_ne!(storage_key(0), SessionId::generate().storage_key());
    }

    #[test]
    fn data_and_expiry_round_trip_through_our_record() {
        let data = HashMap::from([
            ("n".to_owned(), serde_json::json!(3)),
            (
                "user".to_owned(),
                serde_json::json!({"name": "ann", "roles": [1, 2]}),
            ),
        ]);
        let expiry = OffsetDateTime::from_unix_timestamp(4_000_000_000).unwrap();
        let record = new_record(&data, expiry).unwrap();
        assert_eq!(parts(&record).unwrap(), (data.clone(), expiry));

        let mut changed = record.clone();
        let later = expiry + time::Duration::seconds(60);
        let fewer = HashMap::from([("n".to_owned(), serde_json::json!(4))]);
        replacement(&fewer, later).unwrap().apply_to(&mut changed);
        assert_eq!(parts(&changed).unwrap(), (fewer, later));
        assert_eq!(changed.created_at, record.created_at);
    }

    /// Found by the `tower_sessions_record` fuzz target: `OffsetDateTime::from`
    /// panicked on a record expiring after the year 9999.
    #[test]
    fn an_expiry_past_the_year_9999_is_an_error_not_a_panic() {
        let far = UNIX_EPOCH + std::time::Duration::from_secs(400_000_000_000);
        let record = Record {
            data: HashMap::from([(DATA_KEY.to_owned(), "{}".to_owned())]),
            user: None,
            created_at: UNIX_EPOCH,
            expires_at: far,
        };
        assert!(matches!(parts(&record), Err(NotTheirs::ExpiryOutOfRange)));
        let before = UNIX_EPOCH - std::time::Duration::from_secs(400_000_000_000);
        assert_eq!(expiry_date(before), None);
        let now = SystemTime::now();
        assert_eq!(expiry_date(now), Some(OffsetDateTime::from(now)));
    }

    #[test]
    fn a_record_without_their_data_is_reported_not_decoded_as_empty() {
        let mut record = new_record(&HashMap::new(), OffsetDateTime::now_utc()).unwrap();
        record.data.clear();
        assert!(matches!(parts(&record), Err(NotTheirs::Missing)));
        record.data.insert(DATA_KEY.to_owned(), "[1]".to_owned());
        assert!(matches!(parts(&record), Err(NotTheirs::Malformed(_))));
    }
}
