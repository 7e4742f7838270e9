//! `tether hosts list|show|rm`.

use clap::Subcommand;
use tether_api::{HostRef, HostsList, HostsQuery, HostsRemove, HostsShow};

use crate::error::CliError;
use crate::global::Global;
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
            let out = client
                .call::<HostsList>(&HostsQuery {
                    selector: selector.clone(),
                })
                .await?;
            if global.json {
                output::json(&out);
                return Ok(0);
            }
            if out.hosts.is_empty() {
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
            for h in &out.hosts {
                let tags = h
                    .tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                println!(
                    "{:<20} {:<12} {:<8} {:<8} {:<24} {}",
                    h.name,
                    h.overlay_ip,
                    h.state,
                    if h.online { "yes" } else { "no" },
                    tags,
                    h.groups.join(",")
                );
            }
            Ok(0)
        }
        HostsCommand::Show { name } => {
            let out = client.call::<HostsShow>(&HostRef { name }).await?;
            if global.json {
                output::json(&out);
            } else {
                let text = serde_json::to_string_pretty(&out).unwrap_or_default();
                println!("{text}");
            }
            Ok(0)
        }
        HostsCommand::Rm { name } => {
            let out = client
                .call::<HostsRemove>(&HostRef { name: name.clone() })
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
