//! Cookie keys.

use std::fmt;

/// The shortest secret [`Key::derive_from`] accepts.
pub const MIN_SECRET_LEN: usize = 32;

/// A key that signs (or encrypts) session cookies.
///
/// Give the layer several with
/// [`SessionLayer::with_keys`](crate::SessionLayer::with_keys) to rotate them: the
/// first signs new cookies, every one verifies, so cookies issued under the
/// previous key stay valid while it is being retired. `Debug` never prints the
/// key material.
#[derive(Clone)]
pub struct Key(pub(crate) cookie::Key);

/// A secret too short to derive a [`Key`] from.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a session key secret must be at least {MIN_SECRET_LEN} bytes long, got {0}")]
pub struct KeyError(usize);

impl Key {
    /// Derives a key from a secret of at least 32 bytes (HKDF-SHA256, through the
    /// `cookie` crate). Instances that derive from the same secret accept each
    /// other's cookies.
    ///
    /// # Errors
    /// If the secret is shorter than 32 bytes.
    ///
    /// # Examples
    /// ```
    /// let key = unstuck::Key::derive_from(b"a secret of at least thirty-two bytes!")?;
    /// assert!(unstuck::Key::derive_from(b"too short").is_err());
    /// # Ok::<(), unstuck::KeyError>(())
    /// ```
    pub fn derive_from(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError(secret.len()));
        }
        Ok(Self(cookie::Key::derive_from(secret)))
    }

    /// Generates a random key. Cookies signed with it die with the process and are
    /// not accepted by other instances: for those, derive keys from a shared secret.
    pub fn generate() -> Self {
        Self(cookie::Key::generate())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}
