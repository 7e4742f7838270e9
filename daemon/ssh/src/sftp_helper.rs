//! File operations as `ssh.run_as`: each SFTP session of a target whose daemon runs as root and
//! drops to another user is served by a short-lived helper process running as that user.
//!
//! **Why a process:** `setuid` in the multithreaded daemon would change one thread's identity
//! (Linux credentials are per thread at the syscall level) or, through glibc, every thread's —
//! neither is acceptable in a tokio runtime. A child that is `exec`'d after
//! `setgroups`/`setgid`/`setuid` ([`RunAs::apply`], the same drop `exec` uses) has only that
//! user's rights, so the kernel checks every open, create, rename and chmod against them.
//!
//! **How:** the daemon re-executes its own binary (`tetherd sftp-helper --settings JSON`, a
//! hidden subcommand) with two socketpairs as stdin and stdout:
//! * stdin carries the SFTP byte stream, relayed unchanged to and from the subsystem channel;
//!   the helper serves it with the same [`SftpService`] (openat2 confinement, atomic uploads).
//! * stdout carries the gate, one JSON object per line: the helper asks
//!   `{"admit":{"op","path"}}` and waits for `{"ok":true}` or `{"ok":false,"reason"}`, and
//!   reports `{"finished":{...}}`; the daemon answers from its own [`FileGate`] (policy and
//!   audit stay in the daemon, which holds the audit log).
//!
//! The helper ends when the SFTP stream does; a session cut mid-upload drops the upload there
//! (its temp file is removed). The helper's stderr is the daemon's.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::run_as::RunAs;
use crate::sftp::{BoxFuture, FileGate, FileOp, FileReport, SftpService};

/// The hidden `tetherd` subcommand that runs the helper.
pub const SUBCOMMAND: &str = "sftp-helper";

/// How to start a helper: the binary, the confinement settings and the user.
#[derive(Debug, Clone)]
pub struct Helper {
    /// The daemon's own binary.
    pub exe: PathBuf,
    /// `[files]` settings for the helper's confinement.
    pub settings: tether_files::Settings,
    /// The user it runs as.
    pub run_as: RunAs,
}

/// The settings as the `--settings` argument.
fn settings_json(s: &tether_files::Settings) -> String {
    json!({
        "allowed_roots": s.allowed_roots,
        "deny_paths": s.deny_paths,
        "max_file_size": s.max_file_size,
    })
    .to_string()
}

/// Parses the `--settings` argument.
fn parse_settings(text: &str) -> Result<tether_files::Settings, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("--settings is not JSON: {e}"))?;
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(tether_files::Settings {
        allowed_roots: strings("allowed_roots"),
        deny_paths: strings("deny_paths"),
        max_file_size: v["max_file_size"]
            .as_u64()
            .ok_or("--settings has no max_file_size")?,
    })
}

impl Helper {
    /// Serves one SFTP stream through a new helper process; returns when both are done.
    pub(crate) async fn serve<S>(&self, mut stream: S, gate: Arc<dyn FileGate>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let spawned = (|| -> std::io::Result<_> {
            let (sftp_ours, sftp_theirs) = std::os::unix::net::UnixStream::pair()?;
            let (gate_ours, gate_theirs) = std::os::unix::net::UnixStream::pair()?;
            let mut cmd = tokio::process::Command::new(&self.exe);
            cmd.arg(SUBCOMMAND)
                .arg("--settings")
                .arg(settings_json(&self.settings))
                .env_clear()
                .current_dir("/")
                .stdin(Stdio::from(OwnedFd::from(sftp_theirs)))
                .stdout(Stdio::from(OwnedFd::from(gate_theirs)))
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            self.run_as.apply(&mut cmd);
            let child = cmd.spawn()?;
            sftp_ours.set_nonblocking(true)?;
            gate_ours.set_nonblocking(true)?;
            Ok((
                child,
                UnixStream::from_std(sftp_ours)?,
                UnixStream::from_std(gate_ours)?,
            ))
        })();
        let (mut child, mut sftp, gate_io) = match spawned {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(
                    user = %self.run_as.name,
                    "SFTP: cannot start the file helper as ssh.run_as: {e}"
                );
                return;
            }
        };
        let relay = async {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut sftp).await;
            drop(sftp);
        };
        tokio::join!(relay, answer_gate(gate_io, gate));
        match tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) if !status.success() => {
                tracing::warn!("SFTP: the file helper ended with {status}");
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill().await;
            }
        }
    }
}

