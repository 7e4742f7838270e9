//! The target's SSH server: russh on a tunnel stream, `exec` only.
//!
//! One [`SshServer`] per daemon; `tetherd` accepts overlay TCP connections on port
//! [`crate::SSH_PORT`] from its hub's overlay address and hands each stream to
//! [`SshServer::serve_connection`]. Authentication is public-key only, and the only key accepted
//! is the hub's client key from the enrollment. Each `exec` request is first put to the
//! [`ExecGate`] (the target's own policy and audit); an admitted command runs as
//! `/bin/sh -c COMMAND` in its own process group, with the environment reduced to a fixed base
//! plus the variables the client sent that match the allow-list, stdin closed, stdout and stderr
//! streamed back. The shell is started without forking the daemon (`clone(CLONE_VM |
//! CLONE_VFORK)`, the privilege drop included; see `spawn.rs`). A `signal` request, a channel
//! close or the end of the connection (the hub revoked the host, or went away) signals the whole
//! process group: `TERM`, then `KILL` after [`KILL_GRACE`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Sig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::SshError;
pub use crate::run_as::RunAs;

/// How long a signalled command may take to exit before its process group gets `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_millis(500);

/// Environment variables a client may set by default (`*` ends a prefix).
pub const DEFAULT_ENV_ALLOW: &[&str] = &["LANG", "LC_*", "TZ", "TERM"];

/// A boxed future, for the gate's methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the target decides about, and records of, each command. Implemented by `tetherd` with
/// its policy engine and audit log.
pub trait ExecGate: Send + Sync + 'static {
    /// Whether `command` may run; `Err(reason)` refuses it (the reason goes back to the hub).
    /// Called before anything runs; the implementation audits its decision.
    fn admit<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Whether an interactive session on a pty (the login shell, or `command`) may start;
    /// `Err(reason)` refuses it. Called before anything runs; the implementation audits it.
    fn admit_session<'a>(&'a self, command: Option<&'a str>) -> BoxFuture<'a, Result<(), String>>;
    /// A command that ran has finished (or was killed).
    fn finished(&self, report: ExecReport) -> BoxFuture<'_, ()>;
}

/// How a command ended, for the target's audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecReport {
    /// The command.
    pub command: String,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<String>,
    /// Whether it was killed because the hub cancelled it or the connection ended.
    pub killed: bool,
    /// Wall time.
    pub duration: Duration,
    /// Bytes it wrote to stdout.
    pub stdout_bytes: u64,
    /// Bytes it wrote to stderr.
    pub stderr_bytes: u64,
    /// It was an interactive session on a pty (`command` is empty for the login shell).
    pub interactive: bool,
}

/// What the server needs to run.
pub struct ServerSettings {
    /// This target's host key (pinned by the hub at enrollment).
    pub host_key: PrivateKey,
    /// The hub's client key from the enrollment: the only key accepted.
    pub hub_key: PublicKey,
    /// Variables a client may set (`*` ends a prefix); see [`DEFAULT_ENV_ALLOW`].
    pub env_allow: Vec<String>,
    /// The user commands run as ([`RunAs::resolve`]).
    pub run_as: RunAs,
    /// Policy and audit.
    pub gate: Arc<dyn ExecGate>,
    /// The `sftp` subsystem (confined file access); `None`: refused.
    pub sftp: Option<crate::sftp::SftpService>,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("hub_key", &crate::keys::fingerprint(&self.hub_key))
            .field("env_allow", &self.env_allow)
            .field("run_as", &self.run_as.name)
            .finish_non_exhaustive()
    }
}

/// The target's SSH server.
#[derive(Clone)]
pub struct SshServer {
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    hub_key: PublicKey,
    env_allow: Vec<String>,
    pub(crate) gate: Arc<dyn ExecGate>,
    pub(crate) run_as: RunAs,
    pub(crate) base_env: Vec<(String, String)>,
    /// The user's home, or `/` when it does not exist (`nobody`'s `/nonexistent`).
    pub(crate) cwd: std::path::PathBuf,
    pub(crate) sftp: Option<crate::sftp::SftpService>,
}

impl SshServer {
    /// A server with these keys, allow-list and gate.
    pub fn new(settings: ServerSettings) -> Self {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        let config = russh::server::Config {
            methods,
            keys: vec![settings.host_key],
            preferred: crate::algorithms::preferred(true),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            max_auth_attempts: 2,
            // The hub keeps the connection alive; a hub that vanished is noticed here.
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        };
        SshServer {
            config: Arc::new(config),
            shared: Arc::new(Shared {
                hub_key: settings.hub_key,
                env_allow: settings.env_allow,
                gate: settings.gate,
                base_env: base_env(&settings.run_as),
                cwd: Some(std::path::PathBuf::from(&settings.run_as.home))
                    .filter(|h| h.is_dir())
                    .unwrap_or_else(|| "/".into()),
                run_as: settings.run_as,
                sftp: settings.sftp,
            }),
        }
    }

