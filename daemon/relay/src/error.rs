//! The crate's one error type.

/// Why the relay (server or client) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The peer broke the protocol (oversized or malformed frame, wrong order).
    #[error("relay protocol: {0}")]
    Protocol(String),
    /// The relay refused this client (unknown key, failed proof, rate limit).
    #[error("the relay refused the connection: {0}")]
    Refused(String),
    /// The relay did not prove it holds the configured relay key.
    #[error(
        "the relay at {0} did not prove its key; check relay_key in the config (or someone is in the way)"
    )]
    WrongRelay(String),
    /// TLS setup: a certificate or key file that can't be used.
    #[error("relay TLS: {0}")]
    Tls(String),
    /// The network.
    #[error("relay connection: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing within the time limit.
    #[error("relay: {0} timed out")]
    Timeout(&'static str),
}
