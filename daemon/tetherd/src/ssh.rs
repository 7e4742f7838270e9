//! SSH inside the tunnel, wired by role ([`tether_ssh`] does the protocol).
//!
//! * Hub: [`start_hub`] builds the pool (the vault's SSH key as the client key, tunnel streams as
//!   the transport, alerts for open breakers and wrong host keys) and gives the control API a
//!   [`RemoteExec`] over it; a reaper task closes idle connections.
//! * Target: [`start_target`] listens on overlay port 22 inside the tunnel (never on a host
//!   interface), accepts connections only from the hub's overlay address, and serves them with
//!   the vault's SSH host key, accepting only the hub's client key from the enrollment. Each
//!   command passes the target's own policy and is audited here too.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tether_control::AppState;
use tether_control::audit::daemon_actor;
use tether_control::state::{
    BoxFuture, ExecHost, FileDone, FileError, FileMeta, RemoteCommand, RemoteError, RemoteExec,
    RemoteExit, RemoteFiles, RemoteOutput,
};
use tether_model::{Alert, AlertSink, Severity};
use tether_policy::Verdict;
use tether_ssh::pool::{self, Dialer, Pool, PoolConfig, PoolEvents, Stream};
use tether_ssh::server::{ExecGate, ExecReport, ServerSettings, SshServer};
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
    let seed = vault.get_or_generate(identity::SSH_KEY, tether_vault::key_len::ED25519_SEED)?;
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
        Box::pin(async move {
            let target = pool::Target {
                name: host.name,
                ip: host.ip,
                host_key: host.host_key,
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
            let (r, ()) = tokio::join!(self.pool.exec(&target, &cmd, tx, cancel), forward);
            match r {
                Ok(pool::Exit::Code(c)) => Ok(RemoteExit::Code(c)),
                Ok(pool::Exit::Signal(s)) => Ok(RemoteExit::Signal(s)),
                Err(e) => Err(remote_error(e)),
            }
        })
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
}

/// The hub's SSH side: the pool and its reaper.
pub struct HubSide {
    /// The pool, for the control API.
    pub remote: Arc<HubSsh>,
    reaper: JoinHandle<()>,
}

impl HubSide {
    /// Closes every pooled connection, once.
    pub async fn shutdown(self) {
        self.reaper.abort();
        self.remote.pool.shutdown().await;
    }
}

