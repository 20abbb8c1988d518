//! Reading and writing the session cookie.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use cookie::{Cookie, CookieJar, SameSite};
use hmac::Mac as _;
use http::{HeaderMap, HeaderValue, header};

use crate::error::ConfigError;
use crate::id::SessionId;
use crate::key::{Key, Signer};
use crate::store::Version;

/// Cookie headers longer than this are not parsed at all: no legitimate client
/// sends more, and parsing cost must not be the attacker's to choose.
const MAX_COOKIE_HEADER_LEN: usize = 8 * 1024;
/// Our cookie's value is at most about 124 characters (encrypted form, with a
/// version); anything much longer is not ours.
const MAX_VALUE_LEN: usize = 160;
/// Separates the ID from the session's version in the cookie's (signed)
/// value; the ID's base64url alphabet has no `.`.
const VERSION_SEPARATOR: char = '.';
/// A signed value starts with its HMAC-SHA256 tag in padded standard base64
/// (the `cookie` crate's signed form, which cookies issued so far use).
const SIGNED_TAG_LEN: usize = 44;

/// How the session cookie's value is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CookieProtection {
    /// HMAC-SHA256 signed: tamper-proof, readable. The default.
    #[default]
    Signed,
    /// AES-256-GCM encrypted and authenticated: tamper-proof and unreadable.
    Private,
}

/// How the session cookie is named, scoped and protected.
#[derive(Clone, Debug)]
pub(crate) struct CookieConfig {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    /// Send `Max-Age` so the cookie outlives the browser session.
    pub persistent: bool,
    pub protection: CookieProtection,
    /// The first signs; all verify.
    pub keys: Vec<Key>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            name: "id".to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            persistent: false,
            protection: CookieProtection::Signed,
            keys: Vec::new(),
        }
    }
}

impl CookieConfig {
    /// Checks the rules browsers enforce for prefixed names and `SameSite=None`,
    /// so a misconfiguration fails at startup rather than as cookies that
    /// browsers silently drop.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keys.is_empty() {
            return Err(ConfigError::NoKeys);
        }
        self.check_attributes().map_err(ConfigError::Cookie)
    }

    fn check_attributes(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            return Err(format!("{:?} is not a valid cookie name", self.name));
        }
        let host = self.name.starts_with("__Host-");
        if (host || self.name.starts_with("__Secure-")) && !self.secure {
            return Err(format!(
                "cookie {:?} must be Secure: its prefix requires it",
                self.name
            ));
        }
        if host && (self.path != "/" || self.domain.is_some()) {
            return Err(format!(
                "cookie {:?} must have Path=/ and no Domain: the __Host- prefix requires it",
                self.name
            ));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err("SameSite=None requires the Secure attribute".to_owned());
        }
        Ok(())
    }

    /// Finds the session ID in a request's cookies, with the session version
    /// the client last wrote if the cookie carries one. Anything doubtful — no
    /// cookie, several cookies of our name (cookie tossing), an oversized
    /// header, a bad signature, a malformed value — is "no session".
    pub fn read(&self, headers: &HeaderMap) -> Option<(SessionId, Option<Version>)> {
        let mut found: Option<&str> = None;
        let mut total = 0;
        for value in headers.get_all(header::COOKIE) {
            total += value.len();
            if total > MAX_COOKIE_HEADER_LEN {
                return None;
            }
            let Ok(text) = value.to_str() else { continue };
            for cookie in Cookie::split_parse(text).flatten() {
                if cookie.name() != self.name {
                    continue;
                }
                if found.is_some() {
                    return None;
                }
                // Borrowed from the header: a cookie parsed from text has
                // its raw value.
                let value = cookie.value_raw()?;
                if value.len() > MAX_VALUE_LEN {
                    return None;
                }
                found = Some(value);
            }
        }
        self.open(&self.name, found?)
    }

    /// The ID and version sealed in `value` under `name` (the MAC, or the
    /// encryption's associated data, covers the name), trying every key.
    /// `None` for anything that is not a value these keys sealed: too long,
    /// tampered, sealed with another key or under another name, malformed.
    pub fn open(&self, name: &str, value: &str) -> Option<(SessionId, Option<Version>)> {
        if value.len() > MAX_VALUE_LEN {
            return None;
        }
        match self.protection {
            CookieProtection::Signed => {
                let opened = self
                    .keys
                    .iter()
                    .find_map(|key| verify(key.signer(), value))?;
                parse_value(opened)
            }
            CookieProtection::Private => {
                let sealed = Cookie::new(name.to_owned(), value.to_owned());
                let jar = CookieJar::new();
                let opened = self
                    .keys
                    .iter()
                    .find_map(|key| jar.private(&key.0).decrypt(sealed.clone()))?;
                parse_value(opened.value())
            }
        }
    }

    /// `id` and `version` sealed under `name` with the first key: what
    /// [`open`](Self::open) accepts.
    pub fn seal(&self, name: &str, id: &SessionId, version: Option<Version>) -> String {
        let mut value = id.to_cookie_value();
        if let Some(version) = version {
            value.push(VERSION_SEPARATOR);
            value.push_str(&version.get().to_string());
        }
        self.seal_text(name, value)
    }

    /// Any text sealed under `name` with the first key (the fuzz targets
    /// seal arbitrary text, to reach what runs after a valid signature).
    pub fn seal_text(&self, name: &str, text: String) -> String {
        let key = &self.keys[0];
        match self.protection {
            CookieProtection::Signed => sign(key.signer(), &text),
            CookieProtection::Private => {
                let mut jar = CookieJar::new();
                jar.private_mut(&key.0)
                    .add(Cookie::new(name.to_owned(), text));
                jar.get(name)
                    .expect("a cookie added to the jar is in the jar")
                    .value()
                    .to_owned()
            }
        }
    }

    /// The `Set-Cookie` value that hands `id` to the client, with the version
    /// its next load must at least see, if the store reports versions.
    pub fn issue(
        &self,
        id: &SessionId,
        version: Option<Version>,
        expires_at: SystemTime,
        persistent: bool,
    ) -> HeaderValue {
        let mut cookie = self.base(self.seal(&self.name, id, version));
        if persistent {
            let remaining = expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            cookie.set_max_age(cookie::time::Duration::seconds(
                i64::try_from(remaining.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        header_value(&cookie)
    }

    /// The `Set-Cookie` value that makes the client drop the cookie.
    pub fn removal(&self) -> HeaderValue {
        let mut cookie = self.base(String::new());
        cookie.make_removal();
        header_value(&cookie)
    }

    fn base(&self, value: String) -> Cookie<'static> {
        let mut cookie = Cookie::build((self.name.clone(), value))
            .path(self.path.clone())
            .secure(self.secure)
            .http_only(self.http_only)
            .same_site(self.same_site)
            .build();
        if let Some(domain) = &self.domain {
            cookie.set_domain(domain.clone());
        }
        cookie
    }
}

/// `text` signed: its HMAC-SHA256 tag in padded standard base64, then the
/// text (byte for byte what the `cookie` crate's `SignedJar` writes).
fn sign(signer: &Signer, text: &str) -> String {
    let tag = signer.mac(text.as_bytes()).finalize().into_bytes();
    let mut signed = String::with_capacity(SIGNED_TAG_LEN + text.len());
    BASE64_STANDARD.encode_string(tag, &mut signed);
    signed.push_str(text);
    signed
}

/// The text of a value [`sign`] (or the `cookie` crate's `SignedJar`) made
/// with this key, or `None`. The tag is compared in constant time.
fn verify<'v>(signer: &Signer, value: &'v str) -> Option<&'v str> {
    if !value.is_char_boundary(SIGNED_TAG_LEN) {
        return None;
    }
    let (tag, text) = value.split_at(SIGNED_TAG_LEN);
    // 44 characters decode to at most 33 bytes; a tag is 32.
    let mut decoded = [0; 48];
    let len = BASE64_STANDARD.decode_slice(tag, &mut decoded).ok()?;
    signer
        .mac(text.as_bytes())
        .verify_slice(&decoded[..len])
        .ok()?;
    Some(text)
}

