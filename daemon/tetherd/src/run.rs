//! `tetherd run`: start every subsystem for the configured role, serve until a stop signal,
//! then drain and exit 0. Every task is owned here and stopped through one cancellation token.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::Registry;
use tether_config::{Config, Overrides};
use tether_control::AppState;
use tether_control::server;
use tether_control::state::ConfigSource;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::error::DaemonError;
use crate::{logging, notify};

/// Upper bound for a clean shutdown after SIGTERM/SIGINT.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

pub fn main(args: RunArgs) -> Result<(), DaemonError> {
    let overrides = Overrides {
        role: args.role.map(Into::into),
        state_dir: args.state_dir.clone(),
        control: None,
    }
    .with_socket(args.socket.clone());
    let config = tether_config::load(args.config.as_deref(), &overrides)?;
    logging::init(&config.log.level);
    // Before any secret exists: no core dumps, not ptrace-able by same-uid processes, and
    // refuse to run when secrets can't be kept out of swap (unless knowingly allowed).
    tether_vault::harden_process()?;
    match tether_vault::check_secure_memory(config.vault.secure_memory_required)? {
        tether_vault::SecureMemoryStatus::Locked => {
            tracing::debug!("secret memory is locked into RAM")
        }
        _ => tracing::warn!(
            "secret memory is NOT locked into RAM (vault.secure_memory_required = false)"
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let source = ConfigSource {
        file: args.config,
        overrides,
    };
    runtime.block_on(daemon(config, source))
}

async fn daemon(config: Config, source: ConfigSource) -> Result<(), DaemonError> {
    prepare_state_dir(&config.state_dir)?;
    let registry = Registry::new();
    let socket = config.control.socket.clone();
    let role = config.daemon_role();
    let vault_config = config.vault.clone();
    let state_dir = config.state_dir.clone();
    let vault =
        tokio::task::spawn_blocking(move || tether_vault::Vault::open(&vault_config, &state_dir))
            .await
            .map_err(|e| DaemonError::Runtime(std::io::Error::other(e)))??;
    tracing::info!(backend = %vault.backend(), "vault ready");
    // The socket comes last, so a daemon that fails to start leaves no socket behind.
    let create_dir = socket == tether_config::default_socket_path();
    let listener = server::bind(&socket, config.control.group.as_deref(), create_dir)?;
    let alerts: Arc<dyn tether_model::AlertSink> = Arc::new(crate::alerts::LogAlerts);
    let policy = match config.policy_source()? {
        tether_config::PolicySource::Inline(spec) => tether_policy::Policy::compile(&spec)?,
        tether_config::PolicySource::File(text) => tether_policy::Policy::from_toml_str(&text)?,
    };
    tracing::info!(
        mode = policy.mode().as_str(),
        rules = policy.rule_count(),
        "policy loaded"
    );
    let engine = tether_policy::PolicyEngine::new(policy, &registry, Arc::clone(&alerts))?;
    let keys: Arc<dyn tether_audit::KeySource> =
        Arc::new(crate::keys::VaultKeys::new(vault.clone()));
    let audit_dir = config.state_dir.join("audit");
    let (audit, recovery) = {
        let (keys, registry, alerts) = (Arc::clone(&keys), registry.clone(), Arc::clone(&alerts));
        tokio::task::spawn_blocking(move || {
            tether_audit::AuditLog::open(&audit_dir, keys.as_ref(), &registry, alerts)
        })
        .await
        .map_err(|e| DaemonError::Runtime(std::io::Error::other(e)))??
    };
    if let Some(torn) = &recovery.torn {
        tracing::warn!(
            file = %torn.file.display(),
            bytes = torn.bytes,
            "audit log: dropped a torn last record left by a crash (it was never acknowledged)"
        );
    }
    tracing::info!(
        last_seq = recovery.last_seq,
        files = recovery.files,
        "audit log ready"
    );
    // Plugins before membership: the hub's enrollment review asks the enrollment hooks.
    let plugins = match config.plugins_manifest.clone() {
        None => None,
        Some(manifest) => {
            let (state_dir, vault, alerts, registry) = (
                config.state_dir.clone(),
                vault.clone(),
                Arc::clone(&alerts),
                registry.clone(),
            );
            let events = (audit.clone(), tokio::runtime::Handle::current());
            let loaded = tokio::task::spawn_blocking(move || {
                crate::plugins::Plugins::load(
                    &manifest, &state_dir, vault, alerts, events, &registry,
                )
            })
            .await
            .map_err(|e| DaemonError::Runtime(std::io::Error::other(e)))??;
            let loaded = Arc::new(loaded);
            audit
                .append(
                    &tether_audit::Event::new("plugin.load", tether_control::audit::daemon_actor())
                        .data(serde_json::json!({"plugins": loaded.summary()})),
                )
                .await?;
            Some(loaded)
        }
    };
    let shutdown = CancellationToken::new();
    let membership = match role {
        tether_model::DaemonRole::Hub => {
            crate::membership::start_hub(
                &config,
                &vault,
                &registry,
                Arc::clone(&alerts),
                audit.clone(),
                plugins.clone(),
                shutdown.clone(),
            )
            .await?
        }
        tether_model::DaemonRole::Target => {
            crate::membership::start_target(
                &config,
                &vault,
                &registry,
                Arc::clone(&alerts),
                audit.clone(),
                shutdown.clone(),
            )
            .await?
        }
    };
    let mut state = AppState::new(config, source, registry)?;
    state.plugins = plugins.map(|p| p as Arc<dyn tether_control::state::PolicyHooks>);
    state.tunnel = membership
        .tunnel
        .as_ref()
        .map(tether_tunnel::Tunnel::handle);
    state.hub = membership.hub.clone();
    state.rotator = membership.rotator.clone();
    state.enrollment = membership
        .enrollment
        .as_ref()
        .and_then(|e| serde_json::to_value(e).ok());
    state.vault = Some(vault);
    state.policy = Some(engine);
    state.alerts = alerts;
    state.audit = Some(audit.clone());
    state.audit_keys = Some(keys);
    state
        .audit(
            "daemon.start",
            tether_control::audit::daemon_actor(),
            None,
            serde_json::json!({"role": role.to_string(), "version": tether_model::VERSION, "pid": std::process::id()}),
        )
        .await?;
    let state = Arc::new(state);

    // Install every signal handler before announcing readiness, so no signal is missed.
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;

    let server_task = tokio::spawn(server::serve(
        listener,
        Arc::clone(&state),
        shutdown.clone(),
    ));

    state.ready.store(true, Ordering::Release);
    tracing::info!(%role, socket = %socket.display(), pid = std::process::id(), version = tether_model::VERSION, "tetherd ready");
    notify::notify("READY=1\nSTATUS=serving");

    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload(&state).await,
        }
    }

    state.ready.store(false, Ordering::Release);
    notify::notify("STOPPING=1");
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_BUDGET, server_task)
        .await
        .is_err()
    {
        tracing::warn!("control server did not stop within {SHUTDOWN_BUDGET:?}");
    }
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!("could not remove control socket {}: {e}", socket.display());
    }
    membership.shutdown().await;
    if let Err(e) = state
        .audit(
            "daemon.stop",
            tether_control::audit::daemon_actor(),
            None,
            serde_json::json!({}),
        )
        .await
    {
        tracing::error!("could not audit the shutdown: {e}");
    }
    audit.close().await;
    tracing::info!("tetherd stopped");
    Ok(())
}

async fn reload(state: &AppState) {
    match state
        .reload(
            tether_control::audit::daemon_actor(),
            "config.change",
            "sighup",
        )
        .await
    {
        Ok(report) if report.needs_restart.is_empty() => {
            tracing::info!(changed = report.changed, "SIGHUP: config reloaded");
        }
        Ok(report) => {
            tracing::warn!(
                needs_restart = ?report.needs_restart,
                "SIGHUP: config reloaded; these settings only take effect after a restart"
            );
        }
        Err(e) => tracing::error!("SIGHUP: config reload failed; keeping the previous config: {e}"),
    }
}

/// Creates `state_dir` (0700) if needed. An existing directory keeps its owner's permissions.
pub fn prepare_state_dir(dir: &Path) -> Result<(), DaemonError> {
    let err = |source| DaemonError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let meta = std::fs::metadata(dir).map_err(err)?;
    if !meta.is_dir() {
        return Err(err(std::io::Error::other("not a directory")));
    }
    if meta.permissions().mode() & 0o002 != 0 {
        tracing::warn!(state_dir = %dir.display(), "state_dir is world-writable; restrict it (chmod 0700)");
    }
    Ok(())
}
