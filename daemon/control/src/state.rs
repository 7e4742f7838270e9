//! Daemon state shared by every route: config, roles, metrics, readiness.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus::Registry;
use serde_json::json;
use tether_audit::Actor;
use tether_config::{Config, ConfigError, Overrides, PolicySource};
use tether_model::{AlertSink, DaemonRole, NoAlerts};
use tether_policy::{Policy, PolicyEngine, PolicyError};

use crate::{ControlMetrics, RoleMap};

/// Everything route handlers may read or change. Built once by `tetherd`, shared by all
/// connections. Subsystems (audit, policy, vault, tunnel, …) are added here as they land.
pub struct AppState {
    /// Hub or target (fixed for the process's life).
    pub daemon_role: DaemonRole,
    /// When the daemon started.
    pub started: Instant,
    /// The daemon's pid.
    pub pid: u32,
    /// Metrics registry served at `/metrics`.
    pub registry: Registry,
    /// The control API's own metrics.
    pub metrics: ControlMetrics,
    /// Set once every subsystem is up; `/readyz` answers 503 until then and while draining.
    pub ready: AtomicBool,
    /// Hosts in the inventory.
    pub hosts: AtomicU64,
    /// The secret vault (`None` only in tools and tests that run without one).
    pub vault: Option<tether_vault::Vault>,
    /// The live policy (`None` only in tools and tests that run without one).
    pub policy: Option<PolicyEngine>,
    /// Where subsystems raise alerts.
    pub alerts: Arc<dyn AlertSink>,
    /// The audit log (`None` only in tools and tests that run without one).
    pub audit: Option<tether_audit::AuditLog>,
    /// The keys that verify the audit log (the same the writer uses).
    pub audit_keys: Option<Arc<dyn tether_audit::KeySource>>,
    /// The head counter kept outside `state_dir` that verify holds the log up to (`None`:
    /// verify says `unanchored`).
    pub audit_anchor: Option<Arc<dyn tether_audit::HeadAnchor>>,
    /// The userspace WireGuard tunnel (absent on a target that has not enrolled).
    pub tunnel: Option<tether_tunnel::TunnelHandle>,
    /// The hub's enrollment core and host inventory (hub only).
    pub hub: Option<Arc<tether_enroll::Hub>>,
    /// A target's saved enrollment (name, overlay IP, hub endpoint), for status.
    pub enrollment: Option<serde_json::Value>,
    /// WireGuard key rotation over the tunnel (hub: for hosts; target: for itself).
    pub rotator: Option<Arc<dyn KeyRotator>>,
    /// Policy plugins (WASM), voting after the regex rules.
    pub plugins: Option<Arc<dyn PluginAdmin>>,
    /// The git commit the daemon was built from (`unknown` when built without git), for
    /// `/v1/status`; `tetherd` sets it from its build script.
    pub commit: &'static str,
    /// The hub's SSH pool, for `POST /v1/exec` (hub only).
    pub remote: Option<Arc<dyn RemoteExec>>,
    /// Hub: where session recordings live (`state_dir/recordings`); `None` on targets.
    pub recordings: Option<std::path::PathBuf>,
    /// The hub's operator SSH endpoint, for `POST /v1/proxy/{host}` (hub only).
    pub operator: Option<Arc<dyn OperatorSsh>>,
    /// Files on targets over the hub's SSH pool, for `/v1/fs` (hub only).
    pub files: Option<Arc<dyn RemoteFiles>>,
    /// Alert routing and delivery (`tether alerts list|test`); `None` in tools and tests.
    pub alert_service: Option<tether_alerts::AlertService>,
    /// Approval requests and just-in-time role grants (`None` in tools and tests without a
    /// state directory: then a `require-approval` verdict refuses).
    pub approvals: Option<Arc<crate::approvals::ApprovalService>>,
    /// Caps on concurrent control connections.
    pub connections: crate::connlimit::ConnLimits,
    /// Rate limits for `auth.denied` records, per uid.
    pub(crate) denials: crate::denials::DenialLimiter,
    /// User-database answers (name, groups) for control callers, reused for a few seconds.
    pub callers: crate::peer::CallerCache,
    /// The relayed SFTP sessions running now, by host: cancelled when their host is revoked
    /// or removed, so each writes `sftp.close` then, not when its client next reads.
    pub(crate) sftp_relays: std::sync::Mutex<Vec<(String, tokio_util::sync::CancellationToken)>>,
    source: ConfigSource,
    config: RwLock<Arc<Config>>,
    roles: RwLock<Arc<RoleMap>>,
}

