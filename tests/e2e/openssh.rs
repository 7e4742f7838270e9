//! The stock OpenSSH client through `tether proxy`, and `tether ssh`, end to end: a real hub and
//! a real target on loopback, SSH inside the userspace tunnel, the operator's `ssh` configured
//! only by what `tether ssh-config` prints, real pty sessions (`ssh -tt`, and `tether ssh` in a
//! tmux pane as a person would use it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_e2e::{Daemon, bin, code, is_root, stderr, stdout};

use crate::exec::{audit_records, enrolled, wait_online};

pub(crate) fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs the stock `ssh` with only `config` (`-F`), feeding `input` on stdin.
fn ssh(config: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new("ssh")
        .arg("-F")
        .arg(config)
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write to ssh");
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        assert!(Instant::now() < deadline, "ssh {args:?} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records of `kind` that mention `needle` anywhere.
fn mentioning(d: &Daemon, kind: &str, needle: &str) -> Vec<Value> {
    audit_records(d, kind)
        .into_iter()
        .filter(|r| r.to_string().contains(needle))
        .collect()
}

/// `tether ssh-config` output, written to a file in the hub's dir.
pub(crate) fn client_config(hub: &Daemon) -> PathBuf {
    let out = hub.tether(&["ssh-config"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let path = hub.dir.path().join("ssh_config");
    std::fs::write(&path, stdout(&out)).unwrap();
    path
}

#[test]
fn stock_ssh_through_tether_proxy_runs_commands_and_pty_sessions_under_policy_and_audit() {
    if !have("ssh") {
        eprintln!(
            "SKIP: the OpenSSH client (ssh) is not installed (apt-get install openssh-client)"
        );
        return;
    }
    let policy = "\n[policy]\nmode = \"enforce\"\n\n[[policy.deny_commands]]\nid = \"no-touch\"\npattern = '^touch\\b'\nmessage = \"no touching\"\n";
    let hub = Daemon::start("hub", policy);
    let t1 = enrolled(&hub, "t1");
    wait_online(&hub, &["t1"]);
    let config = client_config(&hub);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("Host t1\n"), "{text}");
    assert!(text.contains("proxy %h"), "{text}");
    assert!(text.contains("StrictHostKeyChecking yes"), "{text}");

    // The published key is the hub's operator key; the JSON form carries the same line.
    let json: Value =
        serde_json::from_str(&stdout(&hub.tether(&["--json", "ssh-config"]))).unwrap();
    let line = json["known_hosts"].as_str().unwrap().to_owned();
    assert!(line.starts_with(json["host_key_alias"].as_str().unwrap()));
    assert!(line.contains(" ssh-ed25519 "), "{line}");
    assert_eq!(json["hosts"], serde_json::json!(["t1"]));

    // uname -a: the config alone (KnownHostsCommand asks the hub for its key).
    let out = ssh(&config, &["t1", "uname -a"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Linux "), "{}", stdout(&out));

    // The known_hosts line from `tether ssh-config --known-hosts` in a file of its own, strict.
    let kh = hub.dir.path().join("known_hosts");
    let printed = stdout(&hub.tether(&["ssh-config", "--known-hosts"]));
    assert_eq!(printed.trim(), line);
    std::fs::write(&kh, &printed).unwrap();
    let file_only = [
        "-o",
        "KnownHostsCommand=none",
        "-o",
        &format!("UserKnownHostsFile={}", kh.display()),
        "-o",
        "StrictHostKeyChecking=yes",
    ];
    let mut args = file_only.to_vec();
    args.extend(["t1", "echo out; echo err >&2; exit 7"]);
    let out = ssh(&config, &args, b"");
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err"), "{}", stderr(&out));

    // Without the key, strict checking refuses: the hub's key really is checked.
    std::fs::write(&kh, "").unwrap();
    let mut args = file_only.to_vec();
    args.extend(["t1", "true"]);
    let out = ssh(&config, &args, b"");
    assert_eq!(code(&out), 255);
    assert!(
        stderr(&out).contains("Host key verification failed"),
        "{}",
        stderr(&out)
    );

    // A pty session: the shell gets typed input on a real terminal and its exit status is ours.
    let out = ssh(
        &config,
        &["-tt", "t1"],
        b"test -t 0 && echo tty-$((40+2)); exit 3\n",
    );
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("tty-42"), "{}", stdout(&out));
    // `ssh -tt HOST CMD`: the command on a pty.
    let out = ssh(&config, &["-tt", "t1", "echo hi; exit 3"], b"");
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("hi"), "{}", stdout(&out));

    // Both pty sessions were recorded on the hub: listed, their chains complete, and each
    // vouched for by its session.close record (file SHA-256); playback shows what was shown.
    let out = hub.tether(&["--json", "sessions", "list", "-H", "t1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let sessions = list["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2, "{list}");
    let closes = audit_records(&hub, "session.close");
    for s in &sessions {
        let id = s["id"].as_str().unwrap();
        let d: Value =
            serde_json::from_str(&stdout(&hub.tether(&["--json", "sessions", "show", id])))
                .unwrap();
        assert_eq!(d["state"], "complete", "{d}");
        assert!(
            closes.iter().any(|c| c["data"]["recording"]["id"] == id
                && c["data"]["recording"]["sha256"] == d["sha256"]),
            "no session.close vouches for {id}: {closes:?}"
        );
    }
    let one = sessions
        .iter()
        .find(|s| s["command"] == "echo hi; exit 3")
        .expect("the command session is listed with its command");
    let played = hub.tether(&[
        "sessions",
        "play",
        one["id"].as_str().unwrap(),
        "--speed",
        "1000",
    ]);
    assert_eq!(code(&played), 0, "{}", stderr(&played));
    assert!(stdout(&played).contains("hi"), "{}", stdout(&played));
    // A session that can't be recorded does not run: the recordings directory replaced by a
    // file makes the recorder fail, and the shell is refused with the reason.
    let rec_dir = hub.dir.path().join("state/recordings");
    let aside = hub.dir.path().join("recordings-aside");
    std::fs::rename(&rec_dir, &aside).unwrap();
    std::fs::write(&rec_dir, b"not a directory").unwrap();
    let out = ssh(&config, &["-tt", "t1", "echo unrecorded"], b"");
    assert_ne!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(!stdout(&out).contains("unrecorded"), "{}", stdout(&out));
    assert!(
        format!("{}{}", stdout(&out), stderr(&out)).contains("can't be recorded"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    std::fs::remove_file(&rec_dir).unwrap();
    std::fs::rename(&aside, &rec_dir).unwrap();

    // A denied command never leaves the hub: exit 2, the reason on stderr, exec.denied on the
    // hub, nothing on the target.
    let marker = t1.dir.path().join("touched");
    let cmd = format!("touch {}", marker.display());
    let out = ssh(&config, &["t1", &cmd], b"");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("no touching"), "{}", stderr(&out));
    assert!(!marker.exists(), "the denied command ran");
    assert_eq!(mentioning(&hub, "exec.denied", "touched").len(), 1);
    assert!(mentioning(&hub, "exec.requested", "touched").is_empty());
    let target_log = std::fs::read_dir(t1.dir.path().join("state/audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(!target_log.contains("touched"), "the target heard of it");

    // The same audit trail as `tether exec`, plus the sessions and the proxy connections.
    let requested = mentioning(&hub, "exec.requested", "uname -a");
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert_eq!(requested[0]["data"]["via"], "ssh");
    let results = mentioning(&hub, "exec.result", "exit 7");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["host"], "t1");
    assert_eq!(results[0]["data"]["exit_code"], 7);
    assert_eq!(results[0]["data"]["stdout_bytes"], 4);
    // Two sessions ran; the third (unrecordable) was opened and closed without running.
    assert_eq!(audit_records(&hub, "session.open").len(), 3);
    let closes = audit_records(&hub, "session.close");
    assert_eq!(closes.len(), 3);
    assert_eq!(
        closes
            .iter()
            .filter(|c| c["data"]["exit_code"] == 3)
            .count(),
        2
    );
    assert_eq!(
        closes
            .iter()
            .filter(|c| c["data"]["error"] == "recording_failed")
            .count(),
        1
    );
    assert!(audit_records(&hub, "proxy.open").len() >= 6);
    // The target audited its side too.
    assert_eq!(audit_records(&t1, "session.open").len(), 2);
    assert!(!mentioning(&t1, "exec.received", "uname -a").is_empty());
}

#[test]
fn tether_ssh_returns_the_remote_exit_code_and_gives_a_terminal_in_tmux() {
    let hub = Daemon::start("hub", "");
    let _t1 = enrolled(&hub, "t1");
    wait_online(&hub, &["t1"]);

    // Without a terminal: the command runs with stdout and stderr apart; its code is ours.
    let out = hub.tether(&["ssh", "t1", "--", "echo hello; echo oops >&2; exit 5"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n");
    assert!(stderr(&out).contains("oops"), "{}", stderr(&out));
    // ...decided and recorded exactly like `tether exec`.
    let requested = audit_records(&hub, "exec.requested");
    assert!(requested.iter().any(|r| r["data"]["via"] == "tether-ssh"));
    let result = audit_records(&hub, "exec.result");
    assert!(
        result
            .iter()
            .any(|r| r["data"]["exit_code"] == 5 && r["data"]["stdout_bytes"] == 6)
    );
    // No shell without a terminal; unknown hosts are refused before anything runs.
    let out = hub.tether(&["ssh", "t1"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("not a terminal"), "{}", stderr(&out));
    let out = hub.tether(&["ssh", "nope", "--", "true"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("no enrolled, active host"),
        "{}",
        stderr(&out)
    );

    // In a terminal (tmux), as a person uses it: raw mode, a remote pty, resize, exit code.
    if !have("tmux") {
        eprintln!("SKIP (tmux part): tmux is not installed (apt-get install tmux)");
        return;
    }
    let sock = hub.dir.path().join("tmux.sock");
    let result = hub.dir.path().join("result");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .output()
            .expect("tmux")
    };
    let line = format!(
        "{} --socket {} ssh t1; echo EXIT=$? > {}",
        bin("tether").display(),
        hub.socket.display(),
        result.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "T",
        "-x",
        "100",
        "-y",
        "30",
        &line,
    ]);
    assert!(started.status.success(), "{}", stderr(&started));
    let screen = || stdout(&tmux(&["capture-pane", "-p", "-t", "T"]));
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !screen().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on screen:\n{}",
                screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    tmux(&[
        "send-keys",
        "-t",
        "T",
        "stty size; echo sum-$((20+3))",
        "Enter",
    ]);
    wait_for("sum-23");
    assert!(screen().contains("30 100"), "{}", screen());
    tmux(&["resize-window", "-t", "T", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux(&["send-keys", "-t", "T", "stty size", "Enter"]);
    wait_for("40 120");
    tmux(&["send-keys", "-t", "T", "exit 4", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !result.exists() {
        assert!(
            Instant::now() < deadline,
            "tether ssh did not end:\n{}",
            screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(&result).unwrap().trim(), "EXIT=4");
    let _ = tmux(&["kill-server"]);
    let opened = audit_records(&hub, "session.open");
    assert!(
        opened
            .iter()
            .any(|r| r["data"]["via"] == "tether-ssh" && r["data"]["pty"]["cols"] == 100)
    );
}

#[test]
fn a_caller_without_a_role_is_refused_at_the_proxy() {
    let hub = Daemon::start("hub", "");
    // Without the upgrade headers the route says what it needs (426), documented in openapi.yaml.
    let (status, body) = hub.request("POST", "/v1/proxy/t1", &[], b"{}");
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("upgrade_required"), "{body}");
    // An unknown host is refused before any SSH is spoken.
    let out = hub.tether(&["proxy", "nope"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("no enrolled, active host"),
        "{}",
        stderr(&out)
    );

    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP (other uid): needs root and setpriv to connect as another uid");
        return;
    }
    // uid 4242 with the socket's group but no role: 403 at the proxy, recorded.
    let out = hub.tether_as(4242, 0, &["proxy", "t1"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("has no role"), "{}", stderr(&out));
    assert!(
        audit_records(&hub, "auth.denied")
            .iter()
            .any(|r| r["data"]["path"] == "/v1/proxy/t1")
    );
    assert!(audit_records(&hub, "proxy.open").is_empty());
}

#[test]
fn a_policy_scope_with_an_allow_list_denies_shells_but_not_its_commands() {
    if !have("ssh") {
        eprintln!(
            "SKIP: the OpenSSH client (ssh) is not installed (apt-get install openssh-client)"
        );
        return;
    }
    let policy = "\n[policy]\nmode = \"enforce\"\n\n[[policy.scope]]\nid = \"admins-listed\"\nroles = [\"admin\"]\n\n  [[policy.scope.allow_commands]]\n  id = \"uptime-only\"\n  pattern = 'uptime'\n";
    let hub = Daemon::start("hub", policy);
    let t1 = enrolled(&hub, "t1");
    wait_online(&hub, &["t1"]);
    let config = client_config(&hub);
    let out = ssh(&config, &["t1", "uptime"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = ssh(&config, &["-tt", "t1"], b"echo should-not-run; exit 0\n");
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("interactive session"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("should-not-run"));
    assert_eq!(audit_records(&hub, "session.denied").len(), 1);
    assert!(audit_records(&hub, "session.open").is_empty());
    assert!(audit_records(&t1, "session.open").is_empty());
}

/// The hub's resident memory in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A pty client that stops reading while the remote prints without end (`yes`): the hub's
/// memory stays bounded (backpressure reaches the remote program), an exec on the same target
/// still completes promptly meanwhile, and once the client reads again the output flows on;
/// closing the client then ends the session cleanly.
#[test]
fn a_pty_client_that_stops_reading_neither_grows_the_hub_nor_stalls_other_work() {
    use std::io::Read;
    if !have("ssh") {
        eprintln!("SKIP: the OpenSSH client is not installed (apt-get install openssh-client)");
        return;
    }
    let hub = Daemon::start("hub", "\n[ssh]\nrecording_max_bytes = 8388608\n");
    let _t1 = enrolled(&hub, "t1");
    wait_online(&hub, &["t1"]);
    let config = client_config(&hub);
    // Warm the pooled connection, so the exec below measures a stall, not a handshake.
    let out = hub.tether(&["exec", "-H", "t1", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before = rss_kib(hub.pid());

    let mut child = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-tt",
            "t1",
            "yes",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ssh");
    let _stdin = child.stdin.take();
    let mut remote_out = child.stdout.take().expect("stdout");

    // Nobody reads for 6 s; the hub keeps serving and its memory stays bounded.
    let mut peak = before;
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let t = Instant::now();
        // Bounded, so a stall fails the test instead of hanging it.
        let out = Command::new("timeout")
            .arg("20")
            .arg(bin("tether"))
            .arg("--socket")
            .arg(&hub.socket)
            .args(["exec", "-H", "t1", "--", "echo still-here"])
            .stdin(Stdio::null())
            .output()
            .expect("run tether");
        slowest = slowest.max(t.elapsed());
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).contains("still-here"), "{}", stdout(&out));
        peak = peak.max(rss_kib(hub.pid()));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the session ended early"
    );
    let growth = peak.saturating_sub(before);
    eprintln!(
        "hub RSS before {before} KiB, peak {peak} KiB (+{growth} KiB); slowest exec meanwhile {slowest:?}"
    );
    assert!(growth < 32 * 1024, "the hub grew by {growth} KiB");
    assert!(
        slowest < Duration::from_secs(5),
        "an exec on the same target took {slowest:?} while the session was stalled"
    );

    // The client reads again: the output flows on.
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        let mut sample = Vec::new();
        while got < 8 << 20 {
            match remote_out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sample.len() < 64 {
                        sample.extend_from_slice(&buf[..n.min(64)]);
                    }
                    got += n;
                }
            }
        }
        (got, sample)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "the output did not flow again");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (got, sample) = reader.join().unwrap();
    assert!(got >= 8 << 20, "only {got} bytes after reading again");
    assert!(
        String::from_utf8_lossy(&sample).contains("y\r\n"),
        "{sample:?}"
    );
    let after = rss_kib(hub.pid());
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "the hub grew to {after} KiB from {before} KiB"
    );

    // Closing the client ends the session on the hub (session.close written).
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while audit_records(&hub, "session.close").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no session.close after the client went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
