//! SSH inside the tunnel, wired by role ([`tether_ssh`] does the protocol).
//!
//! * Hub: [`start_hub`] builds the pool (the vault's SSH key as the client key, tunnel streams as
//!   the transport, alerts for open breakers and wrong host keys) and gives the control API a
//!   [`RemoteExec`] over it; a reaper task closes idle connections.
//! * Target: [`start_target`] listens on overlay port 22 inside the tunnel (never on a host
//!   interface) and accepts connections only from the hub's overlay address. In server mode it
//!   serves them with the vault's SSH host key, accepting only the hub's client key from the
//!   enrollment, running commands as `ssh.run_as`; each command passes the target's own policy
//!   and is audited here too. In forward mode (`ssh.mode = "forward"`) it relays them to the
//!   local sshd at `ssh.forward_to` and audits each relayed connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tether_config::SshMode;
use tether_control::AppState;
use tether_control::ProxySession;
use tether_control::audit::daemon_actor;
use tether_control::state::{
    BoxFuture, ExecHost, FileDone, FileError, FileMeta, OperatorSsh, RemoteCommand, RemoteError,
    RemoteExec, RemoteExit, RemoteFiles, RemoteOutput, UpgradedIo,
};
use tether_model::{Alert, AlertSink, Severity};
use tether_policy::Verdict;
use tether_ssh::operator::{OperatorBackend, OperatorEndpoint, Refusal, SubsystemRun};
use tether_ssh::pool::{self, Dialer, Pool, PoolConfig, PoolEvents, Stream};
use tether_ssh::server::{ExecGate, ExecReport, RunAs, ServerSettings, SshServer};
use tether_ssh::{SSH_PORT, SshError};
use tether_tunnel::TunnelHandle;
use tether_vault::Vault;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::DaemonError;
use crate::identity;
use crate::membership::Enrollment;

/// How often idle pooled connections are looked for.
const REAP_EVERY: Duration = Duration::from_secs(30);

/// This daemon's SSH key (hub: client key; target: host key) from the vault.
fn ssh_key(vault: &Vault) -> Result<tether_ssh::keys::PrivateKey, DaemonError> {
    ssh_key_named(vault, identity::SSH_KEY)
}

/// The Ed25519 SSH key whose seed the vault keeps under `name` (generated on first use).
fn ssh_key_named(vault: &Vault, name: &str) -> Result<tether_ssh::keys::PrivateKey, DaemonError> {
    let seed = vault.get_or_generate(name, tether_vault::key_len::ED25519_SEED)?;
    seed.expose(tether_ssh::keys::from_seed)
        .map_err(|e| DaemonError::Membership(format!("the SSH key in the vault: {e}")))
}

/// Tunnel streams to a target's port 22.
struct TunnelDialer(TunnelHandle);

impl Dialer for TunnelDialer {
    fn dial(&self, ip: Ipv4Addr) -> pool::BoxFuture<'_, std::io::Result<Box<dyn Stream>>> {
        Box::pin(async move {
            let s = self
                .0
                .connect(ip, SSH_PORT)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Box::new(s) as Box<dyn Stream>)
        })
    }
}

/// Alerts (and audit records) for what the pool reports.
struct Events {
    alerts: Arc<dyn AlertSink>,
    audit: tether_audit::AuditLog,
}

impl PoolEvents for Events {
    fn breaker_opened(&self, host: &str, failures: u32, error: &SshError) {
        let mut alert = Alert::new(
            "circuit_breaker_open",
            Severity::Warning,
            format!(
                "{failures} connections to {host} failed in a row; not trying it for 30 s (last error: {error})"
            ),
        );
        alert.host = Some(host.to_owned());
        self.alerts.raise(alert);
    }

    fn host_key_mismatch(&self, host: &str, error: &SshError) {
        let mut alert = Alert::new(
            "ssh_host_key_mismatch",
            Severity::Critical,
            error.to_string(),
        );
        alert.host = Some(host.to_owned());
        self.alerts.raise(alert);
        let event = tether_audit::Event::new("ssh.host_key_mismatch", daemon_actor())
            .host(host)
            .data(json!({"error": error.to_string()}));
        let audit = self.audit.clone();
        tokio::spawn(async move {
            if let Err(e) = audit.append(&event).await {
                tracing::error!("could not audit a host key mismatch: {e}");
            }
        });
    }
}

