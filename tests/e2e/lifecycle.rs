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
