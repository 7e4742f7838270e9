//! The crate's one error type.

/// What is wrong with a recording line or id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// The first line is not an asciicast v2 header.
    #[error("line 1 is not an asciicast v2 header: {0}")]
    Header(String),
    /// A later line is not an asciicast event `[time, "code", "data"]`.
    #[error("line {line} is not an asciicast event: {why}")]
    Event {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        why: String,
    },
    /// A recording id with characters other than `a-z 0-9 -`, or longer than 64.
    #[error(
        "{0:?} is not a recording id (lowercase letters, digits and '-', at most 64); see `tether sessions list`"
    )]
    BadId(String),
}
