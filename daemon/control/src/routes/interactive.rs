//! One host's interactive access as the operator SSH endpoint (`tether proxy`) and
//! `tether ssh` use it: [`ProxySession`] decides, audits and runs each request with the exec
//! route's own steps, so a command typed into `ssh web1 CMD` meets exactly the policy and
//! audit of `tether exec -H web1 -- CMD`:
//!
//! * `exec` without a pty: the host must still be enrolled and active; the policy (regex rules,
//!   then plugin votes) is checked by [`super::exec::check_policy`] — a denial writes
//!   `exec.denied` and nothing leaves the hub; `exec.requested` is written (durable); the command
//!   runs through the pool; [`super::exec::record_result`] writes `exec.result`.
//! * interactive sessions (a pty shell, or a command on a pty): checked as
//!   [`RequestKind::Session`] (a scope with an allow list denies shells; a denial writes
//!   `session.denied`), then `session.open` before anything leaves and `session.close` (exit,
//!   duration, bytes and SHA-256 of the output) when it ends.
//! * the `sftp` subsystem (the stock `sftp` and `scp`): checked as [`RequestKind::Session`]
//!   without a command — the hub can't see the paths inside the SFTP stream, so it decides
//!   whether this caller may hold an open session on the host at all (a scope with an allow
//!   list denies it, as it denies shells; a denial writes `session.denied`). `sftp.open` is
//!   written before anything leaves, then the bytes are relayed unchanged to the target's
//!   `sftp` subsystem over the pool, where every path is confined below `allowed_roots`,
//!   checked against the target's policy and audited (`fs.*`) exactly as for `tether fs`.
//!   `sftp.close` records the bytes each way and the duration.

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::json;
use tether_api::MAX_COMMAND_BYTES;
use tether_enroll::HostRecord;
use tether_model::session::{SessionInput, SessionSpec};
use tether_policy::RequestKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::exec::{DEFAULT_CONNECT_TIMEOUT_MS, Outcome, Tally, check_policy, record_result};
use crate::http::Fail;
use crate::state::{ExecHost, RemoteExit, RemoteOutput, UpgradedIo};

/// Exit status an SSH client sees for a refused request (policy, bad input): the CLI's
/// "usage or denied" code.
pub const REFUSED_STATUS: u32 = 2;
/// Exit status for a request that could not reach or finish on the host (as OpenSSH's 255).
pub const UNREACHABLE_STATUS: u32 = 255;

/// Why a request through a [`ProxySession`] did not run (or broke).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What happened and what to do.
    pub message: String,
    /// [`REFUSED_STATUS`] or [`UNREACHABLE_STATUS`].
    pub exit_status: u32,
}

impl Refusal {
    fn from_fail(fail: &Fail) -> Refusal {
        let mut message = fail.error.message.clone();
        if !fail.error.hint.is_empty() {
            message.push_str("\nhint: ");
            message.push_str(&fail.error.hint);
        }
        Refusal {
            message,
            exit_status: if fail.status.is_client_error() {
                REFUSED_STATUS
            } else {
                UNREACHABLE_STATUS
            },
        }
    }

    fn refused(message: String) -> Refusal {
        Refusal {
            message,
            exit_status: REFUSED_STATUS,
        }
    }
}

/// One caller's access to one host, behind an upgraded control connection. Cheap to clone.
#[derive(Clone)]
pub struct ProxySession {
    ctx: Ctx,
    host: String,
    /// `ssh` (the operator SSH endpoint) or `tether-ssh` (the framed CLI session), in records.
    via: &'static str,
}

impl std::fmt::Debug for ProxySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySession")
            .field("host", &self.host)
            .field("via", &self.via)
            .finish_non_exhaustive()
    }
}

impl ProxySession {
    pub(crate) fn new(ctx: Ctx, host: String, via: &'static str) -> Self {
        ProxySession { ctx, host, via }
    }

    /// The host this session is for.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host's record, if it is still enrolled and active (checked for every request, so a
    /// revoke ends access through a connection that was already open).
    fn record(&self) -> Result<HostRecord, Refusal> {
        active_host(&self.ctx, &self.host).map_err(|f| Refusal::from_fail(&f))
    }

    fn target(record: &HostRecord) -> ExecHost {
        ExecHost {
            name: record.name.clone(),
            ip: record.overlay_ip,
            host_key: record.ssh_host_key.clone(),
            user: record.ssh_user.clone(),
        }
    }

