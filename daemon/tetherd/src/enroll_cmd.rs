//! `tetherd enroll TOKEN`: join a hub. Generates this machine's WireGuard key and SSH host key
//! into the vault, runs the mutually authenticated exchange with the hub named in the token,
//! and saves what it learned in `STATE_DIR/enrollment.json`. Then `tetherd run` connects.

use std::io::Read;
use std::path::Path;

use serde_json::json;
use std::time::Duration;
use tether_config::{Overrides, SshMode};

use tether_enroll::{ClientOptions, EnrollError, TargetKeys, Token, Welcome, enroll_client};
use tether_model::DaemonRole;
use tether_model::relay::RelaySpec;

use crate::cli::EnrollArgs;
use crate::error::DaemonError;
use crate::identity;
use crate::membership::Enrollment;

pub fn main(args: EnrollArgs) -> Result<(), DaemonError> {
    let overrides = Overrides {
        role: Some(DaemonRole::Target),
        state_dir: args.state_dir.clone(),
        control: None,
    };
    let config = tether_config::load(args.config.as_deref(), &overrides)?;
    let config_file = args.config.clone();
    // A one-shot command: only warnings and errors, unless RUST_LOG asks for more.
    crate::logging::init("warn");
    tether_vault::harden_process()?;
    tether_vault::check_secure_memory(config.vault.secure_memory_required)?;
    let text = read_token(&args)?;
    let token = Token::from_text(text).map_err(DaemonError::Enroll)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(async move {
        crate::run::prepare_state_dir(&config.state_dir)?;
        crate::state_dir::check_complete(&config)?;
        if let Some(old) = Enrollment::load(&config.state_dir)?
            && !args.force {
                return Err(DaemonError::Usage(format!(
                    "this machine is already enrolled as {} with the hub at {}; to join again with a new identity, use tetherd enroll --force TOKEN",
                    old.name, old.hub_wg_endpoint
                )));
            }
        let file = crate::vault_key::config_file_in_use(config_file.as_deref());
        let vault_config = crate::vault_key::vault_config(&config, file.as_deref());
        let vault = tether_vault::Vault::open(&vault_config, &config.state_dir)?;
        // A re-enrollment is a new identity: fresh keys, staged until the hub accepts them so a
        // refused attempt (used or expired token, hub down) leaves the working identity intact.
        let staged = args.force && vault.info(identity::WIREGUARD)?.is_some();
        let name = |base: &str| if staged { format!("{base}{}", identity::STAGED) } else { base.to_owned() };
        if staged {
            for base in [identity::WIREGUARD, identity::SSH_KEY] {
                if vault.info(&name(base))?.is_some() {
                    vault.remove(&name(base))?;
                }
            }
        }
        let wg = identity::wireguard_key_named(&vault, &name(identity::WIREGUARD))?;
        // Forward mode: the hub pins sshd's host key and logs in as run_as.
        let (ssh_host_key, ssh_user) = match config.ssh.mode {
            SshMode::Server => (identity::ssh_public_key_named(&vault, &name(identity::SSH_KEY))?, None),
            SshMode::Forward => (sshd_host_key(&config.ssh.host_key_file)?, config.ssh.run_as.clone()),
        };
        let keys = TargetKeys {
            wg_public: wg.public_key().0,
            ssh_host_key,
            hostname: identity::hostname(),
            ssh_user,
        };
        let opts = ClientOptions {
            endpoint: args.endpoint.clone(),
            // prove to the hub that this machine holds the key it enrolls with
            wg_key: Some(tether_enroll::WgProver(std::sync::Arc::new(identity::WgAgreement(
                wg.clone(),
            )))),
            // a fleet behind one NAT address: the hub says when to come back; back off with
            // jitter within this budget instead of failing
            retry_rate_limited_for: (args.retry_for > 0)
                .then(|| std::time::Duration::from_secs(args.retry_for)),
            ..ClientOptions::default()
        };
        let (relays, relay_hash) = token_relays(&token);
        let welcome = enroll(&token, &keys, opts, &relays, relay_hash).await?;
        let (network, prefix) = tether_config::parse_subnet(&config.tunnel.subnet)
            .ok_or_else(|| DaemonError::Membership(format!("tunnel.subnet {:?} is invalid", config.tunnel.subnet)))?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(welcome.overlay_ip) & mask != u32::from(network) & mask {
            return Err(DaemonError::Membership(format!(
                "the hub assigned {} which is outside tunnel.subnet {}; set tunnel.subnet to the hub's subnet and enroll again with a fresh token",
                welcome.overlay_ip, config.tunnel.subnet
            )));
        }
        let enrollment = Enrollment {
            name: welcome.name.clone(),
            overlay_ip: welcome.overlay_ip,
            prefix_len: prefix,
            hub_overlay_ip: std::net::Ipv4Addr::from((u32::from(network) & mask) + 1),
            hub_wg_public_key: welcome.hub_wg_public_key.clone(),
            hub_wg_endpoint: welcome.hub_wg_endpoint.clone(),
            hub_ssh_client_key: welcome.hub_ssh_client_key.clone(),
            tags: welcome.tags.clone(),
            groups: welcome.groups.clone(),
            enrolled_at: tether_enroll::unix_now(),
            ssh_user: keys.ssh_user.clone(),
            relays: relays.clone(),
        };
        if staged {
            identity::promote_staged(&vault, identity::WIREGUARD)?;
            identity::promote_staged(&vault, identity::SSH_KEY)?;
        }
        enrollment.save(&config.state_dir)?;
        if args.json {
            println!("{}", json!({"enrolled": true, "name": enrollment.name, "overlay_ip": enrollment.overlay_ip, "hub": enrollment.hub_wg_endpoint}));
        } else {
            println!(
                "enrolled as {} ({}) with the hub at {}",
                enrollment.name, enrollment.overlay_ip, enrollment.hub_wg_endpoint
            );
            if let Some(user) = &enrollment.ssh_user {
                println!(
                    "forward mode: the hub logs in to sshd as {user}; add its key to that user's authorized_keys:\n  {}",
                    enrollment.hub_ssh_client_key
                );
            }
            println!("next: start the daemon (systemctl start tetherd, or tetherd run)");
        }
        Ok(())
    })
}

