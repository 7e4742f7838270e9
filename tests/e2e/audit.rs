//! The audit chain through the real daemon: what gets recorded, verify/tail/export/checkpoint,
//! tampering, who may read, kill -9 mid-storm, and a full disk.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tether_e2e::{Daemon, code, is_root, stderr, stdout};

fn records(d: &Daemon, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--json", "audit", "tail", "-n", "1000"];
    all.extend_from_slice(args);
    let out = d.tether(&all);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn day_files(d: &Daemon) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(d.dir.path().join("state/audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_daemon_records_start_reloads_secrets_and_reads_and_verify_passes() {
    let d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    d.signal(Signal::SIGHUP);
    assert!(d.wait_log("SIGHUP: config reloaded"));
    let mut set = Command::new(tether_e2e::bin("tether"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["secret", "set", "siem-token"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    set.stdin
        .take()
        .unwrap()
        .write_all(b"tok-3c1d9e-secret")
        .unwrap();
    assert!(set.wait().unwrap().success());

    let recs = records(&d, &[]);
    let kinds: Vec<&str> = recs.iter().map(|r| r["type"].as_str().unwrap()).collect();
    for k in ["daemon.start", "config.change", "secret.set", "audit.read"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let changes: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["type"] == "config.change")
        .collect();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["data"]["trigger"], "api");
    assert_eq!(changes[0]["actor"]["via"], "cli");
    assert_eq!(changes[1]["data"]["trigger"], "sighup");
    assert_eq!(changes[1]["actor"]["via"], "daemon");
    let secret = recs.iter().find(|r| r["type"] == "secret.set").unwrap();
    assert_eq!(secret["data"]["name"], "siem-token");
    assert!(
        !serde_json::to_string(&recs).unwrap().contains("tok-3c1d9e"),
        "names only, never values"
    );
    // Reading the log is itself recorded, before the records are served.
    assert_eq!(recs.last().unwrap()["type"], "audit.read");

    // Filters.
    let only = records(&d, &["--type", "secret.*"]);
    assert!(
        only.iter()
            .all(|r| r["type"].as_str().unwrap().starts_with("secret."))
    );

    let v = d.tether(&["--json", "audit", "verify"]);
    assert_eq!(code(&v), 0, "{}{}", stdout(&v), stderr(&v));
    let report: serde_json::Value = serde_json::from_str(&stdout(&v)).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["report"]["records"].as_u64().unwrap() >= 6);

    // Export is the log, byte for byte.
    let out = d.dir.path().join("export.jsonl");
    let e = d.tether(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code(&e), 0, "{}", stderr(&e));
    let exported = std::fs::read(&out).unwrap();
    let on_disk: Vec<u8> = day_files(&d)
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(
        on_disk.starts_with(&exported) && exported.len() > 100,
        "export differs from the log"
    );
}

#[test]
fn tampering_is_named_with_its_seq_and_checkpoints_catch_rollback() {
    let d = Daemon::start("hub", "");
    for _ in 0..3 {
        assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    }
    let cp_file = d.dir.path().join("checkpoint.txt");
    let cp = d.tether(&["audit", "checkpoint", "--export"]);
    assert_eq!(code(&cp), 0, "{}", stderr(&cp));
    std::fs::write(&cp_file, stdout(&cp)).unwrap();
    let ok = d.tether(&["audit", "verify", "--against", cp_file.to_str().unwrap()]);
    assert_eq!(code(&ok), 0, "{}{}", stdout(&ok), stderr(&ok));
    assert!(
        stdout(&ok).contains("contains the given checkpoint"),
        "{}",
        stdout(&ok)
    );

    // Edit one record's data: verify names the seq and says "edited".
    let file = day_files(&d).pop().unwrap();
    let original = std::fs::read_to_string(&file).unwrap();
    let line3 = original.lines().nth(2).unwrap();
    let seq3: serde_json::Value = serde_json::from_str(line3).unwrap();
    let edited = original.replacen("\"trigger\":\"api\"", "\"trigger\":\"apx\"", 1);
    assert_ne!(edited, original);
    std::fs::write(&file, &edited).unwrap();
    let broken = d.tether(&["--json", "audit", "verify"]);
    assert_eq!(code(&broken), 1, "{}", stdout(&broken));
    let r: serde_json::Value = serde_json::from_str(&stdout(&broken)).unwrap();
    assert_eq!(r["report"]["broken"]["kind"], "edited");
    assert_eq!(
        r["report"]["broken"]["seq"], 2,
        "the first config.change is seq 2 after daemon.start"
    );
    let text = d.tether(&["audit", "verify"]);
    assert!(
        stdout(&text).contains("BROKEN at seq 2: edited"),
        "{}",
        stdout(&text)
    );

    // Delete a line instead.
    let deleted: String = original
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&file, &deleted).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&stdout(&d.tether(&["--json", "audit", "verify"]))).unwrap();
    assert_eq!(r["report"]["broken"]["kind"], "deleted", "{r}");
    assert_eq!(r["report"]["broken"]["seq"], seq3["seq"]);
    std::fs::write(&file, &original).unwrap();
}

#[test]
fn only_admins_and_auditors_may_read_the_log() {
    if !is_root() {
        eprintln!("SKIP: needs root to connect as other uids");
        return;
    }
    let d = Daemon::start(
        "hub",
        "group = \"root\"\n[control.roles]\nauditor = [\"uid:4242\"]\nread_only = [\"uid:4243\"]\n",
    );
    let auditor = d.tether_as(4242, 0, &["audit", "verify"]);
    assert_eq!(
        code(&auditor),
        0,
        "{}{}",
        stdout(&auditor),
        stderr(&auditor)
    );
    let reader = d.tether_as(4243, 0, &["audit", "tail"]);
    assert_eq!(code(&reader), 2);
    assert!(
        stderr(&reader).contains("role read_only"),
        "{}",
        stderr(&reader)
    );
    // Both the read and the refusal are on record.
    let recs = records(&d, &[]);
    assert!(
        recs.iter()
            .any(|r| r["type"] == "audit.read" && r["actor"]["uid"] == 4242)
    );
    assert!(
        recs.iter()
            .any(|r| r["type"] == "auth.denied" && r["actor"]["uid"] == 4243)
    );
}

/// One raw request; true when the daemon answered 200.
fn checkpoint_request(socket: &std::path::Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"GET /v1/audit/checkpoint HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

#[test]
fn kill_9_during_a_write_storm_loses_no_acknowledged_record() {
    let mut d = Daemon::start("hub", "");
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (acked, stop, socket) = (Arc::clone(&acked), Arc::clone(&stop), d.socket.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if checkpoint_request(&socket) {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let the storm build up, then kill the daemon mid-write.
    while acked.load(Ordering::Relaxed) < 200 {
        std::thread::sleep(Duration::from_millis(10));
    }
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acknowledged = acked.load(Ordering::Relaxed);

    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let mut again = Daemon::spawn_in(dir, d.config.clone(), &[]);
    again.wait_ready();
    let v = again.tether(&["--json", "audit", "verify"]);
    assert_eq!(code(&v), 0, "verify after kill -9: {}", stdout(&v));
    let recs = records(&again, &["--type", "audit.read"]);
    let checkpoints = recs
        .iter()
        .filter(|r| r["data"]["what"] == "checkpoint")
        .count() as u64;
    assert!(
        checkpoints >= acknowledged,
        "{acknowledged} reads were acknowledged but only {checkpoints} are in the log"
    );
}

#[test]
fn a_full_disk_refuses_actions_keeps_the_chain_and_recovers() {
    if !is_root() {
        eprintln!("SKIP: needs root to mount a small tmpfs as the audit directory");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-")
        .tempdir()
        .unwrap();
    let audit_dir = dir.path().join("state/audit");
    std::fs::create_dir_all(&audit_dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tether-e2e-audit"])
        .arg(&audit_dir)
        .status()
        .unwrap();
    if !mounted.success() {
        eprintln!("SKIP: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(audit_dir.clone());
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        tether_e2e::config_text("hub", dir.path(), "\n[vault]\nbackend = \"file\"\n"),
    )
    .unwrap();
    let mut d = Daemon::spawn_in(dir, config, &[]);
    d.wait_ready();

    // Fill the file system.
    let filler = audit_dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    // The day file's last page may still have room: append until the disk really refuses.
    let mut refused_reload = false;
    for _ in 0..64 {
        let r = d.tether(&["config", "reload"]);
        if code(&r) != 0 {
            assert_eq!(code(&r), 3, "{}", stderr(&r));
            refused_reload = true;
            break;
        }
    }
    assert!(refused_reload, "the audit log never ran out of space");

    let set = |value: &[u8]| {
        let mut c = Command::new(tether_e2e::bin("tether"))
            .arg("--socket")
            .arg(&d.socket)
            .args(["secret", "set", "during-enospc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(value).unwrap();
        c.wait_with_output().unwrap()
    };
    let refused = set(b"v1");
    assert_eq!(code(&refused), 3, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("audit record could not be written"),
        "{}",
        stderr(&refused)
    );
    let list = d.tether(&["--json", "secret", "list"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    let names: Vec<&str> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"during-enospc"),
        "the refused action did not happen: {names:?}"
    );
    assert!(
        d.wait_log("audit_write_failed"),
        "alert raised: {}",
        d.log()
    );

    std::fs::remove_file(&filler).unwrap();
    let ok = set(b"v2");
    assert_eq!(code(&ok), 0, "after freeing space: {}", stderr(&ok));
    let v = d.tether(&["--json", "audit", "verify"]);
    assert_eq!(code(&v), 0, "chain intact after ENOSPC: {}", stdout(&v));
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(5));
}

#[test]
fn tail_follow_streams_new_records_until_interrupted() {
    use std::io::BufRead;
    let d = Daemon::start("hub", "");
    let mut child = Command::new(tether_e2e::bin("tether"))
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "--json",
            "audit",
            "tail",
            "-n",
            "0",
            "-f",
            "--type",
            "config.change",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Give the follower a moment to attach, then make records: only config.change must show.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a followed record within 10 s");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v["type"], "config.change",
            "filter applies to the stream: {line}"
        );
        seen.push(v["seq"].as_u64().unwrap());
    }
    assert!(seen[0] < seen[1]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted follow exits 130");
}

#[test]
fn an_open_follow_stops_when_a_reload_removes_the_callers_role() {
    if !is_root() {
        eprintln!("SKIP: needs root to connect as another uid");
        return;
    }
    let roles = "group = \"root\"\n[control.roles]\nauditor = [\"uid:4242\"]\n";
    let d = Daemon::start("hub", roles);
    // Creates the world-executable copy of the CLI that uid 4242 runs.
    let first = d.tether_as(4242, 0, &["audit", "verify"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let mut follow = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=0", "--clear-groups", "--"])
        .arg(d.dir.path().join("tether-copy"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["audit", "tail", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "the follow is running"
    );
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, text.replace("auditor = [\"uid:4242\"]", "")).unwrap();
    let reload = d.tether(&["config", "reload"]);
    assert_eq!(code(&reload), 0, "{}", stderr(&reload));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while follow.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the follow kept running after the caller's role was removed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = follow.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no longer read the audit log"), "{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
}

#[test]
fn tail_on_a_damaged_log_names_the_file_line_and_seq() {
    let d = Daemon::start("hub", "");
    let before = records(&d, &[]);
    let dir = d.dir.path().join("state/audit");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .max()
        .unwrap();
    // The second line of the newest day file stops being a record (a damaged disk or a
    // careless edit); the first one stays good.
    let data = std::fs::read(&file).unwrap();
    let first_nl = data.iter().position(|b| *b == b'\n').unwrap();
    let first: serde_json::Value = serde_json::from_slice(&data[..first_nl]).unwrap();
    let last_seq = first["seq"].as_u64().unwrap();
    assert!(before.len() > 1);
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(first_nl as u64 + 1)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    let out = d.tether(&["audit", "tail"]);
    let err = stderr(&out);
    assert_ne!(code(&out), 0);
    assert!(!err.contains("bug"), "{err}");
    assert!(
        err.contains(&file.display().to_string()),
        "names the file: {err}"
    );
    assert!(
        err.contains(&format!("after seq {last_seq}")),
        "names the seq: {err}"
    );
    assert!(
        err.contains("tether audit verify"),
        "says what to do: {err}"
    );
}

/// Copies the regular files of `src` into `dst` (created).
fn copy_files(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// Issue 14 §2: an older copy of the log *and* its signed head restored over the directory is
/// caught by the head counter kept outside `state_dir`; so is deleting every day file and the
/// head. `verify` says ok only when the log reaches the counter.
#[test]
fn a_rollback_of_log_and_head_together_is_caught_by_the_counter_outside_state_dir() {
    let mut d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    let v = d.tether(&["--json", "audit", "verify"]);
    assert_eq!(code(&v), 0, "{}{}", stdout(&v), stderr(&v));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&v)).unwrap();
    assert_eq!(rep["report"]["verdict"], "ok", "{rep}");
    assert!(rep["report"]["anchor_seq"].as_u64().is_some(), "{rep}");
    // The counter lives beside the vault key, outside state_dir.
    let counters: Vec<_> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vault.key.tetherd.audit-anchor-"))
        .collect();
    assert_eq!(counters.len(), 1, "{counters:?}");

    let audit = d.dir.path().join("state/audit");
    let old = d.dir.path().join("old-audit");
    // A consistent older copy: log and head as of now (the daemon stopped cleanly).
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    copy_files(&audit, &old);
    d.restart_stopped();
    for _ in 0..3 {
        assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    }
    let newer: serde_json::Value =
        serde_json::from_str(&stdout(&d.tether(&["--json", "audit", "verify"]))).unwrap();
    let last = newer["report"]["last_seq"].as_u64().unwrap();
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());

    std::fs::remove_dir_all(&audit).unwrap();
    copy_files(&old, &audit);
    let out = Command::new(tether_e2e::bin("tetherd"))
        .args(["run", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("head counter kept outside state_dir") && err.contains("rolled back"),
        "{err}"
    );
    // The counter reached the last record before the stop: the `daemon.stop` after `last`.
    let want = format!("records seq {}", last + 1);
    assert!(err.contains(&want), "want {want}: {err}");

    // Every day file and the head deleted: refused the same way.
    std::fs::remove_dir_all(&audit).unwrap();
    std::fs::create_dir_all(&audit).unwrap();
    let out = Command::new(tether_e2e::bin("tetherd"))
        .args(["run", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("ends at seq 0"), "{err}");
}

/// Issue 14 §1: the audit keys rotate only through the dedicated, audited command, and the
/// chain keeps verifying across the epochs and a restart; old keys stay in the vault.
#[test]
fn audit_keys_rotate_mid_log_and_the_chain_verifies_across_epochs_and_restarts() {
    let mut d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    let out = d.tether(&["--json", "audit", "rotate-key"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["epoch"], 1, "{r}");
    assert_eq!(r["rotated"], serde_json::json!(["hmac", "signing"]));
    let rot_seq = r["seq"].as_u64().unwrap();
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    // HMAC only, after a restart.
    d.restart();
    let out = d.tether(&["audit", "rotate-key", "--hmac"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("key epoch 2"), "{}", stdout(&out));
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    d.restart();

    let v = d.tether(&["--json", "audit", "verify"]);
    assert_eq!(code(&v), 0, "{}{}", stdout(&v), stderr(&v));
    let recs = records(&d, &["--type", "key.rotated"]);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["seq"].as_u64(), Some(rot_seq));
    assert_eq!(recs[0]["data"]["epoch"], 1);
    assert_eq!(recs[1]["data"]["rotated"], serde_json::json!(["hmac"]));
    // Requested and done are both audited, with the caller.
    assert_eq!(
        records(&d, &["--type", "audit.rotate_key_requested"]).len(),
        2
    );
    // Old keys are retained under the reserved namespace.
    let list = stdout(&d.tether(&["secret", "list"]));
    for name in [
        "tetherd.audit-hmac",
        "tetherd.audit-hmac.e1",
        "tetherd.audit-hmac.e2",
        "tetherd.audit-signing.e2",
    ] {
        assert!(list.contains(name), "{name} missing: {list}");
    }
    assert!(
        d.log().contains("audit keys rotated"),
        "no key_rotation alert logged: {}",
        d.log()
    );

    // An edit after the rotation is found with its seq.
    let f = day_files(&d).pop().unwrap();
    let text = std::fs::read_to_string(&f).unwrap();
    let target = text
        .lines()
        .rev()
        .find(|l| l.contains("\"key_epoch\":2") && l.contains("config.change"))
        .or_else(|| text.lines().rev().find(|l| l.contains("\"key_epoch\":2")))
        .unwrap()
        .to_owned();
    let seq = serde_json::from_str::<serde_json::Value>(&target).unwrap()["seq"]
        .as_u64()
        .unwrap();
    let edited = target.replacen("\"uid\":", "\"uid\":1", 1);
    std::fs::write(&f, text.replacen(&target, &edited, 1)).unwrap();
    let v = d.tether(&["--json", "audit", "verify"]);
    assert_eq!(code(&v), 1, "{}", stdout(&v));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&v)).unwrap();
    assert_eq!(rep["report"]["broken"]["seq"].as_u64(), Some(seq), "{rep}");
    assert_eq!(rep["report"]["verdict"], "broken");
}