/// The hub's pool as the control API sees it.
pub struct HubSsh {
    pool: Pool,
    /// `[ssh] connect_timeout`: for requests that name none.
    connect_timeout: Duration,
}

fn remote_error(e: SshError) -> RemoteError {
    let kind = match &e {
        SshError::Connect { .. } => "connect",
        SshError::ConnectTimeout { .. } => "timeout",
        SshError::HostKeyMismatch { .. } => "host_key",
        SshError::AuthRejected { .. } | SshError::Refused { .. } => "refused",
        SshError::CircuitOpen { .. } => "circuit_open",
        SshError::Closed { .. } | SshError::ShutDown => "closed",
        SshError::Cancelled => "cancelled",
        _ => "ssh",
    };
    RemoteError {
        kind,
        message: e.to_string(),
    }
}

impl RemoteExec for HubSsh {
    fn run(
        &self,
        host: ExecHost,
        command: RemoteCommand,
        out: mpsc::Sender<RemoteOutput>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RemoteExit, RemoteError>> {
        self.run_when(
            host,
            command,
            Box::pin(std::future::ready(true)),
            out,
            cancel,
        )
    }

    fn run_when(
        &self,
        host: ExecHost,
        command: RemoteCommand,
        go: BoxFuture<'static, bool>,
        out: mpsc::Sender<RemoteOutput>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RemoteExit, RemoteError>> {
        Box::pin(async move {
            let target = pool::Target {
                name: host.name,
                ip: host.ip,
                host_key: host.host_key,
                user: host.user,
            };
            let cmd = pool::Command {
                line: command.line,
                env: Vec::new(),
                connect_timeout: command.connect_timeout,
            };
            let (tx, mut rx) = mpsc::channel(32);
            let forward = async {
                while let Some(o) = rx.recv().await {
                    let o = match o {
                        pool::Output::Stdout(b) => RemoteOutput::Stdout(b),
                        pool::Output::Stderr(b) => RemoteOutput::Stderr(b),
                    };
                    if out.send(o).await.is_err() {
                        break;
                    }
                }
            };
            let run = self.pool.exec_when(&target, &cmd, go, tx, cancel);
            let (r, ()) = tokio::join!(run, forward);
            match r {
                Ok(pool::Exit::Code(c)) => Ok(RemoteExit::Code(c)),
                Ok(pool::Exit::Signal(s)) => Ok(RemoteExit::Signal(s)),
                Err(e) => Err(remote_error(e)),
            }
        })
    }

    fn session(
        &self,
        host: ExecHost,
        spec: tether_model::session::SessionSpec,
        connect_timeout: Duration,
        input: mpsc::Receiver<tether_model::session::SessionInput>,
        out: mpsc::Sender<RemoteOutput>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RemoteExit, RemoteError>> {
        Box::pin(async move {
            let target = pool::Target {
                name: host.name,
                ip: host.ip,
                host_key: host.host_key,
                user: host.user,
            };
            let (tx, rx) = mpsc::channel(32);
            let run = self
                .pool
                .session(&target, &spec, connect_timeout, input, tx, cancel);
            let (r, ()) = tokio::join!(run, to_remote(rx, out));
            match r {
                Ok(pool::Exit::Code(c)) => Ok(RemoteExit::Code(c)),
                Ok(pool::Exit::Signal(s)) => Ok(RemoteExit::Signal(s)),
                Err(e) => Err(remote_error(e)),
            }
        })
    }

    fn default_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    fn close_host<'a>(&'a self, host: &'a str, why: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if self.pool.close_host(host, why).await {
                // Let the tunnel carry the goodbye before the caller removes the peer.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// Forwards the pool's output to the control API's channel.
async fn to_remote(mut rx: mpsc::Receiver<pool::Output>, out: mpsc::Sender<RemoteOutput>) {
    while let Some(o) = rx.recv().await {
        let o = match o {
            pool::Output::Stdout(b) => RemoteOutput::Stdout(b),
            pool::Output::Stderr(b) => RemoteOutput::Stderr(b),
        };
        if out.send(o).await.is_err() {
            break;
        }
    }
}

/// Forwards the control API's output to the operator endpoint's channel.
async fn to_pool(mut rx: mpsc::Receiver<RemoteOutput>, out: mpsc::Sender<pool::Output>) {
    while let Some(o) = rx.recv().await {
        let o = match o {
            RemoteOutput::Stdout(b) => pool::Output::Stdout(b),
            RemoteOutput::Stderr(b) => pool::Output::Stderr(b),
        };
        if out.send(o).await.is_err() {
            break;
        }
    }
}

fn refusal(r: tether_control::Refusal) -> Refusal {
    Refusal {
        message: r.message,
        exit_status: r.exit_status,
    }
}

fn exit_of(e: RemoteExit) -> pool::Exit {
    match e {
        RemoteExit::Code(c) => pool::Exit::Code(c),
        RemoteExit::Signal(s) => pool::Exit::Signal(s),
    }
}

/// The operator endpoint's requests, decided and run by the control API's [`ProxySession`].
struct Backend(ProxySession);

impl OperatorBackend for Backend {
    fn exec(
        &self,
        command: String,
        out: mpsc::Sender<pool::Output>,
        cancel: CancellationToken,
    ) -> pool::BoxFuture<'static, Result<pool::Exit, Refusal>> {
        let session = self.0.clone();
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(32);
            let (r, ()) = tokio::join!(session.exec(command, tx, cancel), to_pool(rx, out));
            r.map(exit_of).map_err(refusal)
        })
    }

    fn session(
        &self,
        spec: tether_model::session::SessionSpec,
        input: mpsc::Receiver<tether_model::session::SessionInput>,
        out: mpsc::Sender<pool::Output>,
        cancel: CancellationToken,
    ) -> pool::BoxFuture<'static, Result<pool::Exit, Refusal>> {
        let session = self.0.clone();
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(32);
            let (r, ()) = tokio::join!(session.session(spec, input, tx, cancel), to_pool(rx, out));
            r.map(exit_of).map_err(refusal)
        })
    }

    fn sftp(
        &self,
        cancel: CancellationToken,
    ) -> pool::BoxFuture<'static, Result<SubsystemRun, Refusal>> {
        let session = self.0.clone();
        Box::pin(async move {
            let relay = session.sftp_open(cancel).await.map_err(refusal)?;
            let run: SubsystemRun = Box::new(move |input, out| {
                Box::pin(async move {
                    let (tx, rx) = mpsc::channel(32);
                    let (r, ()) = tokio::join!(relay.run(input, tx), to_pool(rx, out));
                    r.map(exit_of).map_err(refusal)
                })
            });
            Ok(run)
        })
    }
}

