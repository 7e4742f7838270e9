//! `tether fs stat HOST:PATH`: what is at a path on a target.

use clap::Args;
use tether_api::{FsPathRequest, FsStatPath};

use crate::error::CliError;
use crate::global::Global;

/// `tether fs stat` arguments.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// HOST:PATH (absolute path on the target).
    #[arg(value_name = "HOST:PATH")]
    pub remote: String,
}

/// Runs `tether fs stat`.
pub async fn run(global: &Global, args: StatArgs) -> Result<u8, CliError> {
    let (host, path) = super::remote(&args.remote)?;
    let st = global
        .client()
        .call::<FsStatPath>(&FsPathRequest { host, path })
        .await?;
    if global.json {
        crate::output::json(&st);
        return Ok(0);
    }
    let e = &st.entry;
    println!("host:  {}", st.host);
    println!("path:  {}", e.name);
    println!("kind:  {}", e.kind);
    println!("size:  {} ({})", e.size, super::size(e.size));
    println!("mode:  {}", e.mode);
    println!("owner: {}:{}", e.uid, e.gid);
    println!("mtime: {}", crate::output::rfc3339(e.mtime));
    Ok(0)
}
