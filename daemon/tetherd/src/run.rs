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
    if config.daemon_role() == tether_model::DaemonRole::Relay {
        return runtime.block_on(crate::relay::run::daemon(config, source));
    }
    runtime.block_on(daemon(config, source))
}

/// Starts every subsystem in dependency order, serves until SIGTERM/SIGINT, then stops them in
/// reverse. Each step is one function below; every task started here is owned here.
async fn daemon(config: Config, source: ConfigSource) -> Result<(), DaemonError> {
    prepare_state_dir(&config.state_dir)?;
    // Held until this function returns: one daemon per state directory.
    let mut _state_lock = crate::state_dir::lock(&config.state_dir)?;
    crate::state_dir::check_complete(&config)?;
    _state_lock.record_pid()?;
    let registry = Registry::new();
    // process_resident_memory_bytes, process_cpu_seconds_total, open fds, start time, ...
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let socket = config.control.socket.clone();
    let role = config.daemon_role();
    let vault = start_vault(&config, source.file.as_deref()).await?;
    // The socket comes last, so a daemon that fails to start leaves no socket behind.
    // The metrics port before the socket: a missing token or a taken port leaves nothing behind.
    let metrics_listener =
        tether_control::metrics_http::MetricsListener::bind(&config.metrics, &vault).await?;
    let listener = bind_control_socket(&config)?;
    let wiring = Arc::new(crate::alerts::Wiring::default());
    let alert_service = tether_alerts::AlertService::new(
        crate::alerts::settings(&config.alerts),
        wiring.clone(),
        wiring.clone(),
        &registry,
    )?;
    let alerts: Arc<dyn tether_model::AlertSink> = Arc::new(alert_service.clone());
    let engine = start_policy(&config, &registry, &alerts)?;
    let keys: Arc<dyn tether_audit::KeySource> =
        Arc::new(crate::keys::VaultKeys::new(vault.clone()));
    let anchor: Arc<dyn tether_audit::HeadAnchor> =
        Arc::new(crate::keys::VaultAnchor::new(vault.clone()));
    let audit = start_audit(&config, &keys, &vault, &anchor, &registry, &alerts).await?;
    // Plugins before membership: the hub's enrollment review asks the enrollment hooks.
    let plugins = start_plugins(&config, &vault, &alerts, &registry, &audit).await?;
    let shutdown = CancellationToken::new();
    // host_online / host_offline (hub): the tunnel's vpn_peer_unhealthy goes through the same
    // tracker so one outage raises one down alert.
    let offline_after = Duration::from_secs(config.alerts.offline_after_secs);
    let presence = Arc::new(std::sync::Mutex::new(tether_alerts::Presence::new(
        offline_after,
    )));
    let tunnel_alerts: Arc<dyn tether_model::AlertSink> = Arc::new(
        crate::alerts::PresenceFilter::new(alerts.clone(), presence.clone()),
    );
    let mut membership = start_membership(
        &config,
        &vault,
        &registry,
        &tunnel_alerts,
        &audit,
        &plugins,
        shutdown.clone(),
    )
    .await?;
    wiring.bind(plugins.clone(), audit.clone());
    let mut sink_tasks = start_alerts(
        &config,
        &alert_service,
        &wiring,
        &plugins,
        &audit,
        &registry,
        &shutdown,
    )?;
    let recordings = (config.daemon_role() == tether_model::DaemonRole::Hub)
        .then(|| config.state_dir.join("recordings"));
    if let (tether_model::DaemonRole::Hub, Some(tunnel), false) = (
        config.daemon_role(),
        membership.tunnel.as_ref(),
        offline_after.is_zero(),
    ) {
        sink_tasks.push(crate::alerts::spawn_presence(
            tunnel.handle(),
            presence,
            alerts.clone(),
            (offline_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(15)),
            shutdown.clone(),
        ));
    }
    let approvals = start_approvals(&config).await?;
    let mut state = AppState::new(config, source, registry)?;
    state.approvals = Some(approvals);
    state.recordings = recordings;
    state.commit = env!("TETHER_COMMIT");
    state.alert_service = Some(alert_service);
    state.plugins = plugins.map(|p| p as Arc<dyn tether_control::state::PluginAdmin>);
    expose_tunnel(&mut state, &membership);
    expose_enrollment(&mut state, &membership);
    state.remote = membership
        .ssh
        .as_ref()
        .map(|s| Arc::clone(&s.remote) as Arc<dyn tether_control::state::RemoteExec>);
    state.operator = membership
        .ssh
        .as_ref()
        .map(|s| Arc::clone(&s.operator) as Arc<dyn tether_control::state::OperatorSsh>);
    state.files = membership
        .ssh
        .as_ref()
        .map(|s| Arc::clone(&s.remote) as Arc<dyn tether_control::state::RemoteFiles>);
    state.vault = Some(vault.clone());
    state.policy = Some(engine);
    state.alerts = alerts;
    state.audit = Some(audit.clone());
    state.audit_keys = Some(keys);
    state.audit_anchor = Some(anchor);
    state
        .audit(
            "daemon.start",
            tether_control::audit::daemon_actor(),
            None,
            serde_json::json!({"role": role.to_string(), "version": tether_model::VERSION, "pid": std::process::id()}),
        )
        .await?;
    let state = Arc::new(state);
    start_target_ssh(&mut membership, &vault, &state, &shutdown)?;
    let sweeper = tether_control::approvals::spawn_sweeper(Arc::clone(&state), shutdown.clone());

    // Install every signal handler before announcing readiness, so no signal is missed.
    let mut signals = Signals::install()?;
    let server_task = start_control_server(listener, &state, &shutdown);
    let metrics_task = metrics_listener.map(|m| {
        let addr = m
            .local_addr()
            .map_or_else(|| "?".to_owned(), |a| a.to_string());
        tracing::info!("metrics listener on http://{addr} (/metrics, /healthz, /readyz only)");
        tokio::spawn(m.serve(Arc::clone(&state), shutdown.clone()))
    });

    state.ready.store(true, Ordering::Release);
    tracing::info!(%role, socket = %socket.display(), pid = std::process::id(), version = tether_model::VERSION, "tetherd ready");
    notify::notify("READY=1\nSTATUS=serving");

    signals.serve_until_stop(&state).await;

    stop(&state, &shutdown, server_task, &socket).await;
    if let Some(task) = metrics_task {
        let _ = tokio::time::timeout(SHUTDOWN_BUDGET, task).await;
    }
    membership.shutdown().await;
    if let Some(task) = sweeper {
        let _ = tokio::time::timeout(SHUTDOWN_BUDGET, task).await;
    }
    for t in sink_tasks {
        let _ = tokio::time::timeout(SHUTDOWN_BUDGET, t).await;
    }
    stop_audit(&state, audit).await;
    tracing::info!("tetherd stopped");
    Ok(())
}