/// The hub's operator SSH endpoint as the control API sees it.
pub struct HubOperator {
    endpoint: OperatorEndpoint,
    public: String,
    fingerprint: String,
}

impl HubOperator {
    /// The endpoint with the hub's operator host key from the vault (created on first start).
    pub fn new(vault: &Vault) -> Result<Self, DaemonError> {
        let key = ssh_key_named(vault, identity::OPERATOR_SSH_KEY)?;
        let public = identity::ssh_public_key_named(vault, identity::OPERATOR_SSH_KEY)?;
        let fingerprint = tether_ssh::keys::fingerprint(key.public_key());
        Ok(HubOperator {
            endpoint: OperatorEndpoint::new(key),
            public,
            fingerprint,
        })
    }
}

impl OperatorSsh for HubOperator {
    fn host_key(&self) -> String {
        self.public.clone()
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn serve(&self, io: Box<dyn UpgradedIo>, session: ProxySession) -> BoxFuture<'static, ()> {
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            let host = session.host().to_owned();
            if let Err(e) = endpoint.serve(io, Arc::new(Backend(session))).await {
                tracing::debug!(host, "an operator SSH connection ended: {e}");
            }
        })
    }
}

/// The hub's SSH side: the pool and its reaper.
pub struct HubSide {
    /// The pool, for the control API.
    pub remote: Arc<HubSsh>,
    /// The operator SSH endpoint, for `tether proxy`.
    pub operator: Arc<HubOperator>,
    reaper: JoinHandle<()>,
}

impl HubSide {
    /// Closes every pooled connection, once.
    pub async fn shutdown(self) {
        self.reaper.abort();
        self.remote.pool.shutdown().await;
    }
}

/// The machine's memory in bytes (`MemTotal` in `/proc/meminfo`), if it can be read.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The pool's settings from `[ssh]`.
fn pool_config(config: &tether_config::SshSection) -> PoolConfig {
    let times = config.times();
    let max_connections = config.max_connections.unwrap_or_else(|| {
        total_memory().map_or(
            tether_ssh::pool::DEFAULT_MAX_CONNECTIONS,
            tether_ssh::pool::max_connections_for_memory,
        )
    });
    PoolConfig {
        idle: times.idle_timeout,
        max_channels: config.max_channels_per_conn,
        keepalive: times.keepalive,
        breaker: tether_ssh::breaker::BreakerConfig {
            threshold: config.breaker_threshold,
            cool_down: times.breaker_cool_down,
        },
        max_handshakes: tether_ssh::pool::DEFAULT_MAX_HANDSHAKES,
        max_connections,
    }
}

