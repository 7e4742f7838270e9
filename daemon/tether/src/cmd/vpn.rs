//! `tether vpn invite|reinvite|revoke|status|rotate-keys` (`rotate-invite-key` is in
//! [`super::vpn_invite_key`]).

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use tether_api::{
    Empty, InviteRequest, RevokeRequest, RotateRequest, VpnInvite, VpnReinvite, VpnRevoke,
    VpnRotateKeys, VpnStatusGet,
};

use crate::error::CliError;
use crate::global::Global;
use crate::output;
use crate::table::Table;

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
    /// Rotate the hub's invite key (admin, hub): a new key epoch, stored in the vault as
    /// `tetherd.invite-key.eN` (older epochs are kept). New invites use it; invites already
    /// issued keep working until they expire. Audited as `invite_key.rotated`.
    RotateInviteKey,
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

fn invite_body(a: &InviteArgs) -> Result<InviteRequest, CliError> {
    Ok(InviteRequest {
        name: a.name.clone(),
        tags: super::parse_tags(&a.tags)?,
        groups: a.groups.clone(),
        ttl: a.ttl.clone(),
    })
}

pub async fn run(global: &Global, cmd: VpnCommand) -> Result<u8, CliError> {
    let client = global.client();
    match cmd {
        VpnCommand::Invite(a) => issue::<VpnInvite>(global, &a).await,
        VpnCommand::Reinvite(a) => issue::<VpnReinvite>(global, &a).await,
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
                RevokeRequest {
                    name: None,
                    all: true,
                }
            } else {
                RevokeRequest { name, all: false }
            };
            let out = client.call::<VpnRevoke>(&body).await?;
            if global.json {
                output::json(&out);
            } else if out.revoked.is_empty() {
                println!(
                    "no enrolled host by that name; {} pending invite(s) revoked",
                    out.invites_revoked.unwrap_or(0)
                );
            } else {
                println!("revoked: {}", out.revoked.join(", "));
            }
            Ok(0)
        }
        VpnCommand::RotateKeys { name } => {
            let out = client
                .call::<VpnRotateKeys>(&RotateRequest { name })
                .await?;
            let failed = out.rotated.iter().filter(|r| !r.ok).count();
            if global.json {
                output::json(&out);
            } else {
                if out.rotated.is_empty() {
                    println!("no hosts to rotate");
                }
                for r in &out.rotated {
                    if r.ok {
                        println!(
                            "{}: rotated (new key {})",
                            r.host,
                            r.new_public_key.as_deref().unwrap_or("?")
                        );
                    } else {
                        println!("{}: FAILED: {}", r.host, r.error.as_deref().unwrap_or("?"));
                    }
                }
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        VpnCommand::RotateInviteKey => super::vpn_invite_key::run(global).await,
        VpnCommand::Status => {
            let out = client.call::<VpnStatusGet>(&Empty {}).await?;
            if global.json {
                output::json(&out);
                return Ok(0);
            }
            if !out.tunnel {
                println!("no tunnel: {}", out.hint.as_deref().unwrap_or(""));
                return Ok(0);
            }
            println!(
                "{} {} listening on {} (public key {})",
                out.role,
                out.overlay_ip.as_deref().unwrap_or("?"),
                out.listen.as_deref().unwrap_or("?"),
                out.public_key.as_deref().unwrap_or("?")
            );
            if out.peers.is_empty() {
                println!("no peers yet: invite one with `tether vpn invite NAME`");
                return Ok(0);
            }
            let mut t = Table::new(&[
                "PEER",
                "OVERLAY",
                "ENDPOINT",
                "PATH",
                "HANDSHAKE",
                "RX",
                "TX",
                "RTT",
                "HEALTH",
            ])
            .right(&[4, 5, 6, 7]);
            for p in &out.peers {
                t.row([
                    p.name.clone(),
                    p.overlay_ip.clone(),
                    p.endpoint.clone().unwrap_or_else(|| "-".to_owned()),
                    p.path.clone(),
                    p.last_handshake_secs
                        .map_or("never".to_owned(), |s| format!("{s}s ago")),
                    bytes(p.rx_bytes),
                    bytes(p.tx_bytes),
                    p.rtt_ms.map_or("-".to_owned(), |r| format!("{r}ms")),
                    p.health.to_string(),
                ]);
            }
            t.print();
            for r in &out.relays {
                println!(
                    "relay {}: {}",
                    r.name,
                    if r.connected {
                        "connected"
                    } else {
                        "not connected (retrying)"
                    }
                );
            }
            Ok(0)
        }
    }
}

async fn issue<E>(global: &Global, a: &InviteArgs) -> Result<u8, CliError>
where
    E: tether_api::Endpoint<Request = InviteRequest, Response = tether_api::InviteResponse>,
{
    let out = global.client().call::<E>(&invite_body(a)?).await?;
    if global.json {
        output::json(&out);
    } else {
        // The token on stdout alone, so `TOKEN=$(tether vpn invite web1)` works; the rest on stderr.
        println!("{}", out.token);
        eprintln!(
            "invite for {} ({}), valid until {}, enroll endpoint {}",
            out.name,
            out.overlay_ip,
            output::when(out.expires_at),
            out.enroll_endpoint
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