    fn remote(&self) -> Result<std::sync::Arc<dyn crate::state::RemoteExec>, Refusal> {
        self.ctx.state.remote.clone().ok_or_else(|| Refusal {
            message: "this hub runs without its SSH pool".to_owned(),
            exit_status: UNREACHABLE_STATUS,
        })
    }

    /// Runs `command` (no pty) like `POST /v1/exec` for this one host. Output is forwarded
    /// byte for byte (no limit: the client reads it as it comes).
    pub async fn exec(
        &self,
        command: String,
        out: mpsc::Sender<RemoteOutput>,
        cancel: CancellationToken,
    ) -> Result<RemoteExit, Refusal> {
        check_command(&command)?;
        let record = self.record()?;
        let remote = self.remote()?;
        let ctx = &self.ctx;
        let warned = check_policy(
            ctx,
            std::slice::from_ref(&record),
            RequestKind::Exec,
            Some(&command),
            None,
        )
        .await
        .map_err(|f| Refusal::from_fail(&f))?;
        ctx.state
            .audit_or_refuse(
                "exec.requested",
                ctx.actor(),
                None,
                json!({
                    "command": command,
                    "selector": self.host,
                    "hosts": [self.host],
                    "warned": warned,
                    "via": self.via,
                }),
            )
            .await
            .map_err(|f| Refusal::from_fail(&f))?;
        let started = Instant::now();
        let (recording, recording_failed) = exec_recording(ctx, &self.host, &command).await;
        let (tx, rx) = mpsc::channel(32);
        let line = crate::state::RemoteCommand {
            line: command.clone(),
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
        };
        let run = remote.run(Self::target(&record), line, tx, cancel);
        let ((stdout, stderr), result) = tokio::join!(
            tally(rx, out, recording.as_ref().map(std::sync::Arc::clone)),
            run
        );
        let (result_json, failure) = match &result {
            Ok(RemoteExit::Code(c)) => (
                json!({"exit_code": *c as i32, "signal": null}),
                (*c != 0).then(|| format!("exit code {c}")),
            ),
            Ok(RemoteExit::Signal(s)) => (
                json!({"exit_code": null, "signal": s}),
                Some(format!("killed by {s}")),
            ),
            Err(e) => (
                json!({"error": e.kind, "message": e.message}),
                Some(e.message.clone()),
            ),
        };
        let recorded = match recording {
            Some(r) => {
                let exit = match &result {
                    Ok(RemoteExit::Code(c)) => format!("{}", *c as i32),
                    Ok(RemoteExit::Signal(s)) => format!("signal:{s}"),
                    Err(e) => format!("error:{}", e.kind),
                };
                Some(finish_exec_recording(r, exit).await)
            }
            None => recording_failed,
        };
        let outcome = Outcome {
            duration_ms: started.elapsed().as_millis() as u64,
            stdout: &stdout,
            stderr: &stderr,
            dropped: 0,
            result: result_json,
            failure,
            recording: recorded,
        };
        record_result(ctx, &self.host, &command, outcome).await;
        result.map_err(|e| Refusal {
            message: e.message,
            exit_status: UNREACHABLE_STATUS,
        })
    }