/// The pool's figures as Prometheus metrics, read from [`Pool::stats`] at each scrape.
struct PoolMetrics {
    pool: std::sync::Weak<HubSsh>,
    open: prometheus::IntGauge,
    max: prometheus::IntGauge,
    peak: prometheus::IntGauge,
    opened: prometheus::IntCounter,
    evicted: prometheus::IntCounter,
    expired: prometheus::IntCounter,
}

impl PoolMetrics {
    fn new(pool: &Arc<HubSsh>) -> prometheus::Result<Self> {
        use prometheus::{IntCounter, IntGauge};
        Ok(PoolMetrics {
            pool: Arc::downgrade(pool),
            open: IntGauge::new(
                "tether_ssh_pool_connections_open",
                "SSH connections the hub has open now (pooled, sessions, subsystems)",
            )?,
            max: IntGauge::new(
                "tether_ssh_pool_connections_max",
                "The most SSH connections the hub keeps open at once (ssh.max_connections)",
            )?,
            peak: IntGauge::new(
                "tether_ssh_pool_connections_peak",
                "The most SSH connections the hub had open at once since it started",
            )?,
            opened: IntCounter::new(
                "tether_ssh_pool_connections_opened_total",
                "SSH connections the hub opened to targets",
            )?,
            evicted: IntCounter::new(
                "tether_ssh_pool_connections_evicted_total",
                "Idle SSH connections closed to make room for another target's (ssh.max_connections reached)",
            )?,
            expired: IntCounter::new(
                "tether_ssh_pool_connections_expired_total",
                "Idle SSH connections closed after ssh.idle_timeout (shortened while the pool is more than half full)",
            )?,
        })
    }
}

impl prometheus::core::Collector for PoolMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        [
            self.open.desc(),
            self.max.desc(),
            self.peak.desc(),
            self.opened.desc(),
            self.evicted.desc(),
            self.expired.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some(hub) = self.pool.upgrade() {
            let s = hub.pool.stats();
            let gauge =
                |g: &prometheus::IntGauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
            gauge(&self.open, s.open);
            gauge(&self.max, s.max);
            gauge(&self.peak, s.peak);
            for (c, v) in [
                (&self.opened, s.opened_total),
                (&self.evicted, s.evicted_total),
                (&self.expired, s.expired_total),
            ] {
                c.inc_by(v.saturating_sub(c.get()));
            }
        }
        [
            self.open.collect(),
            self.max.collect(),
            self.peak.collect(),
            self.opened.collect(),
            self.evicted.collect(),
            self.expired.collect(),
        ]
        .concat()
    }
}

/// Builds the hub's pool over `tunnel`.
pub fn start_hub(
    tunnel: TunnelHandle,
    vault: &Vault,
    config: &tether_config::SshSection,
    alerts: Arc<dyn AlertSink>,
    audit: tether_audit::AuditLog,
    registry: &prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<HubSide, DaemonError> {
    let key = ssh_key(vault)?;
    let pool_config = pool_config(config);
    tracing::info!(
        max_connections = pool_config.max_connections,
        "SSH pool: at most this many connections open at once"
    );
    let pool = Pool::new(
        Arc::new(TunnelDialer(tunnel)),
        Arc::new(Events { alerts, audit }),
        key,
        pool_config,
    );
    let times = config.times();
    let remote = Arc::new(HubSsh {
        pool,
        connect_timeout: times.connect_timeout,
    });
    PoolMetrics::new(&remote)
        .and_then(|m| registry.register(Box::new(m)))
        .map_err(|e| DaemonError::Membership(format!("the SSH pool's metrics: {e}")))?;
    // Often enough that a short idle_timeout is honoured.
    let reap_every = REAP_EVERY
        .min(times.idle_timeout / 2)
        .max(Duration::from_secs(1));
    let operator = Arc::new(HubOperator::new(vault)?);
    let reaper = tokio::spawn({
        let remote = Arc::clone(&remote);
        async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(reap_every) => {}
                }
                for host in remote.pool.reap(Instant::now()).await {
                    tracing::debug!(host, "closed an idle SSH connection");
                }
            }
        }
    });
    Ok(HubSide {
        remote,
        operator,
        reaper,
    })
}