/// The ID and optional version in an authenticated cookie value.
fn parse_value(value: &str) -> Option<(SessionId, Option<Version>)> {
    let Some((id, version)) = value.split_once(VERSION_SEPARATOR) else {
        return Some((SessionId::from_cookie_value(value)?, None));
    };
    // Digits only (no sign, no spaces), and few enough to fit a u64.
    if version.is_empty() || version.len() > 20 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version = Version::new(version.parse().ok()?);
    Some((SessionId::from_cookie_value(id)?, Some(version)))
}

fn header_value(cookie: &Cookie<'_>) -> HeaderValue {
    HeaderValue::try_from(cookie.to_string())
        .expect("cookie names and values are validated, so the header is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: Vec<Key>) -> CookieConfig {
        CookieConfig {
            keys,
            ..CookieConfig::default()
        }
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        headers
    }

    /// The `name=value` part of a Set-Cookie header.
    fn pair(set_cookie: &HeaderValue) -> String {
        set_cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn issued_cookie_reads_back_with_default_attributes() {
        let config = config(vec![Key::generate()]);
        let id = SessionId::generate();
        let set = config.issue(&id, None, SystemTime::now(), false);
        let text = set.to_str().unwrap();
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(text.contains(attribute), "{text} lacks {attribute}");
        }
        assert!(
            !text.contains("Max-Age"),
            "browser-session cookie by default"
        );
        assert_eq!(config.read(&headers(&pair(&set))), Some((id, None)));
    }

    #[test]
    fn signed_values_match_the_cookie_crate_s_signed_jar_both_ways() {
        // Cookies issued before the keyed signer (through `SignedJar`) must
        // still open, and ours must open wherever `SignedJar` verifies.
        let key = Key::derive_from(b"a secret of at least thirty-two bytes!!").unwrap();
        let config = config(vec![key.clone()]);
        let id = SessionId::generate();
        let text = format!("{}.7", id.to_cookie_value());
        let mut jar = CookieJar::new();
        jar.signed_mut(&key.0).add(Cookie::new("id", text.clone()));
        let theirs = jar.get("id").unwrap().value().to_owned();
        let ours = config.seal_text("id", text.clone());
        assert_eq!(ours, theirs, "the same bytes as SignedJar");
        assert_eq!(
            config.open("id", &theirs),
            Some((id.clone(), Some(Version::new(7))))
        );
        let verified = CookieJar::new()
            .signed(&key.0)
            .verify(Cookie::new("id", ours))
            .unwrap();
        assert_eq!(verified.value(), text);
        // A tag of the wrong length, or not base64, opens nothing.
        let short = format!("{}{}", &theirs[..40], &theirs[44..]);
        assert_eq!(config.open("id", &short), None);
        let garbled = format!("!!!!{}", &theirs[4..]);
        assert_eq!(config.open("id", &garbled), None);
    }

    #[test]
    fn private_cookies_hide_the_id_and_read_back() {
        let mut config = config(vec![Key::generate()]);
        config.protection = CookieProtection::Private;
        let id = SessionId::generate();
        let set = config.issue(&id, None, SystemTime::now(), false);
        assert!(!set.to_str().unwrap().contains(&id.to_cookie_value()));
        assert_eq!(config.read(&headers(&pair(&set))), Some((id, None)));
    }

    #[test]
    fn rotated_keys_verify_old_cookies_and_sign_with_the_first() {
        let old = Key::generate();
        let new = Key::generate();
        let id = SessionId::generate();
        let issued_before = config(vec![old.clone()]).issue(&id, None, SystemTime::now(), false);
        let rotated = config(vec![new.clone(), old]);
        assert_eq!(
            rotated.read(&headers(&pair(&issued_before))),
            Some((id.clone(), None))
        );
        let issued_after = rotated.issue(&id, None, SystemTime::now(), false);
        assert_eq!(
            config(vec![new]).read(&headers(&pair(&issued_after))),
            Some((id, None))
        );
    }

    #[test]
    fn doubtful_cookies_mean_no_session() {
        let config = config(vec![Key::generate()]);
        let id = SessionId::generate();
        let good = pair(&config.issue(&id, None, SystemTime::now(), false));
        let value = good.strip_prefix("id=").unwrap();
        let mut flipped = value.to_owned().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let foreign =
            pair(&self::config(vec![Key::generate()]).issue(&id, None, SystemTime::now(), false));
        let cases = [
            format!("id={}", id.to_cookie_value()),
            format!("id={flipped}"),
            foreign,
            format!("{good}; {good}"),
            format!("id={}", "A".repeat(5000)),
            "id=".to_owned(),
            "id=%%%%;;;==".to_owned(),
            format!("{good}; pad={}", "x".repeat(9000)),
        ];
        for case in &cases {
            assert_eq!(config.read(&headers(case)), None, "{case}");
        }
        assert_eq!(config.read(&HeaderMap::new()), None);
    }

    #[test]
    fn the_version_travels_signed_with_the_id() {
        for protection in [CookieProtection::Signed, CookieProtection::Private] {
            let mut config = config(vec![Key::generate()]);
            config.protection = protection;
            let id = SessionId::generate();
            let set = config.issue(&id, Some(Version::new(u64::MAX)), SystemTime::now(), false);
            assert_eq!(
                config.read(&headers(&pair(&set))),
                Some((id, Some(Version::new(u64::MAX))))
            );
        }
    }

    #[test]
    fn malformed_versions_mean_no_session() {
        let id = SessionId::generate().to_cookie_value();
        for bad in ["", "-1", "+1", " 1", "1x", "99999999999999999999", "1.2"] {
            assert_eq!(parse_value(&format!("{id}.{bad}")), None, "{bad:?}");
        }
        assert!(parse_value(&format!("{id}.0")).is_some());
    }

    #[test]
    fn a_cookie_split_over_two_headers_still_counts_as_duplicated() {
        let config = config(vec![Key::generate()]);
        let good = pair(&config.issue(&SessionId::generate(), None, SystemTime::now(), false));
        let mut headers = headers(&good);
        headers.append(header::COOKIE, HeaderValue::from_str(&good).unwrap());
        assert_eq!(config.read(&headers), None);
    }

    #[test]
    fn other_cookies_do_not_disturb_ours() {
        let config = config(vec![Key::generate()]);
        let id = SessionId::generate();
        let good = pair(&config.issue(&id, None, SystemTime::now(), false));
        assert_eq!(
            config.read(&headers(&format!("theme=dark; {good}; lang=en"))),
            Some((id, None))
        );
    }

    #[test]
    fn prefix_rules_are_enforced() {
        let mut config = config(vec![Key::generate()]);
        config.name = "__Host-id".to_owned();
        assert!(config.validate().is_ok());
        config.path = "/app".to_owned();
        assert!(config.validate().is_err());
        config.path = "/".to_owned();
        config.domain = Some("example.com".to_owned());
        assert!(config.validate().is_err());
        config.domain = None;
        config.secure = false;
        assert!(config.validate().is_err());
        config.name = "__Secure-id".to_owned();
        assert!(config.validate().is_err());
        config.name = "bad name".to_owned();
        config.secure = true;
        assert!(config.validate().is_err());
    }
}
