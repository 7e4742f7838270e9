//! [`SiemError`].

/// What went wrong reading a record to render.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SiemError {
    /// The line is not a JSON object.
    #[error(
        "line is not a JSON audit record: {0}; export reads the log as `tether audit export --format jsonl` writes it"
    )]
    NotJson(String),
    /// A required record field is missing or has the wrong type.
    #[error(
        "audit record field `{0}` is missing or has the wrong type; the log may be damaged, run `tether audit verify`"
    )]
    Field(&'static str),
    /// The timestamp is not RFC 3339.
    #[error("timestamp {0:?} is not RFC 3339 (YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM))")]
    Timestamp(String),
    /// An export format this crate does not know.
    #[error("unknown format {0:?}; use one of jsonl, ocsf, ecs, cef, syslog")]
    UnknownFormat(String),
}
