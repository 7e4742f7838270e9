use tether_api::ClientError;

/// Why a `tether` command failed; [`CliError::exit_code`] gives the documented exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Talking to tetherd failed, or it refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The command line or a local input is wrong.
    #[error("{0}")]
    Usage(String),
    /// Something local failed (spawning, files).
    #[error("{0}")]
    Internal(String),
}

impl CliError {
    /// 2 for usage or denied, 3 for internal failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(e) => e.exit_code(),
            CliError::Usage(_) => 2,
            CliError::Internal(_) => 3,
        }
    }
}