/// The target's policy and audit, asked by its SSH server.
struct TargetGate {
    state: Arc<AppState>,
    facts: tether_model::selector::HostFacts,
}

impl ExecGate for TargetGate {
    fn admit<'a>(
        &'a self,
        command: &'a str,
    ) -> tether_ssh::server::BoxFuture<'a, Result<(), String>> {
        Box::pin(target_check(
            &self.state,
            &self.facts,
            from_hub(
                &self.facts,
                tether_policy::RequestKind::Exec,
                Some(command),
                None,
            ),
            ("exec.denied", "exec.received"),
            json!({"command": command}),
        ))
    }

    fn admit_session<'a>(
        &'a self,
        command: Option<&'a str>,
    ) -> tether_ssh::server::BoxFuture<'a, Result<(), String>> {
        Box::pin(target_check(
            &self.state,
            &self.facts,
            from_hub(
                &self.facts,
                tether_policy::RequestKind::Session,
                command,
                None,
            ),
            ("session.denied", "session.open"),
            json!({"command": command}),
        ))
    }

    fn finished(&self, report: ExecReport) -> tether_ssh::server::BoxFuture<'_, ()> {
        Box::pin(async move {
            let kind = if report.interactive {
                "session.close"
            } else {
                "exec.result"
            };
            let data = json!({
                "command": report.command,
                "exit_code": report.exit_code,
                "signal": report.signal,
                "killed": report.killed,
                "duration_ms": report.duration.as_millis() as u64,
                "stdout_bytes": report.stdout_bytes,
                "stderr_bytes": report.stderr_bytes,
            });
            if let Err(e) = self
                .state
                .audit(kind, daemon_actor(), Some(&self.facts.name), data)
                .await
            {
                tracing::error!("could not audit an exec result: {e}");
            }
        })
    }
}

