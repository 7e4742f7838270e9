//! The stock `sftp` and `scp` (OpenSSH 9 speaks SFTP for `scp`) through `tether proxy`, end to
//! end: a real hub and a real target on loopback, the operator's client configured only by what
//! `tether ssh-config` prints, the hub relaying the `sftp` subsystem to the target's confined
//! SFTP server over the pool. Every path is confined, checked and audited on the target.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tether_e2e::{Daemon, bin, code, is_root, stderr, stdout};

use crate::exec::audit_records;
use crate::fs::{audit_text, target};
use crate::openssh::{client_config, have};

/// Runs `tool` (`sftp` or `scp`) with only `config` (`-F`), non-interactively.
fn run(tool: &str, config: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(tool)
        .arg("-F")
        .arg(config)
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the OpenSSH client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{tool} {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sftp -b BATCH HOST` with `lines` as the batch file.
fn sftp_batch(config: &Path, dir: &Path, host: &str, lines: &[String]) -> Output {
    let batch = dir.join("batch");
    std::fs::write(&batch, lines.join("\n") + "\n").unwrap();
    run("sftp", config, &["-b", &batch.display().to_string(), host])
}

fn skip() -> bool {
    for tool in ["ssh", "sftp", "scp"] {
        if !have(tool) {
            eprintln!(
                "SKIP: the OpenSSH client ({tool}) is not installed (apt-get install openssh-client)"
            );
            return true;
        }
    }
    false
}

#[test]
fn stock_sftp_and_scp_through_tether_proxy_are_confined_and_audited() {
    if skip() {
        return;
    }
    let hub = Daemon::start("hub", "");
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("root");
    let outside = area.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), b"not for you").unwrap();
    std::fs::write(root.join("there.txt"), b"from the target\n").unwrap();
    let t1 = target(&hub, "t1", &[&root], 4 * 1024 * 1024);
    let config = client_config(&hub);
    let local = hub.dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(local.join("up.bin"), &payload).unwrap();
    let (r, l) = (root.display(), local.display());

    // put, ls, get inside the root; a relative path starts at the first allowed root.
    let out = sftp_batch(
        &config,
        &local,
        "t1",
        &[
            format!("put {l}/up.bin {r}/up.bin"),
            format!("ls {r}"),
            format!("get {r}/there.txt {l}/there.txt"),
            format!("get up.bin {l}/relative.bin"),
        ],
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(std::fs::read(root.join("up.bin")).unwrap(), payload);
    assert!(stdout(&out).contains("up.bin"), "{}", stdout(&out));
    assert!(stdout(&out).contains("there.txt"), "{}", stdout(&out));
    assert_eq!(
        std::fs::read(local.join("there.txt")).unwrap(),
        b"from the target\n"
    );
    assert_eq!(std::fs::read(local.join("relative.bin")).unwrap(), payload);

    // A path escaping the root fails, copies nothing, and the target audited the refusal.
    let out = sftp_batch(
        &config,
        &local,
        "t1",
        &[format!("get {r}/../outside/passwd {l}/stolen")],
    );
    assert_ne!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(!local.join("stolen").exists());
    let out = sftp_batch(
        &config,
        &local,
        "t1",
        &[format!("put {l}/up.bin {}/planted", outside.display())],
    );
    assert_ne!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(!outside.join("planted").exists());
    let log = audit_text(&t1);
    assert!(
        log.contains("\"error\":\"escape"),
        "target did not audit the escape"
    );
    assert!(
        log.contains("outside/passwd"),
        "target did not audit the escape's path"
    );

    // scp (the SFTP protocol by default since OpenSSH 9) both ways.
    let out = run(
        "scp",
        &config,
        &[&format!("{l}/up.bin"), &format!("t1:{r}/scp-up.bin")],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(root.join("scp-up.bin")).unwrap(), payload);
    let out = run(
        "scp",
        &config,
        &[&format!("t1:{r}/there.txt"), &format!("{l}/scp-down.txt")],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(local.join("scp-down.txt")).unwrap(),
        b"from the target\n"
    );
    // scp out of the root is refused too.
    let out = run(
        "scp",
        &config,
        &[
            &format!("t1:{}/passwd", outside.display()),
            &format!("{l}/stolen2"),
        ],
    );
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    assert!(!local.join("stolen2").exists());

    // The hub recorded each SFTP session, opened before and closed after with bytes both ways.
    let opened = audit_records(&hub, "sftp.open");
    assert_eq!(opened.len(), 6, "{opened:?}");
    assert!(
        opened
            .iter()
            .all(|o| o["host"] == "t1" && o["data"]["via"] == "ssh")
    );
    let closed = audit_records(&hub, "sftp.close");
    assert_eq!(closed.len(), 6, "{closed:?}");
    let up = closed[0]["data"]["client_to_target_bytes"]
        .as_u64()
        .unwrap();
    let down = closed[0]["data"]["target_to_client_bytes"]
        .as_u64()
        .unwrap();
    assert!(up > payload.len() as u64, "{}", closed[0]);
    assert!(down > payload.len() as u64, "{}", closed[0]);
    assert!(closed.iter().all(|c| c["data"]["duration_ms"].is_u64()));
    // ...and the target its file operations, as for `tether fs`.
    let puts = audit_records(&t1, "fs.put");
    assert!(puts.iter().any(|p| p["data"]["ok"] == true
        && p["data"]["path"].as_str().unwrap().ends_with("/up.bin")
        && p["data"]["size"] == payload.len() as u64));
    assert!(
        puts.iter().any(|p| p["data"]["ok"] == true
            && p["data"]["path"].as_str().unwrap().ends_with("/scp-up.bin"))
    );
    assert!(!audit_records(&t1, "fs.get").is_empty());
}

#[test]
fn sftp_is_refused_by_policy_and_for_a_caller_without_a_role() {
    if skip() {
        return;
    }
    // A scope with an allow list can't check what an SFTP session does: refused, like shells.
    let policy = "\n[policy]\nmode = \"enforce\"\n\n[[policy.scope]]\nid = \"admins-listed\"\nroles = [\"admin\"]\n\n  [[policy.scope.allow_commands]]\n  id = \"uptime-only\"\n  pattern = 'uptime'\n";
    let hub = Daemon::start("hub", policy);
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("there.txt"), b"x").unwrap();
    let t1 = target(&hub, "t1", &[&root], 1024 * 1024);
    let config = client_config(&hub);
    let local = hub.dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let out = sftp_batch(
        &config,
        &local,
        "t1",
        &[format!(
            "get {}/there.txt {}/got",
            root.display(),
            local.display()
        )],
    );
    assert_ne!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("interactive session"),
        "{}",
        stderr(&out)
    );
    assert!(!local.join("got").exists());
    assert_eq!(audit_records(&hub, "session.denied").len(), 1);
    assert!(audit_records(&hub, "sftp.open").is_empty());
    assert!(audit_records(&t1, "fs.received").is_empty());

    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP (other uid): needs root and setpriv to connect as another uid");
        return;
    }
    // The same client config, but `tether proxy` run as uid 4242 (the socket's group, no role).
    let _ = hub.tether_as(4242, 0, &["status"]);
    let copy = hub.dir.path().join("tether-copy");
    let tether = bin("tether").display().to_string();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("ProxyCommand"), "{text}");
    let as_other: String = text
        .lines()
        .map(|line| {
            if line.contains("ProxyCommand") {
                line.replace(
                    &tether,
                    &format!(
                        "setpriv --reuid=4242 --regid=0 --clear-groups -- {}",
                        copy.display()
                    ),
                )
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert!(as_other.contains("setpriv"), "{as_other}");
    let other = hub.dir.path().join("ssh_config_other");
    std::fs::write(&other, as_other).unwrap();
    let out = sftp_batch(
        &other,
        &local,
        "t1",
        &[format!(
            "get {}/there.txt {}/got",
            root.display(),
            local.display()
        )],
    );
    assert_ne!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("has no role"), "{}", stderr(&out));
    assert!(!local.join("got").exists());
    assert!(
        audit_records(&hub, "auth.denied")
            .iter()
            .any(|r| r["data"]["path"] == "/v1/proxy/t1")
    );
    assert!(audit_records(&hub, "sftp.open").is_empty());
}

/// The error of the target's latest audited file operation that failed.
fn last_fs_error(t: &Daemon) -> String {
    audit_text(t)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"].as_str().is_some_and(|k| k.starts_with("fs.")))
        .filter_map(|v| v["data"]["error"].as_str().map(str::to_owned))
        .next_back()
        .unwrap_or_default()
}

/// The changing operations of the stock `sftp` (mkdir, rename, chmod, `put -p`, rm, rmdir) work
/// below the root, each confined and audited on the target as `fs.<op>`; escapes through
/// `rename`, `mkdir ../x`, `rm` via a symlinked directory, a chown and removing the root itself
/// are refused and change nothing.
#[test]
fn stock_sftp_changes_files_below_the_root_and_refuses_escapes() {
    if skip() {
        return;
    }
    let hub = Daemon::start("hub", "");
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("root");
    let outside = area.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), b"not for you").unwrap();
    std::fs::write(root.join("keep.txt"), b"keep").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("passwd"), root.join("out-link")).unwrap();
    let t1 = target(&hub, "t1", &[&root], 1024 * 1024);
    let config = client_config(&hub);
    let local = hub.dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("a.txt"), b"alpha\n").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(local.join("a.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (r, l, o) = (root.display(), local.display(), outside.display());

    let out = sftp_batch(
        &config,
        &local,
        "t1",
        &[
            format!("mkdir {r}/d"),
            format!("put {l}/a.txt {r}/d/a.txt"),
            format!("rename {r}/d/a.txt {r}/d/b.txt"),
            format!("chmod 600 {r}/d/b.txt"),
            format!("put -p {l}/a.txt {r}/p.txt"),
            // The symlink itself goes, never the file it points to.
            format!("rm {r}/out-link"),
        ],
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(root.join("d").is_dir());
    assert!(!root.join("d/a.txt").exists());
    assert_eq!(std::fs::read(root.join("d/b.txt")).unwrap(), b"alpha\n");
    let m = std::fs::metadata(root.join("d/b.txt")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    let p = std::fs::metadata(root.join("p.txt")).unwrap();
    assert_eq!(p.mtime(), 1_000_000_000, "put -p keeps the mtime");
    assert!(std::fs::symlink_metadata(root.join("out-link")).is_err());
    assert_eq!(
        std::fs::read(outside.join("passwd")).unwrap(),
        b"not for you"
    );

    // Each refusal is its own batch (sftp stops a batch at the first failure).
    let refused: Vec<(String, &str)> = vec![
        (format!("rename {r}/keep.txt {o}/keep.txt"), "outside_roots"),
        (
            format!("rename {r}/keep.txt {r}/../outside/keep.txt"),
            "escape",
        ),
        (format!("rename {r}/out-dir/passwd {r}/stolen"), "escape"),
        ("mkdir ../x".to_owned(), "escape"),
        (format!("mkdir {r}/out-dir/x"), "escape"),
        (format!("rm {r}/out-dir/passwd"), "escape"),
        (format!("rm {r}/../outside/passwd"), "escape"),
        (format!("rmdir {r}"), "not_an_entry"),
        (format!("rename {r}/d/b.txt {r}/keep.txt"), "exists"),
        (format!("chown 0 {r}/keep.txt"), "unsupported"),
        (format!("chmod 777 {r}/out-dir/passwd"), "escape"),
        (format!("rmdir {r}/d"), "not_empty"),
    ];
    for (line, code_expected) in &refused {
        let out = sftp_batch(&config, &local, "t1", std::slice::from_ref(line));
        assert_ne!(code(&out), 0, "{line}: {}{}", stdout(&out), stderr(&out));
        assert!(!stderr(&out).is_empty(), "{line}: no error shown");
        // The stock client shows only the status ("Permission denied", "Failure"); the
        // target's audit record has the precise reason.
        let last = last_fs_error(&t1);
        assert!(
            last.starts_with(&format!("{code_expected}: ")),
            "{line}: expected {code_expected:?}, the target audited {last:?}"
        );
    }
    assert_eq!(std::fs::read(root.join("keep.txt")).unwrap(), b"keep");
    assert_eq!(
        std::fs::read(outside.join("passwd")).unwrap(),
        b"not for you"
    );
    let m = std::fs::metadata(outside.join("passwd")).unwrap();
    assert_ne!(m.permissions().mode() & 0o777, 0o777);
    assert!(!outside.join("keep.txt").exists());
    assert!(!outside.join("x").exists());
    assert!(!area.path().join("x").exists());
    assert!(!root.join("stolen").exists());
    assert!(root.join("d/b.txt").exists());

    let out = sftp_batch(
        &config,
        &local,
        "t1",
        &[format!("rm {r}/d/b.txt"), format!("rmdir {r}/d")],
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(!root.join("d").exists());

    // Audited on the target like the other file operations, refusals with their reason.
    let ok = |kind: &str| {
        audit_records(&t1, kind)
            .into_iter()
            .filter(|r| r["data"]["ok"] == true)
            .count()
    };
    assert_eq!(ok("fs.mkdir"), 1);
    assert_eq!(ok("fs.rename"), 1);
    assert_eq!(ok("fs.setstat"), 1);
    assert_eq!(ok("fs.rm"), 2);
    assert_eq!(ok("fs.rmdir"), 1);
    let renames = audit_records(&t1, "fs.rename");
    assert!(renames.iter().any(
        |r| r["data"]["ok"] == true && r["data"]["to"].as_str().unwrap().ends_with("/d/b.txt")
    ));
    assert!(renames.iter().any(|r| {
        r["data"]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("escape")
    }));
    assert!(audit_records(&t1, "fs.rm").iter().any(|r| {
        r["data"]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("escape")
    }));
    assert!(
        audit_records(&t1, "fs.received")
            .iter()
            .any(|r| r["data"]["op"] == "rename" && r["data"]["verdict"] == "allow")
    );
}

/// What process `pid` has written so far (`wchar` in `/proc/PID/io`), in bytes.
fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `signal` (`-STOP`, `-CONT`) to `pid`.
fn signal(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {signal} {pid}");
}

/// A stock `sftp` fetching a big file through `tether proxy` is suspended (SIGSTOP) mid-transfer
/// with many reads in flight, so it stops reading: the hub's memory stays bounded and an `exec`
/// on the same target still completes promptly meanwhile (the relayed SFTP session has an SSH
/// connection of its own, so its stall doesn't hold up the pooled one). Resumed, the transfer
/// finishes; revoking the host closes the relayed session's connection too.
#[test]
fn an_sftp_client_that_stops_reading_neither_grows_the_hub_nor_stalls_exec() {
    if skip() {
        return;
    }
    const SIZE: u64 = 64 << 20;
    let hub = Daemon::start("hub", "");
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    // Sparse: no disk, and the bytes still cross every window and queue on the way.
    std::fs::File::create(root.join("big.bin"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let _t1 = target(&hub, "t1", &[&root], 2 * SIZE);
    let config = client_config(&hub);
    // Warm the pooled connection, so the execs below measure a stall, not a handshake.
    let out = hub.tether(&["exec", "-H", "t1", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before = crate::openssh::rss_kib(hub.pid());

    let local = hub.dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let batch = local.join("batch");
    std::fs::write(
        &batch,
        format!("get {}/big.bin /dev/null\n", root.display()),
    )
    .unwrap();
    // Big reads, many in flight: far more than any buffer between the target and the client.
    let mut child = Command::new("sftp")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(["-B", "131072", "-R", "512", "-b"])
        .arg(&batch)
        .arg("t1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(local.join("sftp.err")).unwrap())
        .spawn()
        .expect("run sftp");
    let pid = child.id();
    // Let the transfer ramp up (sftp raises its reads in flight as replies come), then stop it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = Instant::now();
    while written(pid) < 8 << 20 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "sftp ended before it was stopped: {}",
            std::fs::read_to_string(local.join("sftp.err")).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "the transfer did not get going ({} bytes)",
            written(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(pid, "-STOP");
    let stopped_at = written(pid);
    eprintln!(
        "sftp stopped after {stopped_at} bytes in {:?}",
        started.elapsed()
    );

    // Nobody reads for 6 s; the hub keeps serving the target and its memory stays bounded.
    let mut peak = before;
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let t = Instant::now();
        // Bounded, so a stall fails the test instead of hanging it.
        let out = Command::new("timeout")
            .arg("20")
            .arg(bin("tether"))
            .arg("--socket")
            .arg(&hub.socket)
            .args(["exec", "-H", "t1", "--", "echo still-here"])
            .stdin(Stdio::null())
            .output()
            .expect("run tether");
        slowest = slowest.max(t.elapsed());
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).contains("still-here"), "{}", stdout(&out));
        peak = peak.max(crate::openssh::rss_kib(hub.pid()));
        std::thread::sleep(Duration::from_millis(500));
    }
    let growth = peak.saturating_sub(before);
    eprintln!(
        "sftp stopped after {stopped_at} bytes; hub RSS before {before} KiB, peak {peak} KiB \
         (+{growth} KiB); slowest exec meanwhile {slowest:?}"
    );
    assert_eq!(written(pid), stopped_at, "the stopped sftp wrote");
    assert!(growth < 32 * 1024, "the hub grew by {growth} KiB");
    assert!(
        slowest < Duration::from_secs(5),
        "an exec on the same target took {slowest:?} while the sftp client was stopped"
    );

    // Resumed, the transfer goes on; the client going away ends the session on the hub.
    signal(pid, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while written(pid) < stopped_at + (4 << 20) {
        assert!(
            Instant::now() < deadline,
            "the resumed transfer did not go on ({} bytes)",
            written(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while audit_records(&hub, "sftp.close").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no sftp.close after the client went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A relayed session's connection closes with the host: after a revoke, the resumed client
    // finds its session broken (not finishing the transfer), and the hub writes its end.
    let mut child = Command::new("sftp")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(["-B", "131072", "-R", "512", "-b"])
        .arg(&batch)
        .arg("t1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sftp");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(pid) < 4 << 20 {
        assert!(Instant::now() < deadline, "the transfer did not get going");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(pid, "-STOP");
    let out = hub.tether(&["vpn", "revoke", "t1"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    // The hub writes the session's end when it ends on the hub's side, while the client is
    // still stopped — not when the client next reads.
    let deadline = Instant::now() + Duration::from_secs(15);
    let closed = loop {
        let closed = audit_records(&hub, "sftp.close");
        if closed.len() >= 2 {
            break closed;
        }
        assert!(
            Instant::now() < deadline,
            "no sftp.close after the host was revoked, with the client stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // An error either way: the revoke itself, or the target's side closing first.
    assert_eq!(closed[1]["data"]["error"], "stream", "{}", closed[1]);
    signal(pid, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sftp went on after the host was revoked");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the transfer finished after the revoke");
    let down = closed[1]["data"]["target_to_client_bytes"]
        .as_u64()
        .unwrap();
    assert!(down < SIZE, "{}", closed[1]);
}

/// Writes `size` bytes of a deterministic, incompressible pattern to `path` (so a byte out of
/// place changes the digest, unlike a sparse file's zeros); returns their SHA-256, in hex.
fn patterned_file(path: &Path, size: u64) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hash = Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            w.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = usize::try_from(left.min(block.len() as u64)).unwrap();
        f.write_all(&block[..n]).unwrap();
        hash.update(&block[..n]);
        left -= n as u64;
    }
    f.flush().unwrap();
    hex::encode(hash.finalize())
}

/// The SHA-256 of the file at `path`, in hex, and its size.
fn digest(path: &Path) -> (String, u64) {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        hash.update(&buf[..k]);
        n += k as u64;
    }
    (hex::encode(hash.finalize()), n)
}

/// Runs `cmd` (a download into `dest`), suspending it (SIGSTOP) for `pause` each time `dest`
/// passes one of `stops` bytes, then resuming it (SIGCONT); returns its exit status and stderr
/// once it ends by itself.
fn download_with_pauses(
    mut cmd: Command,
    dest: &Path,
    stops: &[u64],
    pause: Duration,
) -> (std::process::ExitStatus, String) {
    let err = dest.with_extension("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run the OpenSSH client");
    let pid = child.id();
    let size = || std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stops = stops.iter().copied().peekable();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if stops.peek().is_some_and(|&at| size() >= at) {
            stops.next();
            signal(pid, "-STOP");
            std::thread::sleep(pause);
            signal(pid, "-CONT");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the download did not finish ({} bytes)", size());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        stops.next().is_none(),
        "the download ended at {} bytes before every pause was made",
        size()
    );
    (status, std::fs::read_to_string(&err).unwrap_or_default())
}

/// A download through the hub's SFTP relay that is suspended and resumed — once for long, many
/// times, on a small file, with `sftp`'s big reads and with `scp` (SFTP mode) — either
/// finishes with the source's exact bytes or fails with an error: never a shorter file and
/// exit status 0.
#[test]
fn a_suspended_and_resumed_download_finishes_byte_exact() {
    if skip() {
        return;
    }
    const BIG: u64 = 64 << 20;
    const SMALL: u64 = 3 << 20;
    let hub = Daemon::start("hub", "");
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let big = patterned_file(&root.join("big.bin"), BIG);
    let small = patterned_file(&root.join("small.bin"), SMALL);
    let t1 = target(&hub, "t1", &[&root], 2 * BIG);
    let config = client_config(&hub);
    let local = hub.dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();

    let sftp = |name: &str, dest: &Path, big_reads: bool| {
        let batch = dest.with_extension("batch");
        std::fs::write(
            &batch,
            format!("get {}/{name} {}\n", root.display(), dest.display()),
        )
        .unwrap();
        let mut c = Command::new("sftp");
        c.arg("-F")
            .arg(&config)
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]);
        if big_reads {
            c.args(["-B", "131072", "-R", "512"]);
        }
        c.arg("-b").arg(&batch).arg("t1");
        c
    };
    let cases: Vec<(&str, Command, PathBuf, &[u64], Duration, &String, u64)> = vec![
        {
            let d = local.join("once.bin");
            let c = sftp("big.bin", &d, true);
            (
                "one long pause",
                c,
                d,
                &[8 << 20][..],
                Duration::from_secs(6),
                &big,
                BIG,
            )
        },
        {
            let d = local.join("many.bin");
            let c = sftp("big.bin", &d, true);
            let stops: &[u64] = &[4 << 20, 12 << 20, 20 << 20, 28 << 20, 40 << 20, 52 << 20];
            (
                "six short pauses",
                c,
                d,
                stops,
                Duration::from_secs(2),
                &big,
                BIG,
            )
        },
        {
            let d = local.join("small.bin");
            let c = sftp("small.bin", &d, false);
            (
                "a small file",
                c,
                d,
                &[1 << 20][..],
                Duration::from_secs(3),
                &small,
                SMALL,
            )
        },
        {
            let d = local.join("scp.bin");
            let mut c = Command::new("scp");
            c.arg("-F")
                .arg(&config)
                .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-s"])
                .arg(format!("t1:{}/big.bin", root.display()))
                .arg(&d);
            (
                "scp in SFTP mode",
                c,
                d,
                &[8 << 20, 30 << 20][..],
                Duration::from_secs(4),
                &big,
                BIG,
            )
        },
    ];
    for (what, cmd, dest, stops, pause, want, size) in cases {
        let (status, err) = download_with_pauses(cmd, &dest, stops, pause);
        let (got, len) = digest(&dest);
        eprintln!("{what}: {status}, {len} of {size} bytes");
        assert!(
            status.success(),
            "{what}: {status}: {err}\nhub log:\n{}\ntarget log:\n{}",
            hub.log(),
            t1.log()
        );
        assert_eq!(
            len, size,
            "{what}: exit 0 with {len} of {size} bytes: {err}"
        );
        assert_eq!(&got, want, "{what}: exit 0 with other bytes");
    }
}
