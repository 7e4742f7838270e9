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
