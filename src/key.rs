//! Cookie keys.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

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
pub struct Key(pub(crate) cookie::Key, Signer);

/// HMAC-SHA256 already keyed with a [`Key`]'s signing key: HMAC hashes the
/// key's inner and outer pads before any message, so doing that once per key
/// instead of once per cookie halves the hashing of a signature check.
#[derive(Clone)]
pub(crate) struct Signer(Hmac<Sha256>);

impl Signer {
    fn new(key: &cookie::Key) -> Self {
        Self(Hmac::new_from_slice(key.signing()).expect("HMAC takes keys of any length"))
    }

    /// The HMAC of `message`, ready for more input or to finish.
    pub(crate) fn mac(&self, message: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(message);
        mac
    }
}

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
        Ok(Self::from_cookie_key(cookie::Key::derive_from(secret)))
    }

    /// Generates a random key. Cookies signed with it die with the process and are
    /// not accepted by other instances: for those, derive keys from a shared secret.
    pub fn generate() -> Self {
        Self::from_cookie_key(cookie::Key::generate())
    }

    fn from_cookie_key(key: cookie::Key) -> Self {
        let signer = Signer::new(&key);
        Self(key, signer)
    }

    /// The keyed HMAC that signs cookies (the `cookie` crate's signed form).
    pub(crate) fn signer(&self) -> &Signer {
        &self.1
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}
