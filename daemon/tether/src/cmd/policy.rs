//! `tether policy check|test|reload|show`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use tether_api::{
    Empty, PolicyCheck, PolicyCheckRequest, PolicyGet, PolicyReload, PolicyTest, PolicyTestRequest,
};
use tether_model::Role;
use tether_model::selector::HostFacts;
use tether_policy::{Policy, PolicySpec, RequestKind, run_fixtures};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// `tether policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Explain, rule by rule, what the daemon's policy says about one request.
    /// Exit 0 when it would run (allow, warn), 2 when it would not (deny, require-approval).
    Check(CheckArgs),
    /// Run a fixture file of {request, expect} cases; exit 1 on any mismatch (for CI).
    /// Without --policy the daemon runs them against its policy and its loaded policy plugins,
    /// exactly as `policy check` decides; with --policy FILE only that file's regex rules are
    /// checked (offline).
    Test {
        /// The fixture file.
        file: PathBuf,
        /// Test this policy file instead of the running daemon's policy (works offline).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Re-read the config and swap the policy atomically; an invalid one keeps the old.
    Reload,
    /// Print the policy in force.
    Show,
}

/// Arguments of `tether policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The target host's name.
    #[arg(short = 'H', long = "host", value_name = "NAME")]
    host: Option<String>,
    /// A tag of the target host (repeatable), e.g. --tag env=prod.
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// A group of the target host (repeatable).
    #[arg(long = "group", value_name = "G")]
    groups: Vec<String>,
    /// Check as this user instead of yourself (admin only).
    #[arg(long = "as", value_name = "USER")]
    as_user: Option<String>,
    /// Check with this role instead of yours (admin only).
    #[arg(long = "role", value_name = "ROLE")]
    as_role: Option<String>,
    /// Check reading this file instead of running a command.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["write", "command"])]
    read: Option<String>,
    /// Check writing this file instead of running a command.
    #[arg(long, value_name = "PATH", conflicts_with = "command")]
    write: Option<String>,
    /// A change-ticket reference passed on to policy plugins (e.g. CHG-1234).
    #[arg(long, value_name = "ID")]
    ticket: Option<String>,
    /// The command, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

pub async fn run(global: &Global, cmd: PolicyCommand) -> Result<u8, CliError> {
    match cmd {
        PolicyCommand::Check(args) => check(global, args).await,
        PolicyCommand::Test { file, policy } => test(global, file, policy).await,
        PolicyCommand::Reload => {
            let out = global.client().call::<PolicyReload>(&Empty {}).await?;
            if global.json {
                output::json(&out);
            } else {
                println!(
                    "policy reloaded: mode {}, {} rules",
                    out.mode.map_or("?", |m| m.as_str()),
                    out.rules
                );
            }
            Ok(0)
        }
        PolicyCommand::Show => {
            let out = global.client().call::<PolicyGet>(&Empty {}).await?;
            if global.json {
                output::json(&out);
            } else {
                println!("mode {}, {} rules", out.mode.as_str(), out.rules);
                let text = toml::to_string_pretty(&json!({"policy": out.spec}))
                    .map_err(|e| CliError::Internal(format!("cannot print the policy: {e}")))?;
                print!("{text}");
            }
            Ok(0)
        }
    }
}

async fn check(global: &Global, a: CheckArgs) -> Result<u8, CliError> {
    let (kind, command, path) = match (&a.read, &a.write) {
        (Some(p), _) => (RequestKind::FileRead, None, Some(p.clone())),
        (_, Some(p)) => (RequestKind::FileWrite, None, Some(p.clone())),
        _ if a.command.is_empty() => {
            return Err(CliError::Usage(
                "nothing to check: give a command after `--`, or --read/--write PATH".to_owned(),
            ));
        }
        _ => (RequestKind::Exec, Some(a.command.join(" ")), None),
    };
    let as_role = match &a.as_role {
        Some(r) => Some(
            r.parse::<Role>()
                .map_err(|e| CliError::Usage(format!("--role: {e}")))?,
        ),
        None => None,
    };
    let body = PolicyCheckRequest {
        kind: Some(kind),
        command,
        path,
        host: Some(HostFacts {
            name: a.host.clone().unwrap_or_default(),
            groups: a.groups,
            tags: super::parse_tags(&a.tags)?,
        }),
        as_user: a.as_user,
        as_role,
        ticket: a.ticket,
    };
    let out = global.client().call::<PolicyCheck>(&body).await?;
    let decision = &out.decision;
    if global.json {
        output::json(&out);
    } else {
        println!(
            "verdict: {} (mode {})",
            decision.verdict,
            decision.mode.as_str()
        );
        println!("reason:  {}", decision.reason);
        for t in &decision.trace {
            let rule = t
                .rule
                .as_ref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default();
            let note = if t.note.is_empty() {
                String::new()
            } else {
                format!(" — {}", t.note)
            };
            let outcome = serde_json::to_value(t.outcome).unwrap_or_default();
            println!(
                "  - {}: {}{rule}{note}",
                outcome.as_str().unwrap_or("?"),
                t.subject
            );
        }
    }
    Ok(if decision.verdict.permits() { 0 } else { 2 })
}

async fn test(
    global: &Global,
    file: PathBuf,
    policy_file: Option<PathBuf>,
) -> Result<u8, CliError> {
    let fixtures = std::fs::read_to_string(&file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let report = match policy_file {
        // Offline: the regex rules of a policy file (plugins need the daemon).
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))?;
            // A standalone policy.toml and a tetherd.toml both carry a [policy] table.
            let value: toml::Table = text
                .parse()
                .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
            let spec: PolicySpec = match value.get("policy") {
                Some(v) => v
                    .clone()
                    .try_into()
                    .map_err(|e| CliError::Usage(format!("{}: [policy]: {e}", p.display())))?,
                None => {
                    return Err(CliError::Usage(format!(
                        "{} has no [policy] table",
                        p.display()
                    )));
                }
            };
            let policy = Policy::compile(&spec)
                .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
            run_fixtures(&policy, &fixtures)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?
        }
        // The daemon's policy and its loaded policy plugins, exactly as `policy check` decides.
        None => global
            .client()
            .call::<PolicyTest>(&PolicyTestRequest { fixtures })
            .await
            .map_err(|e| match e {
                tether_api::ClientError::Api { error, .. } if error.code == "invalid_fixtures" => {
                    CliError::Usage(format!("{}: {}", file.display(), error.message))
                }
                other => other.into(),
            })?,
    };
    if global.json {
        output::json(&report);
    } else {
        println!("{report}");
    }
    Ok(if report.passed() { 0 } else { 1 })
}
