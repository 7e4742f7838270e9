//! `tether fs ls HOST:PATH`: a directory on a target.

use clap::Args;
use tether_api::{FsListDir, FsPathRequest};

use crate::error::CliError;
use crate::global::Global;

/// `tether fs ls` arguments.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// HOST:PATH of a directory (absolute path on the target).
    #[arg(value_name = "HOST:PATH")]
    pub remote: String,
}

/// Runs `tether fs ls`.
pub async fn run(global: &Global, args: LsArgs) -> Result<u8, CliError> {
    let (host, path) = super::remote(&args.remote)?;
    let list = global
        .client()
        .call::<FsListDir>(&FsPathRequest { host, path })
        .await?;
    if global.json {
        crate::output::json(&list);
        return Ok(0);
    }
    for e in &list.entries {
        let kind = match e.kind.as_str() {
            "dir" => 'd',
            "symlink" => 'l',
            "file" => '-',
            _ => '?',
        };
        println!(
            "{kind} {:>5} {:>5}:{:<5} {:>12}  {}  {}",
            e.mode,
            e.uid,
            e.gid,
            e.size,
            crate::output::rfc3339(e.mtime),
            e.name
        );
    }
    Ok(0)
}
