//! Interactive sessions as every layer sees them: the terminal asked for and what the operator
//! sends while the session runs (the hub's operator SSH endpoint, `tether ssh`, the pool).

/// A pseudo-terminal request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyRequest {
    /// `TERM` for the remote side.
    pub term: String,
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

/// What an interactive session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// A terminal, if one was asked for.
    pub pty: Option<PtyRequest>,
    /// A command instead of the login shell.
    pub command: Option<String>,
}

/// Input to a running interactive session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// Keystrokes or piped bytes.
    Data(Vec<u8>),
    /// The terminal's new size.
    Resize {
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
    },
    /// No more input.
    Eof,
}