/// Listens on overlay port 22 and serves the hub until `shutdown`: with the SSH server, or
/// (forward mode) by relaying to the local sshd.
pub fn start_target(
    tunnel: &TunnelHandle,
    vault: &Vault,
    enrollment: &Enrollment,
    config: &tether_config::SshSection,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, DaemonError> {
    let named = enrollment.ssh_user.as_deref();
    let mismatch = match config.mode {
        SshMode::Server => named.map(|u| format!("in forward mode (as {u})")),
        SshMode::Forward if named != config.run_as.as_deref() => Some(named.map_or_else(
            || "in server mode".to_owned(),
            |u| format!("in forward mode as {u}"),
        )),
        SshMode::Forward => None,
    };
    if let Some(then) = mismatch {
        return Err(DaemonError::Usage(format!(
            "this target enrolled {then}, but [ssh] now says mode = {:?}{}; the hub pinned the host key and login of the enrollment. Restore the [ssh] settings, or re-enroll (tether vpn reinvite {} on the hub, then tetherd enroll --force TOKEN here)",
            config.mode.as_str(),
            config
                .run_as
                .as_deref()
                .map(|u| format!(", run_as = {u:?}"))
                .unwrap_or_default(),
            enrollment.name
        )));
    }
    let serve: Arc<dyn Fn(tether_tunnel::TunnelStream) -> BoxFuture<'static, ()> + Send + Sync> =
        match config.mode {
            SshMode::Server => {
                let server = server(vault, enrollment, config, state)?;
                Arc::new(move |stream| {
                    let server = server.clone();
                    Box::pin(async move {
                        if let Err(e) = server.serve_connection(stream).await {
                            tracing::debug!("SSH connection ended: {e}");
                        }
                    })
                })
            }
            SshMode::Forward => {
                let to: SocketAddr = config.forward_to.parse().map_err(|_| {
                    DaemonError::Usage(format!(
                        "ssh.forward_to {:?} is not an IP:port address",
                        config.forward_to
                    ))
                })?;
                let timeout = config.times().connect_timeout;
                let host = enrollment.name.clone();
                tracing::info!(%to, "SSH: forward mode, relaying the hub's SSH to the local sshd");
                Arc::new(move |stream| {
                    let (state, host) = (Arc::clone(&state), host.clone());
                    Box::pin(relay(state, host, stream, to, timeout))
                })
            }
        };
    let listener = tunnel
        .listen(SSH_PORT)
        .map_err(|source| DaemonError::Tunnel {
            what: format!("cannot listen on the SSH port {SSH_PORT} inside the tunnel"),
            source,
        })?;
    let hub_ip = enrollment.hub_overlay_ip;
    Ok(tokio::spawn(async move {
        let conns = tokio_util::task::TaskTracker::new();
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                s = listener.accept() => match s {
                    Ok(s) => s,
                    Err(e) => { tracing::error!("SSH listener stopped: {e}"); break; }
                },
            };
            if stream.peer_ip() != hub_ip {
                tracing::warn!(from = %stream.peer_ip(), "SSH: refused a connection that is not from the hub");
                continue;
            }
            let (serve, shutdown) = (Arc::clone(&serve), shutdown.clone());
            conns.spawn(async move {
                tokio::select! {
                    () = serve(stream) => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
    }))
}

/// How long opening a pooled connection for a file operation may take.
const FILES_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn file_error(e: SshError) -> FileError {
    match e {
        SshError::File { code, message, .. } => FileError { code, message },
        other => {
            let r = remote_error(other);
            FileError {
                code: r.kind.to_owned(),
                message: r.message,
            }
        }
    }
}

fn file_meta(m: tether_ssh::sftp::RemoteMeta) -> FileMeta {
    FileMeta {
        name: m.name,
        kind: m.kind,
        size: m.size,
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
    }
}

impl HubSsh {
    /// An SFTP session with `host` on a channel of its pooled connection.
    async fn sftp(
        &self,
        host: ExecHost,
        cancel: CancellationToken,
    ) -> Result<tether_ssh::sftp::SftpClient, FileError> {
        let target = pool::Target {
            name: host.name.clone(),
            ip: host.ip,
            host_key: host.host_key,
            user: host.user,
        };
        let stream = self
            .pool
            .subsystem(&target, "sftp", FILES_CONNECT_TIMEOUT, cancel)
            .await
            .map_err(file_error)?;
        tether_ssh::sftp::SftpClient::new(&host.name, stream)
            .await
            .map_err(file_error)
    }
}

impl RemoteFiles for HubSsh {
    fn stat(&self, host: ExecHost, path: String) -> BoxFuture<'_, Result<FileMeta, FileError>> {
        Box::pin(async move {
            let c = self.sftp(host, CancellationToken::new()).await?;
            c.stat(&path).await.map(file_meta).map_err(file_error)
        })
    }

    fn list(
        &self,
        host: ExecHost,
        path: String,
    ) -> BoxFuture<'_, Result<Vec<FileMeta>, FileError>> {
        Box::pin(async move {
            let c = self.sftp(host, CancellationToken::new()).await?;
            c.list(&path)
                .await
                .map(|l| l.into_iter().map(file_meta).collect())
                .map_err(file_error)
        })
    }

    fn get(
        &self,
        host: ExecHost,
        path: String,
        opened: tokio::sync::oneshot::Sender<u64>,
        out: mpsc::Sender<bytes::Bytes>,
    ) -> BoxFuture<'_, Result<FileDone, FileError>> {
        Box::pin(async move {
            let c = self.sftp(host, CancellationToken::new()).await?;
            c.get(&path, opened, out)
                .await
                .map(|t| FileDone {
                    size: t.size,
                    sha256: t.sha256,
                })
                .map_err(file_error)
        })
    }

    fn put(
        &self,
        host: ExecHost,
        path: String,
        mode: Option<u32>,
        data: mpsc::Receiver<bytes::Bytes>,
        sha256: Option<String>,
        abort: CancellationToken,
    ) -> BoxFuture<'_, Result<FileDone, FileError>> {
        Box::pin(async move {
            let c = self.sftp(host, abort.clone()).await?;
            c.put(&path, mode, data, sha256, abort)
                .await
                .map(|t| FileDone {
                    size: t.size,
                    sha256: t.sha256,
                })
                .map_err(file_error)
        })
    }

    fn sftp_stream(
        &self,
        host: ExecHost,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Box<dyn tether_control::state::UpgradedIo>, FileError>> {
        Box::pin(async move {
            let target = pool::Target {
                name: host.name,
                ip: host.ip,
                host_key: host.host_key,
                user: host.user,
            };
            // A connection of its own: the stock client may stop reading (see
            // `Pool::dedicated_subsystem`), which must not stall this target's `exec`s.
            let stream = self
                .pool
                .dedicated_subsystem(&target, "sftp", FILES_CONNECT_TIMEOUT, cancel)
                .await
                .map_err(file_error)?;
            Ok(Box::new(stream) as Box<dyn tether_control::state::UpgradedIo>)
        })
    }
}

