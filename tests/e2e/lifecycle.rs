//! Start, status, stop, stale and contested sockets, sd_notify, reload.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tether_e2e::{Daemon, bin, code, stderr, stdout};

#[test]
fn status_over_the_cli_then_sigterm_stops_cleanly() {
    let mut d = Daemon::start("hub", "");
    let out = d.tether(&["status", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["role"], "hub");
    assert_eq!(v["pid"], d.pid());
    assert_eq!(v["caller_role"], "admin");
    assert_eq!(v["hosts"], 0);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    let human = d.tether(&["status"]);
    assert!(stdout(&human).contains("tetherd hub"), "{}", stdout(&human));

    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s");
    assert!(status.success(), "exit status {status}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(!d.socket.exists(), "socket removed on shutdown");

    let after = d.tether(&["status"]);
    assert_eq!(code(&after), 3);
    assert!(
        stderr(&after).contains("tetherd is not running"),
        "{}",
        stderr(&after)
    );
}

#[test]
fn sigint_drains_and_exits_zero_for_a_target() {
    let mut d = Daemon::start("target", "");
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&d.tether(&["status", "--json"]))).unwrap();
    assert_eq!(v["role"], "target");
    d.signal(Signal::SIGINT);
    assert!(
        d.wait_exit(Duration::from_secs(5))
            .expect("exits")
            .success()
    );
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let mut first = Daemon::start("hub", "");
    // A second daemon on the same socket (with its own state_dir, which has its own lock) must
    // refuse, naming the first one's pid.
    let other = tempfile::tempdir().unwrap();
    let text = tether_e2e::config_text("hub", other.path(), "").replace(
        &other.path().join("tetherd.sock").display().to_string(),
        &first.socket.display().to_string(),
    );
    let other_config = other.path().join("tetherd.toml");
    std::fs::write(&other_config, text).unwrap();
    let second = std::process::Command::new(bin("tetherd"))
        .args(["run", "--config"])
        .arg(&other_config)
        .output()
        .unwrap();
    assert_eq!(code(&second), 3);
    let msg = stderr(&second);
    assert!(
        msg.contains(&format!("another tetherd is running (pid {})", first.pid())),
        "{msg}"
    );
    // The refused start must not have disturbed the running daemon.
    assert_eq!(code(&first.tether(&["status"])), 0);

    // kill -9 leaves the socket behind; the next start replaces it.
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    assert!(first.socket.exists(), "SIGKILL leaves a stale socket");
    let stale = first.tether(&["status"]);
    assert_eq!(code(&stale), 3);
    assert!(
        stderr(&stale).contains("stale socket"),
        "{}",
        stderr(&stale)
    );

    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    let mut again = Daemon::spawn_in(dir, first.config.clone(), &[]);
    again.wait_ready();
    assert_eq!(code(&again.tether(&["status"])), 0);
    assert!(
        again.log().contains("replacing a stale control socket"),
        "{}",
        again.log()
    );
}

#[test]
fn sd_notify_ready_is_sent_under_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut d = Daemon::start_env(
        "hub",
        "",
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    d.signal(Signal::SIGTERM);
    let n = sock.recv(&mut buf).expect("stopping notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(d.wait_exit(Duration::from_secs(5)).unwrap().success());
}

#[test]
fn env_overrides_the_file() {
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, tether_e2e::config_text("hub", dir.path(), "")).unwrap();
    let alt = dir.path().join("alt.sock");
    let mut d = Daemon::spawn_in(
        dir,
        config,
        &[("TETHER_CONTROL__SOCKET", alt.to_str().unwrap())],
    );
    d.socket = alt.clone();
    d.wait_ready();
    let out = d.tether(&["config", "show", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["control"]["socket"], alt.to_str().unwrap());
    assert_eq!(v["role"], "hub");
}

/// Runs `tether ARGS` against `d`, killing it after `limit` (so a hang fails the test instead
/// of stalling the suite). Returns its exit code and stderr, or None on a hang.
fn tether_within(d: &Daemon, args: &[&str], limit: Duration) -> Option<(i32, String)> {
    use std::io::Read;
    let mut child = std::process::Command::new(bin("tether"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tether");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Some((status.code().unwrap_or(-1), err));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fifo_or_device_config_fails_reload_at_once_and_sigterm_still_stops() {
    let mut d = Daemon::start("hub", "");
    let good = std::fs::read_to_string(&d.config).expect("config");
    // The config becomes a FIFO nobody writes to: reading it must not wait for a writer.
    std::fs::remove_file(&d.config).expect("rm config");
    nix::unistd::mkfifo(&d.config, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .expect("mkfifo");
    let (rc, err) = tether_within(&d, &["config", "reload"], Duration::from_secs(10))
        .expect("`config reload` answers instead of hanging");
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("FIFO") && err.contains(&d.config.display().to_string()),
        "the error names the file and what it is: {err}"
    );
    // SIGHUP with the same FIFO: refused and logged, and the daemon keeps serving.
    d.signal(Signal::SIGHUP);
    assert!(d.wait_log("config reload failed"), "{}", d.log());
    let (rc, err) = tether_within(&d, &["status"], Duration::from_secs(10)).expect("status");
    assert_eq!(rc, 0, "{err}");

    // A symlink to /dev/zero: refused naming the file, memory untouched.
    std::fs::remove_file(&d.config).expect("rm fifo");
    std::os::unix::fs::symlink("/dev/zero", &d.config).expect("symlink");
    let (rc, err) =
        tether_within(&d, &["config", "reload"], Duration::from_secs(10)).expect("answers");
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("character device"), "{err}");

    // A good config again reloads fine.
    std::fs::remove_file(&d.config).expect("rm link");
    std::fs::write(&d.config, good).expect("restore");
    let (rc, err) =
        tether_within(&d, &["config", "reload"], Duration::from_secs(10)).expect("answers");
    assert_eq!(rc, 0, "{err}");

    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("SIGTERM stops the daemon within 5 s");
    assert!(status.success(), "exit status {status}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}