    /// Serves one SSH connection on `stream` until it ends. Every command it started is killed
    /// when it ends.
    pub async fn serve_connection<S>(&self, stream: S) -> Result<(), SshError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handler = Conn {
            shared: Arc::clone(&self.shared),
            channels: HashMap::new(),
            opened: HashMap::new(),
            procs: Arc::new(Mutex::new(HashMap::new())),
            ptys: HashMap::new(),
        };
        let session = russh::server::run_stream(Arc::clone(&self.config), stream, handler)
            .await
            .map_err(|e| protocol(&e))?;
        session.await.map_err(|e| protocol(&e))
    }
}

fn protocol(e: &russh::Error) -> SshError {
    SshError::Protocol {
        host: "the hub".to_owned(),
        reason: e.to_string(),
    }
}

/// The environment every command starts with: a fixed `PATH`, the `run_as` user's `HOME`,
/// `USER`/`LOGNAME` and `SHELL=/bin/sh`.
fn base_env(run_as: &RunAs) -> Vec<(String, String)> {
    let (name, home) = (run_as.name.clone(), run_as.home.clone());
    vec![
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("HOME".to_owned(), home),
        ("USER".to_owned(), name.clone()),
        ("LOGNAME".to_owned(), name),
        ("SHELL".to_owned(), "/bin/sh".to_owned()),
    ]
}

/// Whether `name` matches an allow-list entry (`LANG`, or a prefix `LC_*`).
pub fn env_allowed(allow: &[String], name: &str) -> bool {
    allow.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => a == name,
    })
}

/// Running commands of one connection: channel → process group.
pub(crate) type Procs = Arc<Mutex<HashMap<ChannelId, Pid>>>;

pub(crate) fn lock(procs: &Procs) -> std::sync::MutexGuard<'_, HashMap<ChannelId, Pid>> {
    procs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `TERM` to the group now, `KILL` after [`KILL_GRACE`] (if it still exists).
fn terminate(pgid: Pid) {
    let _ = killpg(pgid, Signal::SIGTERM);
    std::thread::spawn(move || {
        std::thread::sleep(KILL_GRACE);
        let _ = killpg(pgid, Signal::SIGKILL);
    });
}

/// One connection's handler.
pub(crate) struct Conn {
    pub(crate) shared: Arc<Shared>,
    /// Session channels and the environment their client asked for.
    pub(crate) channels: HashMap<ChannelId, Vec<(String, String)>>,
    pub(crate) procs: Procs,
    /// Channels that asked for a pty, and the pty sessions running.
    pub(crate) ptys: HashMap<ChannelId, crate::interactive::PtyState>,
    /// Session channels not yet given an `exec` or a subsystem (a subsystem needs the channel).
    pub(crate) opened: HashMap<ChannelId, Channel<Msg>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for (_, pgid) in lock(&self.procs).drain() {
            terminate(pgid);
        }
    }
}

