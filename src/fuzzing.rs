//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`,
//! which replays their corpus. Not a public API: behind the `fuzzing` feature,
//! hidden from the docs, and free to change in any release.
//!
//! Each entry point takes arbitrary bytes, feeds them to one parser of
//! untrusted input, and panics only when that parser panics or breaks a
//! property stated here. The first byte of an input picks the variant
//! (signed or private, raw or sealed, bearer or named) so that one corpus
//! covers them all.
//!
//! A fuzzer cannot forge a signature, so the "sealed" variants seal the
//! fuzzed text with the fixed fuzzing key first: that reaches the parsing
//! that runs after a signature checks out, which an attacker with a leaked
//! key (or a bug in the MAC) would reach.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cookie::{CookieConfig, CookieProtection};
use crate::id::SessionId;
use crate::key::Key;
use crate::store::fuzzing::{postgres, redis, tower_sessions};
use crate::store::{Record, Version};
use crate::transport::{Channel, Handout, SessionTransport, TokenHeader};

/// The header the named-header variants use.
const NAMED: &str = "x-session-token";

/// A cookie configuration with two fixed keys (the first signs, both verify,
/// as after a key rotation), signed or private.
fn cookie_config(private: bool) -> &'static CookieConfig {
    static CONFIGS: OnceLock<[CookieConfig; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let keys = vec![
            Key::derive_from(b"unstuck fuzzing key, current: not a secret").expect("long enough"),
            Key::derive_from(b"unstuck fuzzing key, previous: not a secret").expect("long enough"),
        ];
        [CookieProtection::Signed, CookieProtection::Private].map(|protection| CookieConfig {
            keys: keys.clone(),
            protection,
            ..CookieConfig::default()
        })
    });
    &configs[usize::from(private)]
}

/// Splits an input into its selector byte and the rest.
fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(first, rest)| (*first, rest))
}

/// Header values from `bytes`, one per line; lines that are not valid header
/// values are dropped, as the HTTP server would have refused them.
fn header_values(bytes: &[u8]) -> impl Iterator<Item = HeaderValue> + '_ {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
}

/// Cookie parsing and verification. Selector bit 0: private instead of
/// signed; bit 1: the rest is text to seal as our cookie's value, instead of
/// raw `Cookie` header lines.
///
/// Property: whatever is read back re-issues to a cookie that reads back the
/// same.
pub fn cookie(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    let config = cookie_config(selector & 1 == 1);
    let mut headers = HeaderMap::new();
    if selector & 2 == 0 {
        for value in header_values(rest) {
            headers.append(header::COOKIE, value);
        }
    } else {
        let text = String::from_utf8_lossy(rest).into_owned();
        let sealed = config.seal_text(&config.name, text);
        // What `open` makes of it must be what `read` makes of the cookie.
        let opened = config.open(&config.name, &sealed);
        let Ok(value) = HeaderValue::try_from(format!("{}={sealed}", config.name)) else {
            return;
        };
        headers.append(header::COOKIE, value);
        let read = config.read(&headers);
        assert!(
            read.is_none() || read == opened,
            "read and open disagree on one cookie"
        );
    }
    if let Some((id, version)) = config.read(&headers) {
        let reissued = config.issue(&id, version, SystemTime::now(), false);
        let pair = reissued
            .to_str()
            .expect("issued cookies are ASCII")
            .split(';')
            .next()
            .expect("split yields at least one piece")
            .to_owned();
        let mut again = HeaderMap::new();
        again.append(
            header::COOKIE,
            HeaderValue::try_from(pair).expect("came from a header value"),
        );
        assert_eq!(
            config.read(&again),
            Some((id, version)),
            "a cookie read back does not re-issue to itself"
        );
    }
}

