//! Where the session token travels: the cookie (for browsers), a request
//! header (for API and mobile clients), or either.
//!
//! A header token is exactly what the cookie's value would be: the session ID
//! and version, sealed (signed or encrypted) with the same keys under the
//! cookie's name, so key rotation, expiry, ID cycling at login and the near
//! cache's version all work the same way. Only the envelope differs; a token
//! moved from one envelope to the other names the same session, which gives
//! its holder nothing it did not have.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cookie::CookieConfig;
use crate::error::ConfigError;
use crate::id::SessionId;
use crate::store::Version;

/// Header values longer than this are not parsed: a token is at most about
/// 160 characters, and parsing cost must not be the attacker's to choose.
const MAX_HEADER_LEN: usize = 1024;
/// The response header a bearer token is handed out in, unless configured.
const DEFAULT_RESPONSE_HEADER: &str = "x-session-token";

/// The header that carries the session token for API and mobile clients.
///
/// Requests present the token in it; responses hand a new token out in
/// [`response_header`](Self::response_header) whenever it changes (a new
/// session, an ID cycled at login, a save that the near cache must see), and
/// the same header with an empty value when the session ended: the client
/// then drops its token.
///
/// # Examples
/// ```
/// use http::HeaderName;
/// use unstuck::TokenHeader;
///
/// // `Authorization: Bearer <token>`; new tokens come back in `X-Session-Token`.
/// let bearer = TokenHeader::bearer();
/// assert_eq!(bearer.response_header(), "x-session-token");
/// // `X-Auth-Token: <token>` both ways, as Spring Session does.
/// let named = TokenHeader::named(HeaderName::from_static("x-auth-token"));
/// assert_eq!(named.response_header(), "x-auth-token");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHeader {
    source: Source,
    response: HeaderName,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// `Authorization: Bearer <token>` (RFC 6750).
    Bearer,
    /// `<name>: <token>`.
    Named(HeaderName),
}

impl TokenHeader {
    /// Requests send `Authorization: Bearer <token>`; responses hand tokens
    /// out in `X-Session-Token` (change it with
    /// [`with_response_header`](Self::with_response_header)). An
    /// `Authorization` header of another scheme is not a session token.
    pub fn bearer() -> Self {
        Self {
            source: Source::Bearer,
            response: HeaderName::from_static(DEFAULT_RESPONSE_HEADER),
        }
    }

    /// Requests send `<name>: <token>`, and responses hand tokens out in the
    /// same header (Spring Session's `X-Auth-Token` style).
    pub fn named(name: HeaderName) -> Self {
        Self {
            source: Source::Named(name.clone()),
            response: name,
        }
    }

    /// The response header new tokens are handed out in.
    pub fn with_response_header(mut self, name: HeaderName) -> Self {
        self.response = name;
        self
    }

    /// The response header new tokens are handed out in. Browser clients
    /// calling across origins can read it only if CORS exposes it
    /// (`Access-Control-Expose-Headers`).
    pub fn response_header(&self) -> &HeaderName {
        &self.response
    }

    /// Headers that would mix the token up with cookies or credentials.
    fn validate(&self) -> Result<(), ConfigError> {
        let reserved = [header::COOKIE, header::SET_COOKIE, header::AUTHORIZATION];
        if let Source::Named(name) = &self.source
            && reserved.contains(name)
        {
            return Err(ConfigError::TokenHeader(format!(
                "{name} cannot carry a bare session token (use TokenHeader::bearer() for \
                 Authorization)"
            )));
        }
        if reserved.contains(&self.response) {
            return Err(ConfigError::TokenHeader(format!(
                "{} cannot hand session tokens out",
                self.response
            )));
        }
        Ok(())
    }

