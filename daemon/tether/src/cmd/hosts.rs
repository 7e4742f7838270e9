//! `tether hosts list|show|rm`.

use clap::Subcommand;
use serde_json::Value;
use tether_control::client::segment;

use crate::cli::Global;
use crate::error::CliError;
use crate::output;

/// `tether hosts ...`
#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List enrolled hosts with their online state.
    List {
        /// Only hosts matching this selector: host:a,b  group:g  tag:k=v  all  ~regex,
        /// joined with `,` and negated with `!` (e.g. "tag:env=prod,!host:db1").
        #[arg(short = 'H', long, value_name = "SEL")]
        selector: Option<String>,
    },
    /// One host's record: keys, tags, groups, enrollment time, tunnel state.
    Show {
        /// The host.
        name: String,
    },
    /// Forget a host (admin). Its tunnel peer goes away at once; enrolling again needs a new invite.
    Rm {
        /// The host.
        name: String,
    },
}

pub async fn run(global: &Global, cmd: HostsCommand) -> Result<u8, CliError> {
    let client = global.client();
    match cmd {
        HostsCommand::List { selector } => {
            let path = match &selector {
                Some(s) => format!("/v1/hosts?selector={}", segment(s)),
                None => "/v1/hosts".to_owned(),
            };
            let out: Value = client.get_json(&path).await?;
            if global.json {
                output::json(&out);
                return Ok(0);
            }
            let hosts = out["hosts"].as_array().cloned().unwrap_or_default();
            if hosts.is_empty() {
                println!(
                    "no hosts{}",
                    if selector.is_some() {
                        " match"
                    } else {
                        " yet: invite one with `tether vpn invite NAME`"
                    }
                );
                return Ok(0);
            }
            println!(
                "{:<20} {:<12} {:<8} {:<8} {:<24} GROUPS",
                "NAME", "OVERLAY", "STATE", "ONLINE", "TAGS"
            );
            for h in hosts {
                let tags = h["tags"]
                    .as_object()
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let groups = h["groups"]
                    .as_array()
                    .map(|g| {
                        g.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                println!(
                    "{:<20} {:<12} {:<8} {:<8} {:<24} {}",
                    h["name"].as_str().unwrap_or("?"),
                    h["overlay_ip"].as_str().unwrap_or("?"),
                    h["state"].as_str().unwrap_or("?"),
                    if h["online"] == true { "yes" } else { "no" },
                    tags,
                    groups
                );
            }
            Ok(0)
        }
        HostsCommand::Show { name } => {
            let out: Value = client
                .get_json(&format!("/v1/hosts/{}", segment(&name)))
                .await?;
            if global.json {
                output::json(&out);
            } else {
                let text = serde_json::to_string_pretty(&out).unwrap_or_default();
                println!("{text}");
            }
            Ok(0)
        }
        HostsCommand::Rm { name } => {
            let out: Value = client
                .delete_json(&format!("/v1/hosts/{}", segment(&name)))
                .await?;
            if global.json {
                output::json(&out);
            } else {
                println!("host {name} removed");
            }
            Ok(0)
        }
    }
}