    /// Runs an interactive session: a pty shell, or a command on a pty. Without a pty the
    /// command is run by [`ProxySession::exec`] (its input is not used).
    pub async fn session(
        &self,
        spec: SessionSpec,
        input: mpsc::Receiver<SessionInput>,
        out: mpsc::Sender<RemoteOutput>,
        cancel: CancellationToken,
    ) -> Result<RemoteExit, Refusal> {
        // A command without a terminal is an exec like any other: same checks, same records.
        if spec.pty.is_none() {
            let Some(command) = spec.command else {
                return Err(Refusal::refused(
                    "a shell needs a terminal; give a command to run without one".to_owned(),
                ));
            };
            drop(input);
            return self.exec(command, out, cancel).await;
        }
        if let Some(c) = &spec.command {
            check_command(c)?;
        }
        if let Some(p) = &spec.pty
            && (p.term.len() > 64 || p.term.contains(['\0', '\n']))
        {
            return Err(Refusal::refused(
                "the terminal type is over 64 bytes or has control characters".to_owned(),
            ));
        }
        let record = self.record()?;
        let remote = self.remote()?;
        let ctx = &self.ctx;
        check_policy(
            ctx,
            std::slice::from_ref(&record),
            RequestKind::Session,
            spec.command.as_deref(),
            None,
        )
        .await
        .map_err(|f| Refusal::from_fail(&f))?;
        let pty = spec
            .pty
            .as_ref()
            .map(|p| json!({"term": p.term, "cols": p.cols, "rows": p.rows}));
        ctx.state
            .audit_or_refuse(
                "session.open",
                ctx.actor(),
                Some(&self.host),
                json!({"command": spec.command, "pty": pty, "via": self.via}),
            )
            .await
            .map_err(|f| Refusal::from_fail(&f))?;
        // Recorded on the hub before it starts; a session that can't be recorded is refused.
        let recording = match self.start_recording(&spec).await {
            Ok(r) => r,
            Err(why) => {
                let data = json!({"command": spec.command, "via": self.via, "error": "recording_failed", "message": why});
                if let Err(e) = ctx
                    .state
                    .audit("session.close", ctx.actor(), Some(&self.host), data)
                    .await
                {
                    tracing::error!(host = %self.host, "could not audit a session's end: {e}");
                }
                return Err(Refusal::refused(format!(
                    "the session can't be recorded on the hub ({why}); sessions are only run recorded"
                )));
            }
        };
        let input = match &recording {
            Some(r) => record_resizes(input, std::sync::Arc::downgrade(r)),
            None => input,
        };
        let started = Instant::now();
        let (tx, rx) = mpsc::channel(32);
        let command = spec.command.clone();
        let run = remote.session(
            Self::target(&record),
            spec,
            Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            input,
            tx,
            cancel,
        );
        let ((stdout, stderr), result) = tokio::join!(tally(rx, out, recording.clone()), run);
        let recorded = match recording {
            Some(r) => Some(finish_recording(r).await),
            None => None,
        };
        let mut data = json!({
            "command": command,
            "via": self.via,
            "duration_ms": started.elapsed().as_millis() as u64,
            "stdout_bytes": stdout.bytes(),
            "stderr_bytes": stderr.bytes(),
            "stdout_sha256": stdout.digest(),
            "stderr_sha256": stderr.digest(),
            "recording": recorded,
        });
        let outcome = match &result {
            Ok(RemoteExit::Code(c)) => json!({"exit_code": *c as i32}),
            Ok(RemoteExit::Signal(s)) => json!({"signal": s}),
            Err(e) => json!({"error": e.kind, "message": e.message}),
        };
        if let (Some(d), Some(o)) = (data.as_object_mut(), outcome.as_object()) {
            d.extend(o.clone());
        }
        if let Err(e) = ctx
            .state
            .audit("session.close", ctx.actor(), Some(&self.host), data)
            .await
        {
            tracing::error!(host = %self.host, "could not audit a session's end: {e}");
        }
        result.map_err(|e| Refusal {
            message: e.message,
            exit_status: UNREACHABLE_STATUS,
        })
    }
}

/// A session's recording, shared by its output and input paths.
pub(crate) type Recording = std::sync::Arc<tether_recording::RecordingFile>;

impl ProxySession {
    /// Starts the session's recording in `state_dir/recordings` (hub only; `None` where the
    /// daemon keeps no recordings). `Err` says why it could not be started.
    async fn start_recording(&self, spec: &SessionSpec) -> Result<Option<Recording>, String> {
        let (cols, rows) = spec.pty.as_ref().map_or((80, 24), |p| {
            (
                p.cols.min(u32::from(u16::MAX)) as u16,
                p.rows.min(u32::from(u16::MAX)) as u16,
            )
        });
        create_recording(
            &self.ctx,
            &self.host,
            self.via,
            spec.command.clone(),
            (cols, rows),
        )
        .await
    }
}

