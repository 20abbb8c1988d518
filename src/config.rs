//! Everything a [`SessionLayer`](crate::SessionLayer) is configured with.

use std::time::Duration;

use crate::cookie::CookieConfig;
use crate::expiry::Timeouts;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub cookie: CookieConfig,
    pub timeouts: Timeouts,
    /// The longest any one store call may take before it counts as an outage.
    pub store_timeout: Duration,
    /// The cookie key was made up at startup rather than configured.
    pub generated_key: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cookie: CookieConfig::default(),
            timeouts: Timeouts::default(),
            store_timeout: Duration::from_secs(5),
            generated_key: false,
        }
    }
}
