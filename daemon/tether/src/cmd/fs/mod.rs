//! `tether fs get|put|ls|stat`: files on targets over SFTP through the hub.
//!
//! Remote paths are written `HOST:PATH` (absolute `PATH`). The hub checks the policy and audits
//! every operation before anything is sent; the target confines the path again below its
//! `[files] allowed_roots`. Exit codes: 0 done, 1 some host failed (put) or a transfer broke
//! off, 2 refused (usage, unknown host, policy, confinement), 3 internal.

pub mod get;
pub mod ls;
pub mod put;
pub mod stat;

use std::io::IsTerminal;

use clap::Subcommand;

use crate::error::CliError;
use crate::global::Global;

/// `tether fs ...`
#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Download HOST:PATH to LOCAL (written to a temp file, verified by SHA-256, then renamed).
    Get(get::GetArgs),
    /// Upload LOCAL to HOST:PATH, or with -H SEL to :PATH on many hosts (atomic on each).
    Put(put::PutArgs),
    /// List the directory HOST:PATH.
    Ls(ls::LsArgs),
    /// Show what is at HOST:PATH.
    Stat(stat::StatArgs),
}

/// Runs a `tether fs` subcommand.
pub async fn run(global: &Global, cmd: FsCommand) -> Result<u8, CliError> {
    match cmd {
        FsCommand::Get(a) => get::run(global, a).await,
        FsCommand::Put(a) => put::run(global, a).await,
        FsCommand::Ls(a) => ls::run(global, a).await,
        FsCommand::Stat(a) => stat::run(global, a).await,
    }
}

/// Splits `HOST:PATH` (the path must be absolute).
pub(crate) fn remote(arg: &str) -> Result<(String, String), CliError> {
    match arg.split_once(':') {
        Some((host, path)) if !host.is_empty() && path.starts_with('/') => {
            Ok((host.to_owned(), path.to_owned()))
        }
        _ => Err(CliError::Usage(format!(
            "{arg:?} is not HOST:PATH with an absolute PATH (e.g. web1:/srv/app/config.yml)"
        ))),
    }
}

/// A byte progress bar with rate and ETA on stderr when it is a terminal (and not `--json`).
pub(crate) fn progress(global: &Global, total: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if global.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    Some(bar)
}

/// `1536` → `1.5 KiB`.
pub(crate) fn size(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn remote_paths() {
        assert_eq!(
            super::remote("web1:/etc/x").ok(),
            Some(("web1".to_owned(), "/etc/x".to_owned()))
        );
        assert!(super::remote("web1:etc/x").is_err());
        assert!(super::remote(":/etc/x").is_err());
        assert!(super::remote("/etc/x").is_err());
    }
}
