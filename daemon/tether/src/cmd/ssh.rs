//! `tether ssh HOST [-- CMD]`: an interactive session without OpenSSH, over an upgraded
//! control-socket connection (`POST /v1/session/{host}`) speaking `tether-session/1` frames
//! ([`tether_api::frame`]).
//!
//! When stdin is a terminal the session gets a pty of the local terminal's size, the local
//! terminal goes into raw mode (restored on every way out: the end of the session, an error,
//! `SIGTERM`/`SIGHUP`, `~.`), and `SIGWINCH` sends the new size. `~.` typed right after a newline
//! disconnects, `~~` sends one `~`, as in OpenSSH. The remote exit code becomes ours (a signal:
//! 128 + its number); a refusal is printed and exits 2; a host that could not be reached 255.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use clap::Args;
use tether_api::frame::{Decoder, ExitStatus, Frame};
use tether_api::{PtySpec, Session, SessionRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

use crate::error::CliError;
use crate::global::Global;

/// Arguments of `tether ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// The enrolled host.
    pub host: String,
    /// A command to run instead of the login shell (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// What the escape filter makes of typed bytes.
#[derive(Debug, Default)]
pub(crate) struct Escape {
    /// At the start of a line (the session's start counts).
    line_start: bool,
    /// A `~` at a line start is held back, waiting for the next byte.
    pending: bool,
}

impl Escape {
    pub(crate) fn new() -> Self {
        Escape {
            line_start: true,
            pending: false,
        }
    }

    /// The bytes to send for `input`, and whether `~.` asked to disconnect.
    pub(crate) fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'.' => return (out, true),
                    b'~' => {
                        out.push(b'~');
                        self.line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if self.line_start && b == b'~' {
                self.pending = true;
                continue;
            }
            out.push(b);
            self.line_start = matches!(b, b'\r' | b'\n');
        }
        (out, false)
    }
}

/// Raw mode on the local terminal while alive; the saved settings come back on drop.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode, CliError> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd())
            .map_err(|e| CliError::Internal(format!("cannot read the terminal's settings: {e}")))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)
            .map_err(|e| CliError::Internal(format!("cannot put the terminal in raw mode: {e}")))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSADRAIN,
            &self.saved,
        );
    }
}

/// The local terminal's size (columns, rows), 80×24 when it cannot be read.
fn terminal_size() -> (u16, u16) {
    match rustix::termios::tcgetwinsize(std::io::stdout().as_fd())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin().as_fd()))
    {
        Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (w.ws_col.min(1000), w.ws_row.min(1000)),
        _ => (80, 24),
    }
}

/// Our exit code for the remote side's.
fn exit_code(status: &ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => (*c & 0xff) as u8,
        ExitStatus::Signal(name) => {
            let name = name.trim_start_matches("SIG");
            format!("SIG{name}")
                .parse::<nix::sys::signal::Signal>()
                .map_or(255, |s| 128u8.saturating_add(s as u8))
        }
    }
}