/// Creates a recording `NOW-HOST-RANDOM.cast` in `state_dir/recordings` (hub only; `None`
/// where the daemon keeps no recordings). `Err` says why it could not be started.
async fn create_recording(
    ctx: &Ctx,
    host: &str,
    via: &str,
    command: Option<String>,
    (cols, rows): (u16, u16),
) -> Result<Option<Recording>, String> {
    let Some(dir) = ctx.state.recordings.clone() else {
        return Ok(None);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rand = [0u8; 4];
    getrandom::fill(&mut rand).map_err(|e| e.to_string())?;
    let id = format!("{now}-{host}-{}", hex::encode(rand));
    let actor = ctx.actor();
    let header = tether_recording::Header::new(
        cols,
        rows,
        now,
        tether_recording::TetherMeta {
            id,
            host: host.to_owned(),
            user: actor.user.clone(),
            via: via.to_owned(),
            command,
        },
    );
    let limit = ctx.state.config().ssh.recording_max_bytes;
    tether_recording::RecordingFile::create(&dir, header, limit)
        .await
        .map(|r| Some(std::sync::Arc::new(r)))
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// With `ssh.record = "all"`, starts the recording of a non-interactive exec of `command` on
/// `host` (header `via: "exec"`). The second value is the `recording` field of `exec.result`
/// when it could not be started (the command still runs, unrecorded).
pub(crate) async fn exec_recording(
    ctx: &Ctx,
    host: &str,
    command: &str,
) -> (Option<Recording>, Option<serde_json::Value>) {
    if ctx.state.config().ssh.record != tether_config::RecordMode::All {
        return (None, None);
    }
    match create_recording(ctx, host, "exec", Some(command.to_owned()), (80, 24)).await {
        Ok(r) => (r, None),
        Err(e) => {
            tracing::error!(host = %host, "could not start an exec recording: {e}");
            (
                None,
                Some(json!({"error": format!("the recording could not be started: {e}")})),
            )
        }
    }
}

/// Records one chunk of an exec's output: stdout as `o`, stderr as `e`.
pub(crate) async fn record_output(r: &Recording, chunk: &RemoteOutput) {
    match chunk {
        RemoteOutput::Stdout(b) => r.record(tether_recording::EventKind::Output, b).await,
        RemoteOutput::Stderr(b) => r.record(tether_recording::EventKind::Stderr, b).await,
    };
}

/// Ends an exec's recording with its exit marker (`tether:exit:CODE`, `tether:exit:signal:SIG`
/// or `tether:exit:error:KIND`); the `recording` field of `exec.result`.
pub(crate) async fn finish_exec_recording(r: Recording, exit: String) -> serde_json::Value {
    r.record(
        tether_recording::EventKind::Marker,
        format!("tether:exit:{exit}").as_bytes(),
    )
    .await;
    finish_recording(r).await
}

/// The `recording` field of `session.close`: id, file SHA-256 and size, or why it failed.
async fn finish_recording(r: Recording) -> serde_json::Value {
    let id = r
        .path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match std::sync::Arc::try_unwrap(r) {
        Ok(r) => match r.finish().await {
            Ok(s) => {
                json!({"id": id, "sha256": s.sha256, "size": s.size, "events": s.events, "truncated": s.truncated})
            }
            Err(e) => json!({"id": id, "error": e.to_string()}),
        },
        Err(_) => {
            json!({"id": id, "error": "the recording was still in use at the end of the session"})
        }
    }
}

/// Passes the client's input on, recording its resizes (keystrokes are not recorded: they
/// would keep typed passwords).
fn record_resizes(
    mut input: mpsc::Receiver<SessionInput>,
    recording: std::sync::Weak<tether_recording::RecordingFile>,
) -> mpsc::Receiver<SessionInput> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(i) = input.recv().await {
            if let SessionInput::Resize { cols, rows } = &i
                && let Some(recording) = recording.upgrade()
            {
                recording
                    .record(
                        tether_recording::EventKind::Resize,
                        format!("{cols}x{rows}").as_bytes(),
                    )
                    .await;
            }
            if tx.send(i).await.is_err() {
                break;
            }
        }
    });
    rx
}