/// Session IDs in a header. Selector bit 0: private; bit 1: sealed text
/// instead of raw header lines; bit 2: a named header (`X-Session-Token`)
/// instead of `Authorization: Bearer`; bit 3: cookie and header both enabled
/// (with a raw `Cookie` line from the input's last line) instead of the
/// header only.
///
/// Property: whatever is read back is handed out as a header token that reads
/// back the same.
pub fn header(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    let config = cookie_config(selector & 1 == 1);
    let named = HeaderName::from_static(NAMED);
    let token_header = if selector & 4 == 0 {
        TokenHeader::bearer()
    } else {
        TokenHeader::named(named.clone())
    };
    let request_header = if selector & 4 == 0 {
        header::AUTHORIZATION
    } else {
        named
    };
    let transport = if selector & 8 == 0 {
        SessionTransport::Header(token_header.clone())
    } else {
        SessionTransport::Both(token_header.clone())
    };
    let mut headers = HeaderMap::new();
    if selector & 2 == 0 {
        let mut lines: Vec<HeaderValue> = header_values(rest).collect();
        if selector & 8 != 0
            && let Some(last) = lines.pop()
        {
            headers.append(header::COOKIE, last);
        }
        for value in lines {
            headers.append(request_header.clone(), value);
        }
    } else {
        let text = String::from_utf8_lossy(rest).into_owned();
        let sealed = config.seal_text(&config.name, text);
        let value = if selector & 4 == 0 {
            format!("Bearer {sealed}")
        } else {
            sealed
        };
        let Ok(value) = HeaderValue::try_from(value) else {
            return;
        };
        headers.append(request_header.clone(), value);
    }
    let channel = transport.channel(&headers);
    let Some((id, version)) = transport.read(channel, config, &headers) else {
        return;
    };
    let handout = Handout::Issue {
        id: id.clone(),
        version,
        expires_at: SystemTime::now(),
        persistent: false,
    };
    let mut response = HeaderMap::new();
    transport.hand_out(channel, config, handout, &mut response);
    let mut again = HeaderMap::new();
    match channel {
        Channel::Header => {
            let token = response
                .get(token_header.response_header())
                .expect("a header client gets its token in the header")
                .to_str()
                .expect("tokens are ASCII")
                .to_owned();
            let value = if selector & 4 == 0 {
                format!("Bearer {token}")
            } else {
                token
            };
            again.append(
                request_header,
                HeaderValue::try_from(value).expect("came from a header value"),
            );
        }
        Channel::Cookie => {
            let set = response
                .get(header::SET_COOKIE)
                .expect("a cookie client gets a cookie");
            let pair = set.to_str().expect("ASCII").split(';').next().expect("one");
            again.append(
                header::COOKIE,
                HeaderValue::try_from(pair).expect("came from a header value"),
            );
        }
    }
    assert_eq!(transport.channel(&again), channel);
    assert_eq!(
        transport.read(channel, config, &again),
        Some((id, version)),
        "a token read back does not hand out as itself"
    );
}

/// The Redis hash decoder, as a load runs it on `HGETALL`'s reply: the input
/// is field and value strings separated by NUL bytes; and the invalidation
/// key parser, on the whole input.
///
/// Property: a decoded record keeps every `d:` field as data, and nothing
/// else.
pub fn redis_hash(data: &[u8]) {
    let _ = redis::storage_key_of("unstuck:", data);
    let mut parts = data
        .split(|&b| b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned());
    let mut fields = HashMap::new();
    while let (Some(field), Some(value)) = (parts.next(), parts.next()) {
        fields.insert(field, value);
    }
    let data_fields = fields.keys().filter(|f| f.starts_with("d:")).count();
    if let Ok((record, _version)) = redis::decode_hash(fields) {
        assert_eq!(
            record.data.len(),
            data_fields,
            "data fields lost or invented"
        );
    }
}

/// The PostgreSQL row decoder's parsers: the first 8 bytes (little-endian)
/// are a millisecond timestamp column, the rest a value as `jsonb` prints it.
///
/// Property: when the text is JSON, its compacted form is the same JSON
/// value.
pub fn postgres_row(data: &[u8]) {
    let (ms, text) = millis_and_text(data);
    let _ = postgres::from_millis(ms);
    let compact = postgres::compact_json(&text);
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
        let again = serde_json::from_str::<serde_json::Value>(&compact);
        assert_eq!(
            again.ok(),
            Some(value),
            "compacting changed a JSON value: {text:?} became {compact:?}"
        );
    }
}

/// The tower-sessions record codec, as their store's `load` runs it on a
/// record of ours: the first 8 bytes (little-endian) are the expiry in
/// milliseconds, the rest the JSON text of their data map.
pub fn tower_sessions_record(data: &[u8]) {
    let (ms, text) = millis_and_text(data);
    let Some(expires_at) = crate::time::from_unix_millis(ms) else {
        return;
    };
    let record = Record {
        data: HashMap::from([(tower_sessions::DATA_KEY.to_owned(), text)]),
        user: None,
        created_at: UNIX_EPOCH,
        expires_at,
    };
    let _ = tower_sessions::parts(&record);
}

/// An `i64` from the first 8 bytes (zero-padded) and the rest as text.
fn millis_and_text(data: &[u8]) -> (i64, String) {
    let split = data.len().min(8);
    let mut bytes = [0u8; 8];
    bytes[..split].copy_from_slice(&data[..split]);
    (
        i64::from_le_bytes(bytes),
        String::from_utf8_lossy(&data[split..]).into_owned(),
    )
}

/// A valid sealed cookie value (and header token) for `id`, so seeds can
/// hold real ones.
#[doc(hidden)]
pub fn sealed_cookie(private: bool, id: &SessionId, version: Option<u64>) -> String {
    let config = cookie_config(private);
    config.seal(&config.name, id, version.map(Version::new))
}
