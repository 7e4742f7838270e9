//! `tether sessions list|show|play|export` against a real hub: a recording in the hub's
//! `state_dir/recordings` (written by the same recorder the daemon's sessions use) is listed,
//! verified against its summary, played, exported byte for byte and read by the real
//! `asciinema`; an edited one is reported corrupt; bad ids change nothing; reads are audited.

use std::process::Command;

use serde_json::Value;
use tether_e2e::*;
use tether_recording::{EventKind, Header, Recorder, Summary, TetherMeta};

use crate::exec::audit_records;

/// Writes recording `id` for host `host` into the hub's recordings directory.
fn record(hub: &Daemon, id: &str, host: &str, outputs: &[&str]) -> (std::path::PathBuf, Summary) {
    let dir = hub.dir.path().join("state/recordings");
    std::fs::create_dir_all(&dir).unwrap();
    let meta = TetherMeta {
        id: id.into(),
        host: host.into(),
        user: "alice".into(),
        via: "cli".into(),
        command: None,
    };
    let (mut r, first) = Recorder::new(&Header::new(80, 24, 1_790_000_000, meta), 1 << 20);
    let mut bytes = first.bytes;
    for (i, o) in outputs.iter().enumerate() {
        let t = i as f64 * 0.4;
        r.record(t, EventKind::Output, o.as_bytes());
        if r.due(t) {
            bytes.extend(r.take(t).unwrap().bytes);
        }
    }
    let (last, summary) = r.finish(outputs.len() as f64 * 0.4);
    bytes.extend(last.bytes);
    let path = dir.join(format!("{id}.cast"));
    std::fs::write(&path, &bytes).unwrap();
    (path, summary)
}

