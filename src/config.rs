//! Everything a [`SessionLayer`](crate::SessionLayer) is configured with.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::num::NonZeroU32;

use crate::cookie::CookieConfig;
use crate::error::ConfigError;
use crate::events::SessionEvents;
use crate::expiry::Timeouts;
use crate::store::{CapPolicy, DEFAULT_MAX_SESSION_BYTES, SessionCap};
use crate::transport::SessionTransport;

/// The bounds the layer puts on sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The most bytes (keys and JSON text) one session may hold.
    pub session_bytes: usize,
    /// The most bytes (key and JSON text) one value may take.
    pub value_bytes: usize,
    /// The most live sessions per user, and what a login beyond it does.
    pub sessions_per_user: Option<(u32, CapPolicy)>,
}

impl Limits {
    /// The cap change sets carry, once validated (a zero cap is refused by
    /// [`Config::validate`]).
    pub fn session_cap(&self) -> Option<SessionCap> {
        let (max, policy) = self.sessions_per_user?;
        Some(SessionCap::new(NonZeroU32::new(max)?, policy))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            session_bytes: DEFAULT_MAX_SESSION_BYTES,
            value_bytes: DEFAULT_MAX_SESSION_BYTES,
            sessions_per_user: None,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub cookie: CookieConfig,
    /// Cookie, token header, or both.
    pub transport: SessionTransport,
    pub timeouts: Timeouts,
    /// The longest any one store call may take before it counts as an outage.
    pub store_timeout: Duration,
    pub limits: Limits,
    /// The cookie key was made up at startup rather than configured.
    pub generated_key: bool,
    /// Where lifecycle events go, if anywhere.
    pub events: Option<SessionEvents>,
    /// Set once this configuration has been checked (and its warnings
    /// logged) by the first service built from it; replaced by every change.
    pub checked: Arc<OnceLock<Result<(), ConfigError>>>,
}

impl Config {
    /// Every rule a layer's configuration must meet.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cookie.validate()?;
        self.transport.validate()?;
        let t = &self.timeouts;
        if t.idle.is_zero() {
            return Err(ConfigError::Zero("the idle timeout"));
        }
        if t.absolute.is_zero() {
            return Err(ConfigError::Zero("the absolute timeout"));
        }
        if self.store_timeout.is_zero() {
            return Err(ConfigError::Zero("the store timeout"));
        }
        if self.limits.session_bytes == 0 {
            return Err(ConfigError::ZeroLimit("the session size limit"));
        }
        if self.limits.value_bytes == 0 {
            return Err(ConfigError::ZeroLimit("the value size limit"));
        }
        if matches!(self.limits.sessions_per_user, Some((0, _))) {
            return Err(ConfigError::ZeroLimit("the sessions-per-user cap"));
        }
        if t.refresh_interval() >= t.idle {
            return Err(ConfigError::Timeouts(
                "the idle refresh interval must be shorter than the idle timeout, \
                 or active sessions would expire",
            ));
        }
        Ok(())
    }

    /// Checks the configuration once, logging its warnings once: axum builds a
    /// service per route, and each build lands here.
    pub fn check_once(&self) -> Result<(), ConfigError> {
        self.checked
            .get_or_init(|| {
                let checked = self.validate();
                if checked.is_ok() && self.generated_key {
                    tracing::warn!(
                        "SessionLayer has no configured key: cookies are signed with a random \
                         one, so sessions end when the process restarts and other instances \
                         reject them (use SessionLayer::with_keys)"
                    );
                }
                checked
            })
            .clone()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cookie: CookieConfig::default(),
            transport: SessionTransport::default(),
            timeouts: Timeouts::default(),
            store_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            generated_key: false,
            events: None,
            checked: Arc::default(),
        }
    }
}