pub async fn run(global: &Global, args: SshArgs) -> Result<u8, CliError> {
    let tty = std::io::stdin().is_terminal();
    let command = (!args.command.is_empty()).then(|| args.command.join(" "));
    let pty = tty.then(|| {
        let (cols, rows) = terminal_size();
        PtySpec {
            term: std::env::var("TERM")
                .ok()
                .filter(|t| !t.is_empty() && t.len() <= 64)
                .unwrap_or_else(|| "xterm".to_owned()),
            cols,
            rows,
        }
    });
    if command.is_none() && pty.is_none() {
        return Err(CliError::Usage(
            "stdin is not a terminal, so there is no shell to open: give a command (tether ssh HOST -- CMD)"
                .to_owned(),
        ));
    }
    let io = global
        .client()
        .upgrade::<Session>(&SessionRequest {
            host: args.host,
            command,
            pty,
        })
        .await?;
    let signals = || -> Result<_, CliError> {
        let sig = |k| signal(k).map_err(|e| CliError::Internal(format!("signal handler: {e}")));
        Ok((
            sig(SignalKind::window_change())?,
            sig(SignalKind::terminate())?,
            sig(SignalKind::hangup())?,
        ))
    };
    let (mut winch, mut term, mut hup) = signals()?;
    let mut raw = if tty { Some(RawMode::enter()?) } else { None };
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut input = super::proxy::stdin_chunks();
    let mut input_open = true;
    let mut escape = Escape::new();
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 32 * 1024];
    let mut stdout = std::io::stdout();
    let mut error: Option<String> = None;
    let outcome: Option<u8> = loop {
        tokio::select! {
            chunk = input.recv(), if input_open => {
                let frame = match chunk {
                    Some(c) if !c.is_empty() => {
                        let (bytes, disconnect) = if tty { escape.filter(&c) } else { (c, false) };
                        if disconnect {
                            drop(raw.take());
                            eprintln!("tether: disconnected (~.)");
                            return Ok(255);
                        }
                        Frame::Stdin(bytes)
                    }
                    _ => {
                        input_open = false;
                        Frame::Eof
                    }
                };
                if wr.write_all(&frame.to_bytes()).await.is_err() {
                    break None;
                }
            }
            _ = winch.recv() => {
                let (cols, rows) = terminal_size();
                let _ = wr.write_all(&Frame::Resize { cols, rows }.to_bytes()).await;
            }
            _ = term.recv() => break Some(143),
            _ = hup.recv() => break Some(129),
            n = rd.read(&mut buf) => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                decoder.push(&buf[..n]);
                let mut done = None;
                loop {
                    match decoder.next_frame() {
                        Ok(None) => break,
                        Ok(Some(Frame::Stdout(b))) => {
                            let _ = stdout.write_all(&b);
                            let _ = stdout.flush();
                        }
                        Ok(Some(Frame::Stderr(b))) => {
                            let _ = std::io::stderr().write_all(&b);
                        }
                        Ok(Some(Frame::Exit(s))) => {
                            done = Some(exit_code(&s));
                            break;
                        }
                        Ok(Some(Frame::Error(m))) => error = Some(m),
                        Ok(Some(_)) => {}
                        Err(e) => {
                            error = Some(e.to_string());
                            done = Some(255);
                            break;
                        }
                    }
                }
                if done.is_some() {
                    break done;
                }
            }
        }
    };
    drop(raw.take());
    if let Some(m) = error {
        eprintln!("tether: {m}");
    }
    match outcome {
        Some(code) => Ok(code),
        None => {
            eprintln!(
                "tether: the connection to tetherd ended before the session reported how it exited"
            );
            Ok(255)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_after_a_newline_disconnects_and_only_there() {
        let mut e = Escape::new();
        assert_eq!(e.filter(b"~."), (Vec::new(), true));
        let mut e = Escape::new();
        assert_eq!(e.filter(b"a~.b"), (b"a~.b".to_vec(), false));
        assert_eq!(e.filter(b"\r"), (b"\r".to_vec(), false));
        assert_eq!(e.filter(b"~"), (Vec::new(), false));
        assert_eq!(e.filter(b"."), (Vec::new(), true));
        let mut e = Escape::new();
        assert_eq!(e.filter(b"\n~~x"), (b"\n~x".to_vec(), false));
        let mut e = Escape::new();
        assert_eq!(e.filter(b"~ls"), (b"~ls".to_vec(), false));
    }

    #[test]
    fn remote_exits_become_ours() {
        assert_eq!(exit_code(&ExitStatus::Code(3)), 3);
        assert_eq!(exit_code(&ExitStatus::Code(256 + 7)), 7);
        assert_eq!(exit_code(&ExitStatus::Signal("TERM".into())), 143);
        assert_eq!(exit_code(&ExitStatus::Signal("KILL".into())), 137);
        assert_eq!(exit_code(&ExitStatus::Signal("Custom(\"X\")".into())), 255);
    }
}