/// The target's own policy check of a request from the hub, and its audit record: `denied` on
/// a deny or require-approval verdict (then `Err` with the reason), `allowed` otherwise. `data`
/// (an object) gets the verdict, rules and reason added.
async fn target_check(
    state: &Arc<AppState>,
    facts: &tether_model::selector::HostFacts,
    request: tether_policy::Request,
    (denied, allowed): (&str, &str),
    mut data: serde_json::Value,
) -> Result<(), String> {
    let st = Arc::clone(state);
    let inline = st.plugins.is_none();
    let check = move || {
        let hooks = st
            .plugins
            .as_deref()
            .map(|h| h as &dyn tether_policy::PolicyHooks);
        st.policy.as_ref().map(|e| e.check(&request, hooks))
    };
    // Without plugins the check is regex rules only (microseconds, no I/O): run it here rather
    // than hand it to a blocking thread and back on every command; plugin votes (WASM) block.
    let checked = if inline {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))
            .map_err(|_| "the policy check failed".to_owned())?
    } else {
        tokio::task::spawn_blocking(check)
            .await
            .map_err(|_| "the policy check failed".to_owned())?
    }
    .ok_or_else(|| "this target runs without a policy engine".to_owned())?;
    let d = &checked.decision;
    let is_denied = matches!(d.verdict, Verdict::Deny | Verdict::RequireApproval);
    if let Some(o) = data.as_object_mut() {
        o.insert("verdict".into(), json!(d.verdict));
        o.insert("rules".into(), json!(d.rule_ids));
        o.insert("reason".into(), json!(d.reason));
        o.insert("from".into(), json!("hub"));
    }
    let kind = if is_denied { denied } else { allowed };
    state
        .audit(kind, daemon_actor(), Some(&facts.name), data)
        .await
        .map_err(|e| format!("its audit record could not be written: {e}"))?;
    if is_denied {
        return Err(format!("{} ({})", d.reason, d.verdict));
    }
    Ok(())
}

/// A request from the hub, as the target's policy sees it.
fn from_hub(
    facts: &tether_model::selector::HostFacts,
    kind: tether_policy::RequestKind,
    command: Option<&str>,
    path: Option<&str>,
) -> tether_policy::Request {
    tether_policy::Request {
        kind,
        command: command.map(str::to_owned),
        path: path.map(str::to_owned),
        user: "hub".to_owned(),
        role: tether_model::Role::Operator,
        host: facts.clone(),
        ticket: None,
    }
}

/// The target's policy and audit for file operations, asked by its SFTP server.
struct TargetFiles {
    state: Arc<AppState>,
    facts: tether_model::selector::HostFacts,
}

impl tether_ssh::sftp::FileGate for TargetFiles {
    fn admit<'a>(
        &'a self,
        op: tether_ssh::sftp::FileOp,
        path: &'a str,
    ) -> tether_ssh::sftp::BoxFuture<'a, Result<(), String>> {
        let kind = if op.writes() {
            tether_policy::RequestKind::FileWrite
        } else {
            tether_policy::RequestKind::FileRead
        };
        Box::pin(target_check(
            &self.state,
            &self.facts,
            from_hub(&self.facts, kind, None, Some(path)),
            ("fs.denied", "fs.received"),
            json!({"op": op.as_str(), "path": path}),
        ))
    }

    fn finished(
        &self,
        report: tether_ssh::sftp::FileReport,
    ) -> tether_ssh::sftp::BoxFuture<'_, ()> {
        Box::pin(async move {
            let data = json!({
                "op": report.op.as_str(),
                "path": report.path,
                "to": report.to,
                "ok": report.error.is_none(),
                "size": report.size,
                "sha256": report.sha256,
                "error": report.error,
            });
            let kind = format!("fs.{}", report.op.as_str());
            if let Err(e) = self
                .state
                .audit(&kind, daemon_actor(), Some(&self.facts.name), data)
                .await
            {
                tracing::error!("could not audit a file operation: {e}");
            }
        })
    }
}