/// The relays the invite names and the hash the relay pairs this invite by (readable without
/// the hub's key; the hub's MAC over the payload is checked by the hub during the exchange).
fn token_relays(token: &Token) -> (Vec<RelaySpec>, [u8; 32]) {
    token
        .expose(|text| {
            tether_enroll::parse_token(text).map(|p| {
                (
                    p.payload().relays.clone(),
                    tether_relay::enroll::enroll_hash(&p.checked.nonce),
                )
            })
        })
        .unwrap_or_default()
}

/// How long a relayed enrollment may keep trying (the hub announces a new invite to its relays
/// within a second; a relay that does not know the invite yet answers at once).
const RELAY_ENROLL_FOR: Duration = Duration::from_secs(30);
/// The direct attempt's deadline when relays are there to fall back to.
const DIRECT_WITH_RELAYS: Duration = Duration::from_secs(5);

/// The exchange: directly with the hub's endpoint when the invite names one, then through each
/// relay it names when the hub cannot be reached (never after the hub answered: a refusal such
/// as a used or expired token is final).
async fn enroll(
    token: &Token,
    keys: &TargetKeys,
    mut opts: ClientOptions,
    relays: &[RelaySpec],
    relay_hash: [u8; 32],
) -> Result<Welcome, DaemonError> {
    let has_endpoint = opts.endpoint.is_some()
        || token
            .expose(|t| tether_enroll::parse_token(t).map(|p| !p.payload().endpoint.is_empty()))
            .unwrap_or(true);
    let mut direct_error = None;
    if has_endpoint {
        if !relays.is_empty() {
            opts.deadline = opts.deadline.min(DIRECT_WITH_RELAYS);
        }
        match enroll_client(token, keys, &opts).await {
            Ok(w) => return Ok(w),
            Err(e @ (EnrollError::Connect { .. } | EnrollError::Timeout { .. }))
                if !relays.is_empty() =>
            {
                eprintln!("the hub's endpoint is not reachable ({e}); enrolling through a relay");
                direct_error = Some(e);
            }
            Err(e) => return Err(DaemonError::Enroll(e)),
        }
    }
    opts.deadline = ClientOptions::default().deadline;
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    loop {
        for spec in relays {
            let target = crate::via_relay::target(spec);
            let left = RELAY_ENROLL_FOR.saturating_sub(started.elapsed());
            match tether_relay::enroll::connect(
                &target,
                relay_hash,
                left.max(Duration::from_secs(1)),
            )
            .await
            {
                Ok(stream) => {
                    return tether_enroll::enroll_over(stream, token, keys, &opts)
                        .await
                        .map_err(DaemonError::Enroll);
                }
                Err(e) => last = format!("relay {}: {e}", spec.name),
            }
        }
        if started.elapsed() + Duration::from_secs(1) >= RELAY_ENROLL_FOR {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(DaemonError::Membership(match direct_error {
        Some(d) => format!(
            "could not enroll: the hub is not reachable ({d}), and no relay paired this invite with the hub within {}s (last: {last}); check that the hub runs with these relays in [[tunnel.relays]] and that this invite has not expired",
            RELAY_ENROLL_FOR.as_secs()
        ),
        None => format!(
            "could not enroll through the invite's relays within {}s (last: {last}); check that the hub runs with these relays in [[tunnel.relays]] and that this invite has not expired",
            RELAY_ENROLL_FOR.as_secs()
        ),
    }))
}

/// Forward mode: sshd's Ed25519 host public key from `ssh.host_key_file` (what the hub pins).
fn sshd_host_key(path: &Path) -> Result<String, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        DaemonError::Usage(format!(
            "cannot read sshd's host key {} (ssh.host_key_file): {e}; point ssh.host_key_file at sshd's ssh_host_ed25519_key.pub",
            path.display()
        ))
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    tether_ssh::keys::parse_public(line, &format!("sshd host key in {}", path.display()))
        .map_err(|e| DaemonError::Usage(format!("{e}; forward mode needs sshd's Ed25519 host key (ssh-keygen -t ed25519 -f /etc/ssh/ssh_host_ed25519_key)")))?;
    Ok(line.to_owned())
}

/// The token from the argument, `-` (stdin) or `--token-file`. Prefer stdin or a file: command
/// lines are visible to other users in `ps` (the token is single-use and expires, but still).
fn read_token(args: &EnrollArgs) -> Result<String, DaemonError> {
    let usage = |m: String| DaemonError::Usage(m);
    match (&args.token, &args.token_file) {
        (Some(_), Some(_)) => Err(usage(
            "give the token either as an argument or with --token-file, not both".to_owned(),
        )),
        (None, None) => Err(usage(
            "no token: tetherd enroll TOKEN (or - to read it from stdin, or --token-file FILE)"
                .to_owned(),
        )),
        (Some(t), None) if t == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut s)
                .map_err(|e| usage(format!("cannot read the token from stdin: {e}")))?;
            Ok(s)
        }
        (Some(t), None) => Ok(t.clone()),
        (None, Some(f)) => read_file(f),
    }
}

fn read_file(f: &Path) -> Result<String, DaemonError> {
    std::fs::read_to_string(f)
        .map_err(|e| DaemonError::Usage(format!("cannot read {}: {e}", f.display())))
}
