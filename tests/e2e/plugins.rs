//! WASM policy plugins inside the real daemon: real components from plugins/build.sh.

use std::process::Command;

use tether_e2e::{Daemon, code, plugin_component, stderr, stdout};

#[test]
fn policy_plugins_vote_after_the_regex_rules_and_reload_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    let write = |body: &str| std::fs::write(&manifest, body).unwrap();
    write(&format!(
        "allow_unsigned = true\n\n[[plugin]]\nname = \"change-window\"\nkind = \"policy\"\npath = {:?}\n[plugin.config]\nwindows = \"\"\nticket_pattern = \"CHG-*\"\n",
        plugin_component("change_window").display().to_string()
    ));
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "",
    );

    // A write (service restart) with no maintenance window: the plugin denies; a read abstains.
    let out = d.tether(&[
        "--json",
        "policy",
        "check",
        "--",
        "systemctl",
        "restart",
        "nginx",
    ]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["decision"]["verdict"], "deny");
    assert!(
        v["decision"]["rule_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "plugin:change-window"),
        "{v}"
    );
    let ok = d.tether(&["policy", "check", "--", "uptime"]);
    assert_eq!(code(&ok), 0, "{}", stdout(&ok));

    let list = d.tether(&["--json", "plugin", "list"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(v["plugins"][0]["name"], "change-window");
    assert!(v["plugins"][0]["calls"].as_u64().unwrap() >= 2);

    // A broken manifest keeps the loaded set; a fixed one swaps to it.
    write(
        "allow_unsigned = true\n[[plugin]]\nname = \"x\"\nkind = \"policy\"\npath = \"/nonexistent.wasm\"\n",
    );
    let bad = d.tether(&["plugin", "reload"]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("previous plugins stay loaded"),
        "{}",
        stderr(&bad)
    );
    assert_eq!(
        code(&d.tether(&["policy", "check", "--", "systemctl", "restart", "nginx"])),
        2
    );
    write(&format!(
        "allow_unsigned = true\n[[plugin]]\nname = \"deny-all\"\nkind = \"policy\"\npath = {:?}\n",
        plugin_component("deny_all").display().to_string()
    ));
    assert_eq!(code(&d.tether(&["plugin", "reload"])), 0);
    let out = d.tether(&["policy", "check", "--", "uptime"]);
    assert_eq!(code(&out), 2);
    assert!(
        stdout(&out).contains("deny-all says no"),
        "{}",
        stdout(&out)
    );

    // Loads and reloads are on record.
    let audit = stdout(&d.tether(&["--json", "audit", "tail", "--type", "plugin.*"]));
    assert!(
        audit.contains("\"plugin.load\"") && audit.matches("\"plugin.reload\"").count() == 2,
        "{audit}"
    );
}

#[test]
fn an_unsigned_plugin_without_allow_unsigned_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[plugin]]\nname = \"deny-all\"\nkind = \"policy\"\npath = {:?}\n",
            plugin_component("deny_all").display().to_string()
        ),
    )
    .unwrap();
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        tether_e2e::config_text_top(
            "hub",
            dir.path(),
            &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
            "",
        ),
    )
    .unwrap();
    let out = Command::new(tether_e2e::bin("tetherd"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("plugins:") && stderr(&out).to_lowercase().contains("sign"),
        "{}",
        stderr(&out)
    );
}

fn manifest_entry(name: &str, kind: &str, component_name: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = {:?}\n{extra}\n",
        plugin_component(component_name).display().to_string()
    )
}

#[test]
fn enrollment_hooks_tag_or_refuse_enrollments_and_reload_takes_effect() {
    use crate::membership::{enroll, invite, json, target_dir};
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    let write = |body: &str| std::fs::write(&manifest, body).unwrap();
    write(&format!(
        "allow_unsigned = true\n\n{}",
        manifest_entry("enroll-tagger", "enrollment_hook", "enroll_tagger", "")
    ));
    let hub = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "",
    );

    // Approved: the plugin's tag joins the invite's tags in the host record.
    let token = invite(&hub, "web1", &["--tag", "env=test"]);
    let (_t1, config) = target_dir();
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let host = json(&hub.tether(&["--json", "hosts", "show", "web1"]));
    assert_eq!(host["tags"]["approved-by"], "plugin", "{host}");
    assert_eq!(host["tags"]["env"], "test", "{host}");

    // Denied: the target is told why and which plugin, nothing is recorded, the deny is audited.
    let token = invite(&hub, "evil1", &[]);
    let (_t2, config) = target_dir();
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("enroll-tagger refuses evil1")
            && err.contains("enrollment plugin enroll-tagger"),
        "{err}"
    );
    let hosts = json(&hub.tether(&["--json", "hosts", "list"]));
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 1, "{hosts}");
    let audit = stdout(&hub.tether(&["--json", "audit", "tail", "--type", "enroll.*"]));
    let denied: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "enroll.denied")
        .collect();
    assert_eq!(denied.len(), 1, "{audit}");
    assert_eq!(denied[0]["data"]["plugin"], "enroll-tagger", "{audit}");
    assert_eq!(denied[0]["host"], "evil1", "{audit}");
    // The accepted host's record carries the plugin's tag.
    assert!(audit.contains("\"approved-by\""), "{audit}");

    // A reload without the hook takes effect for enrollment: the same (still pending) invite
    // now enrolls, untagged.
    write("allow_unsigned = true\n");
    let r = hub.tether(&["plugin", "reload"]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let host = json(&hub.tether(&["--json", "hosts", "show", "evil1"]));
    assert!(host["tags"].get("approved-by").is_none(), "{host}");
}