    /// The token the request presents, if it uses this header at all:
    /// `None` when it does not, `Some(None)` when it does with anything but
    /// one valid token (several headers, an oversized or malformed one, a
    /// token that does not open with our keys).
    fn read(
        &self,
        cookie: &CookieConfig,
        headers: &HeaderMap,
    ) -> Option<Option<(SessionId, Option<Version>)>> {
        let mut ours = self.candidates(headers);
        let first = ours.next()?;
        if ours.next().is_some() {
            return Some(None);
        }
        Some(token_of(&self.source, first).and_then(|token| cookie.open(&cookie.name, token)))
    }

    /// Whether the request uses this header, without checking its token.
    fn present(&self, headers: &HeaderMap) -> bool {
        self.candidates(headers).next().is_some()
    }

    /// The request's values of this header that are meant for us: every one
    /// of a named header, the `Bearer` ones of `Authorization`.
    fn candidates<'a>(&'a self, headers: &'a HeaderMap) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = match &self.source {
            Source::Bearer => &header::AUTHORIZATION,
            Source::Named(name) => name,
        };
        headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .filter(|value| match self.source {
                Source::Bearer => bearer_scheme(value),
                Source::Named(_) => true,
            })
    }

    fn issue(&self, headers: &mut HeaderMap, value: HeaderValue) {
        headers.insert(self.response.clone(), value);
    }
}

/// Whether a header value starts with the `Bearer` scheme (case-insensitive,
/// RFC 9110), with or without a token after it.
fn bearer_scheme(value: &[u8]) -> bool {
    const SCHEME: &[u8] = b"bearer";
    value.len() >= SCHEME.len()
        && value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
        && value.get(SCHEME.len()).is_none_or(|&b| b == b' ')
}

/// The token in one header value: after `Bearer ` and its spaces for a bearer
/// header, the whole value otherwise; `None` when oversized or empty.
fn token_of<'a>(source: &Source, value: &'a [u8]) -> Option<&'a str> {
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?;
    let token = match source {
        Source::Bearer => value.get("bearer".len()..)?.trim_start_matches(' '),
        Source::Named(_) => value,
    };
    let token = token.trim_end_matches([' ', '\t']);
    (!token.is_empty()).then_some(token)
}

/// Where the session token travels.
///
/// With [`Both`](Self::Both), the request decides: one that carries the token
/// header (with any value) is an API client, read and answered through the
/// header only; any other is a browser, read and answered through the cookie.
/// A browser's `HttpOnly` cookie is thus never handed out where page scripts
/// could read it, and a request that presents a bad header token gets a new
/// session, not the cookie's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionTransport {
    /// The session cookie only (the default).
    #[default]
    Cookie,
    /// The token header only: cookies are neither read nor set.
    Header(TokenHeader),
    /// The token header for requests that carry it, the cookie for the rest.
    Both(TokenHeader),
}

/// Which way one request's session token travels, decided before the handler
/// runs and used both to read the token and to hand out a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    Cookie,
    Header,
}

/// What a commit hands the client: a token to keep, or the news that its
/// session ended.
#[derive(Debug)]
pub(crate) enum Handout {
    Issue {
        id: SessionId,
        version: Option<Version>,
        expires_at: SystemTime,
        persistent: bool,
    },
    Clear,
}

