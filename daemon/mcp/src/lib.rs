//! `tether mcp serve`: the control API's operations as MCP tools, for AI agents.
//!
//! The server speaks MCP over stdio (JSON-RPC lines, `rmcp`) and calls the daemon over its
//! control socket as the invoking user, so RBAC, policy, approvals and audit apply exactly as
//! they do to `tether` commands. Requests say `via: mcp`; the daemon believes that only because
//! they come from the installed `tether` binary (see the control API's `via_of`), never from a
//! header a caller picks. Nothing that arrives over the MCP channel can approve anything:
//! approvals are decided over the control socket by another uid.
//!
//! Domain failures (policy denied, host offline, timeout, non-zero exit, over a limit) are tool
//! results with `isError: true` and a message that says what to do; protocol errors are kept
//! for requests the server cannot route at all.
#![forbid(unsafe_code)]

mod approvals;
mod error;
mod fs;
mod tools;

pub use error::McpError;
pub use fs::INLINE_LIMIT;
pub use tools::TetherMcp;

use rmcp::ServiceExt as _;

/// Serves MCP on this process's stdin/stdout until the client closes its side.
///
/// `client` is the control-socket client the tools use (it should say `via` = `mcp`).
pub async fn serve_stdio(client: tether_api::Client) -> Result<(), McpError> {
    let server = TetherMcp::new(client);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Start(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| McpError::Stopped(e.to_string()))?;
    Ok(())
}
