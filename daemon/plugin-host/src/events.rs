//! Lifecycle events the embedding daemon records: a seam, so this crate stays free of the audit
//! log (the daemon implements [`PluginEvents`] by appending audit records).

use crate::manifest::PluginKind;
use crate::types::PluginError;

/// A plugin was quarantined: it is no longer called until `tether plugin reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The plugin's name.
    pub plugin: String,
    /// Its world.
    pub kind: PluginKind,
    /// Consecutive failed calls that led to it (the manifest's `quarantine_after`).
    pub failures: u32,
    /// The last failure (kind and a one-line reason; never secret material).
    pub last_error: PluginError,
}

/// Told about plugin lifecycle events. Called synchronously on the thread that made the failing
/// plugin call (a blocking thread): implementations must not block for long nor panic.
pub trait PluginEvents: Send + Sync {
    /// A plugin was quarantined (after the `plugin_quarantined` alert was raised).
    fn quarantined(&self, event: &Quarantined);
}

/// [`PluginEvents`] that ignores everything (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl PluginEvents for NoEvents {
    fn quarantined(&self, _event: &Quarantined) {}
}