/// Opens the approval store (`state_dir/approvals`) and loads the records, so pending approvals
/// and access grants survive a restart.
async fn start_approvals(
    config: &Config,
) -> Result<Arc<tether_control::approvals::ApprovalService>, DaemonError> {
    let (section, state_dir) = (config.approvals.clone(), config.state_dir.clone());
    let service =
        blocking(move || tether_control::approvals::ApprovalService::open(&section, &state_dir))
            .await?;
    Ok(Arc::new(service))
}

/// Runs start-up work that blocks (file IO, key loading, compiling plugins) off the runtime's
/// worker threads.
async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, DaemonError>
where
    T: Send + 'static,
    E: Into<DaemonError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DaemonError::Runtime(std::io::Error::other(e)))?
        .map_err(Into::into)
}

/// Opens the secret vault on the configured backend.
/// The file backend's key defaults to a place outside `state_dir` (see [`crate::vault_key`]).
pub(crate) async fn start_vault(
    config: &Config,
    config_file: Option<&Path>,
) -> Result<tether_vault::Vault, DaemonError> {
    let file = crate::vault_key::config_file_in_use(config_file);
    let vault_config = crate::vault_key::vault_config(config, file.as_deref());
    let state_dir = config.state_dir.clone();
    let vault = blocking(move || tether_vault::Vault::open(&vault_config, &state_dir)).await?;
    tracing::info!(backend = %vault.backend(), "vault ready");
    Ok(vault)
}

/// Compiles the configured policy (inline or from its file) into the engine.
fn start_policy(
    config: &Config,
    registry: &Registry,
    alerts: &Arc<dyn tether_model::AlertSink>,
) -> Result<tether_policy::PolicyEngine, DaemonError> {
    let policy = match config.policy_source()? {
        tether_config::PolicySource::Inline(spec) => tether_policy::Policy::compile(&spec)?,
        tether_config::PolicySource::File(text) => tether_policy::Policy::from_toml_str(&text)?,
    };
    tracing::info!(
        mode = policy.mode().as_str(),
        rules = policy.rule_count(),
        "policy loaded"
    );
    Ok(tether_policy::PolicyEngine::new(
        policy,
        registry,
        Arc::clone(alerts),
    )?)
}