#[test]
fn recordings_are_listed_verified_played_exported_and_tamper_is_reported() {
    let hub = Daemon::start("hub", "");
    let outputs = [
        "$ uname\r\n",
        "Linux\r\n",
        "$ echo done\r\n",
        "done\r\n",
        "$ exit\r\n",
    ];
    let (path, summary) = record(&hub, "s-web1-1", "web1", &outputs);
    record(&hub, "s-db1-1", "db1", &["hello\r\n"]);

    let out = hub.tether(&["--json", "sessions", "list", "-H", "web1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{list}");
    assert_eq!(sessions[0]["id"], "s-web1-1");
    assert_eq!(sessions[0]["user"], "alice");
    assert_eq!(sessions[0]["size"], summary.size);

    let out = hub.tether(&["--json", "sessions", "show", "s-web1-1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let d: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(d["state"], "complete", "{d}");
    assert_eq!(d["sha256"], summary.sha256.as_str(), "{d}");
    assert_eq!(d["events"], 5);

    let out = hub.tether(&["sessions", "play", "s-web1-1", "--speed", "1000"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), outputs.concat());

    let export = hub.dir.path().join("export.cast");
    let out = hub.tether(&[
        "sessions",
        "export",
        "s-web1-1",
        "-o",
        export.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&export).unwrap(),
        std::fs::read(&path).unwrap()
    );

    // The real asciinema reads what we export.
    match python_venv("tether-asciinema-venv", "asciinema>=2.4,<3") {
        Ok(venv) => {
            let out = Command::new(venv.join("bin/asciinema"))
                .arg("cat")
                .arg(&export)
                .output()
                .unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            assert_eq!(stdout(&out), outputs.concat());
        }
        Err(why) => eprintln!("SKIP (asciinema part): {why}"),
    }

    // One edited byte of what was shown: corrupt, exit 1.
    let original = std::fs::read(&path).unwrap();
    let mut bytes = original.clone();
    let i = bytes.windows(5).position(|w| w == b"Linux").unwrap();
    bytes[i] = b'l';
    std::fs::write(&path, &bytes).unwrap();
    let out = hub.tether(&["--json", "sessions", "show", "s-web1-1"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let d: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(d["state"], "corrupt", "{d}");

    // Cut short (a crash mid-session): truncated, exit 1.
    std::fs::write(&path, &original[..original.len() - 30]).unwrap();
    let d: Value = serde_json::from_str(&stdout(
        &hub.tether(&["--json", "sessions", "show", "s-web1-1"]),
    ))
    .unwrap();
    assert_eq!(d["state"], "truncated", "{d}");

    // Bad and unknown ids: precise errors, exit 2.
    for (id, needle) in [
        ("../etc/passwd", "not a recording id"),
        ("s-nope", "no recording"),
    ] {
        let out = hub.tether(&["sessions", "show", id]);
        assert_eq!(code(&out), 2, "{id}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{id}: {}", stderr(&out));
    }

    // Reading recordings is audited like reading the audit log.
    let reads = audit_records(&hub, "session.read");
    assert!(reads.len() >= 4, "{reads:?}");
}

/// `ssh.record = "all"`: a `tether exec` on two hosts records two exec sessions, listed with
/// kind `exec`; the export of one holds the command's stdout (`o`), stderr (`e`) and exit
/// status (`tether:exit:N` marker), verifies, and its SHA-256 and size match the
/// `exec.result` audit record.
#[test]
fn record_all_records_each_exec_with_output_and_exit_status() {
    use crate::exec::{enrolled, wait_online};
    let hub = Daemon::start("hub", "\n[ssh]\nrecord = \"all\"\n");
    let _targets: Vec<Daemon> = ["t1", "t2"].iter().map(|n| enrolled(&hub, n)).collect();
    wait_online(&hub, &["t1", "t2"]);
    let out = hub.tether(&[
        "exec",
        "-H",
        "group:web",
        "--",
        "echo to-stdout; echo to-stderr >&2; exit 3",
    ]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));

    let out = hub.tether(&["--json", "sessions", "list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{list}");
    let mut hosts: Vec<&str> = sessions
        .iter()
        .map(|s| s["host"].as_str().unwrap())
        .collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["t1", "t2"]);
    assert!(
        sessions
            .iter()
            .all(|s| s["kind"] == "exec" && s["via"] == "exec")
    );
    assert!(
        sessions
            .iter()
            .all(|s| s["command"].as_str().unwrap().starts_with("echo to-stdout"))
    );
    let text = stdout(&hub.tether(&["sessions", "list"]));
    assert!(text.contains("KIND") && text.contains("exec"), "{text}");

    let s1 = sessions.iter().find(|s| s["host"] == "t1").unwrap();
    let id = s1["id"].as_str().unwrap();
    let export = hub.dir.path().join("exec.cast");
    let out = hub.tether(&["sessions", "export", id, "-o", export.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let bytes = std::fs::read(&export).unwrap();
    let lines: Vec<Value> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let has = |code: &str, data: &str| {
        lines
            .iter()
            .any(|l| l[1] == code && l[2].as_str().is_some_and(|d| d.contains(data)))
    };
    assert!(has("o", "to-stdout"), "{lines:?}");
    assert!(has("e", "to-stderr"), "{lines:?}");
    assert!(has("m", "tether:exit:3"), "{lines:?}");
    assert!(!has("o", "to-stderr"), "stderr is marked apart from stdout");

    let out = hub.tether(&["--json", "sessions", "show", id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["state"], "complete", "{shown}");
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    assert_eq!(shown["sha256"], sha.as_str());

    // The real asciinema reads it (skipping the `e` events it doesn't know), and
    // `tether sessions play` shows stdout and stderr.
    match python_venv("tether-asciinema-venv", "asciinema>=2.4,<3") {
        Ok(venv) => {
            let out = Command::new(venv.join("bin/asciinema"))
                .arg("cat")
                .arg(&export)
                .output()
                .unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            assert!(stdout(&out).contains("to-stdout"), "{}", stdout(&out));
        }
        Err(why) => eprintln!("SKIP (asciinema part): {why}"),
    }
    let played = hub.tether(&["sessions", "play", id, "--speed", "1000"]);
    assert_eq!(code(&played), 0, "{}", stderr(&played));
    assert!(stdout(&played).contains("to-stdout"), "{}", stdout(&played));
    assert!(stdout(&played).contains("to-stderr"), "{}", stdout(&played));

    // The exec.result of t1 vouches for the recording.
    let results = audit_records(&hub, "exec.result");
    assert_eq!(results.len(), 2);
    let r1 = results.iter().find(|r| r["host"] == "t1").unwrap();
    assert_eq!(r1["data"]["exit_code"], 3);
    assert_eq!(r1["data"]["recording"]["id"], id, "{r1}");
    assert_eq!(r1["data"]["recording"]["sha256"], sha.as_str(), "{r1}");
    assert_eq!(r1["data"]["recording"]["size"], bytes.len() as u64, "{r1}");

    // `ssh t1 CMD` (no pty) through `tether proxy` is an exec too: recorded the same way.
    if !crate::openssh::have("ssh") {
        eprintln!("SKIP (proxy part): the OpenSSH client is not installed");
        return;
    }
    let config = crate::openssh::client_config(&hub);
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "t1",
            "echo via-proxy",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let list: Value =
        serde_json::from_str(&stdout(&hub.tether(&["--json", "sessions", "list"]))).unwrap();
    let proxied = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["command"] == "echo via-proxy")
        .unwrap_or_else(|| panic!("the proxied exec was not recorded: {list}"))
        .clone();
    assert_eq!(proxied["kind"], "exec");
    let results = audit_records(&hub, "exec.result");
    assert!(
        results
            .iter()
            .any(|r| r["data"]["recording"]["id"] == proxied["id"]),
        "{results:?}"
    );
}
