//! `tetherd run --role relay`: open the vault, load or generate the relay's key and certificate,
//! serve until SIGTERM/SIGINT, then tell every client the relay is going away and exit 0 within
//! the shutdown budget. SIGHUP re-reads the config and applies what a running relay can change.

use std::time::Duration;

use tether_config::Config;
use tether_relay::{Relay, RelayConfig};
use tokio::signal::unix::{SignalKind, signal};

use super::identity::{self, Mode};
use crate::error::DaemonError;
use crate::notify;
use tether_control::state::ConfigSource;

/// Upper bound for telling clients we are going away and stopping.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(4);

/// Runs the relay until a stop signal.
pub async fn daemon(config: Config, source: ConfigSource) -> Result<(), DaemonError> {
    crate::run::prepare_state_dir(&config.state_dir)?;
    // Held until this function returns: one daemon per state directory.
    let mut state_lock = crate::state_dir::lock(&config.state_dir)?;
    crate::state_dir::check_complete(&config)?;
    state_lock.record_pid()?;
    let vault = crate::run::start_vault(&config, source.file.as_deref()).await?;
    let relay_cfg = relay_config(&config, &vault)?;
    let listen = relay_cfg.listen;
    // Signal handlers before the listener and readiness, so no signal is missed.
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;
    let relay = Relay::start(relay_cfg).await.map_err(|e| {
        DaemonError::Relay(format!(
            "cannot listen on relay.listen {listen}: {e}; pick a free address (ports below 1024 need CAP_NET_BIND_SERVICE)"
        ))
    })?;
    tracing::info!(
        listen = %relay.local_addr(),
        pid = std::process::id(),
        version = tether_model::VERSION,
        "tetherd relay ready"
    );
    notify::notify("READY=1\nSTATUS=relaying");
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: telling clients the relay is going away"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: telling clients the relay is going away"); break; }
            _ = hup.recv() => reload(&config, &source),
        }
    }
    notify::notify("STOPPING=1");
    if tokio::time::timeout(SHUTDOWN_BUDGET, relay.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the relay did not stop within {SHUTDOWN_BUDGET:?}; exiting anyway");
    }
    drop(state_lock);
    tracing::info!("tetherd relay stopped");
    Ok(())
}

/// Everything [`Relay::start`] needs, from the config and the vault. Logs what hubs pin.
fn relay_config(config: &Config, vault: &tether_vault::Vault) -> Result<RelayConfig, DaemonError> {
    let section = &config.relay;
    let listen = section.listen_addr().ok_or_else(|| {
        DaemonError::RelayConfig(format!(
            "relay.listen {:?} is not an IP:port",
            section.listen
        ))
    })?;
    let secret = identity::secret(vault, Mode::Create)?;
    let tls = identity::tls(config, Mode::Create)?;
    let pin = tls.sha256()?;
    if tls.generated {
        tracing::info!(
            cert = %tls.cert_path.display(),
            cert_sha256 = %pin,
            "{} self-signed relay certificate: hubs and targets pin it by this SHA-256 (`tetherd relay show` prints their config)",
            if tls.fresh { "generated a" } else { "using the generated" }
        );
    } else {
        tracing::info!(cert = %tls.cert_path.display(), cert_sha256 = %pin, "relay certificate loaded");
    }
    tracing::info!(relay_key = %identity::public_b64(&secret), "relay key loaded");
    let allowlist = section.allowlist_path(&config.state_dir);
    if identity::ensure_allowlist(&allowlist)? {
        tracing::warn!(
            allowlist = %allowlist.display(),
            "created an empty relay allowlist: no key may connect until you add WireGuard public keys to it"
        );
    }
    let metrics_token = match &section.metrics_token_secret {
        None => None,
        Some(name) => {
            let token = identity::metrics_token(vault, name, Mode::Create)?;
            Some(token.expose(|b| {
                String::from_utf8(b.to_vec()).map_err(|_| {
                    DaemonError::RelayConfig(format!(
                        "vault secret {name} (relay.metrics_token_secret) is not text; a bearer token must be printable"
                    ))
                })
            })?)
        }
    };
    // Checked by the config already: the hubs that may push allowlists and take enrollments.
    let admin_keys = section.admin_key_bytes();
    Ok(RelayConfig {
        admin_keys,
        enroll: tether_relay::server::EnrollLimits::default(),
        listen,
        tls: tls.server_config()?,
        secret,
        allowlist,
        rate: section.rate,
        burst: section.burst,
        conn_rate: (section.conn_rate, section.conn_burst),
        metrics_token,
    })
}

/// SIGHUP: re-reads the config. The allowlist is re-read on change anyway; every other
/// `[relay]` key is bound to the listener, so a change is reported as needing a restart.
fn reload(running: &Config, source: &ConfigSource) {
    let fresh = match tether_config::load(source.file.as_deref(), &source.overrides) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: config reload failed; keeping the running config: {e}");
            return;
        }
    };
    if fresh.relay == running.relay {
        tracing::info!("SIGHUP: config re-read; the relay settings are unchanged");
    } else {
        tracing::warn!(
            "SIGHUP: [relay] changed in the config; restart the relay to apply it (the allowlist file is re-read on change without a restart)"
        );
    }
}
