//! `tether mcp …`: Tether for AI agents over the Model Context Protocol.

pub mod serve;

use clap::Subcommand;

use crate::error::CliError;
use crate::global::Global;

/// `tether mcp` subcommands.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve MCP on stdin/stdout for an MCP client (Claude Desktop, an IDE, an agent): the
    /// tools run as you, under your role, the policy, approvals and audit (records say via=mcp).
    Serve(serve::ServeArgs),
}

pub async fn run(global: &Global, c: McpCommand) -> Result<u8, CliError> {
    match c {
        McpCommand::Serve(args) => serve::run(global, args).await,
    }
}
