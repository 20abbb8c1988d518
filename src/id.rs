//! Session IDs and the storage keys derived from them.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Number of random bytes in a session ID (256 bits; the floor we promise is 128).
const ID_BYTES: usize = 32;
/// Length of an ID in its cookie form (unpadded URL-safe base64 of [`ID_BYTES`]).
pub(crate) const ENCODED_ID_LEN: usize = 43;

/// A session ID: 256 bits from the operating system's CSPRNG.
///
/// The only ways to get one are [`SessionId::generate`] and parsing a cookie value
/// that the layer has already authenticated, so an unchecked string can never
/// become an ID. The ID travels only in the cookie; stores see its
/// [`StorageKey`]. `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_BYTES]);

impl SessionId {
    /// Generates a fresh ID from the OS random number generator.
    ///
    /// # Panics
    /// If the operating system cannot provide randomness, which on supported
    /// platforms means the machine is unusable for cryptography anyway.
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        Self(bytes)
    }

    /// Parses the cookie form of an ID. Only the cookie layer calls this, after the
    /// signature has been verified.
    pub(crate) fn from_cookie_value(value: &str) -> Option<Self> {
        if value.len() != ENCODED_ID_LEN {
            return None;
        }
        let mut bytes = [0u8; ID_BYTES];
        let written = URL_SAFE_NO_PAD
            .decode_slice(value.as_bytes(), &mut bytes)
            .ok()?;
        (written == ID_BYTES).then_some(Self(bytes))
    }

    /// The cookie form of the ID (URL-safe base64, no padding).
    pub(crate) fn to_cookie_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The key under which stores keep this session: a SHA-256 hash of the ID.
    pub fn storage_key(&self) -> StorageKey {
        let digest = Sha256::digest(self.0);
        StorageKey(URL_SAFE_NO_PAD.encode(digest))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

/// The key a store files a session under: the SHA-256 hash of its [`SessionId`],
/// URL-safe base64 encoded (43 characters).
///
/// A dump of the store therefore holds no usable cookie (the lesson of Rack's
/// CVE-2019-16782). Keys can be logged and shown to users (for example to list
/// and revoke their sessions): they cannot be turned back into an ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey(String);

impl StorageKey {
    /// The key as text, as stores write it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds a key that a store wrote earlier (for example one listed by
    /// [`SessionStore::user_sessions`](crate::SessionStore::user_sessions)).
    ///
    /// Returns `None` unless `text` has the exact form of a storage key. This does
    /// not prove the key belongs to a live session; it only keeps arbitrary input
    /// out of store commands.
    pub fn parse(text: &str) -> Option<Self> {
        let well_formed = text.len() == ENCODED_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        well_formed.then(|| Self(text.to_owned()))
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey({})", self.0)
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_and_round_trip_through_the_cookie_form() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        let text = a.to_cookie_value();
        assert_eq!(text.len(), ENCODED_ID_LEN);
        assert_eq!(SessionId::from_cookie_value(&text), Some(a));
    }

    #[test]
    fn malformed_cookie_values_are_not_ids() {
        let good = SessionId::generate().to_cookie_value();
        for bad in [
            "",
            "short",
            &good[..42],
            &format!("{good}A"),
            &good.replace(|_| true, "!"),
            "+++++++++++++++++++++++++++++++++++++++++++",
        ] {
            assert_eq!(SessionId::from_cookie_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn storage_key_is_a_hash_not_the_id() {
        let id = SessionId::generate();
        let key = id.storage_key();
        assert_ne!(key.as_str(), id.to_cookie_value());
        assert_eq!(key, id.storage_key());
        assert_eq!(StorageKey::parse(key.as_str()), Some(key));
        assert_eq!(StorageKey::parse("user:alice"), None);
    }

    #[test]
    fn debug_output_never_shows_the_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(&id.to_cookie_value()));
    }
}
