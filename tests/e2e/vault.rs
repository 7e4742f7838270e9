//! The vault end to end: locked-memory requirement, secrets through the CLI, no leaks.

use std::io::Write;
use std::process::{Command, Stdio};

use tether_e2e::{Daemon, bin, code, config_text, is_root, stderr, stdout};

/// Runs `tetherd run` with RLIMIT_MEMLOCK = 0 and without CAP_IPC_LOCK (root could lock anyway).
fn tetherd_without_memlock(extra: &str) -> (std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, config_text("hub", dir.path(), extra)).unwrap();
    let child = Command::new("prlimit")
        .args([
            "--memlock=0:0",
            "setpriv",
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
            "--",
        ])
        .arg(bin("tetherd"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, dir)
}

#[test]
fn without_lockable_memory_tetherd_refuses_to_start_unless_allowed() {
    if !is_root() {
        eprintln!("SKIP: needs root to drop CAP_IPC_LOCK with setpriv");
        return;
    }
    let (child, dir) = tetherd_without_memlock("");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        code(&out),
        3,
        "stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("secure memory unavailable"), "{err}");
    assert!(
        err.contains("LimitMEMLOCK=infinity"),
        "says how to fix it: {err}"
    );
    assert!(
        err.contains("secure_memory_required = false"),
        "names the opt-out: {err}"
    );
    assert!(
        !dir.path().join("tetherd.sock").exists(),
        "no socket left behind"
    );

    // Knowingly allowed: starts, warns, serves.
    let (mut child, dir) = tetherd_without_memlock("\n[vault]\nsecure_memory_required = false\n");
    let socket = dir.path().join("tetherd.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "did not start");
        assert!(child.try_wait().unwrap().is_none(), "exited");
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    let out = Command::new(bin("tether"))
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("NOT locked into RAM"),
        "{}",
        stderr(&out)
    );
}