impl SessionTransport {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Cookie => Ok(()),
            Self::Header(header) | Self::Both(header) => header.validate(),
        }
    }

    /// The way this request's token travels: see [`SessionTransport::Both`].
    pub(crate) fn channel(&self, headers: &HeaderMap) -> Channel {
        match self {
            Self::Cookie => Channel::Cookie,
            Self::Header(_) => Channel::Header,
            Self::Both(header) if header.present(headers) => Channel::Header,
            Self::Both(_) => Channel::Cookie,
        }
    }

    /// The session ID (and version) the request presents on `channel`;
    /// anything doubtful is "no session".
    pub(crate) fn read(
        &self,
        channel: Channel,
        cookie: &CookieConfig,
        headers: &HeaderMap,
    ) -> Option<(SessionId, Option<Version>)> {
        match (channel, self) {
            (Channel::Header, Self::Header(header) | Self::Both(header)) => {
                header.read(cookie, headers).flatten()
            }
            (Channel::Cookie, Self::Cookie | Self::Both(_)) => cookie.read(headers),
            // A channel this transport does not use presents nothing.
            _ => None,
        }
    }

    /// Puts `handout` on the response headers, on `channel`.
    pub(crate) fn hand_out(
        &self,
        channel: Channel,
        cookie: &CookieConfig,
        handout: Handout,
        headers: &mut HeaderMap,
    ) {
        match (channel, self) {
            (Channel::Header, Self::Header(header) | Self::Both(header)) => {
                let value = match handout {
                    Handout::Issue { id, version, .. } => {
                        HeaderValue::try_from(cookie.seal(&cookie.name, &id, version))
                            .expect("a sealed token is base64 and digits, a valid header value")
                    }
                    Handout::Clear => HeaderValue::from_static(""),
                };
                header.issue(headers, value);
            }
            (Channel::Cookie, Self::Cookie | Self::Both(_)) => {
                let value = match handout {
                    Handout::Issue {
                        id,
                        version,
                        expires_at,
                        persistent,
                    } => cookie.issue(&id, version, expires_at, persistent),
                    Handout::Clear => cookie.removal(),
                };
                headers.append(header::SET_COOKIE, value);
            }
            _ => unreachable!("channel() only picks channels the transport uses"),
        }
    }
}

