//! One file per command.

pub mod access;
pub mod alerts;
pub mod approvals;
pub mod audit;
pub mod audit_export;
pub mod completions;
pub mod config;
pub mod demo;
pub mod exec;
pub mod fs;
pub mod hosts;
pub mod man;
pub mod mcp;
pub mod plugin;
pub mod policy;
pub mod proxy;
pub mod secret;
pub mod sessions;
pub mod ssh;
pub mod ssh_config;
pub mod status;
pub mod vpn;
pub mod vpn_invite_key;

use std::collections::BTreeMap;

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
