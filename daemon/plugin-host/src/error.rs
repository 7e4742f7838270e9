//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong loading, verifying or managing plugins.
///
/// Failures *inside* a plugin call (trap, timeout, memory) are not errors of the host: they are
/// reported per plugin as [`crate::PluginError`] so one bad plugin never fails the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file (manifest, component, signature, key, cache) could not be read or written.
    #[error("{what} {path}: {source} (check the path and its permissions)")]
    Io {
        /// What the file is, e.g. "plugin manifest".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML or has an unknown/ill-typed key.
    #[error("plugin manifest {path}: {message}")]
    Manifest {
        /// The manifest file (or `<string>`).
        path: PathBuf,
        /// What is wrong, naming the plugin and the key where known.
        message: String,
    },
    /// A plugin entry is well-formed TOML but its values are not acceptable.
    #[error("plugin {plugin:?}: {key}: {message}")]
    InvalidPlugin {
        /// The plugin's `name`.
        plugin: String,
        /// The offending key, e.g. `limits.memory_mb`.
        key: &'static str,
        /// Why it is refused and what to do.
        message: String,
    },
    /// The component has no `<path>.sig` and the manifest does not set `allow_unsigned = true`.
    #[error(
        "plugin {path} is not signed (no {path}.sig): sign it with `tether plugin sign {path} --key KEY` or set allow_unsigned = true"
    )]
    Unsigned {
        /// The component.
        path: PathBuf,
    },
    /// The signature file is not in the expected format.
    #[error("signature {path}: {message}")]
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
        /// The digest named in the signature.
        signed: String,
        /// The digest of the file as read.
        actual: String,
    },
    /// The signature was made by a key that is not in `trusted_keys`.
    #[error("plugin {path} is signed by key {key_id}, which is not in trusted_keys")]
    UntrustedKey {
        /// The component.
        path: PathBuf,
        /// The signer's key id.
        key_id: String,
    },
    /// The signature does not verify under the trusted key it names.
    #[error("plugin {path}: the signature by key {key_id} is invalid (forged or corrupted .sig)")]
    BadSignature {
        /// The component.
        path: PathBuf,
        /// The key id named in the signature.
        key_id: String,
    },
    /// A key file or a `trusted_keys` entry is not a valid Ed25519 key.
    #[error("key {what}: {message}")]
    Key {
        /// Which key (file path or manifest entry).
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The component could not be compiled, or does not implement the world its `kind` requires.
    #[error("plugin {plugin:?}: {message}")]
    Load {
        /// The plugin's name.
        plugin: String,
        /// Wasmtime's explanation (missing export, unknown import, invalid wasm...).
        message: String,
    },
    /// The WASM engine could not be created.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The metrics could not be registered (e.g. a second host in the same registry).
    #[error("plugin metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The operating system refused a resource (thread, runtime) the host needs.
    #[error("plugin host runtime: {0}")]
    Runtime(String),
    /// Any other signing failure (see [`crate::signing::SignError`]); the verification failures
    /// the host meets while loading map to the variants above.
    #[error(transparent)]
    Signing(tether_plugin_sign::SignError),
}

impl From<tether_plugin_sign::SignError> for Error {
    fn from(e: tether_plugin_sign::SignError) -> Self {
        use tether_plugin_sign::SignError as S;
        match e {
            S::Io { what, path, source } => Error::Io { what, path, source },
            S::Unsigned { path, .. } => Error::Unsigned { path },
            S::SignatureMalformed { path, message } => Error::SignatureMalformed { path, message },
            S::Tampered {
                path,
                signed,
                actual,
            } => Error::Tampered {
                path,
                signed,
                actual,
            },
            S::UntrustedKey { path, key_id } => Error::UntrustedKey { path, key_id },
            S::BadSignature { path, key_id } => Error::BadSignature { path, key_id },
            S::Key { what, message } => Error::Key { what, message },
            other => Error::Signing(other),
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
