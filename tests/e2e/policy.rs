//! The policy through the real daemon and CLI: check, test, reload with a broken policy.

use std::path::PathBuf;
use std::process::Command;

use tether_e2e::{Daemon, bin, code, stderr, stdout};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../daemon/policy/examples")
        .join(name)
}

fn daemon_with_policy_file() -> (Daemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::copy(example("policy.toml"), &policy).unwrap();
    // policy_file is a top-level key: it must come before the [control] table.
    let d = Daemon::start_top(
        "hub",
        &format!("policy_file = {:?}\n", policy.display().to_string()),
        "",
    );
    std::mem::forget(dir); // the daemon's own temp dir outlives the test; keep this one too
    (d, policy)
}

#[test]
fn check_explains_denials_and_allows_with_exit_codes() {
    let (d, _policy) = daemon_with_policy_file();
    let out = d.tether(&["policy", "check", "--", "rm", "-rf", "/"]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("verdict: deny") && text.contains("no-rm-root"),
        "{text}"
    );

    // Hiding it behind chaining does not help.
    let out = d.tether(&[
        "--json",
        "policy",
        "check",
        "--",
        "true; sudo /bin/r'm' -rf -- /",
    ]);
    assert_eq!(code(&out), 2);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["decision"]["verdict"], "deny");

    // The prod scope for operators: allowed command, and one that is not on the allow list.
    let ok = d.tether(&[
        "policy",
        "check",
        "-H",
        "web1",
        "--tag",
        "env=prod",
        "--role",
        "operator",
        "--",
        "systemctl",
        "restart",
        "nginx",
    ]);
    assert_eq!(code(&ok), 0, "{}", stdout(&ok));
    let no = d.tether(&[
        "policy", "check", "-H", "web1", "--tag", "env=prod", "--role", "operator", "--",
        "apt-get", "install", "nc",
    ]);
    assert_eq!(code(&no), 2);
    assert!(
        stdout(&no).contains("builtin:not-allowed"),
        "{}",
        stdout(&no)
    );

    // Approval rules and file paths.
    let reboot = d.tether(&["--json", "policy", "check", "--", "systemctl", "reboot"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&reboot)).unwrap();
    assert_eq!(v["decision"]["verdict"], "require-approval");
    let shadow = d.tether(&["policy", "check", "--read", "/etc/../etc//shadow"]);
    assert_eq!(code(&shadow), 2);
    assert!(
        stdout(&shadow).contains("no-secrets"),
        "{}",
        stdout(&shadow)
    );

    // Decisions are counted.
    let (_, metrics) = d.request("GET", "/metrics", &[], b"");
    assert!(
        tether_e2e::dechunk(&metrics).contains("tether_policy_decisions_total{verdict=\"deny\"}")
    );
}

#[test]
fn policy_test_runs_fixtures_online_and_offline() {
    let (d, policy) = daemon_with_policy_file();
    let fixtures = example("policy-tests.toml");
    let online = d.tether(&["policy", "test", fixtures.to_str().unwrap()]);
    assert_eq!(code(&online), 0, "{}{}", stdout(&online), stderr(&online));
    assert!(stdout(&online).contains("passed"), "{}", stdout(&online));

    let offline = Command::new(bin("tether"))
        .args([
            "policy",
            "test",
            fixtures.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        code(&offline),
        0,
        "{}{}",
        stdout(&offline),
        stderr(&offline)
    );

    // A fixture that expects the wrong thing fails the run with exit 1 and names the case.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "[[case]]\nname = \"rm should be fine\"\nexpect = \"allow\"\nrequest = { kind = \"exec\", command = \"rm -rf /\", user = \"a\" }\n",
    )
    .unwrap();
    let out = Command::new(bin("tether"))
        .args([
            "policy",
            "test",
            wrong.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("rm should be fine")
            && stdout(&out).contains("expected allow, got deny"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_broken_policy_on_reload_keeps_the_old_one_and_alerts() {
    let (d, policy) = daemon_with_policy_file();
    let good = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        format!("{good}\n[[policy.deny_commands]]\nid = \"broken\"\npattern = \"(unclosed\"\n"),
    )
    .unwrap();

    let out = d.tether(&["policy", "reload"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`broken`"),
        "names the rule: {}",
        stderr(&out)
    );
    assert!(
        d.wait_log("policy_rebuild_failed"),
        "alert raised: {}",
        d.log()
    );
    // The old policy still denies.
    assert_eq!(
        code(&d.tether(&["policy", "check", "--", "rm", "-rf", "/"])),
        2
    );
    let (_, metrics) = d.request("GET", "/metrics", &[], b"");
    assert!(tether_e2e::dechunk(&metrics).contains("tether_policy_reload_failures_total 1"));

    // A valid edit is picked up.
    std::fs::write(
        &policy,
        good.replace("mode = \"enforce\"", "mode = \"warn\""),
    )
    .unwrap();
    let out = d.tether(&["policy", "reload"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = d.tether(&["--json", "policy", "check", "--", "rm", "-rf", "/"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["decision"]["verdict"], "warn");
}
