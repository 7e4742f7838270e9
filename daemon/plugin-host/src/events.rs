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

/// A plugin call failed (trap, timeout, memory cap, output too large, instantiation): counted,
/// and the plugin is quarantined when `consecutive` reaches `quarantine_after`. A plugin's own
/// refusal (a sink returning an error) is not a failure and is not reported here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The plugin's name.
    pub plugin: String,
    /// Its world.
    pub kind: PluginKind,
    /// Consecutive failures so far, this one included.
    pub consecutive: u32,
    /// What went wrong (kind and a one-line reason; never secret material).
    pub error: PluginError,
}

/// Told about plugin lifecycle events. Called synchronously on the thread that made the failing
/// plugin call (a blocking thread): implementations must not block for long nor panic.
pub trait PluginEvents: Send + Sync {
    /// A plugin was quarantined (after the `plugin_quarantined` alert was raised).
    fn quarantined(&self, event: &Quarantined);

    /// A plugin call failed (before any quarantine it leads to). At most `quarantine_after`
    /// in a row per plugin: after that it is quarantined and no longer called.
    fn failed(&self, _event: &Failed) {}
}

/// [`PluginEvents`] that ignores everything (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl PluginEvents for NoEvents {
    fn quarantined(&self, _event: &Quarantined) {}
}