/// Where the config came from, so a reload (SIGHUP or `POST /v1/reload`) reads the same sources.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config FILE`, if given.
    pub file: Option<PathBuf>,
    /// Command-line overrides.
    pub overrides: Overrides,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("daemon_role", &self.daemon_role)
            .field("pid", &self.pid)
            .field("vault", &self.vault)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Future returned by [`KeyRotator::rotate`].
pub type RotationFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<RotationOutcome>> + Send + 'a>>;

/// Rotates WireGuard keys over the tunnel. Implemented by `tetherd`, which owns the agent
/// protocol between hub and targets.
pub trait KeyRotator: Send + Sync {
    /// Hub: rotate `name` (or every active host when `None`); target: rotate this machine.
    fn rotate(&self, name: Option<String>) -> RotationFuture<'_>;
}

/// A boxed future, for the traits below.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Runs commands on targets over the hub's SSH pool. Implemented by `tetherd` with `tether-ssh`,
/// so this crate (linked by the CLI's tests) never links russh.
pub trait RemoteExec: Send + Sync {
    /// Runs `command` on `host`, sending its output to `out` as it arrives, until it ends or
    /// `cancel` fires (then the remote command is signalled and its channel closed).
    fn run(
        &self,
        host: ExecHost,
        command: RemoteCommand,
        out: tokio::sync::mpsc::Sender<RemoteOutput>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> BoxFuture<'_, Result<RemoteExit, RemoteError>>;
    /// Like [`RemoteExec::run`], but the command is sent only once `go` resolves to `true`; the
    /// connection and channel may be made ready meanwhile, nothing of the command reaches the
    /// target before. When `go` says no, nothing runs and the result is a `cancelled` error.
    /// The default waits for `go` first and prepares nothing.
    fn run_when(
        &self,
        host: ExecHost,
        command: RemoteCommand,
        go: BoxFuture<'static, bool>,
        out: tokio::sync::mpsc::Sender<RemoteOutput>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> BoxFuture<'_, Result<RemoteExit, RemoteError>> {
        Box::pin(async move {
            if !go.await {
                return Err(RemoteError {
                    kind: "cancelled",
                    message: "the request was refused before the command was sent".to_owned(),
                });
            }
            self.run(host, command, out, cancel).await
        })
    }
    /// Closes `host`'s pooled connection (revoke, `hosts rm`); its running commands end.
    fn close_host<'a>(&'a self, host: &'a str, why: &'a str) -> BoxFuture<'a, ()>;
    /// The connect timeout of requests that name none (the hub's `[ssh] connect_timeout`).
    fn default_connect_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
    /// Runs an interactive session (a pty shell, or a command with or without a pty) on
    /// `host`: `input` is typed into it, its output goes to `out`, until it ends or `cancel`
    /// fires (then the channel is closed and the target kills the session's processes).
    fn session(
        &self,
        host: ExecHost,
        spec: tether_model::session::SessionSpec,
        connect_timeout: Duration,
        input: tokio::sync::mpsc::Receiver<tether_model::session::SessionInput>,
        out: tokio::sync::mpsc::Sender<RemoteOutput>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> BoxFuture<'_, Result<RemoteExit, RemoteError>>;
}

/// A connection taken over by an upgrade route (`101 Switching Protocols`).
pub trait UpgradedIo:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> UpgradedIo for T {}

/// The hub's operator-facing SSH endpoint (`tether proxy`). Implemented by `tetherd` with
/// `tether-ssh`, so this crate never links russh: it hands over the upgraded connection and a
/// [`crate::ProxySession`] that decides, audits and runs each request.
pub trait OperatorSsh: Send + Sync {
    /// The endpoint's host key, an OpenSSH public key line.
    fn host_key(&self) -> String;
    /// Its SHA-256 fingerprint.
    fn fingerprint(&self) -> String;
    /// Speaks SSH on `io` until the client goes, every channel request going to `session`.
    fn serve(
        &self,
        io: Box<dyn UpgradedIo>,
        session: crate::ProxySession,
    ) -> BoxFuture<'static, ()>;
}

/// A target, as [`RemoteExec`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecHost {
    /// Inventory name.
    pub name: String,
    /// Overlay address.
    pub ip: std::net::Ipv4Addr,
    /// SSH host key pinned at enrollment (OpenSSH line).
    pub host_key: String,
    /// The account to log in as (a forward-mode target's sshd account); `None`: Tether's own
    /// SSH server.
    pub user: Option<String>,
}

