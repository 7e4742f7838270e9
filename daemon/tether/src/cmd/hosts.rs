//! `tether hosts list|show|rm`.

use clap::Subcommand;
use tether_api::{HostRef, HostsList, HostsQuery, HostsRemove, HostsShow};

use crate::error::CliError;
use crate::global::Global;
use crate::output;
use crate::table::Table;

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
            let mut t = Table::new(&["NAME", "OVERLAY", "STATE", "ONLINE", "TAGS", "GROUPS"]);
            for h in &out.hosts {
                t.row([
                    h.name.clone(),
                    h.overlay_ip.clone(),
                    h.state.clone(),
                    if h.online { "yes" } else { "no" }.to_owned(),
                    tags(&h.tags),
                    h.groups.join(","),
                ]);
            }
            t.print();
            Ok(0)
        }
        HostsCommand::Show { name } => {
            let out = client.call::<HostsShow>(&HostRef { name }).await?;
            if global.json {
                output::json(&out);
            } else {
                print!("{}", show(&out, output::now_unix()));
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

/// `k=v,k2=v2`.
fn tags(tags: &std::collections::BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One host as a readable record: times in RFC 3339 with how long ago, traffic in bytes.
fn show(h: &tether_api::Host, now: u64) -> String {
    let when = |t: u64| format!("{} ({})", output::rfc3339(t), output::relative(t, now));
    let mut lines: Vec<(&str, String)> = vec![
        ("name", h.name.clone()),
        ("hostname", h.hostname.clone()),
        ("state", h.state.clone()),
        ("overlay ip", h.overlay_ip.clone()),
        (
            "tags",
            Some(tags(&h.tags))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "-".to_owned()),
        ),
        (
            "groups",
            Some(h.groups.join(","))
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| "-".to_owned()),
        ),
        ("enrolled", when(h.enrolled_at)),
        ("last seen", h.last_seen.map_or("never".to_owned(), when)),
    ];
    if let Some(r) = h.revoked_at {
        lines.push(("revoked", when(r)));
    }
    lines.extend([
        ("online", if h.online { "yes" } else { "no" }.to_owned()),
        (
            "handshake",
            h.last_handshake_secs.map_or("never".to_owned(), |s| {
                format!("{} ago", output::duration(s))
            }),
        ),
        (
            "endpoint",
            h.endpoint.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        (
            "traffic",
            format!("rx {} B, tx {} B", h.rx_bytes, h.tx_bytes),
        ),
        ("wireguard key", h.wg_public_key.clone()),
        ("ssh host key", h.ssh_host_key.clone()),
        (
            "ssh",
            h.ssh_user.as_ref().map_or_else(
                || "tether's own server".to_owned(),
                |u| format!("forward mode to sshd, as {u}"),
            ),
        ),
    ]);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn show_prints_readable_times_not_unix_seconds() {
        let h = tether_api::Host {
            name: "web1".to_owned(),
            overlay_ip: "10.99.0.2".to_owned(),
            wg_public_key: "K".to_owned(),
            ssh_host_key: "ssh-ed25519 AAAA".to_owned(),
            hostname: "web1.example".to_owned(),
            tags: [("env".to_owned(), "prod".to_owned())].into(),
            groups: vec!["web".to_owned()],
            enrolled_at: 1_795_785_010,
            last_seen: None,
            state: "active".to_owned(),
            revoked_at: None,
            online: true,
            last_handshake_secs: Some(7),
            endpoint: Some("127.0.0.1:4000".to_owned()),
            rx_bytes: 10,
            tx_bytes: 20,
            ssh_user: None,
        };
        let text = super::show(&h, 1_795_785_010 + 7200);
        assert!(
            text.contains("enrolled:      2026-11-27T13:10:10Z (2 h ago)\n"),
            "{text}"
        );
        assert!(text.contains("last seen:     never\n"), "{text}");
        assert!(text.contains("tags:          env=prod\n"), "{text}");
        assert!(!text.contains("1795785010"), "{text}");
    }
}