fn signal_of(sig: &Sig) -> Option<Signal> {
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::HUP => Signal::SIGHUP,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        _ => return None,
    })
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if crate::keys::same_key(offer.public_key, &self.shared.hub_key) {
            Ok(Auth::Accept)
        } else {
            tracing::warn!(
                key = %crate::keys::fingerprint(offer.public_key),
                "SSH: refused a client key that is not the hub's"
            );
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if crate::keys::same_key(key.public_key, &self.shared.hub_key) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), Vec::new());
        self.opened.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = env_allowed(&self.shared.env_allow, name);
        match self.channels.get_mut(&channel) {
            Some(env) if allowed && env.len() < 64 => {
                env.push((name.to_owned(), value.to_owned()));
                session.channel_success(channel)?;
            }
            _ => {
                tracing::debug!(
                    name,
                    "SSH: ignored an environment variable outside the allow-list"
                );
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.opened.remove(&channel);
        let Some(env) = self.channels.get(&channel).cloned() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let handle = session.handle();
        let command = String::from_utf8_lossy(data).into_owned();
        if self.ptys.contains_key(&channel) {
            return self
                .start_interactive(channel, Some(command), session)
                .await;
        }
        if let Err(reason) = self.shared.gate.admit(&command).await {
            session.channel_success(channel)?;
            session.extended_data(
                channel,
                1,
                bytes::Bytes::from(format!(
                    "tether: refused by the target's policy: {reason}\n"
                )),
            )?;
            session.exit_status_request(channel, 126)?;
            session.eof(channel)?;
            session.close(channel)?;
            return Ok(());
        }
        // The base environment, then the client's allowed variables (a later one replaces an
        // earlier one of the same name, as with `Command::envs`).
        let mut vars = self.shared.base_env.clone();
        for (k, v) in env {
            match vars.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => vars.push((k, v)),
            }
        }
        let spec = crate::spawn::ShellSpec {
            command: &command,
            env: &vars,
            cwd: &self.shared.cwd,
            run_as: &self.shared.run_as,
        };
        let mut child = match crate::spawn::Shell::start(&spec) {
            Ok(c) => c,
            Err(e) => {
                session.channel_success(channel)?;
                session.extended_data(
                    channel,
                    1,
                    bytes::Bytes::from(format!("tether: cannot start /bin/sh: {e}\n")),
                )?;
                session.exit_status_request(channel, 127)?;
                session.eof(channel)?;
                session.close(channel)?;
                return Ok(());
            }
        };
        session.channel_success(channel)?;
        let Some(pid) = child.id() else {
            return Ok(());
        };
        let pgid = Pid::from_raw(pid as i32);
        lock(&self.procs).insert(channel, pgid);
        let (stdout, stderr) = child.take_output();
        let procs = Arc::clone(&self.procs);
        let gate = Arc::clone(&self.shared.gate);
        let started = Instant::now();
        tokio::spawn(async move {
            let h2 = handle.clone();
            let out = async {
                let mut n = 0u64;
                if let Some(mut s) = stdout {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0
                            || handle
                                .data(channel, bytes::Bytes::copy_from_slice(&buf[..k]))
                                .await
                                .is_err()
                        {
                            break;
                        }
                        n += k as u64;
                    }
                }
                n
            };
            let err = async {
                let mut n = 0u64;
                if let Some(mut s) = stderr {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0
                            || h2
                                .extended_data(channel, 1, bytes::Bytes::copy_from_slice(&buf[..k]))
                                .await
                                .is_err()
                        {
                            break;
                        }
                        n += k as u64;
                    }
                }
                n
            };
            let (stdout_bytes, stderr_bytes) = tokio::join!(out, err);
            let status = child.wait().await;
            // Whether the hub (or the connection's end) took it away while it ran.
            let killed = lock(&procs).remove(&channel).is_none();
            let (exit_code, signal) = match &status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    (
                        s.code(),
                        s.signal().map(|n| {
                            Signal::try_from(n).map_or(n.to_string(), |s| {
                                s.as_str().trim_start_matches("SIG").to_owned()
                            })
                        }),
                    )
                }
                Err(_) => (None, None),
            };
            match (exit_code, &signal) {
                (Some(code), _) => {
                    let _ = handle.exit_status_request(channel, code as u32).await;
                }
                (None, Some(sig)) => {
                    let _ = handle
                        .exit_signal_request(
                            channel,
                            Sig::Custom(sig.clone()),
                            false,
                            String::new(),
                            String::new(),
                        )
                        .await;
                }
                (None, None) => {}
            }
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            gate.finished(ExecReport {
                command,
                exit_code,
                signal,
                killed,
                duration: started.elapsed(),
                stdout_bytes,
                stderr_bytes,
                interactive: false,
            })
            .await;
        });
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let pgid = lock(&self.procs).get(&channel).copied();
        if let (Some(pgid), Some(sig)) = (pgid, signal_of(&signal)) {
            if matches!(
                sig,
                Signal::SIGTERM | Signal::SIGKILL | Signal::SIGINT | Signal::SIGHUP
            ) {
                lock(&self.procs).remove(&channel);
                terminate(pgid);
            } else {
                let _ = killpg(pgid, sig);
            }
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pty_requested(channel, term, col_width, row_height, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start_interactive(channel, None, session).await
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.resize(channel, col_width, row_height);
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.input(channel, data).await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match (name, self.opened.remove(&channel), &self.shared.sftp) {
            ("sftp", Some(ch), Some(sftp)) => {
                session.channel_success(channel)?;
                sftp.serve(ch.into_stream());
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.ptys.remove(&channel);
        self.opened.remove(&channel);
        if let Some(pgid) = lock(&self.procs).remove(&channel) {
            terminate(pgid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_allow_list() {
        let allow: Vec<String> = super::DEFAULT_ENV_ALLOW
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert!(super::env_allowed(&allow, "LANG"));
        assert!(super::env_allowed(&allow, "LC_ALL"));
        assert!(!super::env_allowed(&allow, "LD_PRELOAD"));
        assert!(!super::env_allowed(&allow, "PATH"));
        assert!(!super::env_allowed(&allow, "LANGUAGE"));
    }
}
