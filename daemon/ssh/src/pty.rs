//! Pseudo-terminals for interactive sessions on the target.
//!
//! [`Pty::spawn`] opens a pty pair (`openpty`), starts the program with the slave as its
//! stdin, stdout and stderr, and makes it a session leader whose controlling terminal is that
//! slave, so line editing, job control and Ctrl-C (`SIGINT` to the foreground group) behave as
//! in a local terminal. The session and controlling terminal are set by util-linux's
//! `setsid --ctty` (Essential on Debian): doing it ourselves needs `setsid()` + `TIOCSCTTY`
//! between `fork` and `exec`, which is `unsafe` (`pre_exec`) and this crate forbids `unsafe`.
//! The master side is non-blocking and driven by tokio's [`AsyncFd`]; reads end with `EIO` once
//! every holder of the slave has gone, which [`Pty::read`] reports as end of file.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

/// Limits on a requested terminal size.
pub const MAX_DIMENSION: u32 = 1000;

/// The master side of a pty whose program is running.
#[derive(Debug)]
pub struct Pty {
    master: AsyncFd<OwnedFd>,
}

/// Clamps a client's size to 1..=[`MAX_DIMENSION`].
fn clamp(v: u32) -> u16 {
    v.clamp(1, MAX_DIMENSION) as u16
}

impl Pty {
    /// Opens a pty of `cols`×`rows` and runs `program args` on it as a session leader, with
    /// exactly `env` and working directory `cwd`, as `run_as` (`ssh.run_as`: the same privilege
    /// drop as exec commands). Returns the master and the child (its pid is also its process
    /// group).
    pub fn spawn(
        program: &str,
        args: &[&str],
        env: &[(String, String)],
        cwd: &str,
        cols: u32,
        rows: u32,
        run_as: &crate::run_as::RunAs,
    ) -> io::Result<(Pty, Child)> {
        let size = nix::pty::Winsize {
            ws_row: clamp(rows),
            ws_col: clamp(cols),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pair = nix::pty::openpty(&size, None).map_err(io::Error::from)?;
        let flags = fcntl(&pair.master, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        fcntl(
            &pair.master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)?;
        let mut cmd = Command::new("setsid");
        cmd.arg("--ctty")
            .arg(program)
            .args(args)
            .env_clear()
            .envs(env.iter().cloned())
            .current_dir(cwd)
            .stdin(Stdio::from(pair.slave.try_clone()?))
            .stdout(Stdio::from(pair.slave.try_clone()?))
            .stderr(Stdio::from(pair.slave))
            .kill_on_drop(true);
        run_as.apply(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {program} through setsid (util-linux): {e}"),
            )
        })?;
        // `AsyncFd::new` is deprecated because a caller could close the descriptor behind the
        // reactor's back; here the `AsyncFd` owns the `OwnedFd`, so it stays open while registered.
        #[allow(deprecated)]
        let master = AsyncFd::new(pair.master)?;
        Ok((Pty { master }, child))
    }

    /// Reads the program's output; `Ok(0)` once the terminal has closed.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                // EIO: every slave descriptor is closed, the session is over.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` (keystrokes) to the terminal.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Tells the terminal (and so the program, by `SIGWINCH`) its new size.
    pub fn resize(&self, cols: u32, rows: u32) -> io::Result<()> {
        rustix::termios::tcsetwinsize(
            self.master.get_ref().as_fd(),
            rustix::termios::Winsize {
                ws_row: clamp(rows),
                ws_col: clamp(cols),
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .map_err(io::Error::from)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Pty;

    #[tokio::test]
    async fn a_shell_on_a_pty_sees_a_terminal_its_size_and_exits_with_its_code() {
        let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        let (pty, mut child) = Pty::spawn(
            "/bin/sh",
            &["-c", "test -t 0 && stty size; exit 3"],
            &env,
            "/",
            100,
            30,
            &crate::run_as::RunAs::resolve(None).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = pty.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out).trim(), "30 100");
    }

    #[tokio::test]
    async fn keystrokes_and_resizes_reach_the_program() {
        let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        let (pty, mut child) = Pty::spawn(
            "/bin/sh",
            &["-c", "read line; stty size; echo \"got $line\""],
            &env,
            "/",
            80,
            24,
            &crate::run_as::RunAs::resolve(None).unwrap(),
        )
        .unwrap();
        pty.resize(132, 50).unwrap();
        pty.write_all(b"hello\n").await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = pty.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(child.wait().await.unwrap().success());
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("50 132"), "{text}");
        assert!(text.contains("got hello"), "{text}");
    }
}
