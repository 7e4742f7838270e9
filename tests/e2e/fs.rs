//! `tether fs` end to end: a real hub and a real target on loopback, SFTP inside SSH inside the
//! userspace tunnel, real files below the target's `[files] allowed_roots`, the real CLI.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tether_e2e::{Daemon, code, config_text, is_root, stderr, stdout};

use crate::exec::audit_records;
use crate::membership::{enroll, invite};

/// The whole audit log of a daemon as text.
pub(crate) fn audit_text(d: &Daemon) -> String {
    let dir = d.dir.path().join("state/audit");
    let mut s = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            s.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    s
}

/// A target named `name` confined to `roots`, enrolled with `hub` and online.
pub(crate) fn target(hub: &Daemon, name: &str, roots: &[&Path], max: u64) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("tetherd.toml");
    let roots: Vec<String> = roots
        .iter()
        .map(|r| format!("{:?}", r.display().to_string()))
        .collect();
    let files = format!(
        "\n[files]\nallowed_roots = [{}]\ndeny_paths = ['/target-denied$']\nmax_file_size = {max}\n",
        roots.join(", ")
    );
    std::fs::write(&config, config_text("target", dir.path(), &files)).unwrap();
    let token = invite(hub, name, &["--group", "web"]);
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut t = Daemon::spawn_in(dir, config, &[]);
    t.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = hub.tether(&["--json", "hosts", "list"]);
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
        if v["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["name"] == name && h["online"] == true))
        {
            return t;
        }
        assert!(Instant::now() < deadline, "{name} not online: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hub whose policy denies paths containing `hub-denied`, with upload limit `max`.
fn hub(max: u64) -> Daemon {
    Daemon::start(
        "hub",
        &format!(
            "\n[files]\nmax_file_size = {max}\n\n[[policy.deny_paths]]\nid = \"no-hub-secrets\"\npattern = 'hub-denied'\nmessage = \"not through tether\"\n"
        ),
    )
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tether-"))
        .collect()
}

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[test]
fn get_put_ls_stat_round_trip_escapes_policy_and_oversized_uploads() {
    let hub = hub(2 * 1024 * 1024);
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("root");
    let outside = area.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), b"root:x:0:0:outside").unwrap();
    let t1 = target(&hub, "t1", &[&root], 1024 * 1024);
    let r = |p: &str| format!("t1:{}/{p}", root.display());
    let local = tempfile::tempdir().unwrap();

    // put → the file is in place, whole; get → the same bytes; ls and stat see it.
    let data = bytes(300_000, 7);
    let src = local.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let out = hub.tether(&[
        "--json",
        "fs",
        "put",
        src.to_str().unwrap(),
        &r("sub/app.bin"),
    ]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let put: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(put["sha256"], sha(&data));
    assert_eq!(put["hosts"][0]["ok"], true);
    assert_eq!(put["hosts"][0]["sha256"], sha(&data));
    assert_eq!(std::fs::read(root.join("sub/app.bin")).unwrap(), data);
    let back = local.path().join("back.bin");
    let out = hub.tether(&[
        "--json",
        "fs",
        "get",
        &r("sub/app.bin"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let got: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(got["sha256"], sha(&data));
    assert_eq!(got["size"], 300_000);
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let out = hub.tether(&["--json", "fs", "ls", &r("sub")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ls: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(ls["entries"][0]["name"], "app.bin");
    assert_eq!(ls["entries"][0]["size"], 300_000);
    let out = hub.tether(&["--json", "fs", "stat", &r("sub/app.bin")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let st: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (st["entry"]["kind"].as_str(), st["entry"]["mode"].as_str()),
        (Some("file"), Some("644"))
    );
    // Text output too.
    let out = hub.tether(&["fs", "ls", &r("")]);
    assert!(stdout(&out).contains("sub"), "{}", stdout(&out));
    // Audited on both ends with path, size and SHA-256, before and after.
    let puts = audit_records(&hub, "fs.put");
    assert!(
        puts.iter()
            .any(|p| p["data"]["stage"] == "requested" && p["data"]["sha256"] == sha(&data))
    );
    assert!(puts.iter().any(|p| p["data"]["stage"] == "result"
        && p["data"]["sha256"] == sha(&data)
        && p["data"]["size"] == 300_000));
    assert!(
        audit_records(&hub, "fs.get")
            .iter()
            .any(|g| g["data"]["stage"] == "result" && g["data"]["sha256"] == sha(&data))
    );
    assert!(
        audit_records(&t1, "fs.put")
            .iter()
            .any(|p| p["data"]["sha256"] == sha(&data) && p["data"]["ok"] == true)
    );

    // Every escape is refused (exit 2), changes nothing locally, and is audited as such.
    symlink(outside.join("passwd"), root.join("abs")).unwrap();
    symlink("../outside/passwd", root.join("rel")).unwrap();
    symlink("../outside", root.join("dirlink")).unwrap();
    symlink("/proc/self/root/etc/passwd", root.join("proc")).unwrap();
    std::fs::hard_link(outside.join("passwd"), root.join("hard")).unwrap();
    let escapes = [
        ("../outside/passwd", "escape"),
        ("abs", "escape"),
        ("rel", "escape"),
        ("dirlink/passwd", "escape"),
        ("proc", "escape"),
        ("hard", "hard_link"),
    ];
    for (p, want) in escapes {
        let dest = local.path().join("stolen");
        let out = hub.tether(&["--json", "fs", "get", &r(p), dest.to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{p}: {}{}", stdout(&out), stderr(&out));
        assert!(
            stderr(&out).contains("escapes") || stderr(&out).contains("hard links"),
            "{p}: {}",
            stderr(&out)
        );
        assert!(!dest.exists(), "{p}: a partial download was left");
        let results = audit_records(&hub, "fs.get");
        assert!(
            results.iter().any(|g| g["data"]["error"] == want
                && g["data"]["path"].as_str().is_some_and(|x| x.ends_with(p))),
            "{p}: not audited on the hub as {want}"
        );
    }
    // Uploading through a symlinked directory: refused, nothing created outside.
    let out = hub.tether(&[
        "--json",
        "fs",
        "put",
        src.to_str().unwrap(),
        &r("dirlink/planted"),
    ]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(!outside.join("planted").exists());
    assert!(
        audit_text(&t1).contains("\"error\":\"escape"),
        "target did not audit the escape"
    );
    assert_eq!(
        std::fs::read(outside.join("passwd")).unwrap(),
        b"root:x:0:0:outside"
    );
    assert!(local.path().read_dir().unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tether-get")
    }));

    // The target's own deny_paths.
    std::fs::write(root.join("target-denied"), b"no").unwrap();
    let out = hub.tether(&["fs", "stat", &r("target-denied")]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("deny_paths"), "{}", stderr(&out));

    // A path the hub's policy denies never reaches the target.
    std::fs::write(root.join("hub-denied"), b"no").unwrap();
    let out = hub.tether(&[
        "fs",
        "get",
        &r("hub-denied"),
        local.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("policy"), "{}", stderr(&out));
    let out = hub.tether(&["fs", "put", src.to_str().unwrap(), &r("hub-denied")]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(std::fs::read(root.join("hub-denied")).unwrap(), b"no");
    assert!(audit_records(&hub, "fs.denied").len() >= 2);
    assert!(
        !audit_text(&t1).contains("hub-denied"),
        "the denied path reached the target"
    );

    // Oversized (target limit 1 MiB): refused mid-stream, the old file stays, no temp file.
    let big = bytes(1_500_000, 9);
    let big_src = local.path().join("big.bin");
    std::fs::write(&big_src, &big).unwrap();
    let out = hub.tether(&[
        "--json",
        "fs",
        "put",
        big_src.to_str().unwrap(),
        &r("sub/app.bin"),
    ]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let put: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(put["hosts"][0]["code"], "too_large");
    assert_eq!(std::fs::read(root.join("sub/app.bin")).unwrap(), data);
    std::thread::sleep(Duration::from_millis(300));
    assert!(temp_files(&root.join("sub")).is_empty());

    // Over the hub's own limit (2 MiB): refused with 413 while streaming; nothing replaced.
    let huge_src = local.path().join("huge.bin");
    std::fs::write(&huge_src, bytes(3_000_000, 11)).unwrap();
    let out = hub.tether(&["fs", "put", huge_src.to_str().unwrap(), &r("sub/app.bin")]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("max_file_size"), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read(root.join("sub/app.bin")).unwrap(), data);
    assert!(temp_files(&root.join("sub")).is_empty());

    // Bad input: a relative path, an unknown host.
    let out = hub.tether(&["fs", "stat", "t1:relative"]);
    assert_eq!(code(&out), 2);
    let out = hub.tether(&["fs", "stat", "nohost:/x"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("nohost"), "{}", stderr(&out));
}

/// Unmounts (lazily: the target holds the root open) when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_upload_that_fills_the_disk_leaves_the_old_file() {
    if !is_root() {
        eprintln!("SKIP: mounting a small tmpfs needs root");
        return;
    }
    let area = tempfile::tempdir().unwrap();
    let small = area.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tether-e2e-enospc"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs failed");
    let _mount = Mount(small.clone());
    let old = bytes(200_000, 3);
    std::fs::write(small.join("data.bin"), &old).unwrap();
    let hub = hub(10 * 1024 * 1024);
    let _t1 = target(&hub, "t1", &[&small], 10 * 1024 * 1024);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("big.bin");
    std::fs::write(&src, bytes(3_000_000, 5)).unwrap();
    let out = hub.tether(&[
        "--json",
        "fs",
        "put",
        src.to_str().unwrap(),
        &format!("t1:{}/data.bin", small.display()),
    ]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let put: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(put["hosts"][0]["code"], "no_space", "{put}");
    assert_eq!(std::fs::read(small.join("data.bin")).unwrap(), old);
    std::thread::sleep(Duration::from_millis(300));
    assert!(temp_files(&small).is_empty(), "{:?}", temp_files(&small));
}

/// `ssh.run_as` applies to file operations: with the target's daemon running as root and
/// `run_as = "nobody"`, an upload is owned by nobody, a file only root may read is refused with
/// a permission error naming the uid, and a directory only root may write is refused for
/// uploads — while the confinement still holds.
#[test]
fn file_operations_run_as_the_run_as_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !is_root() {
        eprintln!("SKIP: needs root (the target's daemon must drop to ssh.run_as = nobody)");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("SKIP: no user `nobody` on this machine");
        return;
    };
    let hub = Daemon::start("hub", "");
    let area = tempfile::tempdir().unwrap();
    std::fs::set_permissions(area.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = area.path().join("root");
    std::fs::create_dir_all(root.join("root-only-dir")).unwrap();
    nix::unistd::chown(&root, Some(nobody.uid), Some(nobody.gid)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        root.join("root-only-dir"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("secret.txt"), b"root only").unwrap();
    std::fs::set_permissions(
        root.join("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(root.join("public.txt"), b"anyone").unwrap();
    std::fs::set_permissions(
        root.join("public.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    // A target like `target()`, with run_as.
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("tetherd.toml");
    let files = format!(
        "\n[files]\nallowed_roots = [{:?}]\nmax_file_size = 1048576\n\n[ssh]\nrun_as = \"nobody\"\n",
        root.display().to_string()
    );
    std::fs::write(&config, config_text("target", dir.path(), &files)).unwrap();
    let token = invite(&hub, "t1", &["--group", "web"]);
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut t1 = Daemon::spawn_in(dir, config, &[]);
    t1.wait_ready();
    crate::exec::wait_online(&hub, &["t1"]);
    let r = |p: &str| format!("t1:{}/{p}", root.display());
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("up.txt");
    std::fs::write(&src, b"uploaded").unwrap();

    // An upload is owned by the run_as user.
    let out = hub.tether(&["fs", "put", src.to_str().unwrap(), &r("up.txt")]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let m = std::fs::metadata(root.join("up.txt")).unwrap();
    assert_eq!(m.uid(), nobody.uid.as_raw(), "owned by nobody");
    assert_eq!(std::fs::read(root.join("up.txt")).unwrap(), b"uploaded");

    // What nobody may read comes back; what only root may read is refused, precisely.
    let dest = local.path().join("public");
    let out = hub.tether(&["fs", "get", &r("public.txt"), dest.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), b"anyone");
    let dest = local.path().join("stolen");
    let out = hub.tether(&["fs", "get", &r("secret.txt"), dest.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("permission denied to uid 65534")
            || err.contains(&format!("permission denied to uid {}", nobody.uid)),
        "{err}"
    );
    assert!(err.contains("ssh.run_as"), "{err}");
    assert!(!dest.exists());

    // A directory only root may write: the upload is refused, nothing is left there.
    let out = hub.tether(&["fs", "put", src.to_str().unwrap(), &r("root-only-dir/x")]);
    assert_ne!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("permission denied to uid"), "{text}");
    assert_eq!(
        std::fs::read_dir(root.join("root-only-dir"))
            .unwrap()
            .count(),
        0
    );

    // Audited on the target with the precise code.
    assert!(audit_records(&t1, "fs.get").iter().any(|g| {
        g["data"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("permission_denied"))
    }));
    drop(t1);
}
