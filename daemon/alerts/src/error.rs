//! The crate's error type.

use std::path::PathBuf;

/// What went wrong in the alerts crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlertsError {
    /// A metric could not be registered (a name clash in the registry).
    #[error(
        "could not register the alert metrics: {0}; is another component using the tether_alerts_ names?"
    )]
    Metrics(#[from] prometheus::Error),
    /// A route names no sink, or a category pattern is malformed.
    #[error("invalid [alerts] route {index}: {message}")]
    Route {
        /// Position of the route in `[[alerts.route]]`, from 0.
        index: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A sink's cursor file could not be read or written.
    #[error("audit sink cursor {}: {message}; check the permissions of state_dir/audit-sinks (delete the file to restart the sink from the first record)", path.display())]
    Cursor {
        /// The cursor file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The audit log could not be read for a sink.
    #[error("reading the audit log for sink {sink}: {source}")]
    Audit {
        /// The sink.
        sink: String,
        /// The reader's error.
        #[source]
        source: tether_audit::AuditError,
    },
    /// `tether alerts test` named a sink that is not configured.
    #[error("no alert sink named {0:?}; `tether plugin list` shows the alert_sink plugins")]
    UnknownSink(String),
}

/// Result with [`AlertsError`].
pub type Result<T> = std::result::Result<T, AlertsError>;
