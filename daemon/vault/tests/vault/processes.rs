//! Tests that need a separate process: RLIMIT_MEMLOCK=0, a real Secret Service on a private
//! D-Bus session, and core dumps. The test binary re-executes itself and runs `child` (a no-op
//! unless TETHER_VAULT_CHILD says which part to play).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tether_vault::{
    BackendChoice, BackendKind, SecretBox, SecureMemoryStatus, Vault, VaultConfig,
    check_secure_memory, harden_process,
};

use crate::{contains, secret};

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `Command` running this test binary's `processes::child` in `mode`.
fn child_args(cmd: &mut Command, mode: &str) {
    cmd.arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "processes::child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TETHER_VAULT_CHILD", mode);
}

/// The child half of every test in this module.
#[test]
fn child() {
    let Ok(mode) = std::env::var("TETHER_VAULT_CHILD") else {
        return;
    };
    let state = std::env::var_os("TETHER_VAULT_STATE").map(PathBuf::from);
    match mode.as_str() {
        "memlock-required" => match check_secure_memory(true) {
            Ok(s) => {
                println!("STATUS {s:?}");
                std::process::exit(0)
            }
            Err(e) => {
                eprintln!("tetherd: {e}");
                std::process::exit(1)
            }
        },
        "memlock-optional" => {
            let status = check_secure_memory(false).unwrap();
            let SecureMemoryStatus::Unlocked { warning } = status else {
                panic!("locked under memlock=0?")
            };
            eprintln!("WARNING {warning}");
            let b = SecretBox::random(32).unwrap();
            assert!(!b.is_locked());
            let v = Vault::open(
                &VaultConfig {
                    backend: BackendChoice::File,
                    ..VaultConfig::default()
                },
                &state.unwrap(),
            )
            .unwrap();
            v.set("x", secret(b"still-works")).unwrap();
            assert!(v.get("x").unwrap().unwrap().ct_eq_bytes(b"still-works"));
            println!(
                "CONTINUED unlocked_allocations={}",
                tether_vault::unlocked_allocations()
            );
            std::process::exit(0)
        }
        "keyring" => {
            keyring_child(&state.unwrap());
            println!("KEYRING-OK");
            std::process::exit(0)
        }
        "auto" => {
            let v = Vault::open(&VaultConfig::default(), &state.unwrap()).unwrap();
            println!("AUTO={}", v.backend());
            std::process::exit(0)
        }
        "hold" => {
            harden_process().unwrap();
            check_secure_memory(true).unwrap();
            let dir = state.unwrap();
            // The sealed secret, made in locked memory and written out by the kernel (no copy).
            let sealed = SecretBox::random(32).unwrap();
            sealed
                .expose(|b| std::fs::write(dir.join("sealed.bin"), b))
                .unwrap();
            // A control value in ordinary heap memory: the dump must contain it.
            let mut control = vec![0u8; 32];
            getrandom::fill(&mut control).unwrap();
            std::fs::write(dir.join("control.bin"), &control).unwrap();
            // A second secret, held *exposed* while the dump is taken.
            let exposed = SecretBox::random(32).unwrap();
            exposed
                .expose(|b| std::fs::write(dir.join("exposed.bin"), b))
                .unwrap();
            exposed.expose(|_| {
                println!("READY {}", std::process::id());
                std::io::stdout().flush().unwrap();
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            });
            std::hint::black_box((&sealed, &control));
            std::process::exit(0)
        }
        "stdin" => {
            let mut b = SecretBox::from_stdin(64).unwrap();
            b.trim_trailing_newline();
            println!("STDIN-MATCH={}", b.ct_eq_bytes(b"piped-secret"));
            std::process::exit(0)
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Runs `mode` under `prlimit --memlock=0:0`, without CAP_IPC_LOCK (which ignores the limit).
fn run_without_memlock(mode: &str, state: &Path) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
            "prlimit",
            "--memlock=0:0",
        ]);
        c
    } else {
        let mut c = Command::new("prlimit");
        c.arg("--memlock=0:0");
        c
    };
    child_args(&mut cmd, mode);
    cmd.env("TETHER_VAULT_STATE", state).output().unwrap()
}

