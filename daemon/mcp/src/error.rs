//! The crate's one error type.

/// Why the MCP server could not start or stopped abnormally. Tool failures are never errors
/// of this type: they are tool results with `isError: true`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The MCP session could not be set up on stdio (the client sent no valid `initialize`).
    #[error(
        "the MCP session could not start: {0}\nhint: run `tether mcp serve` from an MCP client (it speaks JSON-RPC on stdin/stdout)"
    )]
    Start(String),
    /// The session ended with an error from the transport.
    #[error("the MCP session ended with an error: {0}")]
    Stopped(String),
}
