//! Everything a [`SessionLayer`](crate::SessionLayer) is configured with.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cookie::CookieConfig;
use crate::error::ConfigError;
use crate::events::SessionEvents;
use crate::expiry::Timeouts;
use crate::transport::SessionTransport;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub cookie: CookieConfig,
    /// Cookie, token header, or both.
    pub transport: SessionTransport,
    pub timeouts: Timeouts,
    /// The longest any one store call may take before it counts as an outage.
    pub store_timeout: Duration,
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
            generated_key: false,
            events: None,
            checked: Arc::default(),
        }
    }
}
