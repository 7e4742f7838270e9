//! `tether mcp serve`.

use clap::Args;

use crate::error::CliError;
use crate::global::Global;

/// Arguments of `tether mcp serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {}

pub async fn run(global: &Global, _args: ServeArgs) -> Result<u8, CliError> {
    // stdout belongs to the protocol: nothing else may be printed there.
    let client = global.client().with_via("mcp");
    tether_mcp::serve_stdio(client)
        .await
        .map_err(|e| CliError::Internal(e.to_string()))?;
    Ok(0)
}