impl ProxySession {
    /// Admits a stock SFTP client (the `sftp` subsystem): the host must be enrolled and
    /// active, the policy must allow a session there ([`RequestKind::Session`], no command),
    /// `sftp.open` is written (durable), then the target's `sftp` subsystem is opened over the
    /// pool. The returned relay carries the client's bytes to it; see [`SftpRelay::run`].
    pub async fn sftp_open(&self, cancel: CancellationToken) -> Result<SftpRelay, Refusal> {
        let record = self.record()?;
        let ctx = &self.ctx;
        let files = ctx.state.files.clone().ok_or_else(|| Refusal {
            message: "this hub runs without its SSH pool, so no SFTP session can be relayed"
                .to_owned(),
            exit_status: UNREACHABLE_STATUS,
        })?;
        check_policy(
            ctx,
            std::slice::from_ref(&record),
            RequestKind::Session,
            None,
            None,
        )
        .await
        .map_err(|f| Refusal::from_fail(&f))?;
        ctx.state
            .audit_or_refuse(
                "sftp.open",
                ctx.actor(),
                Some(&self.host),
                json!({"via": self.via}),
            )
            .await
            .map_err(|f| Refusal::from_fail(&f))?;
        let started = Instant::now();
        match files
            .sftp_stream(Self::target(&record), cancel.clone())
            .await
        {
            Ok(stream) => Ok(SftpRelay {
                session: self.clone(),
                stream,
                started,
                cancel,
            }),
            Err(e) => {
                let data = json!({
                    "via": self.via,
                    "duration_ms": started.elapsed().as_millis() as u64,
                    "client_to_target_bytes": 0,
                    "target_to_client_bytes": 0,
                    "error": e.code,
                    "message": e.message,
                });
                self.sftp_closed(data).await;
                Err(Refusal {
                    message: format!(
                        "could not open the sftp subsystem on {}: {}",
                        self.host, e.message
                    ),
                    exit_status: UNREACHABLE_STATUS,
                })
            }
        }
    }

    async fn sftp_closed(&self, data: serde_json::Value) {
        let ctx = &self.ctx;
        if let Err(e) = ctx
            .state
            .audit("sftp.close", ctx.actor(), Some(&self.host), data)
            .await
        {
            tracing::error!(host = %self.host, "could not audit an SFTP session's end: {e}");
        }
    }
}

/// An admitted SFTP session: the target's `sftp` subsystem is open and `sftp.open` is written.
/// Dropping it without [`SftpRelay::run`] closes the subsystem without a `sftp.close`.
pub struct SftpRelay {
    session: ProxySession,
    stream: Box<dyn UpgradedIo>,
    started: Instant,
    cancel: CancellationToken,
}

impl std::fmt::Debug for SftpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpRelay")
            .field("host", &self.session.host)
            .finish_non_exhaustive()
    }
}

/// How much of the target's SFTP stream is read at once.
const SFTP_CHUNK: usize = 64 * 1024;

/// The client's SFTP requests buffered on the hub while the target is slow to take them: far
/// more than any client keeps in flight (`sftp -R 512` is about 20 KB of read requests), so
/// a client's requests never wait behind its own unread replies.
const SFTP_REQUEST_BUFFER: usize = 1 << 20;

