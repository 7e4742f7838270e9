//! Enrollment and the tunnel end to end: real invites, `tetherd enroll`, the userspace
//! WireGuard tunnel between real daemons on loopback, revocation.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tether_e2e::{Daemon, bin, code, config_text, stderr, stdout};

fn hub() -> Daemon {
    Daemon::start("hub", "")
}

pub(crate) fn invite(hub: &Daemon, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["vpn", "invite", name];
    args.extend_from_slice(extra);
    let out = hub.tether(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

pub(crate) fn enroll(config: &Path, token: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(bin("tetherd"))
        .args(["enroll", "-", "--config"])
        .arg(config)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // tetherd may refuse (e.g. an oversized token) and exit before reading all of stdin: a
    // broken pipe is then expected, and its answer is in the output.
    if let Err(e) = child.stdin.take().unwrap().write_all(token.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing the token: {e}"
        );
    }
    child.wait_with_output().unwrap()
}

/// A target directory and config (not started).
pub(crate) fn target_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, config_text("target", dir.path(), "")).unwrap();
    (dir, config)
}

pub(crate) fn json(out: &Output) -> Value {
    assert_eq!(code(out), 0, "{}{}", stdout(out), stderr(out));
    serde_json::from_str(&stdout(out)).unwrap()
}

/// Polls `vpn status` until `pred` holds (10 s).
fn wait_status(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json(&d.tether(&["--json", "vpn", "status"]));
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn peer_up(v: &Value, name: &str) -> bool {
    v["peers"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == name && p["up"] == true))
}

fn enrolled_target(hub: &Daemon, name: &str) -> Daemon {
    let token = invite(hub, name, &["--tag", "env=test", "--group", "web"]);
    let (dir, config) = target_dir();
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains(&format!("enrolled as {name}")),
        "{}",
        stdout(&out)
    );
    let mut t = Daemon::spawn_in(dir, config, &[]);
    t.wait_ready();
    t
}

#[test]
fn invite_enroll_online_then_revoke_drops_the_tunnel_within_a_second() {
    let hub = hub();
    let t1 = enrolled_target(&hub, "t1");

    wait_status(&hub, "t1 up on the hub", |v| peer_up(v, "t1"));
    let ts = wait_status(&t1, "hub up on t1", |v| peer_up(v, "hub"));
    assert_eq!(ts["role"], "target");
    assert_eq!(ts["enrollment"]["name"], "t1");
    assert_eq!(ts["overlay_ip"], "10.99.0.2");

    let hosts = json(&hub.tether(&["--json", "hosts", "list"]));
    let h = &hosts["hosts"][0];
    assert_eq!(
        (h["name"].as_str(), h["online"].as_bool()),
        (Some("t1"), Some(true))
    );
    assert_eq!(h["tags"]["env"], "test");
    assert!(
        h["ssh_host_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 "),
        "host key pinned at enrollment"
    );
    let sel = json(&hub.tether(&["--json", "hosts", "list", "-H", "tag:env=test,!host:nope"]));
    assert_eq!(sel["hosts"].as_array().unwrap().len(), 1);
    let none = json(&hub.tether(&["--json", "hosts", "list", "-H", "group:db"]));
    assert_eq!(none["hosts"].as_array().unwrap().len(), 0);
    let status = json(&hub.tether(&["--json", "status"]));
    assert_eq!(status["hosts"], 1);

    let t0 = Instant::now();
    let out = hub.tether(&["vpn", "revoke", "t1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_status(&hub, "t1 gone", |v| {
        v["peers"].as_array().is_some_and(|p| p.is_empty())
    });
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "revocation took {:?}",
        t0.elapsed()
    );
    let hosts = json(&hub.tether(&["--json", "hosts", "list"]));
    assert_eq!(hosts["hosts"][0]["state"], "revoked");
    assert!(hub.wait_log("host_revoked"), "alert raised");

    // All of it is on record, and the token itself is nowhere.
    let audit = hub.tether(&["--json", "audit", "tail", "-n", "100"]);
    let text = stdout(&audit);
    for kind in [
        "\"enroll.invite\"",
        "\"enroll.accepted\"",
        "\"host.revoke\"",
    ] {
        assert!(text.contains(kind), "{kind} not audited: {text}");
    }
    assert!(
        !text.contains("tether1."),
        "the invite token leaked into the audit log"
    );
    assert!(
        !hub.log().contains("tether1."),
        "the invite token leaked into the hub's log"
    );
}

