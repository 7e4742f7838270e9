//! One file per command.

pub mod audit;
pub mod config;
pub mod demo;
pub mod exec;
pub mod hosts;
pub mod plugin;
pub mod policy;
pub mod secret;
pub mod status;
pub mod vpn;

use std::collections::BTreeMap;

use crate::cli::{Cli, Command};
use crate::error::CliError;

/// `--tag KEY=VALUE` arguments as a map (a later tag replaces an earlier one of the same key).
pub(crate) fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    tags.iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("--tag {t:?}: write KEY=VALUE")))
        })
        .collect()
}

/// Runs the parsed command; returns the exit code on success paths (0, or 1 for partial failure).
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Status(args) => status::run(&cli.global, args).await,
        Command::Config(c) => config::run(&cli.global, c).await,
        Command::Demo(args) => demo::run(&cli.global, args).await,
        Command::Secret(c) => secret::run(&cli.global, c).await,
        Command::Policy(c) => policy::run(&cli.global, c).await,
        Command::Audit(c) => audit::run(&cli.global, c).await,
        Command::Vpn(c) => vpn::run(&cli.global, c).await,
        Command::Hosts(c) => hosts::run(&cli.global, c).await,
        Command::Exec(args) => exec::run(&cli.global, args).await,
        Command::Plugin(c) => plugin::run(&cli.global, c).await,
    }
}