#[test]
fn memlock_zero_refuses_when_required_and_warns_when_not() {
    if which("prlimit").is_none() || (is_root() && which("setpriv").is_none()) {
        eprintln!("SKIP: memlock test needs prlimit (and setpriv as root) from util-linux");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let out = run_without_memlock("memlock-required", state.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {} stderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    for needle in [
        "secure memory unavailable",
        "mlock of one page of secret memory failed",
        "RLIMIT_MEMLOCK soft=0 bytes hard=0 bytes",
        "LimitMEMLOCK=infinity",
        "vault.secure_memory_required = false",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
    }

    let out = run_without_memlock("memlock-optional", state.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout} stderr: {stderr}");
    assert!(
        stderr.contains("WARNING mlock of one page")
            && stderr.contains("secure_memory_required = false"),
        "{stderr}"
    );
    assert!(
        stdout.contains("CONTINUED unlocked_allocations="),
        "{stdout}"
    );
    assert!(
        !stdout.contains("unlocked_allocations=0"),
        "allocations should be counted as unlocked: {stdout}"
    );

    // Control: without the limit the same check passes.
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "processes::child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TETHER_VAULT_CHILD", "memlock-required");
    let out = cmd.output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("STATUS Locked"));
}

fn keyring_child(state: &Path) {
    // `keyring` backend, then `auto` must also pick the keyring.
    let cfg = VaultConfig {
        backend: BackendChoice::Keyring,
        ..VaultConfig::default()
    };
    let v = Vault::open(&cfg, state).unwrap();
    assert_eq!(v.backend(), BackendKind::Keyring);
    assert!(v.get("wg-private").unwrap().is_none());
    let info = v
        .set("slack-webhook", secret(b"https://hooks.example/KEYRING"))
        .unwrap();
    assert_eq!(info.backend, BackendKind::Keyring);
    assert!(
        v.get("slack-webhook")
            .unwrap()
            .unwrap()
            .ct_eq_bytes(b"https://hooks.example/KEYRING")
    );
    let k = v.get_or_generate("wg-private", 32).unwrap();
    assert_eq!(v.get("wg-private").unwrap().unwrap(), k);
    v.rotate("wg-private").unwrap();
    assert_ne!(v.get("wg-private").unwrap().unwrap(), k);
    // The value is in the keyring, not in any file.
    for f in crate::file_backend::walk(state) {
        assert!(
            !contains(&std::fs::read(&f).unwrap(), b"hooks.example/KEYRING"),
            "{}",
            f.display()
        );
    }
    // A second daemon (other state dir) on the same keyring does not see or clobber it.
    let other_state = state.join("other");
    std::fs::create_dir_all(&other_state).unwrap();
    let other = Vault::open(&cfg, &other_state).unwrap();
    assert!(other.get("slack-webhook").unwrap().is_none());
    other.set("slack-webhook", secret(b"other-daemon")).unwrap();
    assert!(
        v.get("slack-webhook")
            .unwrap()
            .unwrap()
            .ct_eq_bytes(b"https://hooks.example/KEYRING")
    );
    // Reopen with auto: keyring, and the data is still there.
    drop(v);
    let v = Vault::open(&VaultConfig::default(), state).unwrap();
    assert_eq!(v.backend(), BackendKind::Keyring);
    assert!(
        v.get("slack-webhook")
            .unwrap()
            .unwrap()
            .ct_eq_bytes(b"https://hooks.example/KEYRING")
    );
    v.remove("slack-webhook").unwrap();
    assert!(v.get("slack-webhook").unwrap().is_none());
    assert!(
        other
            .get("slack-webhook")
            .unwrap()
            .unwrap()
            .ct_eq_bytes(b"other-daemon")
    );
    // A secret stored in the file backend earlier stays readable after auto switches.
    let names: Vec<_> = v.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["wg-private"]);
}