#[test]
fn bad_tokens_fail_with_distinct_errors_and_change_nothing() {
    let hub = hub();
    let (_dir, config) = target_dir();

    let garbage = enroll(&config, "not-a-token", &[]);
    assert_eq!(code(&garbage), 2);
    assert!(
        stderr(&garbage).contains("malformed"),
        "{}",
        stderr(&garbage)
    );

    let token = invite(&hub, "t1", &[]);
    // Flip one character of the MAC (the last part).
    let mut tampered: Vec<char> = token.chars().collect();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let out = enroll(&config, &tampered, &[]);
    assert_eq!(code(&out), 2);
    let msg = stderr(&out).to_lowercase();
    assert!(
        msg.contains("failed authentication") && msg.contains("altered"),
        "{msg}"
    );

    // A token from another hub, presented to this one.
    let other = self::hub();
    let foreign = invite(&other, "t1", &[]);
    let endpoint = json(&hub.tether(&["--json", "vpn", "status"]))["enroll_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = enroll(&config, &foreign, &["--endpoint", &endpoint]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("was issued by hub")
            && stderr(&out).contains("enroll against the hub that issued it"),
        "{}",
        stderr(&out)
    );

    // Expired: checked locally, before contacting anyone.
    let short = invite(&hub, "t2", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let out = enroll(&config, &short, &[]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // None of that enrolled anything or wrote the target's enrollment.
    assert!(
        !config
            .parent()
            .unwrap()
            .join("state/enrollment.json")
            .exists()
    );
    let hosts = json(&hub.tether(&["--json", "hosts", "list"]));
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 0);

    // The real token still works once, and only once.
    assert_eq!(code(&enroll(&config, &token, &[])), 0);
    let (_dir2, config2) = target_dir();
    let replay = enroll(&config2, &token, &[]);
    assert_eq!(code(&replay), 2);
    assert!(
        stderr(&replay).contains("already used"),
        "{}",
        stderr(&replay)
    );
    let again = enroll(&config, &token, &[]);
    assert_eq!(code(&again), 2);
    assert!(
        stderr(&again).contains("already enrolled"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_failed_re_enrollment_keeps_the_working_identity_and_the_inventory_survives_kill_9() {
    let mut hub = hub();
    let t1 = enrolled_target(&hub, "t1");
    wait_status(&hub, "t1 up", |v| peer_up(v, "t1"));
    let used = invite(&hub, "t9", &[]);
    let (_d, other) = target_dir();
    assert_eq!(code(&enroll(&other, &used, &[])), 0);

    // --force with a used token fails and must not touch t1's keys.
    let out = enroll(&t1.config, &used, &["--force"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    drop(t1);

    // Kill the hub hard; the inventory must be intact and the peers come back.
    hub.signal(Signal::SIGKILL);
    hub.wait_exit(Duration::from_secs(5)).unwrap();
    let dir = std::mem::replace(&mut hub.dir, tempfile::tempdir().unwrap());
    let mut hub2 = Daemon::spawn_in(dir, hub.config.clone(), &[]);
    hub2.wait_ready();
    let hosts = json(&hub2.tether(&["--json", "hosts", "list"]));
    let names: Vec<&str> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["t1", "t9"]);
    let status = json(&hub2.tether(&["--json", "vpn", "status"]));
    assert_eq!(
        status["peers"].as_array().unwrap().len(),
        2,
        "peers re-added from the inventory"
    );
}

#[test]
fn keys_rotate_over_the_tunnel_from_either_side_and_survive_a_restart() {
    let hub = hub();
    let mut t1 = enrolled_target(&hub, "t1");
    wait_status(&hub, "t1 up", |v| peer_up(v, "t1"));
    let key_of = |hub: &Daemon| {
        json(&hub.tether(&["--json", "hosts", "show", "t1"]))["wg_public_key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let k0 = key_of(&hub);

    // Hub-initiated (`tether vpn rotate-keys NAME`).
    let out = hub.tether(&["--json", "vpn", "rotate-keys", "t1"]);
    let v = json(&out);
    assert_eq!(v["rotated"][0]["ok"], true, "{v}");
    let k1 = key_of(&hub);
    assert_ne!(k0, k1);
    assert_eq!(v["rotated"][0]["new_public_key"], k1.as_str());
    wait_status(&hub, "t1 up under the new key", |v| {
        v["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["public_key"] == k1.as_str() && p["up"] == true)
        })
    });

    // Target-initiated (what the 90-day schedule runs).
    let v = json(&t1.tether(&["--json", "vpn", "rotate-keys"]));
    assert_eq!(v["rotated"][0]["ok"], true, "{v}");
    let k2 = key_of(&hub);
    assert_ne!(k1, k2);

    // Both ends recorded it.
    let hub_audit =
        stdout(&hub.tether(&["audit", "tail", "-n", "100", "--type", "vpn.*", "--json"]));
    assert_eq!(
        hub_audit.matches("\"vpn.key_rotation\"").count(),
        2,
        "{hub_audit}"
    );
    assert!(hub_audit.contains(&k2));
    assert!(hub.wait_log("key_rotation"));
    let t1_audit = stdout(&t1.tether(&[
        "audit",
        "tail",
        "-n",
        "100",
        "--type",
        "vpn.key_rotation",
        "--json",
    ]));
    assert_eq!(t1_audit.lines().count(), 2, "{t1_audit}");

    // The new key is the one the target keeps: after a restart the tunnel comes back.
    t1.signal(Signal::SIGTERM);
    t1.wait_exit(Duration::from_secs(5)).unwrap();
    let dir = std::mem::replace(&mut t1.dir, tempfile::tempdir().unwrap());
    let mut again = Daemon::spawn_in(dir, t1.config.clone(), &[]);
    again.wait_ready();
    let v = wait_status(&again, "hub up after restart", |v| peer_up(v, "hub"));
    assert_eq!(v["public_key"], k2.as_str());

    // A revoked host cannot rotate.
    assert_eq!(code(&hub.tether(&["vpn", "revoke", "t1"])), 0);
    let out = hub.tether(&["--json", "vpn", "rotate-keys", "t1"]);
    assert_eq!(code(&out), 1);
}

#[test]
fn every_acknowledged_enrollment_survives_kill_9_of_the_hub_mid_enrollment() {
    let mut hub = hub();
    let n = 8;
    let tokens: Vec<String> = (0..n)
        .map(|i| invite(&hub, &format!("m{i}"), &[]))
        .collect();
    // Enroll all at once; kill the hub the moment the first target reports success, while the
    // others are still in flight.
    let (tx, rx) = std::sync::mpsc::channel();
    let handles: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let (dir, config) = target_dir();
                let ok = code(&enroll(&config, &token, &[])) == 0;
                let _ = tx.send((i, ok));
                drop(dir);
            })
        })
        .collect();
    drop(tx);
    let mut acknowledged = Vec::new();
    let mut finished = 0;
    while let Ok((i, ok)) = rx.recv_timeout(Duration::from_secs(15)) {
        finished += 1;
        if ok {
            acknowledged.push(format!("m{i}"));
            break;
        }
    }
    hub.signal(Signal::SIGKILL);
    hub.wait_exit(Duration::from_secs(5)).unwrap();
    for (i, ok) in rx.iter() {
        finished += 1;
        if ok {
            acknowledged.push(format!("m{i}"));
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(finished, n);
    assert!(
        !acknowledged.is_empty(),
        "no enrollment completed before the kill"
    );
    eprintln!(
        "{} of {n} enrollments were acknowledged around the kill",
        acknowledged.len()
    );

    let dir = std::mem::replace(&mut hub.dir, tempfile::tempdir().unwrap());
    let mut again = Daemon::spawn_in(dir, hub.config.clone(), &[]);
    again.wait_ready();
    let hosts = json(&again.tether(&["--json", "hosts", "list"]));
    let names: Vec<&str> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    for name in &acknowledged {
        assert!(
            names.contains(&name.as_str()),
            "{name} was told it enrolled but is missing after kill -9: {names:?}"
        );
    }
    // And the audit chain is intact.
    assert_eq!(code(&again.tether(&["audit", "verify"])), 0);
}

#[test]
fn bad_invite_input_and_unknown_hosts_get_4xx_and_exit_2() {
    let d = tether_e2e::Daemon::start("hub", "");
    let long_ttl = d.tether(&["vpn", "invite", "web1", "--ttl", "60d"]);
    assert_eq!(
        tether_e2e::code(&long_ttl),
        2,
        "{}",
        tether_e2e::stderr(&long_ttl)
    );
    assert!(
        tether_e2e::stderr(&long_ttl).contains("enroll.max_ttl"),
        "{}",
        tether_e2e::stderr(&long_ttl)
    );
    let big_name = "a".repeat(100_000);
    let out = d.tether(&["vpn", "invite", &big_name]);
    assert_eq!(tether_e2e::code(&out), 2, "{}", tether_e2e::stderr(&out));
    assert!(
        tether_e2e::stderr(&out).contains("longer than 63"),
        "{}",
        tether_e2e::stderr(&out)
    );
    let big_tag = format!("env={}", "p".repeat(100_000));
    let out = d.tether(&["vpn", "invite", "web1", "--tag", &big_tag]);
    assert_eq!(tether_e2e::code(&out), 2, "{}", tether_e2e::stderr(&out));
    assert!(
        tether_e2e::stderr(&out).contains("tag value"),
        "{}",
        tether_e2e::stderr(&out)
    );
    let out = d.tether(&["vpn", "rotate-keys", "nosuchhost"]);
    assert_eq!(tether_e2e::code(&out), 2, "{}", tether_e2e::stderr(&out));
    assert!(
        tether_e2e::stderr(&out).contains("no host named"),
        "{}",
        tether_e2e::stderr(&out)
    );
    // Within the bound, an invite still works.
    let ok = d.tether(&["vpn", "invite", "web1", "--ttl", "7d"]);
    assert_eq!(tether_e2e::code(&ok), 0, "{}", tether_e2e::stderr(&ok));
}

#[test]
fn a_huge_token_gets_the_same_error_on_argv_and_on_stdin() {
    let (_dir, config) = target_dir();
    let huge = format!("tether1.{}", "A".repeat(100_000));
    let on_stdin = enroll(&config, &huge, &[]);
    let on_argv = Command::new(bin("tetherd"))
        .args(["enroll", &huge, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    for out in [&on_stdin, &on_argv] {
        assert_eq!(code(out), 2, "{}", stderr(out));
        assert!(
            stderr(out).contains("longer than 16 KiB"),
            "{}",
            stderr(out)
        );
    }
}

/// The audit bytes in `state/audit` (day files end in preallocated NULs; readers stop there).
fn audit_bytes(d: &Daemon) -> Vec<u8> {
    let mut out = Vec::new();
    let dir = d.dir.path().join("state/audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        let b = std::fs::read(f).unwrap();
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        out.extend_from_slice(&b[..end]);
    }
    out
}

/// Unauthenticated enrollment input cannot grow the audit log (or the daemon log) without
/// bound: 6 s of refused attempts quoting a 60 KiB field name from one source give one short
/// `enroll.rejected` record (code + escaped excerpt), the rest are counted into the source's
/// per-minute summary. README: at most 2 records per source per minute.
#[test]
fn refused_enrollments_grow_the_audit_log_by_a_bounded_amount() {
    use std::io::Read;
    let hub = hub();
    let endpoint = json(&hub.tether(&["--json", "vpn", "status"]))["enroll_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = audit_bytes(&hub).len();
    let field = "A".repeat(60 * 1024);
    let body = format!("{{\"hello\":{{\"{field}\":\"\\u001b[2J\\n\"}}}}");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(6) {
        if let Ok(mut s) = std::net::TcpStream::connect(&endpoint) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(&frame);
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sent >= 50, "{sent} attempts");
    std::thread::sleep(Duration::from_millis(500));
    let log = audit_bytes(&hub);
    let grown = &log[before..];
    let text = String::from_utf8_lossy(grown);
    let rejected: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"enroll.rejected\""))
        .collect();
    eprintln!(
        "{sent} refused attempts in 6 s -> {} enroll.rejected record(s), {} audit bytes",
        rejected.len(),
        grown.len()
    );
    assert_eq!(rejected.len(), 1, "{text}");
    assert!(rejected[0].len() < 1024, "{}", rejected[0]);
    assert!(!rejected[0].contains("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    assert!(grown.len() < 2048, "audit grew {} bytes", grown.len());
    // the daemon's own log holds no 60 KiB lines either
    let daemon_log = hub.log();
    assert!(
        daemon_log.lines().all(|l| l.len() < 2048),
        "a log line quotes the attacker's field"
    );
}

/// `reinvite` frees the old machine's overlay address for its replacement: the replacement
/// (its own fresh keys) gets the same address and comes up in the tunnel as the only peer of
/// that name, and the inventory holds the new identity (the old keys stay refused, see
/// tether-enroll's identity_rules).
#[test]
fn reinvite_hands_the_address_to_the_replacement_with_a_new_identity() {
    let hub = hub();
    let old = enrolled_target(&hub, "r1");
    wait_status(&hub, "r1 up", |v| peer_up(v, "r1"));
    let old_key = json(&hub.tether(&["--json", "hosts", "show", "r1"]))["wg_public_key"].clone();
    drop(old);

    let token = json(&hub.tether(&["--json", "vpn", "reinvite", "r1"]))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (dir, config) = target_dir();
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut new = Daemon::spawn_in(dir, config, &[]);
    new.wait_ready();
    let ts = wait_status(&new, "hub up on the replacement", |v| peer_up(v, "hub"));
    assert_eq!(
        ts["overlay_ip"], "10.99.0.2",
        "the replacement got the old address"
    );
    wait_status(&hub, "r1 (replacement) up", |v| peer_up(v, "r1"));
    let host = json(&hub.tether(&["--json", "hosts", "show", "r1"]));
    assert_eq!(host["state"], "active");
    assert_ne!(host["wg_public_key"], old_key, "a new identity");
    let peers = json(&hub.tether(&["--json", "vpn", "status"]))["peers"].clone();
    assert_eq!(peers.as_array().unwrap().len(), 1, "{peers}");
}

/// A restart never hands one host's key to another: when hosts.json (edited offline, or
/// written before keys were unique) gives two active hosts one WireGuard key, neither gets a
/// tunnel peer, and the log says why.
#[test]
fn a_restart_never_gives_one_key_to_two_hosts() {
    let mut hub = hub();
    let a = invite(&hub, "k1", &[]);
    let b = invite(&hub, "k2", &[]);
    let (_da, ca) = target_dir();
    let (_db, cb) = target_dir();
    assert_eq!(code(&enroll(&ca, &a, &[])), 0);
    assert_eq!(code(&enroll(&cb, &b, &[])), 0);
    wait_status(&hub, "two peers", |v| {
        v["peers"].as_array().is_some_and(|p| p.len() == 2)
    });
    hub.signal(Signal::SIGTERM);
    hub.wait_exit(Duration::from_secs(5)).unwrap();
    // Edit offline: fold the journal (`CHECKSUM SEQ {"put":RECORD}` lines) into a snapshot in
    // the pre-journal layout, with the second host given the first one's key.
    let state = hub.dir.path().join("state");
    let mut hosts: Vec<Value> = std::fs::read(state.join("hosts.json"))
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap()["hosts"].clone())
        .ok()
        .and_then(|h| h.as_array().cloned())
        .unwrap_or_default();
    let journal = std::fs::read_to_string(state.join("hosts.journal")).unwrap_or_default();
    for line in journal.lines() {
        let change: Value = serde_json::from_str(line.splitn(3, ' ').nth(2).unwrap()).unwrap();
        let put = change["put"].clone();
        hosts.retain(|h| h["name"] != put["name"]);
        hosts.push(put);
    }
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    let k1 = hosts[0]["wg_public_key"].clone();
    hosts[1]["wg_public_key"] = k1;
    let inv = serde_json::json!({"version": 1, "hosts": hosts});
    std::fs::write(
        state.join("hosts.json"),
        serde_json::to_vec_pretty(&inv).unwrap(),
    )
    .unwrap();
    let _ = std::fs::remove_file(state.join("hosts.journal"));
    let dir = std::mem::replace(&mut hub.dir, tempfile::tempdir().unwrap());
    let mut hub2 = Daemon::spawn_in(dir, hub.config.clone(), &[]);
    hub2.wait_ready();
    let peers = json(&hub2.tether(&["--json", "vpn", "status"]))["peers"].clone();
    assert_eq!(peers.as_array().unwrap().len(), 0, "{peers}");
    assert!(hub2.wait_log("held by several hosts"), "{}", hub2.log());
}

/// The payload of a `tether1.` token, as JSON.
fn token_payload(token: &str) -> Value {
    use base64::Engine;
    let b64 = token
        .trim()
        .strip_prefix("tether1.")
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// A token with `payload`, MACed (HMAC-SHA256, as the hub does) with `key`.
fn token_with(payload: &Value, key: &[u8]) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = serde_json::to_vec(payload).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(&json);
    let tag = mac.finalize().into_bytes();
    format!("tether1.{}.{}", b64.encode(&json), b64.encode(tag))
}

/// Issue 14 §1: the invite key rotates only through the dedicated, audited command. An invite
/// issued before the rotation still enrolls a real target (whose tunnel comes up) after it, a new
/// invite names the new epoch and enrolls, a token MACed with a key the vault does not hold is
/// refused, and a restart keeps every epoch.
#[test]
fn invite_key_rotation_keeps_outstanding_invites_and_every_epoch_survives_a_restart() {
    let mut hub = Daemon::start("hub", "\n[vault]\nbackend = \"file\"\n");
    let pre1 = invite(&hub, "pre1", &[]);
    let pre2 = invite(&hub, "pre2", &[]);
    assert!(token_payload(&pre1).get("key_epoch").is_none());

    let r = json(&hub.tether(&["--json", "vpn", "rotate-invite-key"]));
    assert_eq!(r["epoch"], 1, "{r}");
    assert_eq!(r["previous_epoch"], 0, "{r}");
    assert_eq!(r["epochs"], serde_json::json!([0, 1]), "{r}");
    assert_eq!(r["vault_entry"], "tetherd.invite-key.e1", "{r}");
    let key_id1 = r["key_id"].as_str().unwrap().to_owned();
    assert_eq!(key_id1.len(), 16, "{r}");
    let post1 = invite(&hub, "post1", &[]);
    assert_eq!(token_payload(&post1)["key_epoch"], 1);

    // The invite made before the rotation enrolls a real target, and its tunnel comes up.
    let (dir, config) = target_dir();
    let out = enroll(&config, &pre1, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut t = Daemon::spawn_in(dir, config, &[]);
    t.wait_ready();
    wait_status(&hub, "pre1 up", |v| peer_up(v, "pre1"));
    drop(t);

    // A restart loads every epoch: the newest still signs (the next rotation is epoch 2), and
    // invites of epoch 0 and 1 both enroll.
    hub.restart();
    let out = hub.tether(&["vpn", "rotate-invite-key"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("epoch 2") && stdout(&out).contains("tetherd.invite-key.e2"),
        "{}",
        stdout(&out)
    );
    assert_eq!(token_payload(&invite(&hub, "post2", &[]))["key_epoch"], 2);
    let endpoint = json(&hub.tether(&["--json", "vpn", "status"]))["enroll_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    for (name, token) in [("pre2", &pre2), ("post1", &post1)] {
        let (_d, config) = target_dir();
        let out = enroll(&config, token, &["--endpoint", &endpoint]);
        assert_eq!(code(&out), 0, "{name}: {}{}", stdout(&out), stderr(&out));
    }

    // A token MACed with a key the vault does not hold (naming an epoch it has, or one it
    // lacks) is refused, and enrolls nothing.
    let mut forged = token_payload(&invite(&hub, "forged1", &[]));
    for epoch in [2, 9] {
        forged["key_epoch"] = epoch.into();
        let (_d, config) = target_dir();
        let out = enroll(&config, &token_with(&forged, &[7u8; 32]), &[]);
        assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
        assert!(
            stderr(&out).contains("failed authentication"),
            "{}",
            stderr(&out)
        );
    }
    let hosts = json(&hub.tether(&["--json", "hosts", "list"]));
    let names: Vec<&str> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"forged1"), "{names:?}");
    assert!(
        names.contains(&"pre2") && names.contains(&"post1"),
        "{names:?}"
    );

    // Every epoch is kept in the vault; the rotations are audited with epoch and key id only,
    // and alerted.
    let list = stdout(&hub.tether(&["secret", "list"]));
    for name in [
        "tetherd.invite-key",
        "tetherd.invite-key.e1",
        "tetherd.invite-key.e2",
    ] {
        assert!(list.contains(name), "{name} missing: {list}");
    }
    let out = hub.tether(&[
        "--json",
        "audit",
        "tail",
        "-n",
        "1000",
        "--type",
        "invite_key.rotated",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let recs: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["data"]["epoch"], 1);
    assert_eq!(recs[0]["data"]["key_id"], key_id1.as_str());
    assert_eq!(recs[1]["data"]["epoch"], 2);
    let mut fields: Vec<&str> = recs[0]["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["epoch", "key_id", "previous_epoch", "vault_entry"]);
    assert!(
        hub.log().contains("invite key rotated to epoch 2"),
        "no key_rotation alert logged: {}",
        hub.log()
    );
}
