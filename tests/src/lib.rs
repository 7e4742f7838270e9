//! Harness for end-to-end tests: real `tetherd` processes in temp dirs, driven by the real
//! `tether` binary and by raw HTTP over the control socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of a workspace binary (`tetherd`, `tether`), building the binaries once if needed.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/e2e-<hash> → target/<profile>
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        if !dir.join("tetherd").is_file() || !dir.join("tether").is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--bins", "-p", "tetherd", "-p", "tether"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building tetherd and tether failed");
        }
        dir
    });
    dir.join(name)
}

/// True when running as root (namespaces, setpriv, mounts).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A running `tetherd` with its own temp dir, config, socket and log. Killed on drop.
pub struct Daemon {
    /// Temp dir holding everything of this daemon.
    pub dir: tempfile::TempDir,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its combined stdout/stderr.
    pub log: PathBuf,
    child: Child,
}

/// Writes a config for `role` plus `extra` TOML (appended verbatim, so keys there land in
/// `[control]` unless a new table starts) and returns its text.
pub fn config_text(role: &str, dir: &Path, extra: &str) -> String {
    config_text_top(role, dir, "", extra)
}

/// Like [`config_text`] with `top` TOML placed before the first table (top-level keys).
pub fn config_text_top(role: &str, dir: &Path, top: &str, extra: &str) -> String {
    // Tests only ever bind loopback, port 0: the tunnel (UDP) and enrollment (TCP) listeners too.
    format!(
        "role = \"{role}\"\nstate_dir = \"{}\"\n{top}\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\n[enroll]\nlisten = \"127.0.0.1:0\"\n\n[control]\nsocket = \"{}\"\n{extra}\n",
        dir.join("state").display(),
        dir.join("tetherd.sock").display(),
    )
}

impl Daemon {
    /// Starts a daemon of `role` whose config is the default plus `extra` (TOML appended after
    /// the `[control]` table, so keys there land in it) and waits until it is ready.
    pub fn start(role: &str, extra: &str) -> Daemon {
        Self::start_env(role, extra, &[])
    }

    /// Like [`Daemon::start`] with top-level keys `top` as well.
    pub fn start_top(role: &str, top: &str, extra: &str) -> Daemon {
        Self::start_full(role, top, extra, &[])
    }

    /// Like [`Daemon::start`] with extra environment variables for the daemon.
    pub fn start_env(role: &str, extra: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_full(role, "", extra, env)
    }

