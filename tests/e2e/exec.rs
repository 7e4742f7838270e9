//! `tether exec` end to end: a real hub and real targets on loopback, SSH inside the userspace
//! tunnel, real commands run by /bin/sh on the targets, the real CLI.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tether_e2e::{Daemon, bin, code, stderr, stdout};

use crate::membership::{enroll, invite, target_dir};

fn enrolled(hub: &Daemon, name: &str) -> Daemon {
    let token = invite(hub, name, &["--group", "web"]);
    let (dir, config) = target_dir();
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut t = Daemon::spawn_in(dir, config, &[]);
    t.wait_ready();
    t
}

/// Waits until `hosts list` says every one of `names` is online.
fn wait_online(hub: &Daemon, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = hub.tether(&["--json", "hosts", "list"]);
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
        let online = |n: &str| {
            v["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["name"] == n && h["online"] == true))
        };
        if names.iter().all(|n| online(n)) {
            return;
        }
        assert!(Instant::now() < deadline, "hosts not online: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tether --json exec ARGS` → (exit code, events).
fn exec_json(hub: &Daemon, args: &[&str]) -> (i32, Vec<Value>, String) {
    let mut a = vec!["--json", "exec"];
    a.extend_from_slice(args);
    let out = hub.tether(&a);
    let events = stdout(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (code(&out), events, stderr(&out))
}

fn summary(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|e| e["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {events:?}"))
}

fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Audit records of `kind` in a daemon's audit log.
fn audit_records(d: &Daemon, kind: &str) -> Vec<Value> {
    let dir = d.dir.path().join("state/audit");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let text = std::fs::read(&path).unwrap();
            for line in text.split(|b| *b == b'\n') {
                if line.is_empty() || line[0] == 0 {
                    continue;
                }
                if let Ok(v) = serde_json::from_slice::<Value>(line)
                    && v["type"] == kind
                {
                    out.push(v);
                }
            }
        }
    }
    out
}

#[test]
fn fan_out_mixed_exits_canary_max_failures_timeout_output_cap_and_bad_input() {
    let hub = Daemon::start("hub", "");
    let targets: Vec<Daemon> = ["t1", "t2", "t3"]
        .iter()
        .map(|n| enrolled(&hub, n))
        .collect();
    wait_online(&hub, &["t1", "t2", "t3"]);

    // Mixed exit codes: exactly one host wins the mkdir, the others exit 3.
    let lock = tempfile::tempdir().unwrap();
    let lockdir = lock.path().join("won");
    let cmd = format!(
        "echo line-one; echo to-stderr >&2; mkdir {} && exit 0 || exit 3",
        lockdir.display()
    );
    let out = hub.tether(&["exec", "-H", "group:web", "--", &cmd]);
    assert_eq!(
        code(&out),
        1,
        "some failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    for t in ["t1", "t2", "t3"] {
        assert!(text.contains(&format!("{t} | line-one")), "{text}");
    }
    let err = stderr(&out);
    assert!(err.contains("t2 | to-stderr"), "{err}");
    assert!(
        err.contains("1 ok, 2 failed, 0 skipped of 3 hosts"),
        "{err}"
    );
    assert!(err.matches(" 3 ").count() >= 2, "{err}");

    // JSON events; all ok exits 0; the hub's audit holds the request and one result per host.
    let (c, events, _) = exec_json(&hub, &["-H", "all", "--", "printf abc"]);
    assert_eq!(c, 0);
    assert_eq!(of(&events, "started").len(), 3);
    let exits = of(&events, "exit");
    assert_eq!(exits.len(), 3);
    assert!(
        exits
            .iter()
            .all(|e| e["code"] == 0 && e["stdout_bytes"] == 3)
    );
    assert_eq!(summary(&events)["ok"], 3);
    let requested = audit_records(&hub, "exec.requested");
    assert!(
        requested
            .iter()
            .any(|r| r["data"]["command"] == "printf abc")
    );
    let results: Vec<Value> = audit_records(&hub, "exec.result")
        .into_iter()
        .filter(|r| r["data"]["command"] == "printf abc")
        .collect();
    assert_eq!(results.len(), 3);
    // SHA-256("abc")
    assert!(results.iter().all(|r| r["data"]["stdout_sha256"]
        == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        && r["data"]["exit_code"] == 0));
    // Each target audited what it ran.
    for t in &targets {
        assert!(
            audit_records(t, "exec.received")
                .iter()
                .any(|r| r["data"]["command"] == "printf abc")
        );
        assert!(
            audit_records(t, "exec.result")
                .iter()
                .any(|r| r["data"]["command"] == "printf abc")
        );
    }

    // Canary: the first host fails, the rest are skipped.
    let (c, events, _) = exec_json(&hub, &["--canary", "1", "--", "false"]);
    assert_eq!(c, 1);
    let s = summary(&events);
    assert_eq!(
        (s["failed"].as_u64(), s["skipped"].as_u64()),
        (Some(1), Some(2)),
        "{s}"
    );
    assert!(s["aborted"].as_str().unwrap().contains("canary"), "{s}");

    // Max failures: stop after the first failure with one at a time.
    let (c, events, _) = exec_json(
        &hub,
        &["--concurrency", "1", "--max-failures", "1", "--", "false"],
    );
    assert_eq!(c, 1);
    assert_eq!(of(&events, "skipped").len(), 2);

    // Timeout: cancelled well before the command would end.
    let t0 = Instant::now();
    let (c, events, _) = exec_json(&hub, &["-H", "t1", "--timeout", "1s", "--", "sleep 30"]);
    assert_eq!(c, 1);
    assert!(t0.elapsed() < Duration::from_secs(10));
    let errors = of(&events, "error");
    assert_eq!(errors[0]["kind"], "timeout", "{events:?}");

    // Output cap: 100 bytes forwarded, the rest dropped and counted, with a note.
    let out = hub.tether(&[
        "exec",
        "-H",
        "t1",
        "--output-limit",
        "100",
        "--",
        "head -c 5000 /dev/zero | tr '\\0' a",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).matches('a').count(), 100, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("4900 bytes of output dropped"),
        "{}",
        stderr(&out)
    );

    // Bad input: exit 2 and a message, nothing run.
    let out = hub.tether(&["exec", "-H", "nosuch", "--", "true"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("matches no enrolled"),
        "{}",
        stderr(&out)
    );
    let out = hub.tether(&["exec", "-H", "tag:env=nowhere", "--", "true"]);
    assert_eq!(code(&out), 2);
    let long = format!("echo {}", "x".repeat(9000));
    let out = hub.tether(&["exec", "--", &long]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("8192"), "{}", stderr(&out));
}

#[test]
fn a_denied_command_never_reaches_the_target_and_approval_verdicts_refuse() {
    let policy = "\n[policy]\nmode = \"enforce\"\n\n[[policy.deny_commands]]\nid = \"no-touch\"\npattern = '^touch\\b'\nmessage = \"no touching\"\n\n[[policy.deny_commands]]\nid = \"reboots\"\npattern = '^reboot\\b'\napproval = true\nmessage = \"needs a second operator\"\n";
    let hub = Daemon::start("hub", policy);
    let t1 = enrolled(&hub, "t1");
    wait_online(&hub, &["t1"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("touched");
    let out = hub.tether(&[
        "exec",
        "-H",
        "t1",
        "--",
        &format!("touch {}", file.display()),
    ]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("no touching"), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!file.exists(), "the denied command ran");
    let denied = audit_records(&hub, "exec.denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["host"], "t1");
    assert!(audit_records(&hub, "exec.requested").is_empty());
    // The target never heard of it.
    assert!(audit_records(&t1, "exec.received").is_empty());
    assert!(audit_records(&t1, "exec.denied").is_empty());

    // An approval verdict holds the request (tests/e2e/approvals.rs follows it further).
    let out = hub.tether(&["exec", "--no-wait", "-H", "t1", "--", "reboot"]);
    assert_eq!(code(&out), 2);
    assert!(stdout(&out).starts_with("apr-"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("approval") && stderr(&out).contains("pending"),
        "{}",
        stderr(&out)
    );

    // An allowed command still runs.
    let out = hub.tether(&["exec", "-H", "t1", "--", "echo fine"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("t1 | fine"));
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn gone_within(pid: i32, limit: Duration) {
    let t0 = Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < limit,
            "remote process {pid} still alive after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `tether exec -H t1 -- 'echo $$; exec sleep 60'` and returns it with the remote pid.
fn start_sleeper(hub: &Daemon) -> (std::process::Child, i32) {
    let mut child = Command::new(bin("tether"))
        .args(["--socket"])
        .arg(&hub.socket)
        .args([
            "exec",
            "-H",
            "t1",
            "--timeout",
            "60s",
            "--",
            "echo $$; exec sleep 60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: i32 = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    assert!(alive(pid));
    (child, pid)
}

#[test]
fn ctrl_c_cancels_the_remote_command_and_revoke_kills_it_mid_command() {
    let hub = Daemon::start("hub", "");
    let _t1 = enrolled(&hub, "t1");
    wait_online(&hub, &["t1"]);

    let (mut cli, pid) = start_sleeper(&hub);
    kill(Pid::from_raw(cli.id() as i32), Signal::SIGINT).unwrap();
    let status = cli.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    gone_within(pid, Duration::from_secs(3));

    let (cli, pid) = start_sleeper(&hub);
    let t0 = Instant::now();
    let out = hub.tether(&["vpn", "revoke", "t1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    gone_within(pid, Duration::from_secs(1) + (Instant::now() - t0));
    let out = cli.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
