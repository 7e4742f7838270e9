//! Config validation through the real binaries; the shipped examples stay valid.

use std::path::PathBuf;
use std::process::Command;

use tether_e2e::{bin, code, stderr, stdout};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn every_shipped_example_config_checks_clean() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected hub and target examples, found {files:?}"
    );
    let out = Command::new(bin("tether"))
        .args(["config", "check"])
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).matches(": ok").count(), files.len());
}

#[test]
fn check_reports_every_problem_with_key_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "role = \"hubb\"\nstate_dir = 5\n[control]\nsocket = 7\nidle_timeout_secs = \"soon\"\ncolour = \"blue\"\n[control.roles]\noperator = [\"user:\"]\n",
    )
    .unwrap();
    let out = Command::new(bin("tether"))
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    let file = f.display().to_string();
    for (line, key) in [
        (1, "role"),
        (2, "state_dir"),
        (4, "control.socket"),
        (5, "control.idle_timeout_secs"),
        (6, "control.colour"),
        (8, "control.roles.operator[0]"),
    ] {
        assert!(
            err.contains(&format!("{file}:{line}: {key}: ")),
            "missing {key} at line {line}:\n{err}"
        );
    }
    // JSON output carries the same problems.
    let out = Command::new(bin("tether"))
        .args(["--json", "config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["ok"], false);
    assert_eq!(v[0]["problems"].as_array().unwrap().len(), 6);
}

#[test]
fn tetherd_refuses_to_start_with_a_bad_config_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &f,
        format!(
            "role = \"hub\"\nstate_dir = {:?}\nunknown = true\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(bin("tetherd"))
        .args(["run", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("unknown (line 3): unknown key"),
        "{}",
        stderr(&out)
    );
    assert!(
        !state.exists(),
        "nothing is created for a config that does not validate"
    );

    let missing = Command::new(bin("tetherd"))
        .args(["run", "--config", "/nonexistent/t.toml"])
        .output()
        .unwrap();
    assert_eq!(code(&missing), 2);
    assert!(
        stderr(&missing).contains("cannot read config file /nonexistent/t.toml"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn a_socket_in_a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("tetherd"))
        .args(["run", "--role", "hub", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("no/such/dir/t.sock"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("directory") && stderr(&out).contains("does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_show_from_a_file_redacts_and_uses_env() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "role = \"target\"\nstate_dir = \"/var/lib/x\"\n").unwrap();
    let out = Command::new(bin("tether"))
        .args(["config", "show", "--file"])
        .arg(&f)
        .env("TETHER_LOG__LEVEL", "debug")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("role = \"target\""), "{text}");
    assert!(text.contains("level = \"debug\""), "env applied: {text}");
}

/// A daemon started with a relative `--config` (as `cd /etc/tether && tetherd run --config
/// hub.toml`), whose file uses relative paths, reads and writes everything beside the file:
/// relative paths in a config file mean its directory, whatever the working directory, and
/// what the daemon shows names the resolved absolute paths. Checked for a hub (state dir,
/// socket, policy file, the vault key that sits beside the config file by default, a reload)
/// and a relay (allowlist, its state dir's certificate, seen the same by `tetherd relay show`
/// from another directory).
#[test]
fn relative_config_paths_resolve_against_the_config_files_directory() {
    use tether_e2e::Daemon;
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-rel-")
        .tempdir()
        .unwrap();
    let conf = dir.path().join("conf");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(
        conf.join("policy.toml"),
        "[policy]\nmode = \"enforce\"\n[[policy.deny_commands]]\nid = \"no-reboot\"\npattern = \"^reboot\"\n",
    )
    .unwrap();
    std::fs::write(
        conf.join("hub.toml"),
        "role = \"hub\"\nstate_dir = \"hub-state\"\npolicy_file = \"policy.toml\"\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n[enroll]\nlisten = \"127.0.0.1:0\"\n\
         [control]\nsocket = \"run/hub.sock\"\n[vault]\nbackend = \"file\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(conf.join("run")).unwrap();
    let socket = conf.join("run/hub.sock");
    // Started in the config file's directory with a bare file name: the case that put the
    // vault key somewhere else.
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = Daemon::spawn_from(hub_dir, &conf, "hub.toml".into(), socket.clone(), &[]);
    hub.wait_ready();
    assert!(conf.join("hub-state").is_dir(), "state_dir beside the file");
    assert!(
        conf.join("vault.key").is_file(),
        "the vault key beside the config file; log:\n{}",
        hub.log()
    );
    assert!(!elsewhere.join("vault.key").exists());
    // What the daemon shows is the resolved path.
    let out = hub.tether(&["--json", "config", "show"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let shown = stdout(&out);
    for p in [
        conf.join("hub-state"),
        conf.join("run/hub.sock"),
        conf.join("policy.toml"),
    ] {
        assert!(
            shown.contains(&p.display().to_string()),
            "{} not in:\n{shown}",
            p.display()
        );
    }
    // The policy file was read from beside the config file.
    let out = hub.tether(&["policy", "check", "--", "reboot", "now"]);
    assert!(
        stdout(&out).contains("no-reboot"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // A reload re-reads the same relative file from the same directory.
    hub.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(hub.wait_log("SIGHUP: config reloaded"), "{}", hub.log());
    assert!(!hub.log().contains("reload failed"), "{}", hub.log());
    drop(hub);

    // A relay started from another directory with `--config ../conf/relay.toml`.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(conf.join("allowed-keys"), "# none yet\n").unwrap();
    std::fs::write(
        conf.join("relay.toml"),
        format!(
            "role = \"relay\"\nstate_dir = \"relay-state\"\n[control]\nsocket = \"run/relay.sock\"\n\
             [relay]\nlisten = \"127.0.0.1:{port}\"\nallowlist = \"allowed-keys\"\n"
        ),
    )
    .unwrap();
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = Daemon::spawn_from(
        relay_dir,
        &elsewhere,
        "../conf/relay.toml".into(),
        conf.join("run/relay.sock"),
        &[],
    );
    // A relay serves no control socket: its log says when it is ready.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !relay.log().contains("tetherd relay ready") {
        assert!(std::time::Instant::now() < deadline, "{}", relay.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(conf.join("relay-state").is_dir(), "{}", relay.log());
    assert!(
        relay
            .log()
            .contains(&conf.join("relay-state").display().to_string()),
        "the log names the resolved path: {}",
        relay.log()
    );
    assert!(!elsewhere.join("relay-state").exists());
    // `tetherd relay show` run from yet another directory with the absolute path sees the
    // same state (the certificate the relay generated there).
    let out = Command::new(bin("tetherd"))
        .args(["relay", "show", "--json", "--config"])
        .arg(conf.join("relay.toml"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let pin = v["cert_sha256"].as_str().unwrap();
    assert!(relay.log().contains(pin), "{pin} not in:\n{}", relay.log());
    // `tether config check` on a relative path reports problems with the resolved path.
    std::fs::write(
        elsewhere.join("bad.toml"),
        "role = \"target\"\n[files]\nallowed_roots = [\"data/../other\"]\n",
    )
    .unwrap();
    let out = Command::new(bin("tether"))
        .args(["config", "check", "bad.toml"])
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert_ne!(code(&out), 0);
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains(&elsewhere.join("data").display().to_string()),
        "{text}"
    );
}
