//! Approvals and just-in-time access end to end (issue #19 items 2-3): a real hub with a
//! `require-approval` rule, real targets running the commands, the real CLI as root and as
//! other uids (setpriv), a daemon restart, the audit log.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_e2e::{Daemon, bin, code, is_root, stderr, stdout};

use crate::membership::{enroll, invite, target_dir};

/// uid 4242 and 4243 are operators, 4244 is read-only; root is admin (the daemon's uid).
const ROLES: &str =
    "\n[control.roles]\noperator = [\"uid:4242\", \"uid:4243\"]\nread_only = [\"uid:4244\"]\n";
/// `echo gated …` needs an approval.
const POLICY: &str = "\n[policy]\nmode = \"enforce\"\n\n[[policy.deny_commands]]\nid = \"gated\"\npattern = '^echo gated\\b'\napproval = true\nmessage = \"gated commands need a second person\"\n";

fn can_switch_uid() -> bool {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and setpriv to act as another uid");
        return false;
    }
    true
}

fn enrolled(hub: &Daemon, name: &str) -> Daemon {
    let token = invite(hub, name, &[]);
    let (dir, config) = target_dir();
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut t = Daemon::spawn_in(dir, config, &[]);
    t.wait_ready();
    t
}

fn wait_online(hub: &Daemon, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
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

fn audit_records(d: &Daemon, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(d.dir.path().join("state/audit")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read(&path).unwrap().split(|b| *b == b'\n') {
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

fn json_of(out: &Output) -> Value {
    serde_json::from_str(stdout(out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(out), stderr(out)))
}

/// `tether exec --no-wait -H SEL -- CMD` as root: must be held for approval; returns its id.
fn ask(hub: &Daemon, sel: &str, cmd: &str) -> String {
    let out = hub.tether(&["--json", "exec", "--no-wait", "-H", sel, "--", cmd]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["state"], "pending", "{v}");
    v["approval"].as_str().unwrap().to_owned()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

fn state_of(hub: &Daemon, id: &str) -> Value {
    json_of(&hub.tether(&["--json", "approvals", "show", id]))
}

#[test]
fn approved_by_another_uid_runs_once_exactly_as_approved() {
    if !can_switch_uid() {
        return;
    }
    let hub = Daemon::start("hub", &format!("{ROLES}{POLICY}"));
    let _t1 = enrolled(&hub, "t1");
    let _t2 = enrolled(&hub, "t2");
    wait_online(&hub, &["t1", "t2"]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ran");
    let cmd = format!("echo gated >> {}", f.display());

    // A require-approval verdict holds the request and names the approval; asking again finds it.
    let id = ask(&hub, "t1", &cmd);
    assert!(id.starts_with("apr-") && id.len() == 20, "{id}");
    assert_eq!(ask(&hub, "t1", &cmd), id, "the pending request is reused");
    assert_eq!(audit_records(&hub, "approval.requested").len(), 1);
    assert!(audit_records(&hub, "exec.requested").is_empty());
    let alerts = hub.tether(&["--json", "alerts", "list"]);
    assert!(
        stdout(&alerts).contains("approval_requested"),
        "{}",
        stdout(&alerts)
    );

    // Not yet granted: refused, nothing runs.
    let early = hub.tether(&["exec", "--approval", &id, "-H", "t1", "--", &cmd]);
    assert_eq!(code(&early), 2, "{}", stderr(&early));
    assert!(
        stderr(&early).contains("pending, not granted"),
        "{}",
        stderr(&early)
    );

    // Self-approval is refused, for root (admin) too.
    let own = hub.tether(&["approvals", "approve", &id]);
    assert_eq!(code(&own), 2);
    assert!(
        stderr(&own).contains("cannot review it"),
        "{}",
        stderr(&own)
    );
    // A read-only user may not review.
    let ro = hub.tether_as(4244, 0, &["approvals", "approve", &id]);
    assert_eq!(code(&ro), 2);
    assert!(stderr(&ro).contains("cannot review"), "{}", stderr(&ro));
    assert_eq!(state_of(&hub, &id)["state"], "pending");

    let ok = hub.tether_as(
        4242,
        0,
        &["--json", "approvals", "approve", &id, "--comment", "fine"],
    );
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    assert_eq!(json_of(&ok)["state"], "granted");
    assert_eq!(audit_records(&hub, "approval.granted").len(), 1);

    // Any change of command or targets is refused, and audited.
    let other_cmd = format!("echo gated twice >> {}", f.display());
    for (sel, c) in [
        ("t1", other_cmd.as_str()),
        ("t1,t2", cmd.as_str()),
        ("t2", cmd.as_str()),
    ] {
        let out = hub.tether(&["exec", "--approval", &id, "-H", sel, "--", c]);
        assert_eq!(code(&out), 2, "{sel} {c}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("needs a new approval"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(audit_records(&hub, "approval.refused").len(), 4);
    assert_eq!(lines(&f), 0, "nothing ran");

    // Exactly as approved: runs once.
    let run = hub.tether(&["exec", "--approval", &id, "-H", "t1", "--", &cmd]);
    assert_eq!(code(&run), 0, "{}{}", stdout(&run), stderr(&run));
    assert_eq!(lines(&f), 1);
    assert_eq!(state_of(&hub, &id)["state"], "used");
    let used = audit_records(&hub, "approval.used");
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["data"]["id"], id.as_str());
    assert_eq!(
        audit_records(&hub, "exec.requested")[0]["data"]["approval"],
        id.as_str()
    );

    // Replaying the used approval is refused.
    let replay = hub.tether(&["exec", "--approval", &id, "-H", "t1", "--", &cmd]);
    assert_eq!(code(&replay), 2);
    assert!(
        stderr(&replay).contains("is used, not granted"),
        "{}",
        stderr(&replay)
    );
    assert_eq!(lines(&f), 1, "ran exactly once");

    // Without --no-wait, exec waits with a status line and runs once approved.
    let f2 = dir.path().join("waited");
    let cmd2 = format!("echo gated >> {}", f2.display());
    let child = Command::new(bin("tether"))
        .arg("--socket")
        .arg(&hub.socket)
        .args(["exec", "-H", "t2", "--", &cmd2])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pending = loop {
        let list = json_of(&hub.tether(&["--json", "approvals", "list", "--state", "pending"]));
        if let Some(a) = list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["hosts"][0] == "t2")
        {
            break a["id"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no pending approval appeared: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ok = hub.tether_as(4243, 0, &["approvals", "approve", &pending]);
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains(&format!("waiting for approval {pending}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(lines(&f2), 1);
    assert_eq!(state_of(&hub, &pending)["state"], "used");

    // A denial ends it; its id can't be used.
    let f3 = dir.path().join("denied");
    let cmd3 = format!("echo gated >> {}", f3.display());
    let id3 = ask(&hub, "t1", &cmd3);
    let deny = hub.tether_as(4242, 0, &["approvals", "deny", &id3, "--comment", "no"]);
    assert_eq!(code(&deny), 0, "{}", stderr(&deny));
    let late = hub.tether_as(4243, 0, &["approvals", "approve", &id3]);
    assert_eq!(code(&late), 2);
    let out = hub.tether(&["exec", "--approval", &id3, "-H", "t1", "--", &cmd3]);
    assert_eq!(code(&out), 2);
    assert_eq!(lines(&f3), 0);
    assert_eq!(audit_records(&hub, "approval.denied").len(), 1);

    // A scoped allowance lets the next matching command through without a new approval, and
    // nothing wider. It can't be granted wider than its request either.
    let f4 = dir.path().join("allowed");
    let cmd4 = format!("echo gated one >> {}", f4.display());
    let id4 = ask(&hub, "t1", &cmd4);
    let pattern = format!("echo gated [a-z]+ >> {}", f4.display());
    let wide = hub.tether_as(
        4242,
        0,
        &[
            "approvals",
            "approve",
            &id4,
            "--for",
            "1h",
            "--allow-pattern",
            &pattern,
            "--allow-hosts",
            "t1,t2",
        ],
    );
    assert_eq!(code(&wide), 2, "{}", stderr(&wide));
    assert!(stderr(&wide).contains("never wider"), "{}", stderr(&wide));
    let loose = hub.tether_as(
        4242,
        0,
        &[
            "approvals",
            "approve",
            &id4,
            "--for",
            "1h",
            "--allow-pattern",
            "echo other.*",
        ],
    );
    assert_eq!(code(&loose), 2, "{}", stderr(&loose));
    let ok = hub.tether_as(
        4242,
        0,
        &[
            "--json",
            "approvals",
            "approve",
            &id4,
            "--for",
            "1h",
            "--allow-pattern",
            &pattern,
            "--allow-hosts",
            "t1",
        ],
    );
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    assert_eq!(json_of(&ok)["allowance"]["hosts"][0], "t1");
    let run = hub.tether(&["exec", "--approval", &id4, "-H", "t1", "--", &cmd4]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    let next = format!("echo gated two >> {}", f4.display());
    let run = hub.tether(&["exec", "--no-wait", "-H", "t1", "--", &next]);
    assert_eq!(code(&run), 0, "the allowance covers it: {}", stderr(&run));
    assert_eq!(lines(&f4), 2);
    let via_allowance = audit_records(&hub, "approval.used");
    assert!(
        via_allowance
            .iter()
            .any(|r| r["data"]["allowance"] == true && r["data"]["id"] == id4.as_str())
    );
    // Wider in hosts or in command: a new approval is needed.
    let out = hub.tether(&["--json", "exec", "--no-wait", "-H", "t1,t2", "--", &next]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(json_of(&out)["state"], "pending");
    let other = format!("echo gated two; echo x >> {}", f4.display());
    let out = hub.tether(&["--json", "exec", "--no-wait", "-H", "t1", "--", &other]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(lines(&f4), 2);
    // Another caller does not get the allowance.
    let out = hub.tether_as(
        4243,
        0,
        &["--json", "exec", "--no-wait", "-H", "t1", "--", &next],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(lines(&f4), 2);

    let verify = hub.tether(&["audit", "verify"]);
    assert_eq!(code(&verify), 0, "{}", stderr(&verify));
}

#[test]
fn a_quorum_of_two_expiry_and_a_restart_between_request_and_approval() {
    if !can_switch_uid() {
        return;
    }
    let approvals =
        "\n[approvals]\nexpiry = \"8s\"\n\n[[approvals.quorum]]\nrole = \"operator\"\ncount = 2\n";
    let mut hub = Daemon::start("hub", &format!("{ROLES}{POLICY}{approvals}"));
    let _t1 = enrolled(&hub, "t1");
    wait_online(&hub, &["t1"]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ran");
    let cmd = format!("echo gated >> {}", f.display());

    // Quorum of two distinct operators.
    let id = ask(&hub, "t1", &cmd);
    let first = hub.tether_as(4242, 0, &["--json", "approvals", "approve", &id]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert_eq!(json_of(&first)["state"], "pending");
    assert_eq!(json_of(&first)["quorum_met"], false);
    let again = hub.tether_as(4242, 0, &["approvals", "approve", &id]);
    assert_eq!(code(&again), 2);
    assert!(
        stderr(&again).contains("already reviewed"),
        "{}",
        stderr(&again)
    );
    let early = hub.tether(&["exec", "--approval", &id, "-H", "t1", "--", &cmd]);
    assert_eq!(code(&early), 2);
    let second = hub.tether_as(4243, 0, &["--json", "approvals", "approve", &id]);
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(json_of(&second)["state"], "granted");
    // Four clients race to use it at once: exactly one runs.
    let racers: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new(bin("tether"))
                .arg("--socket")
                .arg(&hub.socket)
                .args(["exec", "--approval", &id, "-H", "t1", "--", &cmd])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> = racers
        .into_iter()
        .map(|c| code(&c.wait_with_output().unwrap()))
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 2).count(), 3, "{codes:?}");
    assert_eq!(lines(&f), 1, "ran exactly once");

    // Approving after expiry is refused; the sweeper records the expiry.
    let id2 = ask(&hub, "t1", &format!("echo gated late >> {}", f.display()));
    std::thread::sleep(Duration::from_secs(9));
    let late = hub.tether_as(4242, 0, &["approvals", "approve", &id2]);
    assert_eq!(code(&late), 2);
    assert!(
        stderr(&late).contains("expired") || stderr(&late).contains("is expired"),
        "{}",
        stderr(&late)
    );
    assert_eq!(state_of(&hub, &id2)["state"], "expired");
    assert!(
        audit_records(&hub, "approval.expired")
            .iter()
            .any(|r| r["data"]["id"] == id2.as_str())
    );

    // A restart between request and approval: still pending, approvable, bound the same.
    // (The restarted hub listens on new loopback ports, so its targets can't find it again in
    // this test; the other test covers running.)
    let f3 = dir.path().join("restart");
    let cmd3 = format!("echo gated >> {}", f3.display());
    let id3 = ask(&hub, "t1", &cmd3);
    let before = state_of(&hub, &id3);
    hub.restart();
    let after = state_of(&hub, &id3);
    assert_eq!(after["state"], "pending");
    assert_eq!(after["binding"], before["binding"]);
    assert_eq!(after["expires_at"], before["expires_at"]);
    for uid in [4242, 4243] {
        let ok = hub.tether_as(uid, 0, &["approvals", "approve", &id3]);
        assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    }
    assert_eq!(state_of(&hub, &id3)["state"], "granted");
    // Still bound to exactly the approved request.
    let other = hub.tether(&[
        "exec",
        "--approval",
        &id3,
        "-H",
        "t1",
        "--",
        "echo gated other",
    ]);
    assert_eq!(code(&other), 2);
    assert!(
        stderr(&other).contains("needs a new approval"),
        "{}",
        stderr(&other)
    );
    assert_eq!(state_of(&hub, &id3)["state"], "granted");
}

#[test]
fn a_just_in_time_role_granted_for_2s_is_gone_at_3s_without_any_action() {
    if !can_switch_uid() {
        return;
    }
    // 4245 is read-only too here.
    let hub = Daemon::start(
        "hub",
        &ROLES.replace("[\"uid:4244\"]", "[\"uid:4244\", \"uid:4245\"]"),
    );
    let role =
        |d: &Daemon| json_of(&d.tether_as(4244, 0, &["--json", "status"]))["caller_role"].clone();
    assert_eq!(role(&hub), "read_only");

    let bad = hub.tether_as(
        4244,
        0,
        &[
            "access", "request", "--role", "operator", "--for", "2s", "--reason", "",
        ],
    );
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    let out = hub.tether_as(
        4244,
        0,
        &[
            "--json",
            "access",
            "request",
            "--role",
            "operator",
            "--for",
            "2s",
            "--reason",
            "incident 42",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = json_of(&out)["id"].as_str().unwrap().to_owned();
    // Not by the requester; not by someone without the role.
    let own = hub.tether_as(4244, 0, &["access", "approve", &id]);
    assert_eq!(code(&own), 2);
    assert!(
        stderr(&own).contains("cannot review it"),
        "{}",
        stderr(&own)
    );
    assert_eq!(role(&hub), "read_only");

    let ok = hub.tether_as(4242, 0, &["access", "approve", &id]);
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    let granted = Instant::now();
    assert_eq!(role(&hub), "operator");
    let status = json_of(&hub.tether(&["--json", "status"]));
    assert_eq!(status["access_grants"][0]["holder"]["uid"], 4244);
    assert_eq!(status["access_grants"][0]["role"], "operator");
    let text = stdout(&hub.tether(&["status"]));
    assert!(text.contains("granted:   operator to uid:4244"), "{text}");
    // Operator routes work meanwhile: exec gets past RBAC (and finds no hosts).
    let exec = hub.tether_as(4244, 0, &["exec", "-H", "all", "--", "true"]);
    assert!(
        stderr(&exec).contains("matches no enrolled"),
        "{}",
        stderr(&exec)
    );

    // Nobody acts; at 3 s the role is gone.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(granted.elapsed()));
    assert_eq!(role(&hub), "read_only");
    let exec = hub.tether_as(4244, 0, &["exec", "-H", "all", "--", "true"]);
    assert!(
        stderr(&exec).contains("role read_only"),
        "{}",
        stderr(&exec)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while audit_records(&hub, "access.expired").is_empty() {
        assert!(Instant::now() < deadline, "no access.expired record");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(audit_records(&hub, "access.requested").len(), 1);
    assert_eq!(audit_records(&hub, "access.granted").len(), 1);
    assert!(
        json_of(&hub.tether(&["--json", "status"]))["access_grants"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Revoke: a grant ends early when its holder (or an admin) says so.
    let out = hub.tether_as(
        4244,
        0,
        &[
            "--json", "access", "request", "--role", "operator", "--for", "1h", "--reason",
            "deploy",
        ],
    );
    let id = json_of(&out)["id"].as_str().unwrap().to_owned();
    assert_eq!(code(&hub.tether(&["access", "approve", &id])), 0);
    assert_eq!(role(&hub), "operator");
    // A just-in-time operator can't grant operator to someone else (no chains).
    let out = hub.tether_as(
        4245,
        0,
        &[
            "--json", "access", "request", "--role", "operator", "--for", "1h", "--reason", "x",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let other_id = json_of(&out)["id"].as_str().unwrap().to_owned();
    let chain = hub.tether_as(4244, 0, &["access", "approve", &other_id]);
    assert_eq!(code(&chain), 2, "{}", stderr(&chain));
    assert!(
        stderr(&chain).contains("role read_only cannot review"),
        "{}",
        stderr(&chain)
    );
    let other = hub.tether_as(4243, 0, &["access", "revoke", &id]);
    assert_eq!(code(&other), 2, "only the holder or an admin");
    let rv = hub.tether_as(4244, 0, &["access", "revoke", &id]);
    assert_eq!(code(&rv), 0, "{}", stderr(&rv));
    assert_eq!(role(&hub), "read_only");
    assert_eq!(audit_records(&hub, "access.revoked").len(), 1);
    let list = json_of(&hub.tether(&["--json", "access", "list"]));
    assert_eq!(list["approvals"].as_array().unwrap().len(), 3);
}