/// The daemon's side of the gate: answers the helper's questions from `gate`.
async fn answer_gate(io: UnixStream, gate: Arc<dyn FileGate>) {
    let (rd, mut wr) = io.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!("SFTP: the file helper sent a malformed gate message; stopping it");
            return;
        };
        if let Some(a) = v.get("admit") {
            let op = a["op"].as_str().and_then(FileOp::parse);
            let path = a["path"].as_str().unwrap_or_default();
            let answer = match op {
                Some(op) => match gate.admit(op, path).await {
                    Ok(()) => json!({"ok": true}),
                    Err(reason) => json!({"ok": false, "reason": reason}),
                },
                None => json!({"ok": false, "reason": "unknown operation"}),
            };
            let mut out = answer.to_string();
            out.push('\n');
            if wr.write_all(out.as_bytes()).await.is_err() {
                return;
            }
        } else if let Some(f) = v.get("finished")
            && let Some(op) = f["op"].as_str().and_then(FileOp::parse)
        {
            let s = |k: &str| f[k].as_str().map(str::to_owned);
            gate.finished(FileReport {
                op,
                path: s("path").unwrap_or_default(),
                to: s("to"),
                size: f["size"].as_u64().unwrap_or(0),
                sha256: s("sha256"),
                error: s("error"),
            })
            .await;
        }
    }
}

/// The helper's side of the gate: asks the daemon over the socket on stdout.
struct PipeGate {
    io: tokio::sync::Mutex<(tokio::io::Lines<BufReader<OwnedReadHalf>>, OwnedWriteHalf)>,
}

impl PipeGate {
    async fn send(&self, v: Value, answer: bool) -> Option<Value> {
        let mut io = self.io.lock().await;
        let mut line = v.to_string();
        line.push('\n');
        io.1.write_all(line.as_bytes()).await.ok()?;
        if !answer {
            return None;
        }
        let reply = io.0.next_line().await.ok()??;
        serde_json::from_str(&reply).ok()
    }
}

impl FileGate for PipeGate {
    fn admit<'a>(&'a self, op: FileOp, path: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let reply = self
                .send(json!({"admit": {"op": op.as_str(), "path": path}}), true)
                .await
                .ok_or_else(|| "the daemon did not answer the file helper".to_owned())?;
            if reply["ok"] == true {
                Ok(())
            } else {
                Err(reply["reason"].as_str().unwrap_or("refused").to_owned())
            }
        })
    }

    fn finished(&self, r: FileReport) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.send(
                json!({"finished": {
                    "op": r.op.as_str(), "path": r.path, "to": r.to, "size": r.size,
                    "sha256": r.sha256, "error": r.error,
                }}),
                false,
            )
            .await;
        })
    }
}

/// A stream that tells, by dropping `done`, when the SFTP server let go of it.
struct Watched {
    inner: UnixStream,
    _done: tokio::sync::oneshot::Sender<()>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One of the helper's inherited sockets (fd 0 or 1), as a tokio stream.
fn inherited(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<UnixStream, String> {
    let owned = fd
        .try_clone_to_owned()
        .map_err(|e| format!("cannot take {what}: {e}"))?;
    let std = std::os::unix::net::UnixStream::from(owned);
    std.set_nonblocking(true)
        .map_err(|e| format!("{what} is not a socket: {e}"))?;
    UnixStream::from_std(std).map_err(|e| format!("{what}: {e}"))
}

/// The helper process (`tetherd sftp-helper --settings JSON`, started by the daemon as
/// `ssh.run_as`): serves the SFTP stream on stdin, asking the gate on stdout, until the stream
/// ends. Needs a tokio runtime.
pub async fn helper_main(settings: &str) -> Result<(), String> {
    let settings = parse_settings(settings)?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let sftp = inherited(stdin.as_fd(), "stdin (the SFTP stream)")?;
    let gate = inherited(stdout.as_fd(), "stdout (the gate)")?;
    let confined = tether_files::Confined::new(&settings).map_err(|e| {
        format!(
            "{e} (as uid {}: can ssh.run_as reach the roots?)",
            nix::unistd::geteuid()
        )
    })?;
    let (rd, wr) = gate.into_split();
    let gate = PipeGate {
        io: tokio::sync::Mutex::new((BufReader::new(rd).lines(), wr)),
    };
    let service = SftpService::new(Arc::new(confined), Arc::new(gate));
    let (done_tx, done) = tokio::sync::oneshot::channel();
    service.serve(Watched {
        inner: sftp,
        _done: done_tx,
    });
    let _ = done.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_argument() {
        let s = tether_files::Settings {
            allowed_roots: vec!["/srv/a".into(), "/etc/x".into()],
            deny_paths: vec![r"\.pem$".into()],
            max_file_size: 42,
        };
        let back = parse_settings(&settings_json(&s)).expect("parse");
        assert_eq!(back, s);
        assert!(parse_settings("{").is_err());
    }
}
