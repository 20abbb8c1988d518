//! How a session is laid out in Redis: key names, hash fields, and turning
//! replies back into records.

use std::collections::HashMap;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_redis::redis::{self, FromRedisValue, Value};
use sha2::{Digest, Sha256};

use crate::id::StorageKey;
use crate::store::{Record, STORED_FORMAT, StoreError, Version};

pub(super) const CREATED: &str = "m:created";
pub(super) const EXPIRES: &str = "m:expires";
pub(super) const USER: &str = "m:user";
pub(super) const VERSION: &str = "m:v";
pub(super) const INDEX_SCORE: &str = "m:iscore";
/// The session's size, stamped with the version it was counted at (see
/// [`scripts`](super::scripts)).
pub(super) const SIZE: &str = "m:sz";
/// The stored format, written only when it is not 1 (absent = format 1, the
/// only one so far), so records cost no byte for it and every hash written
/// before formats were named reads as what it is.
pub(super) const FORMAT: &str = "m:fmt";
pub(super) const DATA: &str = "d:";

/// Builds the `d:<key>` field names of one command in one reused buffer
/// (`Cmd::arg` copies the bytes), rather than allocating a string per field.
#[derive(Default)]
pub(super) struct DataField(Vec<u8>);

impl DataField {
    /// The field holding `name`'s value.
    pub fn of(&mut self, name: &str) -> &[u8] {
        self.0.clear();
        self.0.extend_from_slice(DATA.as_bytes());
        self.0.extend_from_slice(name.as_bytes());
        &self.0
    }
}

/// The session hash's key: the braces are a Cluster hash tag, so everything
/// about one session lives on one slot.
pub(super) fn session_key(prefix: &str, key: &StorageKey) -> String {
    // Not `format!`: this runs on every store call, and the formatting
    // machinery costs ~1,500 instructions where a concatenation costs ~100.
    [prefix, "{", key.as_str(), "}"].concat()
}

/// The storage key back from a session hash's key (as Redis names it in an
/// invalidation), or `None` for any other key.
pub(super) fn storage_key_of(prefix: &str, redis_key: &[u8]) -> Option<StorageKey> {
    let rest = redis_key.strip_prefix(prefix.as_bytes())?;
    let inner = rest.strip_prefix(b"{")?.strip_suffix(b"}")?;
    StorageKey::parse(std::str::from_utf8(inner).ok()?)
}

/// The user index key carries a hash of the user, not the name: user names can
/// be personal data (e-mail addresses), and key names are shown by every tool.
pub(super) fn index_key(prefix: &str, user: &str) -> String {
    let hash = URL_SAFE_NO_PAD.encode(Sha256::digest(user.as_bytes()));
    format!("{prefix}user:{{{hash}}}")
}

/// What the save script answered.
pub(super) struct SaveReply {
    pub applied: bool,
    pub previous: Option<String>,
    pub current: Option<String>,
    pub version: Version,
    pub rescore: bool,
}

impl SaveReply {
    /// An applied save gives `{1, version, rescore, previous, current}`, or
    /// just `{1, version}` when the user was kept and needs no re-score; a
    /// session that is gone gives `{0}`; a save refused for size (2) or format
    /// (3) is an error.
    pub fn parse(reply: Vec<Value>) -> Result<Self, StoreError> {
        let mut reply = reply.into_iter();
        let mut next = || reply.next().unwrap_or(Value::Nil);
        let code = field::<i64>(next())?;
        match code {
            2 => {
                return Err(StoreError::TooLarge {
                    size: field(next())?,
                    limit: field(next())?,
                });
            }
            3 => return Err(unsupported(&field::<String>(next())?)),
            _ => {}
        }
        Ok(Self {
            applied: code == 1,
            version: Version::new(field::<Option<u64>>(next())?.unwrap_or(0)),
            rescore: field::<Option<i64>>(next())? == Some(1),
            previous: field(next())?,
            current: field(next())?,
        })
    }
}

pub(super) fn field<T: FromRedisValue>(value: Value) -> Result<T, StoreError> {
    redis::from_redis_value(value).map_err(StoreError::backend)
}