/// One command for [`RemoteExec::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCommand {
    /// The shell command.
    pub line: String,
    /// Limit for opening a connection when none is pooled.
    pub connect_timeout: Duration,
}

/// A chunk of a remote command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutput {
    /// stdout bytes.
    Stdout(bytes::Bytes),
    /// stderr bytes.
    Stderr(bytes::Bytes),
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteExit {
    /// Exit code.
    Code(u32),
    /// Ended by a signal.
    Signal(String),
}

/// Why a remote command could not run or finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// `connect`, `timeout`, `host_key`, `refused`, `closed`, `circuit_open`, `cancelled`, `ssh`.
    pub kind: &'static str,
    /// What happened and what to do.
    pub message: String,
}

/// Files on targets over SFTP through the hub's SSH pool. Implemented by `tetherd` with
/// `tether-ssh`; every path is confined again on the target.
pub trait RemoteFiles: Send + Sync {
    /// Metadata of `path` on `host`.
    fn stat(&self, host: ExecHost, path: String) -> BoxFuture<'_, Result<FileMeta, FileError>>;
    /// The entries of directory `path` on `host`.
    fn list(&self, host: ExecHost, path: String)
    -> BoxFuture<'_, Result<Vec<FileMeta>, FileError>>;
    /// Downloads `path`: its size goes to `opened` once the file is open, then its bytes to
    /// `out`; the result's digest was checked against the target's.
    fn get(
        &self,
        host: ExecHost,
        path: String,
        opened: tokio::sync::oneshot::Sender<u64>,
        out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> BoxFuture<'_, Result<FileDone, FileError>>;
    /// Uploads the chunks from `data` to `path` (the channel closing ends the file); the target
    /// checks `sha256` (or the digest of what it was sent) before renaming it into place.
    /// `abort` firing discards the upload.
    fn put(
        &self,
        host: ExecHost,
        path: String,
        mode: Option<u32>,
        data: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        sha256: Option<String>,
        abort: tokio_util::sync::CancellationToken,
    ) -> BoxFuture<'_, Result<FileDone, FileError>>;
    /// A raw byte stream to `host`'s `sftp` subsystem on an SSH connection of its own (not
    /// the pooled one, so a client that stops reading stalls only itself), for relaying a
    /// stock SFTP client (`sftp`/`scp` through `tether proxy`); the target confines, checks
    /// and audits every path in it. Revoking the host or stopping the hub closes it.
    /// `cancel` firing stops the opening.
    fn sftp_stream(
        &self,
        host: ExecHost,
        cancel: tokio_util::sync::CancellationToken,
    ) -> BoxFuture<'_, Result<Box<dyn UpgradedIo>, FileError>>;
}

/// What the target says about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Name (listing) or path (stat).
    pub name: String,
    /// `file`, `dir`, `symlink`, `other`.
    pub kind: &'static str,
    /// Bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

/// A finished transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDone {
    /// Bytes moved.
    pub size: u64,
    /// Their SHA-256, hex.
    pub sha256: String,
}

/// Why a file operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FileError {
    /// The target's code (`escape`, `denied`, `outside_roots`, `hard_link`, `not_found`,
    /// `too_large`, `no_space`, `hash_mismatch`, `policy`, `disabled`, ...) or the
    /// connection's (`connect`, `timeout`, `closed`, `cancelled`, `ssh`).
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

/// The daemon's loaded plugins as the control API manages them: they vote through
/// [`tether_policy::PolicyHooks`] (the policy's seam; combine the votes with
/// [`tether_policy::Decision::apply_votes`]), and are listed and reloaded here. Implemented by
/// `tetherd` with `tether-plugin-host`, so this crate (linked by the CLI) never links wasmtime;
/// calls block (run them on a blocking thread).
pub trait PluginAdmin: tether_policy::PolicyHooks {
    /// `tether plugin list`: name, kind, hash, signer, calls, errors, latency, quarantine.
    fn list(&self) -> Vec<tether_api::PluginInfo>;
    /// Re-reads the manifest atomically (a bad plugin keeps the old set); returns the count.
    fn reload(&self) -> Result<usize, ReloadError>;
}

