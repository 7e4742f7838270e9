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
        "role = \"hubb\"\nstate_dir = \"relative\"\n[control]\nsocket = 7\nidle_timeout_secs = \"soon\"\ncolour = \"blue\"\n[control.roles]\noperator = [\"user:\"]\n",
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
