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
    /// A signature check failed while loading: unsigned, tampered after signing, signed by an
    /// untrusted key, a bad or malformed signature (see [`crate::signing::SignError`]).
    #[error(transparent)]
    Signature(#[from] tether_plugin_sign::SignError),
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
