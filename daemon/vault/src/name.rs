//! Secret names: the key under which a secret is stored in every backend.

use std::fmt;

use crate::error::{Result, VaultError};

/// Longest accepted name.
pub const MAX_NAME_LEN: usize = tether_model::MAX_SECRET_NAME_LEN;

/// A validated secret name: 1–64 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit. The same name is the file name in the file backend and the credential name for
/// systemd credentials, so the rules keep it a safe path component everywhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

impl SecretName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<SecretName> {
        let err = |reason| VaultError::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        };
        tether_model::check_secret_name(name).map_err(err)?;
        Ok(SecretName(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        for ok in ["a", "audit-hmac", "wg.private_key", "A1", &"x".repeat(64)] {
            SecretName::parse(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            (".hidden", "start"),
            ("-x", "start"),
            ("a/b", "character"),
            ("a b", "character"),
            ("ä", "start"),
            ("..", "start"),
            ("x\n", "character"),
        ] {
            let e = SecretName::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(
            SecretName::parse(&"x".repeat(65))
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
    }
}
