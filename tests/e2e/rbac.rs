//! Peer-credential RBAC with real uids (setpriv), and reload changing roles.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use nix::sys::signal::Signal;
use tether_e2e::{Daemon, bin, code, is_root, stderr, stdout};

/// Runs a copy of `tether` (in a world-readable dir) as uid 4242 with the given gid.
fn tether_as(d: &Daemon, gid: u32, args: &[&str]) -> Output {
    let exe = d.dir.path().join("tether-copy");
    if !exe.exists() {
        std::fs::copy(bin("tether"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new("setpriv")
        .args([
            "--reuid=4242",
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .arg(&exe)
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .unwrap()
}

fn metric(d: &Daemon, name: &str) -> f64 {
    let (_, body) = d.request("GET", "/metrics", &[], b"");
    let body = tether_e2e::dechunk(&body);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_caller_without_a_role_gets_403_then_a_reload_grants_one() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and setpriv to connect as another uid");
        return;
    }
    let d = Daemon::start("hub", "");
    // Let uid 4242 reach the socket (dir traversal), as group members would in production.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // gid 4242: the socket (0660 root:root) is not theirs at all → the OS refuses.
    let denied_by_os = tether_as(&d, 4242, &["status"]);
    assert_eq!(code(&denied_by_os), 2, "{}", stderr(&denied_by_os));
    assert!(
        stderr(&denied_by_os).contains("not permitted to connect"),
        "{}",
        stderr(&denied_by_os)
    );

    // gid 0: the socket's group lets them connect, but [control.roles] gives uid 4242 no role.
    let before = metric(&d, "tether_auth_denials_total");
    let forbidden = tether_as(&d, 0, &["status"]);
    assert_eq!(code(&forbidden), 2, "{}", stderr(&forbidden));
    let msg = stderr(&forbidden);
    assert!(msg.contains("uid 4242 has no role"), "{msg}");
    assert!(msg.contains("[control.roles]"), "hint names the fix: {msg}");
    assert_eq!(metric(&d, "tether_auth_denials_total"), before + 1.0);
    // The raw answer is the documented JSON error.
    let json = tether_as(&d, 0, &["status", "--json"]);
    assert_eq!(code(&json), 2);

    // Grant read_only through the config file and SIGHUP.
    append(&d.config, "\n[control.roles]\nread_only = [\"uid:4242\"]\n");
    d.signal(Signal::SIGHUP);
    assert!(d.wait_log("config reloaded"), "{}", d.log());
    let ok = tether_as(&d, 0, &["status", "--json"]);
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    let v: serde_json::Value = serde_json::from_str(&stdout(&ok)).unwrap();
    assert_eq!(v["caller_role"], "read_only");

    // read_only may not reload: 403 naming the role.
    let reload = tether_as(&d, 0, &["config", "reload"]);
    assert_eq!(code(&reload), 2);
    assert!(
        stderr(&reload).contains("role read_only"),
        "{}",
        stderr(&reload)
    );
}

#[test]
fn an_invalid_config_on_reload_keeps_the_old_one() {
    let d = Daemon::start("hub", "");
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!("{good}\nbogus_key = 1\n[control.roles]\nadmin = [\"nobody\"]\n"),
    )
    .unwrap();

    // Through the API: 422 with every problem, exit 2.
    let out = d.tether(&["config", "reload"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains("bogus_key") && msg.contains("control.roles.admin[0]"),
        "{msg}"
    );

    // Through SIGHUP: logged, old config stays.
    d.signal(Signal::SIGHUP);
    assert!(d.wait_log("keeping the previous config"), "{}", d.log());
    let status = d.tether(&["status"]);
    assert_eq!(
        code(&status),
        0,
        "still serving with the old config: {}",
        stderr(&status)
    );

    // Fixed file → reload succeeds.
    std::fs::write(&d.config, &good).unwrap();
    let out = d.tether(&["config", "reload", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(10));
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

/// The `via` of every `audit.read` record in the log, oldest first.
fn read_vias(d: &Daemon) -> Vec<String> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(d.dir.path().join("state/audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.split('\n').filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["type"] == "audit.read" {
                out.push(v["actor"]["via"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    out
}

/// Issue 14 §7: the audit actor's channel is how the request arrived, not what the caller's
/// `x-tether-via` header claims. A client that is not the tether CLI is `api` whatever it says.
#[test]
fn the_via_header_is_not_taken_from_callers_as_truth() {
    let d = Daemon::start("hub", "");
    for claim in ["mcp", "cli", "daemon", "api"] {
        let (status, body) = d.request(
            "GET",
            "/v1/audit/records?limit=1",
            &[("x-tether-via", claim)],
            b"",
        );
        assert_eq!(status, 200, "{body}");
    }
    let out = d.tether(&["audit", "tail", "-n", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(read_vias(&d), ["api", "api", "api", "api", "cli"]);
}

/// Runs `/usr/bin/python3 -c SCRIPT SOCKET` as uid 4242 (gid 0, so the 0660 root:root socket
/// is reachable but the caller has no role).
fn python_as_roleless(d: &Daemon, script: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid=4242", "--regid=0", "--clear-groups", "--"])
        .arg("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&d.socket)
        .output()
        .unwrap()
}

fn audit_bytes(d: &Daemon) -> u64 {
    let dir = d.dir.path().join("state/audit");
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .map(|e| {
            // The live file has preallocated zeros: count the bytes before them.
            let data = std::fs::read(e.path()).unwrap();
            data.iter().position(|b| *b == 0).unwrap_or(data.len()) as u64
        })
        .sum()
}

fn denial_records(d: &Daemon) -> Vec<serde_json::Value> {
    let dir = d.dir.path().join("state/audit");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()) {
        if !e.file_name().to_string_lossy().ends_with(".jsonl") {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap();
        let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
        for line in data[..end].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            if v["type"] == "auth.denied" {
                out.push(v);
            }
        }
    }
    out
}

#[test]
fn roleless_floods_with_huge_paths_give_bounded_records_and_log_lines() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and setpriv to connect as another uid");
        return;
    }
    let d = Daemon::start("hub", "");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let audit_before = audit_bytes(&d);
    let log_before = d.log().len();
    // One 65.4 KB path (too large for a record if kept whole), then 400 paths of 60 KB,
    // with control characters that would forge lines if written raw.
    let script = r#"
import socket, sys
def ask(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(("GET " + path + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    return data.split(b" ")[1].decode()
codes = [ask("/v1/" + "b" * 65400)]
for i in range(400):
    codes.append(ask("/v1/%1b%0a" + "a" * 60000))
print(" ".join(sorted(set(codes))), len(codes))
"#;
    let out = python_as_roleless(&d, script);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "403 401", "{}", stdout(&out));

    // Every denial is counted.
    assert_eq!(metric(&d, "tether_auth_denials_total"), 401.0);
    let records = denial_records(&d);
    let unrecorded = metric(&d, "tether_auth_denials_unrecorded_total");
    assert_eq!(records.len() as f64 + unrecorded, 401.0);
    // The 65.4 KB one is recorded (as an excerpt), not lost.
    let first = &records[0];
    assert_eq!(first["actor"]["uid"], 4242);
    let p = first["data"]["path"].as_str().unwrap();
    assert!(p.starts_with("/v1/bbbb") && p.ends_with("bytes]"), "{p}");
    // Bounded: a burst of 10, then about one per second.
    assert!(records.len() <= 10 + 60, "{} records", records.len());
    for r in &records {
        let line = serde_json::to_string(r).unwrap();
        assert!(line.len() < 1024, "record of {} bytes: {line}", line.len());
        assert!(!line.contains('\u{1b}'));
    }
    let grown = audit_bytes(&d) - audit_before;
    assert!(
        grown <= records.len() as u64 * 1024,
        "audit grew {grown} bytes"
    );
    let log = d.log();
    let log_grown = &log[log_before..];
    assert!(
        log_grown.len() <= records.len() * 1024 + 4096,
        "daemon log grew {} bytes",
        log_grown.len()
    );
    assert!(!log_grown.contains('\u{1b}'), "raw escape in the log");
}

#[test]
fn thousands_of_idle_roleless_connections_cannot_exhaust_descriptors() {
    use std::io::{BufRead, BufReader};
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and setpriv to connect as another uid");
        return;
    }
    let d = Daemon::start("hub", "");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    let fds_before = fds();
    // 3,000 idle connections from one roleless uid, held open until our stdin closes.
    let script = r#"
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
socks = []
for i in range(3000):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    socks.append(s)
time.sleep(1.0)
open_ = 0
for s in socks:
    s.setblocking(False)
    try:
        open_ += s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        open_ += 1
    except OSError:
        pass
print(open_, flush=True)
sys.stdin.read()
"#;
    let mut child = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=0", "--clear-groups", "--"])
        .arg("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&d.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let still_open: usize = line.trim().parse().expect("count of open connections");
    assert!(
        still_open <= 64,
        "{still_open} idle connections kept by the daemon"
    );
    let held = fds();
    assert!(
        held <= fds_before + 64 + 8,
        "daemon holds {held} descriptors (was {fds_before})"
    );
    // The operator still gets in, and the refusals are counted.
    let out = d.tether(&["status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        metric(&d, "tether_control_connections_refused_total") >= 2900.0,
        "refusals counted"
    );
    drop(child.stdin.take());
    let _ = child.wait();
}

/// Runs `tether status --json` as the named user (its real uid, gid 0 so the socket lets it in,
/// no supplementary groups on the process: the daemon takes the user's groups from the user
/// database, as it does for every caller).
fn status_as_user(d: &Daemon, user: &str) -> Output {
    let exe = d.dir.path().join("tether-copy");
    if !exe.exists() {
        std::fs::copy(bin("tether"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            "--regid=0",
            "--clear-groups",
            "--",
        ])
        .arg(&exe)
        .arg("--socket")
        .arg(&d.socket)
        .args(["status", "--json"])
        .output()
        .unwrap()
}

/// The daemon reuses a user-database lookup (name, groups) for a uid/gid for at most
/// `tether_control::CALLER_TTL` (5 s): a user removed from the group that gives it its role loses
/// the role within that time; roles themselves are matched on every request, so a reload that
/// removes the group's role applies to the very next request.
#[test]
fn group_changes_apply_within_the_caller_ttl_and_role_reloads_at_once() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root, useradd and setpriv to connect as another user");
        return;
    }
    let (user, group) = ("tether-e2e-cache", "tether-e2e-cachegrp");
    let sh = |c: &str| Command::new("sh").arg("-c").arg(c).output().unwrap();
    let made = sh(&format!(
        "getent group {group} >/dev/null || groupadd {group}; \
         id {user} >/dev/null 2>&1 || useradd -M -N -g nogroup -d /nonexistent -s /bin/sh {user}; \
         gpasswd -a {user} {group} >/dev/null"
    ));
    assert!(made.status.success(), "useradd: {made:?}");
    let d = Daemon::start("hub", "");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = std::fs::read_to_string(&d.config).unwrap();
    let set_roles = |roles: &str| {
        std::fs::write(&d.config, format!("{base}\n[control.roles]\n{roles}\n")).unwrap();
        d.signal(Signal::SIGHUP);
    };
    let role = |out: &Output| -> Option<String> {
        (code(out) == 0).then(|| {
            let v: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
            v["caller_role"].as_str().unwrap_or_default().to_owned()
        })
    };
    set_roles(&format!("read_only = [\"group:{group}\"]"));
    assert!(d.wait_log("config reloaded"), "{}", d.log());
    let ok = status_as_user(&d, user);
    assert_eq!(role(&ok).as_deref(), Some("read_only"), "{}", stderr(&ok));

    // Removed from the group: denied within the TTL (polled), never later.
    let removed = sh(&format!("gpasswd -d {user} {group}"));
    assert!(removed.status.success(), "{removed:?}");
    let t = std::time::Instant::now();
    // `tether_control::CALLER_TTL` (5 s), plus a second for the polling.
    let limit = Duration::from_secs(6);
    loop {
        let out = status_as_user(&d, user);
        if role(&out).is_none() {
            assert!(
                stderr(&out).contains("has no role"),
                "refused for the wrong reason: {}",
                stderr(&out)
            );
            break;
        }
        assert!(
            t.elapsed() < limit,
            "still {:?} {:?} after leaving the group",
            role(&out),
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Back in the group: the role returns (within the TTL), and stays on a warm cache...
    assert!(sh(&format!("gpasswd -a {user} {group}")).status.success());
    let t = std::time::Instant::now();
    while role(&status_as_user(&d, user)).is_none() {
        assert!(t.elapsed() < limit, "the group's role did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...until a reload takes the group's role away: the next request is refused at once.
    let reloads = d.log().matches("config reloaded").count();
    set_roles("read_only = [\"uid:4242\"]");
    let t = std::time::Instant::now();
    while d.log().matches("config reloaded").count() == reloads {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = status_as_user(&d, user);
    assert_eq!(
        role(&out),
        None,
        "the reload applied late: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("has no role"), "{}", stderr(&out));
    let _ = sh(&format!("gpasswd -d {user} {group} >/dev/null"));
}
