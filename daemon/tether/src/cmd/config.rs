//! `tether config check|show|reload`.

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;
use tether_api::{ConfigShow, Empty, Reload};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// `tether config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate config files offline; print every problem with its key and line. Exit 2 on any.
    Check {
        /// Files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the effective config (secrets redacted): the running daemon's, or with --file the
    /// one `tetherd run --config FILE` would use here (file + TETHER_* environment).
    Show {
        /// Compute from this file instead of asking the daemon.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Ask the daemon to re-read its config (like SIGHUP). An invalid config keeps the old one.
    Reload,
}

#[derive(Serialize)]
struct FileReport {
    file: PathBuf,
    ok: bool,
    problems: Vec<ProblemOut>,
}

#[derive(Serialize)]
struct ProblemOut {
    key: String,
    line: Option<usize>,
    message: String,
}

pub async fn run(global: &Global, cmd: ConfigCommand) -> Result<u8, CliError> {
    match cmd {
        ConfigCommand::Check { files } => Ok(check(global, files)),
        ConfigCommand::Show { file } => show(global, file).await,
        ConfigCommand::Reload => {
            let report = global.client().call::<Reload>(&Empty {}).await?;
            if global.json {
                output::json(&report);
            } else {
                println!("config reloaded");
                if !report.needs_restart.is_empty() {
                    println!(
                        "  restart tetherd for these changes to take effect: {}",
                        report.needs_restart.join(", ")
                    );
                }
            }
            Ok(0)
        }
    }
}

fn check(global: &Global, files: Vec<PathBuf>) -> u8 {
    let mut reports = Vec::new();
    for file in files {
        let report = match tether_config::check_file(&file) {
            Ok(_) => FileReport {
                file,
                ok: true,
                problems: Vec::new(),
            },
            Err(tether_config::ConfigError::Invalid { problems, .. }) => FileReport {
                file,
                ok: false,
                problems: problems
                    .into_iter()
                    .map(|p| ProblemOut {
                        key: p.key,
                        line: p.line,
                        message: p.message,
                    })
                    .collect(),
            },
            Err(e) => FileReport {
                file,
                ok: false,
                problems: vec![ProblemOut {
                    key: String::new(),
                    line: None,
                    message: e.to_string(),
                }],
            },
        };
        reports.push(report);
    }
    let all_ok = reports.iter().all(|r| r.ok);
    if global.json {
        output::json(&reports);
    } else {
        for r in &reports {
            if r.ok {
                println!("{}: ok", r.file.display());
                continue;
            }
            let n = r.problems.len();
            eprintln!(
                "{}: {n} problem{}",
                r.file.display(),
                if n == 1 { "" } else { "s" }
            );
            for p in &r.problems {
                let at = match p.line {
                    Some(l) => format!("{}:{l}: ", r.file.display()),
                    None => format!("{}: ", r.file.display()),
                };
                let key = if p.key.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", p.key)
                };
                eprintln!("  {at}{key}{}", p.message);
            }
        }
    }
    if all_ok { 0 } else { 2 }
}

async fn show(global: &Global, file: Option<PathBuf>) -> Result<u8, CliError> {
    let value = match file {
        Some(file) => {
            let config = tether_config::load(Some(&file), &tether_config::Overrides::default())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            tether_config::redacted_json(&config)
        }
        None => global.client().call::<ConfigShow>(&Empty {}).await?.0,
    };
    if global.json {
        output::json(&value);
    } else {
        let text = toml::to_string_pretty(&value)
            .map_err(|e| CliError::Internal(format!("cannot print config as TOML: {e}")))?;
        print!("{text}");
    }
    Ok(0)
}