/// Why a reload was refused. Either way nothing changed: the previous config and policy (or
/// plugins) stay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The config has problems (each named with its key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy file could not be read.
    #[error(transparent)]
    PolicyFile(#[from] tether_config::PolicyFileError),
    /// The new policy does not compile; the engine kept the old one and raised
    /// `policy_rebuild_failed`.
    #[error("the new policy is invalid, the previous one stays in force: {0}")]
    Policy(#[from] PolicyError),
    /// The change could not be recorded in the audit log, so it was not applied.
    #[error("the change was not applied because its audit record could not be written: {0}")]
    Audit(tether_audit::AuditError),
    /// The plugin manifest, or a plugin in it, could not be loaded; the previous plugins stay
    /// loaded. The source is the plugin host's error (this crate does not link it).
    #[error("plugin reload refused, the previous plugins stay loaded: {0}")]
    Plugins(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub use tether_api::{ReloadReport, RotationOutcome};

impl AppState {
    /// The relayed SFTP sessions running now, by host (see the field).
    pub(crate) fn sftp_relays(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(String, tokio_util::sync::CancellationToken)>> {
        self.sftp_relays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Builds the state for a daemon started with `config` from `source`.
    pub fn new(
        config: Config,
        source: ConfigSource,
        registry: Registry,
    ) -> prometheus::Result<Self> {
        let metrics = ControlMetrics::register(&registry)?;
        let roles = RoleMap::new(&config.control.roles, nix::unistd::geteuid().as_raw());
        Ok(AppState {
            daemon_role: config.daemon_role(),
            started: Instant::now(),
            pid: std::process::id(),
            registry,
            metrics,
            ready: AtomicBool::new(false),
            hosts: AtomicU64::new(0),
            vault: None,
            policy: None,
            alerts: Arc::new(NoAlerts),
            audit: None,
            audit_keys: None,
            audit_anchor: None,
            tunnel: None,
            hub: None,
            enrollment: None,
            rotator: None,
            plugins: None,
            commit: "unknown",
            remote: None,
            recordings: None,
            operator: None,
            files: None,
            alert_service: None,
            approvals: None,
            connections: crate::connlimit::ConnLimits::new(nix::unistd::geteuid().as_raw()),
            denials: crate::denials::DenialLimiter::default(),
            callers: crate::peer::CallerCache::default(),
            sftp_relays: std::sync::Mutex::new(Vec::new()),
            source,
            config: RwLock::new(Arc::new(config)),
            roles: RwLock::new(Arc::new(roles)),
        })
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The role map in force.
    pub fn roles(&self) -> Arc<RoleMap> {
        match self.roles.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The role `caller` holds now: the strongest of its `[control.roles]` role and any
    /// just-in-time grant in force (checked against the clock on every call, so a lapsed grant
    /// is gone at once). `None` → 403.
    pub fn role_of(&self, caller: &crate::Caller) -> Option<tether_model::Role> {
        let base = self.roles().role_of(caller);
        let granted = self
            .approvals
            .as_ref()
            .and_then(|a| a.granted_role(caller.uid));
        base.max(granted)
    }

    /// How long a connection may idle or dawdle over a request.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.config().control.idle_timeout_secs)
    }

    /// Whether `/readyz` should say ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Re-reads the config (and so the policy) from its original sources, records the change
    /// in the audit log, then applies it. Nothing changes when the new config or policy is
    /// invalid (the policy engine then raises `policy_rebuild_failed`) or when the audit record
    /// cannot be written. A reload that changed anything raises a `config_change` alert.
    /// `kind` is the audit event type (`config.change`, `policy.reload`);
    /// `trigger` says what asked (`sighup`, `api`).
    pub async fn reload(
        &self,
        actor: Actor,
        kind: &str,
        trigger: &str,
    ) -> Result<ReloadReport, ReloadError> {
        let prepared = match self.prepare_reload() {
            Ok(p) => p,
            Err(e) => {
                let data = json!({"ok": false, "trigger": trigger, "error": e.to_string()});
                if let Err(ae) = self.audit(kind, actor, None, data).await {
                    tracing::error!("could not audit a refused reload: {ae}");
                }
                return Err(e);
            }
        };
        let data = json!({
            "ok": true,
            "trigger": trigger,
            "changed": prepared.report.changed,
            "needs_restart": prepared.report.needs_restart,
            "policy_mode": prepared.policy.as_ref().map(|p| p.mode().as_str()),
            "policy_rules": prepared.policy.as_ref().map(|p| p.rule_count()),
        });
        self.audit(kind, actor, None, data)
            .await
            .map_err(ReloadError::Audit)?;
        let report = self.apply(prepared);
        if report.changed {
            let mut alert = tether_model::Alert::new(
                "config_change",
                tether_model::Severity::Info,
                format!("configuration reloaded ({trigger})"),
            )
            .field("trigger", trigger)
            .field("audit_type", kind);
            if !report.needs_restart.is_empty() {
                alert = alert.field("needs_restart", report.needs_restart.join(", "));
            }
            self.alerts.raise(alert);
        }
        Ok(report)
    }

    fn prepare_reload(&self) -> Result<PreparedReload, ReloadError> {
        let new =
            tether_config::load_for_reload(self.source.file.as_deref(), &self.source.overrides)?;
        let mut policy = None;
        if let Some(engine) = &self.policy {
            let compiled = match new.policy_source() {
                Ok(PolicySource::Inline(spec)) => Policy::compile(&spec).map(|p| (p, None)),
                Ok(PolicySource::File(text)) => {
                    Policy::from_toml_str(&text).map(|p| (p, Some(text)))
                }
                Err(e) => {
                    self.alerts.raise(tether_model::Alert::new(
                        tether_policy::ALERT_REBUILD_FAILED,
                        tether_model::Severity::Warning,
                        e.to_string(),
                    ));
                    return Err(e.into());
                }
            };
            match compiled {
                Ok((p, _)) => policy = Some(p),
                Err(_) => {
                    // Let the engine see the failure: it keeps the old policy, counts it and
                    // raises `policy_rebuild_failed`.
                    let err = match new.policy_source() {
                        Ok(PolicySource::File(text)) => engine.reload_toml(&text),
                        _ => engine.reload(&new.policy),
                    };
                    return Err(match err {
                        Err(e) => e.into(),
                        Ok(()) => ReloadError::Policy(PolicyError::Metrics(
                            "policy compiled on the second try".to_owned(),
                        )),
                    });
                }
            }
        }
        let old = self.config();
        let mut report = ReloadReport {
            changed: *old != new,
            needs_restart: Vec::new(),
        };
        if old.role != new.role {
            report.needs_restart.push("role".to_owned());
        }
        if old.state_dir != new.state_dir {
            report.needs_restart.push("state_dir".to_owned());
        }
        if old.control.socket != new.control.socket || old.control.group != new.control.group {
            report
                .needs_restart
                .push("control.socket / control.group".to_owned());
        }
        if old.log != new.log {
            report.needs_restart.push("log".to_owned());
        }
        if old.vault != new.vault {
            report.needs_restart.push("vault".to_owned());
        }
        if old.metrics != new.metrics {
            report.needs_restart.push("metrics".to_owned());
        }
        // The SSH server or relay, run_as and the hub's pool are built at start.
        if old.ssh != new.ssh {
            report.needs_restart.push("ssh".to_owned());
        }
        // The rest of [alerts] (routes, cool-down, sinks, queues, retries) applies live.
        if old.alerts.audit_batch_max != new.alerts.audit_batch_max
            || old.alerts.audit_poll_ms != new.alerts.audit_poll_ms
            || old.alerts.offline_after_secs != new.alerts.offline_after_secs
        {
            report.needs_restart.push(
                "alerts.audit_batch_max / alerts.audit_poll_ms / alerts.offline_after_secs"
                    .to_owned(),
            );
        }
        Ok(PreparedReload {
            config: new,
            policy,
            report,
        })
    }

    fn apply(&self, prepared: PreparedReload) -> ReloadReport {
        if let (Some(engine), Some(policy)) = (&self.policy, prepared.policy) {
            engine.swap(policy);
        }
        if let Some(service) = &self.alert_service
            && self.config().alerts != prepared.config.alerts
        {
            let settings = tether_alerts::AlertsSettings::from_section(&prepared.config.alerts);
            match service.reconfigure(settings) {
                Ok((added, removed)) => tracing::info!(
                    ?added,
                    ?removed,
                    "[alerts] applied: routes, cool-down, queues and retries"
                ),
                Err(e) => tracing::error!("[alerts] not applied, keeping the previous: {e}"),
            }
        }
        let roles = RoleMap::new(
            &prepared.config.control.roles,
            nix::unistd::geteuid().as_raw(),
        );
        if let Ok(mut r) = self.roles.write() {
            *r = Arc::new(roles);
        }
        if let Ok(mut c) = self.config.write() {
            *c = Arc::new(prepared.config);
        }
        prepared.report
    }
}

/// A validated new config and its compiled policy, not yet in force.
struct PreparedReload {
    config: Config,
    policy: Option<Policy>,
    report: ReloadReport,
}