/// Opens the audit chain in `STATE_DIR/audit` (recovering from a crash) with keys from `keys`.
async fn start_audit(
    config: &Config,
    keys: &Arc<dyn tether_audit::KeySource>,
    vault: &tether_vault::Vault,
    anchor: &Arc<dyn tether_audit::HeadAnchor>,
    registry: &Registry,
    alerts: &Arc<dyn tether_model::AlertSink>,
) -> Result<tether_audit::AuditLog, DaemonError> {
    let audit_dir = config.state_dir.join("audit");
    // The head counter outside state_dir, when the vault has a place for it.
    let anchor = match vault.outside_location(crate::keys::AUDIT_ANCHOR) {
        Ok(location) => {
            tracing::info!(%location, "audit head counter kept outside state_dir");
            Some(Arc::clone(anchor))
        }
        Err(why) => {
            tracing::warn!(
                "no audit head counter outside state_dir ({why}): `tether audit verify` will say unanchored, and a rollback of log and head together goes unnoticed"
            );
            None
        }
    };
    let opts = tether_audit::Options {
        anchor,
        ..tether_audit::Options::default()
    };
    let (keys, registry, alerts) = (Arc::clone(keys), registry.clone(), Arc::clone(alerts));
    let (audit, recovery) = blocking(move || {
        tether_audit::AuditLog::open_with(&audit_dir, keys.as_ref(), &registry, alerts, opts)
    })
    .await?;
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
    Ok(audit)
}

/// Loads the plugins named by `plugins_manifest` (none without one) and audits what loaded.
async fn start_plugins(
    config: &Config,
    vault: &tether_vault::Vault,
    alerts: &Arc<dyn tether_model::AlertSink>,
    registry: &Registry,
    audit: &tether_audit::AuditLog,
) -> Result<Option<Arc<crate::plugins::Plugins>>, DaemonError> {
    let Some(manifest) = config.plugins_manifest.clone() else {
        return Ok(None);
    };
    let (state_dir, vault, alerts, registry) = (
        config.state_dir.clone(),
        vault.clone(),
        Arc::clone(alerts),
        registry.clone(),
    );
    let events = (audit.clone(), tokio::runtime::Handle::current());
    let loaded = blocking(move || {
        crate::plugins::Plugins::load(&manifest, &state_dir, vault, alerts, events, &registry)
    })
    .await?;
    let loaded = Arc::new(loaded);
    audit
        .append(
            &tether_audit::Event::new("plugin.load", tether_control::audit::daemon_actor())
                .data(serde_json::json!({"plugins": loaded.summary()})),
        )
        .await?;
    Ok(Some(loaded))
}

