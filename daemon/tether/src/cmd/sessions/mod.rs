//! `tether sessions list|show|play|export`: recorded interactive sessions (admin, auditor).

mod export;
mod list;
mod play;
mod show;

use clap::Subcommand;

use crate::error::CliError;
use crate::global::Global;

/// `tether sessions ...`
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Recorded sessions, newest first.
    List(list::ListArgs),
    /// One recording's details, its hash chain verified (complete, truncated or corrupt).
    Show(show::ShowArgs),
    /// Replay a recording in this terminal with its timing.
    Play(play::PlayArgs),
    /// Write a recording as an asciicast v2 file (for `asciinema play`).
    Export(export::ExportArgs),
}

pub async fn run(global: &Global, c: SessionsCommand) -> Result<u8, CliError> {
    match c {
        SessionsCommand::List(a) => list::run(global, a).await,
        SessionsCommand::Show(a) => show::run(global, a).await,
        SessionsCommand::Play(a) => play::run(global, a).await,
        SessionsCommand::Export(a) => export::run(global, a).await,
    }
}