fn set_secret(d: &Daemon, name: &str, value: &[u8]) -> std::process::Output {
    let mut child = Command::new(bin("tether"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["secret", "set", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused name exits before reading the value, so the pipe may already be closed.
    let _ = child.stdin.take().unwrap().write_all(value);
    child.wait_with_output().unwrap()
}

#[test]
fn secrets_round_trip_through_the_cli_and_never_leak() {
    let d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    let secret = b"s3cr3t-VALUE-7f1c2e9a-do-not-leak";
    let needle = std::str::from_utf8(secret).unwrap();

    let out = set_secret(&d, "slack-webhook", &[secret.as_slice(), b"\n"].concat());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("slack-webhook stored (version 1)"),
        "{}",
        stdout(&out)
    );
    let again = set_secret(&d, "slack-webhook", secret);
    assert!(stdout(&again).contains("version 2"), "{}", stdout(&again));

    let list = d.tether(&["--json", "secret", "list"]);
    assert_eq!(code(&list), 0, "{}", stderr(&list));
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(v["backend"], "file");
    let ours = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "slack-webhook")
        .unwrap()
        .clone();
    assert_eq!(ours["version"], 2);
    assert_eq!(ours["generated"], false);
    // The daemon's own keys (audit HMAC and signing) live in the vault too, as generated keys.
    assert!(
        v["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "tetherd.audit-hmac" && s["generated"] == true)
    );

    // Operator-set secrets can't be rotated: a clear 409, exit 2.
    let rot = d.tether(&["secret", "rotate", "slack-webhook"]);
    assert_eq!(code(&rot), 2);
    assert!(
        stderr(&rot).contains("cannot be rotated"),
        "{}",
        stderr(&rot)
    );
    // Bad input changes nothing.
    let bad = set_secret(&d, "bad name!", b"x");
    assert_eq!(code(&bad), 2);
    let empty = set_secret(&d, "empty", b"");
    assert_eq!(code(&empty), 2);
    assert!(
        stderr(&empty).contains("no value given"),
        "{}",
        stderr(&empty)
    );
    let missing = d.tether(&["secret", "rm", "nope"]);
    assert_eq!(code(&missing), 2);

    // The value appears nowhere: not in responses, config, logs, or the state dir in clear.
    let config = d.tether(&["config", "show"]);
    let status = d.tether(&["--json", "status"]);
    let metrics = d.request("GET", "/metrics", &[], b"").1;
    for (what, text) in [
        ("list", stdout(&list)),
        ("config show", stdout(&config)),
        ("status", stdout(&status)),
        ("metrics", metrics),
        ("daemon log", d.log()),
        ("rotate error", stderr(&rot)),
    ] {
        assert!(!text.contains(needle), "secret leaked into {what}");
    }
    for entry in walk(d.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "secret stored in clear in {}",
            entry.display()
        );
    }

    let rm = d.tether(&["secret", "rm", "slack-webhook"]);
    assert_eq!(code(&rm), 0, "{}", stderr(&rm));
    let list = d.tether(&["--json", "secret", "list"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert!(
        !v["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "slack-webhook")
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_core_dump_of_the_running_daemon_holds_no_secret_value() {
    if !is_root() || Command::new("gcore").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and gdb's gcore to dump a running daemon");
        return;
    }
    let d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    let name = "leakcheck-name-51c2a7";
    let value = b"LEAKCHECK-value-9f8e7d6c5b4a3928";
    let out = set_secret(&d, name, value);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Exercise reads too: list and a rotate attempt touch the index and the backend.
    assert_eq!(code(&d.tether(&["secret", "list"])), 0);

    let prefix = d.dir.path().join("core");
    let dump = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(d.pid().to_string())
        .output()
        .unwrap();
    assert!(dump.status.success(), "gcore failed: {}", stderr(&dump));
    let core = std::fs::read(format!("{}.{}", prefix.display(), d.pid())).unwrap();
    let found = |needle: &[u8]| core.windows(needle.len()).any(|w| w == needle);
    // Positive control: the (non-secret) name is in the daemon's heap, so the dump is real.
    assert!(
        found(name.as_bytes()),
        "the dump does not even contain the secret's name"
    );
    assert!(
        !found(value),
        "the secret value is readable in a core dump of tetherd"
    );
}

#[test]
fn the_daemon_keeps_secrets_in_a_real_secret_service() {
    if Command::new("gnome-keyring-daemon")
        .arg("--version")
        .output()
        .is_err()
        || Command::new("dbus-run-session")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!(
            "SKIP: needs gnome-keyring-daemon and dbus-run-session (apt: gnome-keyring dbus-bin)"
        );
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-")
        .tempdir()
        .unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        config_text("hub", dir.path(), "\n[vault]\nbackend = \"keyring\"\n"),
    )
    .unwrap();
    // A session bus with an unlocked keyring in a fresh HOME, and tetherd inside it.
    let script = format!(
        "printf %s e2e-pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null; exec {} run --config {}",
        bin("tetherd").display(),
        config.display()
    );
    let log = std::fs::File::create(dir.path().join("tetherd.log")).unwrap();
    let mut child = Command::new("dbus-run-session")
        .args(["--", "sh", "-c", &script])
        .env("HOME", &home)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let socket = dir.path().join("tetherd.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("tetherd.log")).unwrap_or_default();
            let _ = child.kill();
            panic!("tetherd did not start with the keyring backend:\n{log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let tether = |args: &[&str]| {
        Command::new(bin("tether"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let mut set = Command::new(bin("tether"))
        .arg("--socket")
        .arg(&socket)
        .args(["secret", "set", "siem-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin
        .take()
        .unwrap()
        .write_all(b"keyring-value-55aa")
        .unwrap();
    let out = set.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list = tether(&["--json", "secret", "list"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(v["backend"], "keyring", "{v}");
    let ours = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "siem-token")
        .cloned()
        .unwrap();
    assert_eq!(ours["backend"], "keyring");
    // Nothing about the value on disk: the keyring holds it.
    let on_disk = walk(dir.path())
        .into_iter()
        .filter(|p| !p.starts_with(&home))
        .any(|p| {
            std::fs::read(&p)
                .unwrap_or_default()
                .windows(18)
                .any(|w| w == b"keyring-value-55aa")
        });
    assert!(!on_disk, "the value was written outside the keyring");
    // The daemon's own keys (audit) came from the keyring too, and the audit chain verifies.
    assert_eq!(code(&tether(&["audit", "verify"])), 0);
    // Stop tetherd itself (its pid from the socket's peer credentials); dbus-run-session then
    // ends the session bus and the keyring with it.
    let conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let pid = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
        .unwrap()
        .pid();
    drop(conn);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("dbus-run-session did not end after tetherd stopped");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Issue 14 §1: the daemon's own keys (`tetherd.*`) are not user secrets. Neither the API nor
/// the CLI can set, remove or rotate them, in any letter case, and a refused call changes nothing:
/// the audit chain still verifies and the key files are byte-for-byte the same.
#[test]
fn the_daemon_keys_cannot_be_set_removed_or_rotated_through_the_secrets_api() {
    let d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    let vault_dir = d.dir.path().join("state/vault");
    let snapshot = || {
        let mut files: Vec<(std::path::PathBuf, Vec<u8>)> = walk(&vault_dir)
            .into_iter()
            .map(|p| {
                let b = std::fs::read(&p).unwrap_or_default();
                (p, b)
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot();
    assert!(
        before
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("tetherd.audit-signing")),
        "expected the daemon keys in {}",
        vault_dir.display()
    );

    for name in [
        "tetherd.audit-signing",
        "tetherd.audit-hmac",
        "tetherd.invite-key",
        "tetherd.new-key",
        "TetherD.audit-hmac",
    ] {
        // The raw API: 403 with a hint, for every verb.
        let (status, body) = d.request(
            "PUT",
            &format!("/v1/secrets/{name}"),
            &[("content-type", "application/octet-stream")],
            &[7u8; 67],
        );
        assert_eq!(status, 403, "PUT {name}: {body}");
        assert!(body.contains("reserved_secret"), "{body}");
        assert!(body.contains("\"hint\""), "{body}");
        let (status, body) = d.request("DELETE", &format!("/v1/secrets/{name}"), &[], b"");
        assert_eq!(status, 403, "DELETE {name}: {body}");
        let (status, body) = d.request("POST", &format!("/v1/secrets/{name}/rotate"), &[], b"");
        assert_eq!(status, 403, "rotate {name}: {body}");

        // The CLI refuses before reading a value or calling the daemon: exit 2, a hint.
        let set = set_secret(&d, name, b"forged-key-material");
        assert_eq!(code(&set), 2, "{}", stderr(&set));
        assert!(stderr(&set).contains("reserved"), "{}", stderr(&set));
        for verb in ["rm", "rotate"] {
            let out = d.tether(&["secret", verb, name]);
            assert_eq!(code(&out), 2, "{verb} {name}: {}", stderr(&out));
            assert!(stderr(&out).contains("reserved"), "{}", stderr(&out));
        }
    }

    // Nothing changed: the vault files are identical and the chain verifies.
    assert_eq!(snapshot(), before, "a refused call changed the vault");
    let verify = d.tether(&["audit", "verify"]);
    assert_eq!(code(&verify), 0, "{}{}", stdout(&verify), stderr(&verify));
    // Ordinary names that merely contain the word are still fine.
    let ok = set_secret(&d, "my-tetherd.token", b"v");
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
}

/// Issue 14 §2: the file backend's key is never kept in `state_dir` (beside the audit log) by
/// default: it sits beside the config file.
#[test]
fn the_file_backend_key_is_kept_outside_state_dir() {
    let d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    let set = set_secret(&d, "outside-key-probe", b"v");
    assert_eq!(code(&set), 0, "{}", stderr(&set));
    let state = d.dir.path().join("state");
    let inside: Vec<_> = walk(&state)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "vault.key"))
        .collect();
    assert!(
        inside.is_empty(),
        "a vault key inside state_dir: {inside:?}"
    );
    let key = d.dir.path().join("vault.key");
    let meta = std::fs::metadata(&key).expect("the key beside tetherd.toml");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o400
    );
}

/// An install whose key is still in the old place keeps working: the key is used (never
/// regenerated elsewhere) and the daemon says how to move it.
#[test]
fn a_key_left_in_state_dir_is_used_with_a_warning_never_replaced() {
    let mut d = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    let set = set_secret(&d, "legacy-probe", b"kept-value");
    assert_eq!(code(&set), 0, "{}", stderr(&set));
    // What older releases did: the key inside state_dir/vault (the running daemon holds it
    // in memory already; the restart reads it from the old place).
    let fresh = d.dir.path().join("vault.key");
    let legacy = d.dir.path().join("state/vault/vault.key");
    std::fs::rename(&fresh, &legacy).unwrap();

    d.restart();
    assert!(
        d.wait_log("the vault key sits inside state_dir"),
        "{}",
        d.log()
    );
    assert!(d.log().contains("mv "), "{}", d.log());
    assert!(
        !fresh.exists(),
        "a new key was generated beside the old one"
    );
    // Old secrets still decrypt, and the audit keys still verify the old records.
    let list = d.tether(&["secret", "list"]);
    assert_eq!(code(&list), 0, "{}", stderr(&list));
    assert!(stdout(&list).contains("legacy-probe"), "{}", stdout(&list));
    // The chain verifies, but with the key inside state_dir nothing there can anchor it.
    let verify = d.tether(&["audit", "verify"]);
    assert_eq!(code(&verify), 1, "{}{}", stdout(&verify), stderr(&verify));
    assert!(
        stdout(&verify).contains("UNANCHORED") && stdout(&verify).contains("inside state_dir"),
        "{}",
        stdout(&verify)
    );
}