/// Starts alert delivery (one task per alert sink) and the audit streams (one task per audit
/// sink, resuming from its cursor in `state_dir/audit-sinks`). The tasks stop on `shutdown`.
fn start_alerts(
    config: &Config,
    service: &tether_alerts::AlertService,
    wiring: &Arc<crate::alerts::Wiring>,
    plugins: &Option<Arc<crate::plugins::Plugins>>,
    audit: &tether_audit::AuditLog,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, DaemonError> {
    use tether_plugin_host::PluginKind;
    let names = |kind| plugins.as_ref().map(|p| p.names(kind)).unwrap_or_default();
    let mut tasks = service.start(names(PluginKind::AlertSink), shutdown.clone());
    let streamer = tether_alerts::AuditStreamer::new(
        tether_alerts::StreamSettings {
            audit_dir: audit.dir().to_path_buf(),
            cursor_dir: config.state_dir.join("audit-sinks"),
            batch_max: config.alerts.audit_batch_max,
            poll: Duration::from_millis(config.alerts.audit_poll_ms),
            retry: crate::alerts::retry(&config.alerts),
        },
        registry,
    )?;
    let log = audit.clone();
    tasks.extend(streamer.start(
        names(PluginKind::AuditSink),
        wiring.clone(),
        Arc::new(move || log.last_seq()),
        shutdown.clone(),
    )?);
    if let Some(p) = plugins {
        let _ = p.streamer.set(streamer);
    }
    Ok(tasks)
}

/// Starts who-is-in-the-star for this role: on the hub the tunnel and the enrollment listener
/// (reviewed by the enrollment-hook `plugins`), on a target the tunnel to its hub if enrolled.
/// Their tasks stop on `shutdown`.
async fn start_membership(
    config: &Config,
    vault: &tether_vault::Vault,
    registry: &Registry,
    alerts: &Arc<dyn tether_model::AlertSink>,
    audit: &tether_audit::AuditLog,
    plugins: &Option<Arc<crate::plugins::Plugins>>,
    shutdown: CancellationToken,
) -> Result<crate::membership::Membership, DaemonError> {
    match config.daemon_role() {
        tether_model::DaemonRole::Hub => {
            crate::membership::start_hub(
                config,
                vault,
                registry,
                Arc::clone(alerts),
                audit.clone(),
                plugins.clone(),
                shutdown,
            )
            .await
        }
        tether_model::DaemonRole::Relay => Err(DaemonError::Membership(
            "a relay has no tunnel or enrollment; it runs through relay::run".to_owned(),
        )),
        tether_model::DaemonRole::Target => {
            crate::membership::start_target(
                config,
                vault,
                registry,
                Arc::clone(alerts),
                audit.clone(),
                shutdown,
            )
            .await
        }
    }
}

/// On an enrolled target, serves the hub's SSH inside the tunnel (its commands pass this
/// daemon's policy and audit, so it starts once the state holds them).
fn start_target_ssh(
    membership: &mut crate::membership::Membership,
    vault: &tether_vault::Vault,
    state: &Arc<AppState>,
    shutdown: &CancellationToken,
) -> Result<(), DaemonError> {
    let (Some(tunnel), Some(enrollment)) = (&membership.tunnel, &membership.enrollment) else {
        return Ok(());
    };
    let task = crate::ssh::start_target(
        &tunnel.handle(),
        vault,
        enrollment,
        &state.config().ssh,
        Arc::clone(state),
        shutdown.clone(),
    )?;
    membership.own(task);
    Ok(())
}

/// Gives the control API the tunnel (`vpn status`) and the key rotator (`vpn rotate-keys`).
fn expose_tunnel(state: &mut AppState, membership: &crate::membership::Membership) {
    state.tunnel = membership
        .tunnel
        .as_ref()
        .map(tether_tunnel::Tunnel::handle);
    state.rotator = membership.rotator.clone();
}

/// Gives the control API the enrollment side: the hub's enrollment core and inventory (invites,
/// hosts), or a target's saved enrollment.
fn expose_enrollment(state: &mut AppState, membership: &crate::membership::Membership) {
    state.hub = membership.hub.clone();
    state.enrollment = membership
        .enrollment
        .as_ref()
        .and_then(|e| serde_json::to_value(e).ok());
}

/// The stop and reload signals. Installed before readiness is announced, so none is missed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, DaemonError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?,
            int: signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?,
            hup: signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?,
        })
    }

    /// Reloads the config on every SIGHUP; returns on SIGTERM or SIGINT. A reload runs as its
    /// own task, off this loop, so nothing a reload does (reading files, compiling the policy,
    /// waiting for the audit log) can delay a stop; one still running when the stop comes is
    /// abandoned (it changes nothing until its audit record is written).
    async fn serve_until_stop(&mut self, state: &Arc<AppState>) {
        let mut running: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = self.int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = self.hup.recv() => {
                    if running.as_ref().is_some_and(|t| !t.is_finished()) {
                        tracing::warn!("SIGHUP: a reload is still running; this one is skipped");
                        continue;
                    }
                    let state = Arc::clone(state);
                    running = Some(tokio::spawn(async move { reload(&state).await }));
                }
            }
        }
        if let Some(task) = running {
            task.abort();
        }
    }
}

/// Creates the control API's Unix socket (and, for the default path, its directory).
fn bind_control_socket(config: &Config) -> Result<tokio::net::UnixListener, DaemonError> {
    let socket = &config.control.socket;
    let create_dir = *socket == tether_config::default_socket_path();
    Ok(server::bind(
        socket,
        config.control.group.as_deref(),
        create_dir,
    )?)
}

/// Serves the control API on `listener` until `shutdown`.
fn start_control_server(
    listener: tokio::net::UnixListener,
    state: &Arc<AppState>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(server::serve(listener, Arc::clone(state), shutdown.clone()))
}

/// The first half of shutdown: stop answering as ready, cancel every task, let the control
/// server drain within [`SHUTDOWN_BUDGET`], and remove its socket.
async fn stop(
    state: &AppState,
    shutdown: &CancellationToken,
    server_task: tokio::task::JoinHandle<()>,
    socket: &Path,
) {
    state.ready.store(false, Ordering::Release);
    notify::notify("STOPPING=1");
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_BUDGET, server_task)
        .await
        .is_err()
    {
        tracing::warn!("control server did not stop within {SHUTDOWN_BUDGET:?}");
    }
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::warn!("could not remove control socket {}: {e}", socket.display());
    }
}

/// The last step of shutdown: record it in the audit chain, then flush and close the chain.
async fn stop_audit(state: &AppState, audit: tether_audit::AuditLog) {
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