impl SftpRelay {
    /// Relays the client's bytes (`input`: data, then end of file) to the target and the
    /// target's bytes to `out`, unchanged, until the target ends the subsystem, the stream
    /// breaks or `cancel` (the client's channel closing) fires; then writes `sftp.close` with
    /// the bytes each way and the duration. Exit status 0 when the target ended it.
    pub async fn run(
        self,
        mut input: mpsc::Receiver<SessionInput>,
        out: mpsc::Sender<RemoteOutput>,
    ) -> Result<RemoteExit, Refusal> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let SftpRelay {
            session,
            stream,
            started,
            cancel,
        } = self;
        let (mut rd, mut wr) = tokio::io::split(stream);
        // Cancelled when the host is revoked or removed (see `vpn::close_connections`).
        let ended = CancellationToken::new();
        session
            .ctx
            .state
            .sftp_relays()
            .push((session.host.clone(), ended.clone()));
        let up = AtomicU64::new(0);
        let down = AtomicU64::new(0);
        // Set once the client has said it is done (end of file, or its channel went): only
        // then may the target end the session. A target side that ends before is a broken
        // transfer, reported as one — never an exit status 0 on a short file.
        let client_done = AtomicBool::new(false);
        // Client -> target, through a pipe that keeps taking the client's requests while the
        // target waits for its replies to be read: the hub's SSH reader loops hand data over
        // through bounded queues and wait inside the loop when one is full, so a relay that
        // stopped reading the client while it waits on the target could stop the very window
        // adjustments it waits for. Only returns when writing to the target failed.
        let upload = async {
            let (mut pipe_in, mut pipe_out) = tokio::io::duplex(SFTP_REQUEST_BUFFER);
            let feed = async {
                while let Some(i) = input.recv().await {
                    match i {
                        SessionInput::Data(d) => {
                            if pipe_in.write_all(&d).await.is_err() {
                                break;
                            }
                            up.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        SessionInput::Eof => break,
                        SessionInput::Resize { .. } => {}
                    }
                }
                client_done.store(true, Ordering::Relaxed);
                let _ = pipe_in.shutdown().await;
            };
            let drain = async {
                tokio::io::copy(&mut pipe_out, &mut wr).await?;
                // The client is done sending: the target's server sees end of file and finishes.
                wr.shutdown().await
            };
            let ((), drained) = tokio::join!(feed, drain);
            drained?;
            std::future::pending::<std::io::Result<()>>().await
        };
        // Target -> client; returns when the target ends the subsystem or the client went.
        let download = async {
            let mut buf = vec![0u8; SFTP_CHUNK];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    if client_done.load(Ordering::Relaxed) {
                        return Ok::<(), std::io::Error>(());
                    }
                    return Err(std::io::Error::other(
                        "the target's side of the session ended while the client was still \
                         using it",
                    ));
                }
                down.fetch_add(n as u64, Ordering::Relaxed);
                let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                if out.send(RemoteOutput::Stdout(chunk)).await.is_err() {
                    return Ok(());
                }
            }
        };
        let result: Result<(), String> = tokio::select! {
            r = download => r.map_err(|e| e.to_string()),
            r = upload => r.map_err(|e| e.to_string()),
            () = cancel.cancelled() => Ok(()),
            () = ended.cancelled() => Err(format!("{} was revoked or removed", session.host)),
        };
        ended.cancel();
        session
            .ctx
            .state
            .sftp_relays()
            .retain(|(_, t)| !t.is_cancelled());
        let mut data = json!({
            "via": session.via,
            "duration_ms": started.elapsed().as_millis() as u64,
            "client_to_target_bytes": up.load(Ordering::Relaxed),
            "target_to_client_bytes": down.load(Ordering::Relaxed),
        });
        if let (Err(e), Some(d)) = (&result, data.as_object_mut()) {
            d.insert("error".to_owned(), json!("stream"));
            d.insert("message".to_owned(), json!(e));
        }
        session.sftp_closed(data).await;
        result.map(|()| RemoteExit::Code(0)).map_err(|e| Refusal {
            message: format!("the SFTP stream to {} broke: {e}", session.host),
            exit_status: UNREACHABLE_STATUS,
        })
    }
}

/// The enrolled, active host `name`, or the `404` (`409` on a target).
pub(crate) fn active_host(ctx: &Ctx, name: &str) -> Result<HostRecord, Fail> {
    let hub = super::vpn::hub(ctx)?;
    match hub.inventory().get(name) {
        Some(h) if h.is_active() => Ok(h),
        _ => Err(Fail::new(
            hyper::StatusCode::NOT_FOUND,
            "no_such_host",
            format!("no enrolled, active host is named {name:?}"),
            "`tether hosts list` shows the names",
        )),
    }
}

fn check_command(command: &str) -> Result<(), Refusal> {
    if command.len() > MAX_COMMAND_BYTES {
        return Err(Refusal::refused(format!(
            "the command is {} bytes; at most {MAX_COMMAND_BYTES} are accepted",
            command.len()
        )));
    }
    Ok(())
}

/// Forwards output to `out` as it comes, counting and hashing each stream.
async fn tally(
    mut rx: mpsc::Receiver<RemoteOutput>,
    out: mpsc::Sender<RemoteOutput>,
    recording: Option<Recording>,
) -> (Tally, Tally) {
    let (mut stdout, mut stderr) = (Tally::default(), Tally::default());
    let mut open = true;
    while let Some(chunk) = rx.recv().await {
        match &chunk {
            RemoteOutput::Stdout(b) => stdout.take(b, 0),
            RemoteOutput::Stderr(b) => stderr.take(b, 0),
        };
        // Written before the client sees it (bounded lag: see tether_recording::RecordingFile).
        if let Some(r) = &recording {
            record_output(r, &chunk).await;
        }
        // A client that went away stops getting output; the run ends through its cancel.
        if open && out.send(chunk).await.is_err() {
            open = false;
        }
    }
    (stdout, stderr)
}