    fn start_full(role: &str, top: &str, extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("tether-e2e-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("tetherd.toml");
        std::fs::write(&config, config_text_top(role, dir.path(), top, extra))
            .expect("write config");
        let mut d = Self::spawn_in(dir, config, env);
        d.wait_ready();
        d
    }

    /// Spawns `tetherd run --config CONFIG` inside `dir` without waiting.
    pub fn spawn_in(dir: tempfile::TempDir, config: PathBuf, env: &[(&str, &str)]) -> Daemon {
        Self::spawn_wrapped(dir, config, env, &[], None)
    }

    /// Spawns `tetherd run --config CONFIG [ARGS]` with `cwd` as its working directory, so
    /// `config` may be relative to it (as an operator types it); the control socket is `socket`.
    pub fn spawn_from(
        dir: tempfile::TempDir,
        cwd: &Path,
        config: PathBuf,
        socket: PathBuf,
        args: &[&str],
    ) -> Daemon {
        let mut d = Self::spawn_wrapped(dir, config, &[], &[], Some((cwd, args)));
        d.socket = socket;
        d
    }

    /// Like [`Daemon::spawn_in`] in network namespace `netns` (`ip netns exec NETNS tetherd
    /// ...`, which execs: the child is tetherd itself). Needs root. The control socket is a
    /// file, so the CLI reaches it from any namespace.
    pub fn spawn_in_netns(dir: tempfile::TempDir, config: PathBuf, netns: &str) -> Daemon {
        Self::spawn_wrapped(dir, config, &[], &["ip", "netns", "exec", netns], None)
    }

    fn spawn_wrapped(
        dir: tempfile::TempDir,
        config: PathBuf,
        env: &[(&str, &str)],
        wrapper: &[&str],
        cwd_args: Option<(&Path, &[&str])>,
    ) -> Daemon {
        let socket = dir.path().join("tetherd.sock");
        let log = dir.path().join("tetherd.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let err = out.try_clone().expect("log");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("tetherd"));
                c
            }
            None => Command::new(bin("tetherd")),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some((cwd, args)) = cwd_args {
            cmd.current_dir(cwd).args(args);
        }
        let child = cmd.spawn().expect("spawn tetherd");
        Daemon {
            dir,
            socket,
            config,
            log,
            child,
        }
    }

    /// Waits until `/readyz` answers 200, panicking with the log if the daemon dies or takes
    /// longer than 60 s (a debug build compiling several WASM plugins on a busy 2-core machine
    /// took over 15 s; readiness is not what these tests measure).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = self.try_request("GET", "/readyz", &[], b"") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tetherd exited during start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tetherd not ready after 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Stops the daemon with SIGTERM and starts it again on the same dir and config (its log
    /// keeps growing), waiting until it is ready.
    pub fn restart(&mut self) {
        self.signal(Signal::SIGTERM);
        assert!(
            self.wait_exit(Duration::from_secs(10)).is_some(),
            "tetherd did not stop:\n{}",
            self.log()
        );
        self.restart_stopped();
    }

    /// Starts a daemon that was stopped again on the same dir and config (its log keeps
    /// growing), waiting until it is ready.
    pub fn restart_stopped(&mut self) {
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("log");
        let err = out.try_clone().expect("log");
        self.child = Command::new(bin("tetherd"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn tetherd");
        self.wait_ready();
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("kill");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 5 s for `needle` to appear in the log.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs the real `tether` CLI against this daemon.
    pub fn tether(&self, args: &[&str]) -> Output {
        Command::new(bin("tether"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tether")
    }

    /// Runs a copy of `tether` (placed in this daemon's dir, world-readable) as `uid`:`gid` with
    /// no supplementary groups, via `setpriv`. Needs root. The daemon's dir is opened to
    /// traversal so the socket is reachable (its own mode still applies).
    pub fn tether_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        use std::os::unix::fs::PermissionsExt;
        let exe = self.dir.path().join("tether-copy");
        if !exe.exists() {
            std::fs::copy(bin("tether"), &exe).expect("copy tether");
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        Command::new("setpriv")
            .args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ])
            .arg(&exe)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run setpriv")
    }

    /// One raw HTTP/1.1 request (`Connection: close`); returns status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        self.try_request(method, path, headers, body)
            .expect("request")
    }

    /// Like [`Daemon::request`] but returns IO errors.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        let chunked = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
        let has_len = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !chunked && !has_len {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        // The server may answer (413) and close before taking the whole body: ignore EPIPE.
        let _ = s.write_all(body);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stdout of a command as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of a command as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code of a finished command (-1 if killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Decodes a chunked HTTP body (for responses hyper sends chunked).
pub fn dechunk(body: &str) -> String {
    if !body.contains("\r\n") {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A WASM component built by `plugins/build.sh` (`allow_all`, `deny_all`, ...), running the
/// script once if the component is missing.
pub fn plugin_component(crate_name: &str) -> PathBuf {
    let path = repo()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{crate_name}.wasm"));
    if !path.exists() {
        let st = Command::new("sh")
            .arg(repo().join("plugins/build.sh"))
            .status()
            .expect("run plugins/build.sh");
        assert!(st.success(), "plugins/build.sh failed");
    }
    path
}

/// A Python venv in `$HOME/.cache/NAME` with `requirement` pip-installed, created on first use
/// and kept between runs; returns the venv's directory. `Err` says why it can't be made (no
/// `python3-venv`, no package index), so a test can say `SKIP:` and why.
pub fn python_venv(name: &str, requirement: &str) -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let venv = Path::new(&home).join(".cache").join(name);
    let marker = venv.join(format!(
        ".installed-{}",
        requirement.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    if marker.is_file() {
        return Ok(venv);
    }
    // /usr/bin first: root's `python3` may be a pyenv shim other uids can't run.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import venv, ensurepip"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or("no python3 with venv + ensurepip (apt-get install python3-venv)")?;
    let run = |cmd: &mut Command| -> Result<(), String> {
        let o = cmd.output().map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr)
                .chars()
                .take(600)
                .collect())
        }
    };
    if !venv.join("bin/pip").is_file() {
        run(Command::new(python).args(["-m", "venv"]).arg(&venv))
            .map_err(|e| format!("python3 -m venv failed: {e}"))?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", requirement]))
        .map_err(|e| format!("pip install {requirement} failed: {e}"))?;
    std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    Ok(venv)
}
