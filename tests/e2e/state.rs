//! Issue 14 §6: the state directory is never silently replaced and never shared.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use sha2::{Digest as _, Sha256};
use tether_e2e::{Daemon, bin, code, config_text, stderr};

/// Every file under `dir` with the SHA-256 of its content, sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let data = std::fs::read(&p).unwrap_or_default();
                out.push((p, hex::encode(Sha256::digest(&data))));
            }
        }
    }
    out.sort();
    out
}

/// Runs `tetherd run` with `config` to its end (it must refuse), returning (exit code, output).
fn refused_start(config: &Path) -> (i32, String) {
    let out = Command::new(bin("tetherd"))
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_lost_vault_index_never_leads_to_fresh_keys_over_the_old_ones() {
    let mut d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    let state = d.dir.path().join("state");
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(5)).is_some());
    let index = state.join("vault/index.json");
    let saved = std::fs::read(&index).unwrap();
    std::fs::remove_file(&index).unwrap();
    let before = tree(&state);

    let (rc, err) = refused_start(&d.config);
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("vault/index.json")
            && err.contains("incomplete")
            && err.contains("changed nothing"),
        "{err}"
    );
    assert_eq!(
        tree(&state),
        before,
        "a refused start changed the state dir"
    );

    // Restored, the same keys are used: the old log still verifies.
    std::fs::write(&index, saved).unwrap();
    let mut child = Command::new(bin("tetherd"))
        .args(["run", "--config"])
        .arg(&d.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let verify = loop {
        let v = Command::new(bin("tether"))
            .arg("--socket")
            .arg(&d.socket)
            .args(["audit", "verify"])
            .output()
            .unwrap();
        if code(&v) == 0 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code(&verify), 0, "{}", stderr(&verify));
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_with_the_first_ones_pid() {
    let d = Daemon::start("hub", "");
    // Another socket and other ports, the same state_dir.
    let other = tempfile::tempdir().unwrap();
    let mut text = config_text("hub", other.path(), "");
    text = text.replace(
        &format!("state_dir = \"{}\"", other.path().join("state").display()),
        &format!("state_dir = \"{}\"", d.dir.path().join("state").display()),
    );
    let config = other.path().join("tetherd.toml");
    std::fs::write(&config, text).unwrap();
    let audit = d.dir.path().join("state/audit");
    // The records (up to the writer's zero tail); the head may be rewritten by the live daemon.
    let records = || {
        let mut out = Vec::new();
        for (p, _) in tree(&audit) {
            if p.extension().is_some_and(|e| e == "jsonl") {
                let data = std::fs::read(&p).unwrap();
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                out.push((p, data[..end].to_vec()));
            }
        }
        out
    };
    let before = records();
    let (rc, err) = refused_start(&config);
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("in use by another tetherd") && err.contains(&format!("pid {}", d.pid())),
        "{err}"
    );
    assert_eq!(
        records(),
        before,
        "the refused daemon wrote to the audit log"
    );
    assert!(!other.path().join("tetherd.sock").exists());
    let v = d.tether(&["audit", "verify"]);
    assert_eq!(code(&v), 0, "{}", stderr(&v));
}
