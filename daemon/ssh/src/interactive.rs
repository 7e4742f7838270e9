//! The target server's interactive sessions: `pty-req`, then `shell` (the daemon user's login
//! shell) or `exec` (the command, by that shell's `-c`), on a real pty ([`crate::pty`]).
//! `window-change` resizes the pty; channel data is typed into it. Each session is first put to
//! [`ExecGate::admit_session`](crate::server::ExecGate::admit_session) and reported to
//! [`ExecGate::finished`](crate::server::ExecGate::finished) with `interactive: true`. Its
//! process group is killed like an exec's when the channel or connection closes.

use std::sync::Arc;
use std::time::Instant;

use nix::unistd::Pid;
use russh::server::Session;
use russh::{ChannelId, Sig};
use tokio::sync::mpsc;

use crate::pty::Pty;
use crate::server::{Conn, ExecReport, lock};

/// Longest `TERM` value accepted.
const MAX_TERM: usize = 64;

/// Keystroke chunks buffered towards a pty that is not reading.
const INPUT_QUEUE: usize = 256;

/// A channel's pty: asked for, or running.
pub(crate) enum PtyState {
    /// `pty-req` arrived; nothing runs yet.
    Requested {
        /// `TERM`.
        term: String,
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
    },
    /// The program runs on it.
    Running {
        /// The master side, for resizes.
        pty: Arc<Pty>,
        /// Keystrokes towards it.
        input: mpsc::Sender<Vec<u8>>,
    },
}

/// The daemon user's login shell (from the user database), else `/bin/sh`.
fn login_shell() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.shell.to_string_lossy().into_owned())
        .filter(|s| s.starts_with('/') && std::path::Path::new(s).exists())
        .unwrap_or_else(|| "/bin/sh".to_owned())
}

impl Conn {
    pub(crate) fn pty_requested(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let known = self.channels.contains_key(&channel);
        let fresh = !self.ptys.contains_key(&channel);
        if known && fresh && term.len() <= MAX_TERM && !term.contains('\0') {
            self.ptys.insert(
                channel,
                PtyState::Requested {
                    term: term.to_owned(),
                    cols,
                    rows,
                },
            );
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    pub(crate) fn resize(&mut self, channel: ChannelId, cols: u32, rows: u32) {
        match self.ptys.get_mut(&channel) {
            Some(PtyState::Running { pty, .. }) => {
                if let Err(e) = pty.resize(cols, rows) {
                    tracing::debug!("SSH: could not resize a pty: {e}");
                }
            }
            Some(PtyState::Requested {
                cols: c, rows: r, ..
            }) => {
                (*c, *r) = (cols, rows);
            }
            None => {}
        }
    }

    pub(crate) async fn input(&mut self, channel: ChannelId, data: &[u8]) {
        if let Some(PtyState::Running { input, .. }) = self.ptys.get(&channel) {
            // Waits (bounded queue) when the program does not read its terminal.
            let _ = input.send(data.to_vec()).await;
        }
    }

    /// Starts the login shell (or `command` through it) on the channel's pty.
    pub(crate) async fn start_interactive(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let (Some(env), Some(PtyState::Requested { term, cols, rows })) = (
            self.channels.get(&channel).cloned(),
            self.ptys.get(&channel),
        ) else {
            // A shell without a pty is not offered: use exec.
            session.channel_failure(channel)?;
            return Ok(());
        };
        let (term, cols, rows) = (term.clone(), *cols, *rows);
        let refuse = |session: &mut Session, message: String, code: u32| {
            session.channel_success(channel)?;
            session.data(channel, bytes::Bytes::from(message))?;
            session.exit_status_request(channel, code)?;
            session.eof(channel)?;
            session.close(channel)
        };
        if let Err(reason) = self.shared.gate.admit_session(command.as_deref()).await {
            return refuse(
                session,
                format!("tether: refused by the target's policy: {reason}\r\n"),
                126,
            );
        }
        let shell = login_shell();
        let mut full_env: Vec<(String, String)> = self
            .shared
            .base_env
            .iter()
            .filter(|(k, _)| k != "SHELL")
            .cloned()
            .collect();
        full_env.push(("SHELL".to_owned(), shell.clone()));
        full_env.extend(env.into_iter().filter(|(k, _)| k != "TERM"));
        full_env.push(("TERM".to_owned(), term));
        // The same user, home and privilege drop as exec commands (`ssh.run_as`).
        let cwd = self.shared.cwd.to_string_lossy().into_owned();
        let args: Vec<&str> = match &command {
            Some(c) => vec!["-c", c.as_str()],
            None => vec!["-l"],
        };
        let (pty, mut child) = match Pty::spawn(
            &shell,
            &args,
            &full_env,
            &cwd,
            cols,
            rows,
            &self.shared.run_as,
        ) {
            Ok(p) => p,
            Err(e) => return refuse(session, format!("tether: cannot start a pty: {e}\r\n"), 127),
        };
        session.channel_success(channel)?;
        let pty = Arc::new(pty);
        let (input, mut keys) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
        self.ptys.insert(
            channel,
            PtyState::Running {
                pty: Arc::clone(&pty),
                input,
            },
        );
        if let Some(pid) = child.id() {
            lock(&self.procs).insert(channel, Pid::from_raw(pid as i32));
        }
        let writer = {
            let pty = Arc::clone(&pty);
            tokio::spawn(async move {
                while let Some(k) = keys.recv().await {
                    if pty.write_all(&k).await.is_err() {
                        break;
                    }
                }
            })
        };
        let handle = session.handle();
        let procs = Arc::clone(&self.procs);
        let gate = Arc::clone(&self.shared.gate);
        let started = Instant::now();
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(k) = pty.read(&mut buf).await {
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
            writer.abort();
            let status = child.wait().await;
            let killed = lock(&procs).remove(&channel).is_none();
            let (exit_code, signal) = match &status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    (
                        s.code(),
                        s.signal().map(|n| {
                            nix::sys::signal::Signal::try_from(n).map_or(n.to_string(), |s| {
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
                command: command.unwrap_or_default(),
                exit_code,
                signal,
                killed,
                duration: started.elapsed(),
                stdout_bytes: n,
                stderr_bytes: 0,
                interactive: true,
            })
            .await;
        });
        Ok(())
    }
}