/// Builds the hub's pool over `tunnel`.
pub fn start_hub(
    tunnel: TunnelHandle,
    vault: &Vault,
    alerts: Arc<dyn AlertSink>,
    audit: tether_audit::AuditLog,
    shutdown: CancellationToken,
) -> Result<HubSide, DaemonError> {
    let key = ssh_key(vault)?;
    let pool = Pool::new(
        Arc::new(TunnelDialer(tunnel)),
        Arc::new(Events { alerts, audit }),
        key,
        PoolConfig::default(),
    );
    let remote = Arc::new(HubSsh { pool });
    let reaper = tokio::spawn({
        let remote = Arc::clone(&remote);
        async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(REAP_EVERY) => {}
                }
                for host in remote.pool.reap(Instant::now()).await {
                    tracing::debug!(host, "closed an idle SSH connection");
                }
            }
        }
    });
    Ok(HubSide { remote, reaper })
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
        Box::pin(async move {
            let request = tether_policy::Request {
                kind: tether_policy::RequestKind::Exec,
                command: Some(command.to_owned()),
                path: None,
                user: "hub".to_owned(),
                role: tether_model::Role::Operator,
                host: self.facts.clone(),
                ticket: None,
            };
            let state = Arc::clone(&self.state);
            let req = request.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let hooks = state
                    .plugins
                    .as_deref()
                    .map(|h| h as &dyn tether_policy::PolicyHooks);
                state.policy.as_ref().map(|e| e.check(&req, hooks))
            })
            .await
            .map_err(|_| "the policy check failed".to_owned())?
            .ok_or_else(|| "this target runs without a policy engine".to_owned())?;
            let d = &checked.decision;
            let denied = matches!(d.verdict, Verdict::Deny | Verdict::RequireApproval);
            let kind = if denied {
                "exec.denied"
            } else {
                "exec.received"
            };
            let data = json!({"command": command, "verdict": d.verdict, "rules": d.rule_ids, "reason": d.reason, "from": "hub"});
            self.state
                .audit(kind, daemon_actor(), Some(&self.facts.name), data)
                .await
                .map_err(|e| format!("its audit record could not be written: {e}"))?;
            if denied {
                return Err(format!("{} ({})", d.reason, d.verdict));
            }
            Ok(())
        })
    }

    fn finished(&self, report: ExecReport) -> tether_ssh::server::BoxFuture<'_, ()> {
        Box::pin(async move {
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
                .audit("exec.result", daemon_actor(), Some(&self.facts.name), data)
                .await
            {
                tracing::error!("could not audit an exec result: {e}");
            }
        })
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
        Box::pin(async move {
            let kind = match op {
                tether_ssh::sftp::FileOp::Put => tether_policy::RequestKind::FileWrite,
                _ => tether_policy::RequestKind::FileRead,
            };
            let request = tether_policy::Request {
                kind,
                command: None,
                path: Some(path.to_owned()),
                user: "hub".to_owned(),
                role: tether_model::Role::Operator,
                host: self.facts.clone(),
                ticket: None,
            };
            let state = Arc::clone(&self.state);
            let checked = tokio::task::spawn_blocking(move || {
                let hooks = state
                    .plugins
                    .as_deref()
                    .map(|h| h as &dyn tether_policy::PolicyHooks);
                state.policy.as_ref().map(|e| e.check(&request, hooks))
            })
            .await
            .map_err(|_| "the policy check failed".to_owned())?
            .ok_or_else(|| "this target runs without a policy engine".to_owned())?;
            let d = &checked.decision;
            let denied = matches!(d.verdict, Verdict::Deny | Verdict::RequireApproval);
            let kind = if denied { "fs.denied" } else { "fs.received" };
            let data = json!({"op": op.as_str(), "path": path, "verdict": d.verdict, "rules": d.rule_ids, "reason": d.reason, "from": "hub"});
            self.state
                .audit(kind, daemon_actor(), Some(&self.facts.name), data)
                .await
                .map_err(|e| format!("its audit record could not be written: {e}"))?;
            if denied {
                return Err(format!("{} ({})", d.reason, d.verdict));
            }
            Ok(())
        })
    }

    fn finished(
        &self,
        report: tether_ssh::sftp::FileReport,
    ) -> tether_ssh::sftp::BoxFuture<'_, ()> {
        Box::pin(async move {
            let data = json!({
                "op": report.op.as_str(),
                "path": report.path,
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
fn sftp_service(
    state: &Arc<AppState>,
    facts: &tether_model::selector::HostFacts,
) -> Result<tether_ssh::sftp::SftpService, DaemonError> {
    let files = state.config().files.clone();
    let confined = tether_files::Confined::new(&tether_files::Settings {
        allowed_roots: files.allowed_roots,
        deny_paths: files.deny_paths,
        max_file_size: files.max_file_size,
    })
    .map_err(|e| DaemonError::Membership(e.to_string()))?;
    Ok(tether_ssh::sftp::SftpService::new(
        Arc::new(confined),
        Arc::new(TargetFiles {
            state: Arc::clone(state),
            facts: facts.clone(),
        }),
    ))
}

/// Listens on overlay port 22 and serves the hub until `shutdown`.
pub fn start_target(
    tunnel: &TunnelHandle,
    vault: &Vault,
    enrollment: &Enrollment,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, DaemonError> {
    let hub_key = tether_ssh::keys::parse_public(
        &enrollment.hub_ssh_client_key,
        "the hub's SSH client key in enrollment.json",
    )
    .map_err(|e| DaemonError::Membership(e.to_string()))?;
    let facts = tether_model::selector::HostFacts {
        name: enrollment.name.clone(),
        groups: enrollment.groups.clone(),
        tags: enrollment.tags.clone(),
    };
    let sftp = sftp_service(&state, &facts)?;
    let server = SshServer::new(ServerSettings {
        sftp: Some(sftp),
        host_key: ssh_key(vault)?,
        hub_key,
        env_allow: tether_ssh::server::DEFAULT_ENV_ALLOW
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        gate: Arc::new(TargetGate {
            state,
            facts: tether_model::selector::HostFacts {
                name: enrollment.name.clone(),
                groups: enrollment.groups.clone(),
                tags: enrollment.tags.clone(),
            },
        }),
    });
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
            let (server, shutdown) = (server.clone(), shutdown.clone());
            conns.spawn(async move {
                tokio::select! {
                    r = server.serve_connection(stream) => if let Err(e) = r {
                        tracing::debug!("SSH connection ended: {e}");
                    },
                    () = shutdown.cancelled() => {}
                }
            });
        }
        conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
    }))
}