/// The raw token a response hands out: the sealed form of `id` and
/// `version` as a header carries it.
#[cfg(test)]
fn seal_token(cookie: &CookieConfig, id: &SessionId, version: Option<Version>) -> String {
    cookie.seal(&cookie.name, id, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;

    fn cookie_config() -> CookieConfig {
        CookieConfig {
            keys: vec![Key::generate()],
            ..CookieConfig::default()
        }
    }

    fn request(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append((*name).clone(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn issued(transport: &SessionTransport, channel: Channel, cookie: &CookieConfig) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let handout = Handout::Issue {
            id: SessionId::generate(),
            version: Some(Version::new(7)),
            expires_at: SystemTime::now(),
            persistent: false,
        };
        transport.hand_out(channel, cookie, handout, &mut headers);
        headers
    }

    #[test]
    fn bearer_tokens_read_back_in_any_scheme_case() {
        let cookie = cookie_config();
        let header = TokenHeader::bearer();
        let id = SessionId::generate();
        let token = seal_token(&cookie, &id, Some(Version::new(3)));
        // The token is the cookie's value.
        let set_cookie = cookie.issue(&id, Some(Version::new(3)), SystemTime::now(), false);
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap();
        assert_eq!(pair, format!("id={token}"));
        for value in [
            format!("Bearer {token}"),
            format!("bearer {token}"),
            format!("BEARER   {token}  "),
        ] {
            let headers = request(&[(&header::AUTHORIZATION, &value)]);
            assert_eq!(
                header.read(&cookie, &headers),
                Some(Some((id.clone(), Some(Version::new(3))))),
                "{value}"
            );
        }
    }

    #[test]
    fn doubtful_header_tokens_mean_no_session() {
        let cookie = cookie_config();
        let header = TokenHeader::bearer();
        let id = SessionId::generate();
        let token = seal_token(&cookie, &id, None);
        let mut flipped = token.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let foreign = seal_token(&cookie_config(), &id, None);
        let cases = [
            format!("Bearer {flipped}"),
            format!("Bearer {foreign}"),
            format!("Bearer {}", id.to_cookie_value()),
            format!("Bearer {}", "A".repeat(5000)),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
        ];
        for case in &cases {
            let headers = request(&[(&header::AUTHORIZATION, case)]);
            assert_eq!(header.read(&cookie, &headers), Some(None), "{case}");
        }
        let twice = format!("Bearer {token}");
        let headers = request(&[
            (&header::AUTHORIZATION, &twice),
            (&header::AUTHORIZATION, &twice),
        ]);
        assert_eq!(header.read(&cookie, &headers), Some(None), "duplicated");
        // Other schemes are not ours at all.
        for other in ["Basic dXNlcjpwdw==".to_owned(), format!("Bearer{token}")] {
            let headers = request(&[(&header::AUTHORIZATION, &other)]);
            assert_eq!(header.read(&cookie, &headers), None, "{other}");
        }
        assert_eq!(header.read(&cookie, &HeaderMap::new()), None);
    }

    #[test]
    fn named_headers_carry_the_token_both_ways() {
        let cookie = cookie_config();
        let name = HeaderName::from_static("x-auth-token");
        let transport = SessionTransport::Header(TokenHeader::named(name.clone()));
        let response = issued(&transport, Channel::Header, &cookie);
        assert!(response.get(header::SET_COOKIE).is_none());
        let token = response.get(&name).unwrap().to_str().unwrap().to_owned();
        let headers = request(&[(&name, &token)]);
        let channel = transport.channel(&headers);
        let (_, version) = transport.read(channel, &cookie, &headers).unwrap();
        assert_eq!(version, Some(Version::new(7)));
    }

    #[test]
    fn both_answers_each_client_on_its_own_channel() {
        let cookie = cookie_config();
        let transport = SessionTransport::Both(TokenHeader::bearer());
        let api = request(&[(&header::AUTHORIZATION, "Bearer")]);
        assert_eq!(transport.channel(&api), Channel::Header);
        let browser = request(&[(&header::AUTHORIZATION, "Basic dXNlcjpwdw==")]);
        assert_eq!(transport.channel(&browser), Channel::Cookie);
        let to_browser = issued(&transport, Channel::Cookie, &cookie);
        assert!(to_browser.get(header::SET_COOKIE).is_some());
        assert!(to_browser.get(DEFAULT_RESPONSE_HEADER).is_none());
        let to_api = issued(&transport, Channel::Header, &cookie);
        assert!(to_api.get(header::SET_COOKIE).is_none());
        assert!(to_api.get(DEFAULT_RESPONSE_HEADER).is_some());
        // A valid cookie does not rescue a request whose header is bad.
        let id = SessionId::generate();
        let set_cookie = cookie.issue(&id, None, SystemTime::now(), false);
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap();
        let both = request(&[
            (&header::COOKIE, pair),
            (&header::AUTHORIZATION, "Bearer nonsense"),
        ]);
        let channel = transport.channel(&both);
        assert_eq!(transport.read(channel, &cookie, &both), None);
    }

    #[test]
    fn header_only_ignores_cookies_and_clears_with_an_empty_header() {
        let cookie = cookie_config();
        let transport = SessionTransport::Header(TokenHeader::bearer());
        let id = SessionId::generate();
        let set_cookie = cookie.issue(&id, None, SystemTime::now(), false);
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap();
        let headers = request(&[(&header::COOKIE, pair)]);
        assert_eq!(
            transport.read(transport.channel(&headers), &cookie, &headers),
            None
        );
        let mut response = HeaderMap::new();
        transport.hand_out(Channel::Header, &cookie, Handout::Clear, &mut response);
        assert_eq!(response.get(DEFAULT_RESPONSE_HEADER).unwrap(), "");
    }

    #[test]
    fn reserved_headers_are_configuration_errors() {
        for name in [header::COOKIE, header::SET_COOKIE, header::AUTHORIZATION] {
            assert!(TokenHeader::named(name.clone()).validate().is_err());
            assert!(
                TokenHeader::bearer()
                    .with_response_header(name)
                    .validate()
                    .is_err()
            );
        }
        assert!(TokenHeader::bearer().validate().is_ok());
    }
}