/// The score a session's user index entry gets when it is written: the
/// session's expiry plus as long again as it has left to live. Entries are
/// trimmed only once their score has passed, so the score must never fall
/// behind the session's expiry (or "log out everywhere" would miss it); keeping
/// it ahead by a whole lifetime means a session with sliding expiry re-scores
/// its entry about once per idle period rather than on every save, and an
/// entry outlives its session by at most one lifetime.
pub(super) fn index_score(expires_at: SystemTime) -> u64 {
    let expires = millis(expires_at);
    let now = millis(SystemTime::now());
    expires.saturating_add(expires.saturating_sub(now))
}

/// Rebuilds a record and its version (`m:v`, 0 for hashes written before
/// versions existed) from its hash fields.
pub(super) fn decode_versioned(
    fields: HashMap<String, String>,
) -> Result<(Record, Version), StoreError> {
    let len = fields.len();
    decode_fields(len, fields.into_iter().map(Ok))
}

/// Rebuilds a record and its version from an `HGETALL` reply (a flat array
/// in RESP2, a map in RESP3), straight from the reply's strings: `None` for
/// an empty hash (the session does not exist).
///
/// # Errors
/// As [`decode`]; also a reply that is not a hash of strings.
pub(super) fn decode_reply(reply: Value) -> Result<Option<(Record, Version)>, StoreError> {
    let pair = |(field, value)| Ok((text(field)?, text(value)?));
    let decoded = match reply {
        Value::Nil => return Ok(None),
        Value::Array(items) if items.is_empty() => return Ok(None),
        Value::Map(pairs) if pairs.is_empty() => return Ok(None),
        Value::Array(items) => {
            let len = items.len() / 2;
            let mut items = items.into_iter();
            let pairs = std::iter::from_fn(move || Some((items.next()?, items.next()?)));
            decode_fields(len, pairs.map(pair))
        }
        Value::Map(pairs) => decode_fields(pairs.len(), pairs.into_iter().map(pair)),
        _ => Err(StoreError::backend(
            "a session hash read from Redis came back as something else than fields",
        )),
    };
    decoded.map(Some)
}

/// A reply string, taken as is when it is a bulk string (no copy).
fn text(value: Value) -> Result<String, StoreError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).map_err(StoreError::backend),
        other => field(other),
    }
}

/// The error for a hash in stored format `found` (anything but 1).
pub(super) fn unsupported(found: &str) -> StoreError {
    StoreError::UnsupportedFormat {
        // A format that is not even a number is from no release we know.
        found: found.parse().unwrap_or(u32::MAX),
        supported: STORED_FORMAT,
    }
}

/// Rebuilds a record from its hash fields.
///
/// # Errors
/// A hash in a stored format other than 1 is refused, not guessed at.
pub(super) fn decode(fields: HashMap<String, String>) -> Result<Record, StoreError> {
    decode_versioned(fields).map(|(record, _)| record)
}

/// Rebuilds a record and its version from `len` (about) field/value pairs, in
/// one pass: values move into the record as they are.
fn decode_fields(
    len: usize,
    fields: impl Iterator<Item = Result<(String, String), StoreError>>,
) -> Result<(Record, Version), StoreError> {
    let mut data = HashMap::with_capacity(len);
    let (mut created, mut expires, mut user, mut version, mut format) =
        (None, None, None, None, None);
    for pair in fields {
        let (mut field, value) = pair?;
        if field.starts_with(DATA) {
            field.drain(..DATA.len());
            data.insert(field, value);
        } else {
            match field.as_str() {
                CREATED => created = value.parse::<u64>().ok(),
                EXPIRES => expires = value.parse::<u64>().ok(),
                USER => user = Some(value),
                VERSION => version = value.parse::<u64>().ok(),
                FORMAT => format = Some(value),
                // Fields a later version may add: ignore rather than fail.
                _ => {}
            }
        }
    }
    if let Some(found) = format.filter(|f| f != "1") {
        return Err(unsupported(&found));
    }
    match (created, expires) {
        (Some(created), Some(expires)) => Ok((
            Record {
                data,
                user,
                created_at: from_millis(created),
                expires_at: from_millis(expires),
            },
            Version::new(version.unwrap_or(0)),
        )),
        _ => Err(StoreError::backend(
            "a session hash in Redis lacks its creation or expiry time",
        )),
    }
}

