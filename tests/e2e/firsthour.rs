//! The first hour as a new user (issue 22): the demo's printed commands run as printed, the
//! Prometheus port scraped as Prometheus would, version/commit everywhere, completions, man
//! pages, readable times, aligned tables and `NO_COLOR`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tether_e2e::{Daemon, bin, code, config_text, repo, stderr, stdout};

/// `tetherd --version` / `tether --version` → the commit in parentheses.
fn commit_of(version_line: &str) -> String {
    let (_, rest) = version_line
        .split_once("(commit ")
        .unwrap_or_else(|| panic!("no commit in {version_line:?}"));
    rest.trim_end().trim_end_matches(')').to_owned()
}

#[test]
fn versions_carry_the_git_commit_and_status_compares_cli_and_daemon() {
    let cli = Command::new(bin("tether"))
        .arg("--version")
        .output()
        .unwrap();
    let daemon = Command::new(bin("tetherd"))
        .arg("--version")
        .output()
        .unwrap();
    let (cli, daemon) = (stdout(&cli), stdout(&daemon));
    assert!(cli.starts_with("tether 0."), "{cli}");
    assert!(daemon.starts_with("tetherd 0."), "{daemon}");
    let commit = commit_of(&cli);
    assert_eq!(commit, commit_of(&daemon), "{cli} / {daemon}");
    // Built from a git checkout here: 12 hex digits (a tarball build says `unknown`).
    if repo().join(".git").exists() {
        assert!(
            commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{commit}"
        );
    }

    let d = Daemon::start("hub", "");
    let out = d.tether(&["--json", "status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["commit"], commit.as_str(), "{s}");
    let out = d.tether(&["status"]);
    let text = stdout(&out);
    assert!(text.contains(&format!("(commit {commit}, pid ")), "{text}");
    assert!(text.contains("cli:       tether 0."), "{text}");
    // Same build on both sides: no warning (the mismatch wording is unit-tested in the CLI).
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn completions_load_in_bash_and_complete_subcommands() {
    let script = Command::new(bin("tether"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(code(&script), 0);
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("tether.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    // What bash does on `tether vp<TAB>`, and on `tether vpn <TAB>`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(tether vp); COMP_CWORD=1; _tether tether vp tether; echo \"${{COMPREPLY[*]}}\"; \
             COMP_WORDS=(tether vpn ''); COMP_CWORD=2; _tether tether '' vpn; echo \"${{COMPREPLY[*]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("vpn"),
        "{text}{}",
        stderr(&out)
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.contains("invite") && l.contains("status")),
        "{text}"
    );
    for (shell, marker) in [("zsh", "#compdef tether"), ("fish", "complete -c tether")] {
        let out = Command::new(bin("tether"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).contains(marker), "{shell}: {}", stdout(&out));
    }
    let out = Command::new(bin("tether"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "an unknown shell is a usage error");
}

#[test]
fn man_pages_render_for_every_command() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man1");
    let out = Command::new(bin("tether"))
        .args(["man", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for page in [
        "tether.1",
        "tether-vpn-invite.1",
        "tether-hosts-show.1",
        "tether-completions.1",
    ] {
        assert!(dir.join(page).is_file(), "{page}");
    }
    // `man` formats the page (groff under the hood): its NAME section is the command.
    let out = Command::new("man")
        .arg("-l")
        .arg(dir.join("tether-vpn-invite.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        code(&out) == 0 && text.contains("tether-vpn-invite"),
        "{text}{}",
        stderr(&out)
    );
    assert!(text.contains("--ttl"), "{text}");
}

/// A one-shot HTTP/1.1 request over TCP; returns (status, headers+body text).
fn http(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The metrics listener's address, from the daemon's log.
fn metrics_addr(d: &Daemon) -> SocketAddr {
    assert!(d.wait_log("metrics listener on http://"), "{}", d.log());
    let log = d.log();
    let start =
        log.rfind("metrics listener on http://").unwrap() + "metrics listener on http://".len();
    let addr: String = log[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    addr.parse().unwrap_or_else(|_| panic!("{addr:?} in {log}"))
}

/// A Python venv with the official `prometheus-client` (its parser is what we check against).
fn prometheus_python() -> PathBuf {
    let venv = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/tether-test-venv");
    let py = venv.join("bin/python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", "import prometheus_client.parser"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&py) {
        let status = Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "python3 -m venv failed (apt-get install python3-venv)"
        );
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "prometheus-client>=0.20,<1"])
            .status()
            .unwrap();
        assert!(status.success(), "pip install prometheus-client failed");
    }
    py
}

/// Scrapes `url` like Prometheus (bearer token, Accept header, text format 0.0.4) and parses the
/// body with prometheus-client's parser; returns `{family: type}` as JSON.
fn scrape_and_parse(url: &str, token: &str) -> serde_json::Value {
    let script = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
req = urllib.request.Request(sys.argv[1], headers={
    "Authorization": "Bearer " + sys.argv[2],
    "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
})
with urllib.request.urlopen(req, timeout=5) as r:
    ctype = r.headers["Content-Type"]
    body = r.read().decode("utf-8")
assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
print(json.dumps({f.name: f.type for f in text_string_to_metric_families(body)}))
"#;
    let out = Command::new(prometheus_python())
        .args(["-c", script, url, token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_metrics_port_is_scraped_like_prometheus_and_serves_nothing_else() {
    // First without a token: store one through the real CLI, then restart with it required.
    let d = Daemon::start(
        "hub",
        "\n[vault]\nbackend = \"file\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let addr = metrics_addr(&d);
    assert_eq!(http(addr, "GET", "/metrics", None).0, 200);
    let token = "scrape-token-4f9a1c";
    let mut set = Command::new(bin("tether"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["secret", "set", "metrics-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    assert!(set.wait_with_output().unwrap().status.success());
    let mut d = d;
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str("token_name = \"metrics-token\"\n");
    std::fs::write(&d.config, text).unwrap();
    d.restart();
    let addr = metrics_addr(&d);
    assert_eq!(
        d.log().matches("metrics listener on http://").count(),
        2,
        "restarted"
    );

    let families = scrape_and_parse(&format!("http://{addr}/metrics"), token);
    for (name, kind) in [
        ("process_resident_memory_bytes", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("tether_control_requests", "counter"),
    ] {
        assert_eq!(families[name], kind, "{name} in {families}");
    }

    // The token is required for /metrics and compared exactly; health needs none.
    let (status, text) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("WWW-Authenticate") || text.contains("www-authenticate"),
        "{text}"
    );
    assert!(!text.contains(token));
    assert_eq!(
        http(addr, "GET", "/metrics", Some("scrape-token-4f9a1d")).0,
        401
    );
    assert_eq!(
        http(addr, "GET", "/metrics", Some("scrape-token-4f9a1")).0,
        401
    );
    assert_eq!(http(addr, "GET", "/metrics", Some(token)).0, 200);
    assert_eq!(http(addr, "GET", "/healthz", None).0, 200);
    let (status, text) = http(addr, "GET", "/readyz", None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"ready\""), "{text}");
    // Never the control API, with or without the token.
    for path in ["/v1/status", "/v1/hosts", "/v1/secrets", "/v1/config", "/"] {
        let (status, text) = http(addr, "GET", path, Some(token));
        assert_eq!(status, 404, "{path}: {text}");
    }
    let (status, _) = http(addr, "POST", "/v1/reload", Some(token));
    assert_eq!(status, 404);
    assert_eq!(http(addr, "POST", "/metrics", Some(token)).0, 405);
    assert!(!d.log().contains(token), "the token never reaches the log");
}

#[test]
fn a_bad_metrics_section_stops_the_start_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tetherd.toml");
    for (extra, needle) in [
        ("\n[metrics]\nlisten = \"localhost\"\n", "metrics.listen"),
        (
            "\n[vault]\nbackend = \"file\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\ntoken_name = \"nope\"\n",
            "tether secret set nope",
        ),
    ] {
        std::fs::write(&config, config_text("hub", dir.path(), extra)).unwrap();
        let out = Command::new(bin("tetherd"))
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(!dir.path().join("tetherd.sock").exists());
    }
}

#[test]
fn the_demo_prints_commands_that_work_as_printed() {
    let mut child = Command::new(bin("tether"))
        .args(["demo", "--targets", "3"])
        .env_remove("TETHER_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let mut block = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "demo not ready: {printed:?}");
        let line = lines.next().expect("demo output").unwrap();
        if line.starts_with("demo ready") {
            break;
        }
        if line.starts_with("Talk to the hub") {
            block = true;
            continue;
        }
        if block && line.starts_with("  ") {
            printed.push(line.trim_start().to_owned());
        } else {
            block = false;
        }
    }
    assert!(printed.len() >= 3, "{printed:?}");
    // Exactly as printed, in a plain shell whose PATH has no tether on it.
    let script = format!("set -e\n{}\n", printed.join("\n"));
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{script}\n{text}\n{}", stderr(&out));
    // vpn status: a header and the three peers, aligned by the shared table helper.
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("PEER"))
        .take(4)
        .collect();
    assert_eq!(table.len(), 4, "{text}");
    let col = table[0].find("OVERLAY").unwrap();
    for (row, name) in table[1..].iter().zip(["t1", "t2", "t3"]) {
        assert!(row.starts_with(name), "{text}");
        assert_eq!(&row[col..col + 3], "10.", "{text}");
    }
    assert!(text.contains("daemon.start"), "audit tail ran: {text}");

    // And what a newcomer looks at next: readable times, color only when wanted.
    let hub = printed[0]
        .trim_start_matches("export TETHER_SOCKET=")
        .trim_matches('\'')
        .to_owned();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(bin("tether"));
        c.arg("--socket").arg(&hub).args(args);
        c.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let show = stdout(&run(&["hosts", "show", "t1"], &[]));
    assert!(!show.trim_start().starts_with('{'), "{show}");
    let enrolled = show
        .lines()
        .find(|l| l.starts_with("enrolled:"))
        .unwrap_or_default();
    assert!(enrolled.contains("Z ("), "RFC 3339 and relative: {show}");
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["--json", "hosts", "show", "t1"], &[]).stdout).unwrap();
    assert!(
        json["enrolled_at"].is_u64(),
        "--json keeps its shape: {json}"
    );
    let invite = run(&["vpn", "invite", "later1", "--ttl", "24h"], &[]);
    let note = stderr(&invite);
    assert!(
        note.contains("valid until 20")
            && (note.contains("(in 23 h)") || note.contains("(in 24 h)")),
        "{note}"
    );
    assert!(!note.contains("unix"), "{note}");
    let colored = stdout(&run(&["hosts", "list"], &[("CLICOLOR_FORCE", "1")]));
    assert!(colored.contains("\x1b[1m"), "{colored:?}");
    let plain = stdout(&run(
        &["hosts", "list"],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    ));
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(
        !stdout(&run(&["hosts", "list"], &[])).contains('\x1b'),
        "not a terminal: no color"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// On a machine whose pinned toolchain lacks wasm32-wasip2 and can't add it (no network),
/// `plugins/build.sh` stops with exit 2 and the exact command to run, before building anything.
/// The toolchain is replaced on PATH by two shell scripts that behave like that machine's
/// `rustc` (no target libdir) and `rustup` (the add fails); the script under test is the real one.
#[test]
fn plugins_build_stops_with_the_exact_rustup_command_when_the_wasm_target_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        let mut perms = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&p, perms).unwrap();
    };
    let marker = dir.path().join("cargo-ran");
    fake(
        "rustc",
        "echo \"error: the wasm32-wasip2 target may not be installed\" >&2; exit 1",
    );
    fake(
        "rustup",
        "case \"$1 $2\" in\n  'target add') echo 'error: could not download' >&2; exit 1;;\n  'show active-toolchain') echo '1.95.0-x86_64-unknown-linux-gnu (overridden by rust-toolchain.toml)';;\nesac",
    );
    fake("cargo", &format!("touch {}; exit 0", marker.display()));
    let out = Command::new("sh")
        .arg(repo().join("plugins/build.sh"))
        .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains(
            "rustup target add wasm32-wasip2 --toolchain 1.95.0-x86_64-unknown-linux-gnu"
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        !marker.exists(),
        "build.sh ran cargo after the target check failed"
    );
}