/// The target's SFTP service over its `[files]` confinement.
/// When `run_as` means dropping privileges, each SFTP session runs in a helper process as that
/// user (see `tether_ssh::sftp_helper`), so the kernel checks file access as it would for a
/// command run there.
fn sftp_service(
    state: &Arc<AppState>,
    facts: &tether_model::selector::HostFacts,
    run_as: &RunAs,
) -> Result<tether_ssh::sftp::SftpService, DaemonError> {
    let files = state.config().files.clone();
    let settings = tether_files::Settings {
        allowed_roots: files.allowed_roots,
        deny_paths: files.deny_paths,
        max_file_size: files.max_file_size,
    };
    let confined = tether_files::Confined::new(&settings)
        .map_err(|e| DaemonError::Membership(e.to_string()))?;
    let gate = Arc::new(TargetFiles {
        state: Arc::clone(state),
        facts: facts.clone(),
    });
    if !run_as.drop {
        return Ok(tether_ssh::sftp::SftpService::new(Arc::new(confined), gate));
    }
    // The child's own /proc/self/exe is this very binary (the fork's): exec'd through that
    // link it is found even where run_as may not search the directories on the binary's path
    // and even after an upgrade replaced the file on disk.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    if !exe.exists() {
        return Err(DaemonError::Membership(
            "/proc/self/exe is missing (is /proc mounted?): file operations can't run as ssh.run_as"
                .to_owned(),
        ));
    }
    tracing::info!(user = %run_as.name, "SFTP: file operations run as ssh.run_as");
    Ok(tether_ssh::sftp::SftpService::with_helper(
        Arc::new(confined),
        gate,
        tether_ssh::sftp_helper::Helper {
            exe,
            settings,
            run_as: run_as.clone(),
        },
    ))
}

/// Server mode: the russh server with the vault's host key, the hub's client key, `run_as`
/// (refused here, at startup, when this daemon cannot switch to it) and the target's gate.
fn server(
    vault: &Vault,
    enrollment: &Enrollment,
    config: &tether_config::SshSection,
    state: Arc<AppState>,
) -> Result<SshServer, DaemonError> {
    let hub_key = tether_ssh::keys::parse_public(
        &enrollment.hub_ssh_client_key,
        "the hub's SSH client key in enrollment.json",
    )
    .map_err(|e| DaemonError::Membership(e.to_string()))?;
    let run_as = RunAs::resolve(config.run_as.as_deref())?;
    if run_as.drop {
        tracing::info!(user = %run_as.name, uid = %run_as.uid, "SSH: commands run as ssh.run_as");
    }
    let facts = tether_model::selector::HostFacts {
        name: enrollment.name.clone(),
        groups: enrollment.groups.clone(),
        tags: enrollment.tags.clone(),
    };
    let sftp = sftp_service(&state, &facts, &run_as)?;
    Ok(SshServer::new(ServerSettings {
        host_key: ssh_key(vault)?,
        hub_key,
        env_allow: config.env_allow.clone(),
        run_as,
        gate: Arc::new(TargetGate { state, facts }),
        sftp: Some(sftp),
    }))
}

/// Forward mode: one relayed connection, audited when it opens (before a byte goes to sshd)
/// and when it ends. The session inside is end to end between the hub and sshd.
async fn relay(
    state: Arc<AppState>,
    host: String,
    stream: tether_tunnel::TunnelStream,
    to: SocketAddr,
    timeout: Duration,
) {
    let started = Instant::now();
    if let Err(e) = state
        .audit(
            "ssh.forward.opened",
            daemon_actor(),
            Some(&host),
            json!({"to": to.to_string(), "from": "hub"}),
        )
        .await
    {
        tracing::error!("SSH: not relaying to sshd, its audit record could not be written: {e}");
        return;
    }
    let (data, level_error) = match tether_ssh::forward::relay(stream, to, timeout).await {
        Ok(r) => (
            json!({"to": to.to_string(), "to_sshd_bytes": r.to_sshd, "from_sshd_bytes": r.from_sshd, "duration_ms": started.elapsed().as_millis() as u64}),
            None,
        ),
        Err(e) => (
            json!({"to": to.to_string(), "error": e.to_string(), "duration_ms": started.elapsed().as_millis() as u64}),
            Some(e),
        ),
    };
    if let Some(e) = level_error {
        tracing::warn!("SSH: {e}");
    }
    if let Err(e) = state
        .audit("ssh.forward.closed", daemon_actor(), Some(&host), data)
        .await
    {
        tracing::error!("could not audit the end of a relayed SSH connection: {e}");
    }
}