pub(super) use crate::time::{from_unix_millis_u64 as from_millis, unix_millis_u64 as millis};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::id::SessionId;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_hash_decodes_into_its_record_and_version() {
        let (record, version) = decode_versioned(fields(&[
            ("m:created", "1000"),
            ("m:expires", "5000"),
            ("m:user", "alice"),
            ("m:v", "7"),
            ("m:iscore", "9000"),
            ("m:later", "ignored"),
            ("d:count", "3"),
            ("d:d:odd", "\"x\""),
        ]))
        .unwrap();
        assert_eq!(version, Version::new(7));
        assert_eq!(record.user.as_deref(), Some("alice"));
        assert_eq!(record.created_at, from_millis(1000));
        assert_eq!(record.expires_at, from_millis(5000));
        assert_eq!(record.data.len(), 2);
        assert_eq!(record.data["count"], "3");
        assert_eq!(record.data["d:odd"], "\"x\"");
    }

    #[test]
    fn format_1_is_the_absence_of_a_format_and_later_formats_are_refused() {
        let today = [("m:created", "1000"), ("m:expires", "5000"), ("d:a", "1")];
        assert!(decode(fields(&today)).is_ok());
        let marked = [&today[..], &[("m:fmt", "1")]].concat();
        assert!(decode(fields(&marked)).is_ok());
        for later in ["2", "x"] {
            let newer = [&today[..], &[("m:fmt", later)]].concat();
            assert!(matches!(
                decode(fields(&newer)),
                Err(StoreError::UnsupportedFormat { supported: 1, .. })
            ));
        }
    }

    #[test]
    fn refused_saves_parse_as_errors() {
        let too_large = SaveReply::parse(vec![
            Value::Int(2),
            Value::Int(70_000),
            Value::BulkString(b"65536".to_vec()),
        ]);
        assert!(matches!(
            too_large,
            Err(StoreError::TooLarge {
                size: 70_000,
                limit: 65_536
            })
        ));
        let format = SaveReply::parse(vec![Value::Int(3), Value::BulkString(b"2".to_vec())]);
        assert!(matches!(
            format,
            Err(StoreError::UnsupportedFormat { found: 2, .. })
        ));
    }

    #[test]
    fn a_hash_without_its_times_is_an_error_not_a_session() {
        assert!(decode(fields(&[("m:created", "1000"), ("d:a", "1")])).is_err());
        assert!(decode(fields(&[("m:created", "x"), ("m:expires", "1")])).is_err());
    }

    #[test]
    fn invalidated_keys_map_back_to_storage_keys_and_nothing_else() {
        let key = SessionId::generate().storage_key();
        let redis_key = session_key("app:", &key);
        assert_eq!(storage_key_of("app:", redis_key.as_bytes()), Some(key));
        assert_eq!(storage_key_of("other:", redis_key.as_bytes()), None);
        let index = index_key("app:", "alice");
        assert_eq!(storage_key_of("app:", index.as_bytes()), None);
        assert!(!index.contains("alice"), "the index key hides the user");
    }

    #[test]
    fn save_replies_parse_for_applied_and_gone_sessions() {
        let applied = SaveReply::parse(vec![
            Value::Int(1),
            Value::Int(12),
            Value::Int(1),
            Value::Nil,
            Value::BulkString(b"bob".to_vec()),
        ])
        .unwrap();
        assert!(applied.applied && applied.rescore);
        assert_eq!(applied.version, Version::new(12));
        assert_eq!(applied.previous, None);
        assert_eq!(applied.current.as_deref(), Some("bob"));
        let kept = SaveReply::parse(vec![Value::Int(1), Value::Int(13)]).unwrap();
        assert!(kept.applied && !kept.rescore);
        assert_eq!(kept.version, Version::new(13));
        assert_eq!((kept.previous, kept.current), (None, None));
        let gone = SaveReply::parse(vec![Value::Int(0)]).unwrap();
        assert!(!gone.applied && !gone.rescore);
    }

    #[test]
    fn index_scores_stay_a_lifetime_ahead_of_expiry() {
        let expires = SystemTime::now() + Duration::from_secs(100);
        let score = index_score(expires);
        let ahead = score - millis(expires);
        assert!((99_000..=100_000).contains(&ahead), "{ahead}");
    }
}