#[test]
fn keyring_backend_against_a_real_secret_service() {
    let (Some(_), Some(_)) = (which("dbus-run-session"), which("gnome-keyring-daemon")) else {
        eprintln!(
            "SKIP: keyring test needs dbus-run-session and gnome-keyring-daemon (apt: dbus gnome-keyring)"
        );
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("dbus-run-session");
    cmd.args([
        "--",
        "sh",
        "-c",
        "printf %s ci-pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null; exec \"$@\"",
        "sh",
    ]);
    child_args(&mut cmd, "keyring");
    let out = cmd
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path().join(".local/share"))
        .env("TETHER_VAULT_STATE", state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("KEYRING-OK"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[test]
fn auto_falls_back_to_file_without_a_secret_service() {
    let runtime = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "processes::child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TETHER_VAULT_CHILD", "auto")
    .env_remove("DBUS_SESSION_BUS_ADDRESS")
    .env("XDG_RUNTIME_DIR", runtime.path())
    .env("TETHER_VAULT_STATE", state.path());
    let t = std::time::Instant::now();
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("AUTO=file"),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed().as_secs() < 10,
        "auto detection took {:?}",
        t.elapsed()
    );
}

/// What this proves: in a core dump of a live, hardened process, (1) the bytes of a secret held in
/// a sealed SecretBox appear nowhere — no stray copy from generation or use exists in ordinary
/// memory, and the locked pages themselves are excluded (MADV_DONTDUMP); (2) a control value in
/// ordinary heap memory *is* found, so the dump and the search work; (3) gdb with
/// `dump-excluded-mappings on` does find both secrets: they are live, and root with ptrace can
/// read them even while sealed (PROT_NONE does not stop FOLL_FORCE reads). Sealing protects
/// against accidental dumps and in-process over-reads, not against root.
#[test]
fn core_dump_of_a_live_process_does_not_contain_sealed_secrets() {
    if !is_root() || which("gcore").is_none() {
        eprintln!("SKIP: gcore leak test needs root and gdb's gcore");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "processes::child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TETHER_VAULT_CHILD", "hold")
    .env("TETHER_VAULT_STATE", state.path())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pid = loop {
        let line = lines.next().expect("child exited before READY").unwrap();
        // libtest prints "test processes::child ... " before the child's own output.
        if let Some(i) = line.find("READY ") {
            break line[i + 6..].trim().to_owned();
        }
    };
    let core_prefix = state.path().join("core");
    let out = Command::new("gcore")
        .arg("-o")
        .arg(&core_prefix)
        .arg(&pid)
        .output()
        .unwrap();
    // Positive control: a debugger that also dumps MADV_DONTDUMP mappings (root can) does see
    // both secrets, so they really are live in this process and the search would find them.
    let full = state.path().join("core.full");
    let full_dump = which("gdb").map(|gdb| {
        Command::new(gdb)
            .args([
                "-batch",
                "-p",
                &pid,
                "-ex",
                "set dump-excluded-mappings on",
                "-ex",
            ])
            .arg(format!("gcore {}", full.display()))
            .output()
            .unwrap()
    });
    let _ = child.stdin.take().unwrap().write_all(b"done\n");
    let _ = child.wait();
    let core_path = state.path().join(format!("core.{pid}"));
    assert!(
        core_path.exists(),
        "gcore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = std::fs::read(&core_path).unwrap();
    std::fs::remove_file(&core_path).unwrap();
    let sealed = std::fs::read(state.path().join("sealed.bin")).unwrap();
    let exposed = std::fs::read(state.path().join("exposed.bin")).unwrap();
    let control = std::fs::read(state.path().join("control.bin")).unwrap();
    assert_eq!((sealed.len(), control.len()), (32, 32));
    assert!(
        core.len() > 1_000_000,
        "suspiciously small core: {} bytes",
        core.len()
    );
    assert!(
        contains(&core, &control),
        "control heap value missing: the dump or the search is broken"
    );
    assert!(
        !contains(&core, &sealed),
        "sealed secret found in the core dump"
    );
    assert!(
        !contains(&core, &exposed),
        "exposed secret found in the core dump (MADV_DONTDUMP)"
    );
    if let Some(out) = full_dump {
        let data = std::fs::read(&full)
            .unwrap_or_else(|_| panic!("gdb: {}", String::from_utf8_lossy(&out.stderr)));
        std::fs::remove_file(&full).unwrap();
        assert!(
            contains(&data, &sealed) && contains(&data, &exposed),
            "secrets not live in the process?"
        );
    }
}

#[test]
fn secret_from_stdin_unbuffered() {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    child_args_only(&mut cmd, "stdin");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped-secret\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("STDIN-MATCH=true"), "{stdout}");
}

fn child_args_only(cmd: &mut Command, mode: &str) {
    cmd.args([
        "--exact",
        "processes::child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TETHER_VAULT_CHILD", mode);
}
