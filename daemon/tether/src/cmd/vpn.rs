//! `tether vpn invite|reinvite|revoke|status`.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cli::Global;
use crate::error::CliError;
use crate::output;

/// `tether vpn ...`
#[derive(Debug, Subcommand)]
pub enum VpnCommand {
    /// Issue a single-use invite token for a new target (admin). Shown once; enroll with
    /// `tetherd enroll TOKEN` on the target.
    Invite(InviteArgs),
    /// A fresh token for a lost or rebuilt machine: its old identity is revoked at once.
    Reinvite(InviteArgs),
    /// Throw a host out: its tunnel peer is removed at once and its invites revoked.
    Revoke {
        /// The host.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Revoke every host.
        #[arg(long, conflicts_with = "name")]
        all: bool,
        /// Don't ask for confirmation (needed for --all without a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// The tunnel and every peer: endpoint, last handshake, traffic, RTT, health.
    Status,
    /// Rotate WireGuard keys now, over the tunnel. On the hub: NAME, or every host; on a
    /// target: its own key. Exit 1 if any host failed. (Targets also rotate on their own every
    /// `tunnel.key_rotation_days`, default 90.)
    RotateKeys {
        /// One host (hub only).
        name: Option<String>,
    },
}

/// Arguments of `tether vpn invite` and `reinvite`.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// The host's name (a lowercase DNS label).
    name: String,
    /// A tag (repeatable), e.g. --tag env=prod.
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// A group (repeatable).
    #[arg(long = "group", value_name = "G")]
    groups: Vec<String>,
    /// How long the token stays valid (default from the hub's enroll.default_ttl, 24h).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
}

fn invite_body(a: &InviteArgs) -> Result<Value, CliError> {
    let tags = super::parse_tags(&a.tags)?;
    Ok(json!({"name": a.name, "tags": tags, "groups": a.groups, "ttl": a.ttl}))
}

pub async fn run(global: &Global, cmd: VpnCommand) -> Result<u8, CliError> {
    let client = global.client();
    match cmd {
        VpnCommand::Invite(a) => issue(global, "/v1/vpn/invite", &a).await,
        VpnCommand::Reinvite(a) => issue(global, "/v1/vpn/reinvite", &a).await,
        VpnCommand::Revoke { name, all, yes } => {
            if all && !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(CliError::Usage(
                        "revoking every host needs confirmation: add --yes".to_owned(),
                    ));
                }
                eprint!(
                    "Revoke EVERY host? Their tunnels drop at once. Type 'revoke all' to confirm: "
                );
                let _ = std::io::stderr().flush();
                let mut line = String::new();
                let _ = std::io::stdin().lock().read_line(&mut line);
                if line.trim() != "revoke all" {
                    eprintln!("not confirmed; nothing changed");
                    return Ok(2);
                }
            }
            let body = if all {
                json!({"all": true})
            } else {
                json!({"name": name})
            };
            let out: Value = client.post_json("/v1/vpn/revoke", &body).await?;
            if global.json {
                output::json(&out);
            } else {
                let names: Vec<&str> = out["revoked"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if names.is_empty() {
                    println!(
                        "no enrolled host by that name; {} pending invite(s) revoked",
                        out["invites_revoked"]
                    );
                } else {
                    println!("revoked: {}", names.join(", "));
                }
            }
            Ok(0)
        }
        VpnCommand::RotateKeys { name } => {
            let out: Value = client
                .post_json("/v1/vpn/rotate-keys", &json!({"name": name}))
                .await?;
            let results = out["rotated"].as_array().cloned().unwrap_or_default();
            let failed = results.iter().filter(|r| r["ok"] != true).count();
            if global.json {
                output::json(&out);
            } else {
                if results.is_empty() {
                    println!("no hosts to rotate");
                }
                for r in &results {
                    match r["ok"].as_bool() {
                        Some(true) => println!(
                            "{}: rotated (new key {})",
                            r["host"].as_str().unwrap_or("?"),
                            r["new_public_key"].as_str().unwrap_or("?")
                        ),
                        _ => println!(
                            "{}: FAILED: {}",
                            r["host"].as_str().unwrap_or("?"),
                            r["error"].as_str().unwrap_or("?")
                        ),
                    }
                }
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        VpnCommand::Status => {
            let out: Value = client.get_json("/v1/vpn/status").await?;
            if global.json {
                output::json(&out);
                return Ok(0);
            }
            if out["tunnel"] == false {
                println!("no tunnel: {}", out["hint"].as_str().unwrap_or(""));
                return Ok(0);
            }
            println!(
                "{} {} listening on {} (public key {})",
                out["role"].as_str().unwrap_or("?"),
                out["overlay_ip"].as_str().unwrap_or("?"),
                out["listen"].as_str().unwrap_or("?"),
                out["public_key"].as_str().unwrap_or("?")
            );
            let peers = out["peers"].as_array().cloned().unwrap_or_default();
            if peers.is_empty() {
                println!("no peers yet: invite one with `tether vpn invite NAME`");
            } else {
                println!(
                    "{:<16} {:<12} {:<22} {:>10} {:>10} {:>10} {:>6}  health",
                    "PEER", "OVERLAY", "ENDPOINT", "HANDSHAKE", "RX", "TX", "RTT"
                );
            }
            for p in peers {
                println!(
                    "{:<16} {:<12} {:<22} {:>10} {:>10} {:>10} {:>6}  {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["overlay_ip"].as_str().unwrap_or("?"),
                    p["endpoint"].as_str().unwrap_or("-"),
                    p["last_handshake_secs"]
                        .as_u64()
                        .map_or("never".to_owned(), |s| format!("{}s ago", s)),
                    bytes(p["rx_bytes"].as_u64().unwrap_or(0)),
                    bytes(p["tx_bytes"].as_u64().unwrap_or(0)),
                    p["rtt_ms"]
                        .as_u64()
                        .map_or("-".to_owned(), |r| format!("{r}ms")),
                    p["health"].as_str().unwrap_or("?"),
                );
            }
            Ok(0)
        }
    }
}

async fn issue(global: &Global, path: &str, a: &InviteArgs) -> Result<u8, CliError> {
    let out: Value = global.client().post_json(path, &invite_body(a)?).await?;
    if global.json {
        output::json(&out);
    } else {
        // The token on stdout alone, so `TOKEN=$(tether vpn invite web1)` works; the rest on stderr.
        println!("{}", out["token"].as_str().unwrap_or(""));
        eprintln!(
            "invite for {} ({}), valid until unix {}, enroll endpoint {}",
            out["name"].as_str().unwrap_or("?"),
            out["overlay_ip"].as_str().unwrap_or("?"),
            out["expires_at"],
            out["enroll_endpoint"].as_str().unwrap_or("?")
        );
        eprintln!("on the target: tetherd enroll -   (paste the token on stdin; it works once)");
    }
    Ok(0)
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n}B"),
        1024..1_048_576 => format!("{:.1}K", n as f64 / 1024.0),
        _ => format!("{:.1}M", n as f64 / 1_048_576.0),
    }
}