#[test]
fn a_quarantined_plugin_is_audited_listed_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n{}",
            manifest_entry("trap", "policy", "trap", "")
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "",
    );
    // quarantine_after is 5: five trapping calls (each fails closed), then it is not called.
    // One caller's failures alone never quarantine (issue 14 §3): these come from two users
    // (an admin checking on behalf of another user).
    for i in 0..5 {
        let out = if i % 2 == 0 {
            d.tether(&["policy", "check", "--", "uptime"])
        } else {
            d.tether(&["policy", "check", "--as", "bob", "--", "uptime"])
        };
        assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    }
    let list = d.tether(&["--json", "plugin", "list"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(v["plugins"][0]["quarantined"], true, "{v}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let record = loop {
        let out = d.tether(&["--json", "audit", "tail", "--type", "plugin.quarantine"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        if let Some(line) = stdout(&out).lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no plugin.quarantine record:\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let data = &record["data"];
    assert_eq!(data["plugin"], "trap", "{record}");
    assert_eq!(data["kind"], "policy", "{record}");
    assert_eq!(data["failures"], 5, "{record}");
    assert_eq!(data["error_kind"], "trap", "{record}");
    assert!(
        data["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{record}"
    );

    // Still serving: the quarantined fail-closed hook keeps denying without being called.
    let out = d.tether(&["--json", "policy", "check", "--", "uptime"]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(stdout(&out).contains("quarantined"), "{}", stdout(&out));
    assert_eq!(code(&d.tether(&["status"])), 0);
    let audit = stdout(&d.tether(&["--json", "audit", "tail", "--type", "plugin.quarantine"]));
    assert_eq!(audit.lines().count(), 1, "recorded once: {audit}");
    // Each of the five failed calls is on the record too, numbered; the quarantined calls after
    // them are not (the plugin is no longer called).
    // (Written off the plugin-call thread: give the last one a moment.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let errors = stdout(&d.tether(&["--json", "audit", "tail", "--type", "plugin.error"]));
        let mut consecutive: Vec<u64> = errors
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .inspect(|r| assert_eq!(r["data"]["error_kind"], "trap", "{r}"))
            .map(|r| r["data"]["consecutive"].as_u64().unwrap())
            .collect();
        consecutive.sort_unstable();
        if consecutive.len() >= 5 || std::time::Instant::now() > deadline {
            assert_eq!(consecutive, [1, 2, 3, 4, 5], "{errors}");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn hostile_policy_plugins_are_contained_in_the_daemon_and_it_keeps_serving() {
    // One of each: an infinite loop, unbounded allocation, stack overflow, a huge answer and a
    // trap. Every one fails closed with its own documented error kind, within its deadline, and
    // the daemon answers the next requests as before.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    let cases = [
        ("spin", "timeout", "[plugin.limits]\ntimeout_ms = 50"),
        (
            "alloc_bomb",
            "memory",
            "[plugin.limits]\nmemory_mb = 16\ntimeout_ms = 2000",
        ),
        (
            "stack_overflow",
            "trap",
            "[plugin.limits]\ntimeout_ms = 2000",
        ),
        (
            "huge_output",
            "output_too_large",
            "[plugin.limits]\nmemory_mb = 200\ntimeout_ms = 5000",
        ),
        ("trap", "trap", ""),
    ];
    let mut body = String::from("allow_unsigned = true\n\n");
    for (component, _, limits) in cases {
        body.push_str(&manifest_entry(
            &component.replace('_', "-"),
            "policy",
            component,
            limits,
        ));
    }
    std::fs::write(&manifest, body).unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "",
    );
    let status_pid = || -> serde_json::Value {
        let st: serde_json::Value =
            serde_json::from_str(&stdout(&d.tether(&["--json", "status"]))).unwrap();
        st["pid"].clone()
    };
    assert_eq!(status_pid(), d.pid(), "the daemon we started answers");
    for round in 0..2 {
        let t = std::time::Instant::now();
        let out = d.tether(&["--json", "policy", "check", "--", "uptime"]);
        assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(15),
            "round {round}: {:?}",
            t.elapsed()
        );
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["decision"]["verdict"], "deny", "{v}");
        let votes = v["plugin_votes"].as_array().unwrap();
        assert_eq!(votes.len(), cases.len(), "{v}");
        for ((component, kind, _), vote) in cases.iter().zip(votes) {
            assert_eq!(vote["plugin"], component.replace('_', "-"), "{vote}");
            let error = vote["error"].as_str().unwrap_or_default();
            assert!(
                error.starts_with(&format!("{kind}:")),
                "{component} should fail with {kind}: {vote}"
            );
        }
        assert_eq!(
            status_pid(),
            d.pid(),
            "round {round}: the same process still serves"
        );
    }
    // The failures are counted per plugin.
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&d.tether(&["--json", "plugin", "list"]))).unwrap();
    for p in list["plugins"].as_array().unwrap() {
        assert_eq!(p["errors"], 2, "{p}");
        assert_eq!(p["quarantined"], false, "{p}");
    }
}

/// `tether policy test` without `--policy` runs the fixtures in the daemon, so the loaded policy
/// plugins vote exactly as in `policy check`; `--policy FILE` checks only that file's regex rules.
/// `--ticket` reaches the plugin.
#[test]
fn policy_fixtures_in_the_daemon_count_plugin_votes_and_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"change-window\"\nkind = \"policy\"\npath = {:?}\n[plugin.config]\nwindows = \"\"\nticket_pattern = \"CHG-*\"\n",
            plugin_component("change_window").display().to_string()
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "",
    );
    let fixtures = dir.path().join("fixtures.toml");
    std::fs::write(
        &fixtures,
        r#"
[[case]]
name = "a restart outside the window needs a ticket"
expect = "deny"
expect_rules = ["plugin:change-window"]
request = { kind = "exec", command = "systemctl restart nginx" }

[[case]]
name = "with a change ticket it runs"
expect = "allow"
request = { kind = "exec", command = "systemctl restart nginx", ticket = "CHG-42" }
"#,
    )
    .unwrap();
    let out = d.tether(&["policy", "test", fixtures.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("2 of 2"), "{}", stdout(&out));

    // Offline, the regex rules alone allow the restart: the first case fails there.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[policy]\nmode = \"enforce\"\n").unwrap();
    let out = d.tether(&[
        "policy",
        "test",
        fixtures.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("FAIL case 1"), "{}", stdout(&out));

    // A broken fixture file is a usage error naming the file.
    std::fs::write(&fixtures, "[[case]]\nexpect = \"maybe\"\n").unwrap();
    let out = d.tether(&["policy", "test", fixtures.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("fixtures.toml"), "{}", stderr(&out));

    // The ticket from the command line reaches the plugin.
    let args = ["policy", "check", "--", "systemctl", "restart", "nginx"];
    assert_eq!(code(&d.tether(&args)), 2);
    let out = d.tether(&[
        "policy",
        "check",
        "--ticket",
        "CHG-42",
        "--",
        "systemctl",
        "restart",
        "nginx",
    ]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}

/// The change-window plugin on `tether:plugin@0.2.0` in the real daemon: it decides on the
/// host's parse of the command, so chaining, paths, options and wrappers don't hide a write.
#[test]
fn change_window_on_the_hosts_parse_needs_a_ticket_for_every_hidden_write() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"change-window\"\nkind = \"policy\"\npath = {:?}\n[plugin.config]\nwindows = \"\"\nticket_pattern = \"CHG-*\"\n",
            plugin_component("change_window").display().to_string()
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "",
    );
    let check = |args: &[&str]| {
        let mut a = vec!["--json", "policy", "check"];
        a.extend_from_slice(args);
        let out = d.tether(&a);
        let v: serde_json::Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
        (code(&out), v)
    };
    let by_plugin = |v: &serde_json::Value| {
        v["decision"]["rule_ids"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "plugin:change-window"))
    };

    let (c, v) = check(&["--ticket", "CHG-1", "--", "systemctl", "restart", "nginx"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["decision"]["verdict"], "allow", "{v}");
    let (c, v) = check(&["--", "systemctl", "restart", "nginx"]);
    assert_eq!((c, &v["decision"]["verdict"]), (2, &"deny".into()), "{v}");
    assert!(by_plugin(&v), "{v}");

    // Writes the 0.1.0 prefix match missed, outside the window and without a ticket.
    for cmd in [
        "true; systemctl restart nginx",
        "/usr/bin/systemctl restart x",
        "systemctl --no-block restart x",
        "env systemctl stop x",
    ] {
        let (c, v) = check(&["--", cmd]);
        assert_eq!(c, 2, "{cmd}: {v}");
        assert_eq!(v["decision"]["verdict"], "deny", "{cmd}: {v}");
        assert!(by_plugin(&v), "{cmd}: {v}");
    }
    // Reads stay allowed; a write word that is only an argument is not a write.
    for cmd in ["uptime", "echo systemctl restart x"] {
        let (c, v) = check(&["--", cmd]);
        assert_eq!(c, 0, "{cmd}: {v}");
    }
}
