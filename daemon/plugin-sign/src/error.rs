//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong generating keys, signing or verifying a plugin component.
///
/// The verification failures ([`SignError::Unsigned`], [`SignError::Tampered`],
/// [`SignError::BadSignature`], [`SignError::UntrustedKey`], [`SignError::SignatureMalformed`],
/// [`SignError::NoPublicKey`]) are distinct variants so callers can tell an operator exactly what
/// is wrong; [`SignError::is_verification_failure`] groups them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// A file (component, signature, key) could not be read or written.
    #[error("{what} {path}: {source} (check the path and its permissions)")]
    Io {
        /// What the file is, e.g. "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file already exists and replacing it was not asked for.
    #[error(
        "{path} already exists: choose another path, or replace it knowingly with --force (plugins signed with the old key must then be re-signed and trusted_keys updated)"
    )]
    KeyExists {
        /// The existing file (private key or its `.pub`).
        path: PathBuf,
    },
    /// The component has no signature file.
    #[error(
        "plugin {path} is not signed (no {sig}): sign it with `tether plugin sign {path} --key KEY` or set allow_unsigned = true"
    )]
    Unsigned {
        /// The component.
        path: PathBuf,
        /// The signature file that was looked for.
        sig: PathBuf,
    },
    /// The signature file is not in the expected format.
    #[error("signature {path}: {message} (re-create it with `tether plugin sign`)")]
    SignatureMalformed {
        /// The `.sig` file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The component's SHA-256 differs from the one that was signed: it changed after signing.
    #[error(
        "plugin {path} was modified after signing: signed sha256 {signed}, file sha256 {actual}; re-sign it if the change is intended"
    )]
    Tampered {
        /// The component.
        path: PathBuf,
        /// The digest named in the signature (hex).
        signed: String,
        /// The digest of the file as read (hex).
        actual: String,
    },
    /// The signature was made by a key that is not among the trusted keys.
    #[error(
        "plugin {path} is signed by key {key_id}, which is not in trusted_keys (add that key's public key to trusted_keys only if you trust its holder)"
    )]
    UntrustedKey {
        /// The component.
        path: PathBuf,
        /// The signer's key id.
        key_id: String,
    },
    /// The signature does not verify under the key it names.
    #[error("plugin {path}: the signature by key {key_id} is invalid (forged or corrupted .sig)")]
    BadSignature {
        /// The component.
        path: PathBuf,
        /// The key id named in the signature.
        key_id: String,
    },
    /// No trusted keys were given and the signature file does not carry its public key (it was
    /// made before signatures carried one), so the signature cannot be checked.
    #[error(
        "signature {path} names key {key_id} but does not carry its public key: pass the signer's public key as a trusted key, or re-sign with `tether plugin sign`"
    )]
    NoPublicKey {
        /// The `.sig` file.
        path: PathBuf,
        /// The key id named in the signature.
        key_id: String,
    },
    /// A key file or a trusted key is not a valid Ed25519 key, or no key could be generated.
    #[error("{what}: {message}")]
    Key {
        /// Which key, e.g. `private key /path`, `public key`, `trusted key <id>`.
        what: String,
        /// What is wrong.
        message: String,
    },
}

impl SignError {
    /// True for the errors that mean "this component does not pass verification" (as opposed to
    /// a missing file or an unusable key given by the caller).
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            SignError::Unsigned { .. }
                | SignError::SignatureMalformed { .. }
                | SignError::Tampered { .. }
                | SignError::UntrustedKey { .. }
                | SignError::BadSignature { .. }
                | SignError::NoPublicKey { .. }
        )
    }

    /// A stable snake_case code for machine-readable output, e.g. `tampered`.
    pub fn code(&self) -> &'static str {
        match self {
            SignError::Io { .. } => "io",
            SignError::KeyExists { .. } => "key_exists",
            SignError::Unsigned { .. } => "unsigned",
            SignError::SignatureMalformed { .. } => "signature_malformed",
            SignError::Tampered { .. } => "tampered",
            SignError::UntrustedKey { .. } => "untrusted_key",
            SignError::BadSignature { .. } => "bad_signature",
            SignError::NoPublicKey { .. } => "no_public_key",
            SignError::Key { .. } => "bad_key",
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = SignError> = std::result::Result<T, E>;
