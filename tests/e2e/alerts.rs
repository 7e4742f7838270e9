//! Alerts and audit streams through real sink plugins: a real HTTP receiver on 127.0.0.1 behind
//! the first-party `webhook` plugin, and the `audit-recorder` audit sink across a restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tether_e2e::{Daemon, bin, code, plugin_component, stderr, stdout};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    at: Instant,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny HTTP/1.1 receiver on 127.0.0.1: records every request and answers with the next
/// scripted (status, extra header) — the last one repeats.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<Vec<(u16, &'static str)>>>,
}

impl Receiver {
    fn start(script: Vec<(u16, &'static str)>) -> Receiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    /// Serves on `listener` (a receiver that comes back on the port it had).
    fn start_on(listener: TcpListener, script: Vec<(u16, &'static str)>) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let (g, s) = (got.clone(), script.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.push((k.trim().to_owned(), v.trim().to_owned()));
                    }
                }
                let len = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                g.lock().unwrap().push(Got {
                    at: Instant::now(),
                    headers,
                    body,
                });
                let (status, extra) = {
                    let mut s = s.lock().unwrap();
                    if s.len() > 1 { s.remove(0) } else { s[0] }
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n"
                );
            }
        });
        Receiver { port, got, script }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn answer(&self, script: Vec<(u16, &'static str)>) {
        *self.script.lock().unwrap() = script;
    }
}

fn set_secret(d: &Daemon, name: &str, value: &[u8]) {
    let mut child = Command::new(bin("tether"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["secret", "set", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert_eq!(code(out), 0, "{}{}", stdout(out), stderr(out));
    serde_json::from_str(&stdout(out)).unwrap()
}

#[test]
fn webhook_alerts_are_signed_retried_with_retry_after_and_dead_lettered() {
    const SECRET: &[u8] = b"e2e-webhook-secret-3c9f";
    // 500, then 429 asking for 1 s, then accepted.
    let rx = Receiver::start(vec![(500, ""), (429, "retry-after: 1\r\n"), (200, "")]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"webhook\"\nkind = \"alert_sink\"\npath = {:?}\n[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]\nsecrets = [\"webhook-secret\"]\n[plugin.limits]\ntimeout_ms = 3000\n[plugin.config]\nurl = \"http://127.0.0.1:{}/hook\"\n",
            plugin_component("webhook").display().to_string(),
            rx.port
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "\n[vault]\nbackend = \"file\"\n\n[alerts]\nbackoff_initial_ms = 200\nbackoff_max_ms = 400\n",
    );
    set_secret(&d, "webhook-secret", SECRET);

    // Delivered on the third attempt; the 429's Retry-After is honoured.
    let t = d.tether(&["--json", "alerts", "test", "webhook", "--wait", "20"]);
    let v = json(&t);
    assert_eq!(v["state"], "delivered", "{v}");
    assert_eq!(v["sinks"]["webhook"]["attempts"], 3, "{v}");
    let got = rx.got();
    assert_eq!(got.len(), 3, "{got:?}");
    let gap = got[2].at - got[1].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 not honoured: {gap:?}"
    );
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(100),
        "backoff too short: {gap:?}"
    );

    // Every request is signed: sha256=HMAC(secret, timestamp.body), with a fresh timestamp.
    for g in &got {
        let ts = g.header("x-tether-timestamp").expect("timestamp header");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts.parse::<u64>().unwrap()) < 60);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(&g.body);
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(g.header("x-tether-signature"), Some(want.as_str()));
        let body: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(body["kind"], "test", "{body}");
        assert_eq!(body["severity"], "info", "{body}");
        assert_eq!(body["fields"]["sink"], "webhook", "{body}");
    }

    // A receiver that keeps failing: 1 + 3 retries, then dead-lettered, audited and counted.
    rx.answer(vec![(500, "")]);
    let before = rx.got().len();
    let t = d.tether(&["--json", "alerts", "test", "webhook", "--wait", "20"]);
    assert_eq!(code(&t), 1, "{}{}", stdout(&t), stderr(&t));
    let v: serde_json::Value = serde_json::from_str(&stdout(&t)).unwrap();
    assert_eq!(v["state"], "dropped", "{v}");
    assert_eq!(v["sinks"]["webhook"]["attempts"], 4, "{v}");
    assert_eq!(v["sinks"]["webhook"]["reason"], "retries_exhausted", "{v}");
    assert_eq!(rx.got().len() - before, 4);
    let audit = stdout(&d.tether(&["--json", "audit", "tail", "--type", "alert.dropped"]));
    let rec: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(rec["data"]["sink"], "webhook", "{rec}");
    assert_eq!(rec["data"]["reason"], "retries_exhausted", "{rec}");
    assert_eq!(rec["data"]["alert"]["kind"], "test", "{rec}");
    let (_, metrics) = d.request("GET", "/metrics", &[], b"");
    assert!(
        metrics.contains(
            "tether_alerts_dropped_total{reason=\"retries_exhausted\",sink=\"webhook\"} 1"
        ),
        "{metrics}"
    );

    // A permanent refusal (4xx) is not retried.
    rx.answer(vec![(400, "")]);
    let t = d.tether(&["--json", "alerts", "test", "webhook", "--wait", "20"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&t)).unwrap();
    assert_eq!(v["sinks"]["webhook"]["reason"], "rejected", "{v}");
    assert_eq!(v["sinks"]["webhook"]["attempts"], 1, "{v}");

    // `alerts list` shows them newest first with their states; an unknown sink is a 404.
    let list = json(&d.tether(&["--json", "alerts", "list"]));
    let states: Vec<&str> = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "test")
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["dropped", "dropped", "delivered"], "{list}");
    let t = d.tether(&["alerts", "test", "nope"]);
    assert_eq!(code(&t), 2, "{}", stderr(&t));
    assert!(stderr(&t).contains("no alert sink named"), "{}", stderr(&t));
}

/// `audit batch n=N seqs=A..B` lines the audit-recorder logged, as (A, B).
fn batches(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| l.split("seqs=").nth(1))
        .filter_map(|s| {
            let s = s.split_whitespace().next()?;
            let (a, b) = s.split_once("..")?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

#[test]
fn audit_sinks_get_every_record_in_order_and_resume_from_the_acknowledged_seq_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"recorder\"\nkind = \"audit_sink\"\npath = {:?}\n",
            plugin_component("audit_recorder").display().to_string()
        ),
    )
    .unwrap();
    let top = format!("plugins_manifest = {:?}\n", manifest.display().to_string());
    // Both runs share one state_dir (audit log, cursor) and so one vault key (kept outside
    // state_dir; by default it would sit beside each run's own config); each has its own socket
    // and log.
    let extra = format!(
        "\n[alerts]\naudit_batch_max = 3\naudit_poll_ms = 50\n\n[vault]\nkey_file = {:?}\n",
        dir.path().join("vault.key").display().to_string()
    );
    let state = dir.path().join("state");
    let spawn = || {
        let own = tempfile::Builder::new()
            .prefix("tether-e2e-")
            .tempdir()
            .unwrap();
        let text = tether_e2e::config_text_top("hub", own.path(), &top, &extra).replace(
            &format!("state_dir = \"{}\"", own.path().join("state").display()),
            &format!("state_dir = \"{}\"", state.display()),
        );
        let config = own.path().join("tetherd.toml");
        std::fs::write(&config, text).unwrap();
        let mut d = Daemon::spawn_in(own, config, &[]);
        d.wait_ready();
        d
    };
    let mut d = spawn();
    for _ in 0..4 {
        assert_eq!(code(&d.tether(&["audit", "verify"])), 0);
    }
    // Wait until the sink has caught up: lag 0 in `plugin list`.
    let deadline = Instant::now() + Duration::from_secs(10);
    let acked = loop {
        let v = json(&d.tether(&["--json", "plugin", "list"]));
        let p = &v["plugins"][0];
        if p["lag_records"] == 0 && p["acked_seq"].as_u64().unwrap_or(0) >= 5 {
            break p["acked_seq"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "sink never caught up: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let first = batches(&d.log());
    assert_eq!(first.first().map(|b| b.0), Some(1), "{}", d.log());
    for w in first.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "gap or reorder: {first:?}");
    }
    assert!(
        first.iter().all(|(a, b)| b - a < 3),
        "batches of at most 3: {first:?}"
    );
    let plist = stdout(&d.tether(&["plugin", "list"]));
    assert!(plist.contains("lag=0"), "{plist}");
    let (_, metrics) = d.request("GET", "/metrics", &[], b"");
    assert!(
        metrics.contains("tether_audit_sink_lag_records{sink=\"recorder\"} 0"),
        "{metrics}"
    );

    // Stop; the cursor on disk holds what was acknowledged.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    let cursor_file = state.join("audit-sinks/recorder.cursor.json");
    let cursor: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cursor_file).unwrap()).unwrap();
    let on_disk = cursor["seq"].as_u64().unwrap();
    assert!(on_disk >= acked, "{cursor}");
    assert_eq!(cursor["hash"].as_str().unwrap().len(), 64, "{cursor}");

    // Restart on the same state: the stream resumes right after the acknowledged seq (the
    // records written while it was down, daemon.stop and daemon.start, come from disk).
    drop(d);
    let d = spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = batches(&d.log());
        if after.iter().any(|b| b.1 >= on_disk + 2) {
            assert_eq!(after[0].0, on_disk + 1, "resumed elsewhere: {after:?}");
            for w in after.windows(2) {
                assert_eq!(w[1].0, w[0].1 + 1, "gap or reorder: {after:?}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no batch after restart:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `alerts list` until an alert of each of `kinds` is delivered (10 s); returns the list.
fn wait_delivered(d: &Daemon, kinds: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = json(&d.tether(&["--json", "alerts", "list"]));
        let alerts = list["alerts"].as_array().unwrap();
        let done = kinds.iter().all(|k| {
            alerts
                .iter()
                .any(|a| a["kind"] == *k && a["state"] == "delivered")
        });
        if done {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "not all of {kinds:?} delivered: {list}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reload_enrollment_and_revocation_raise_alerts_that_reach_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"recorder\"\nkind = \"alert_sink\"\npath = {:?}\n",
            plugin_component("alert_recorder").display().to_string()
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "\n[alerts]\ncooldown_secs = 60\n",
    );

    // A reload that changes nothing raises nothing; one that changes something raises
    // config_change.
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    let list = json(&d.tether(&["--json", "alerts", "list"]));
    assert!(
        !list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "config_change"),
        "{list}"
    );
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replace("cooldown_secs = 60", "cooldown_secs = 61"),
    )
    .unwrap();
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);

    // A real enrollment, then its revocation.
    let token = crate::membership::invite(&d, "t1", &[]);
    let (_tdir, config) = crate::membership::target_dir();
    let out = crate::membership::enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let list = wait_delivered(&d, &["config_change", "enrollment_complete"]);
    assert_eq!(
        code(&d.tether(&["vpn", "revoke", "t1"])),
        0,
        "revoke t1 failed"
    );
    let list2 = wait_delivered(&d, &["host_revoked"]);

    let find = |l: &serde_json::Value, kind: &str| {
        l["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == kind)
            .cloned()
            .unwrap()
    };
    let c = find(&list, "config_change");
    assert_eq!(c["severity"], "info", "{c}");
    assert_eq!(c["fields"]["trigger"], "api", "{c}");
    assert_eq!(c["sinks"]["recorder"]["state"], "delivered", "{c}");
    let e = find(&list, "enrollment_complete");
    assert_eq!(e["host"], "t1", "{e}");
    assert_eq!(e["fields"]["overlay_ip"], "10.99.0.2", "{e}");
    let r = find(&list2, "host_revoked");
    assert_eq!(r["host"], "t1", "{r}");
    assert_eq!(r["severity"], "warning", "{r}");

    // The sink plugin really got them (it logs each one through the host).
    let log = d.log();
    for want in [
        "alert kind=config_change severity=info",
        "alert kind=enrollment_complete severity=info host=t1",
        "alert kind=host_revoked severity=warning host=t1",
    ] {
        assert!(log.contains(want), "{want:?} not in the log:\n{log}");
    }
}

#[test]
fn slack_alerts_are_block_kit_posted_to_the_webhook_url_from_the_vault() {
    let rx = Receiver::start(vec![(200, "")]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"slack\"\nkind = \"alert_sink\"\npath = {:?}\n[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]\nsecrets = [\"slack-webhook-url\"]\n[plugin.limits]\ntimeout_ms = 3000\n",
            plugin_component("slack").display().to_string(),
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "\n[vault]\nbackend = \"file\"\n",
    );
    let url = format!(
        "http://127.0.0.1:{}/services/T0E2E/B0E2E/s3cr3tSlackPath",
        rx.port
    );
    set_secret(&d, "slack-webhook-url", url.as_bytes());

    let v = json(&d.tether(&["--json", "alerts", "test", "slack", "--wait", "20"]));
    assert_eq!(v["state"], "delivered", "{v}");
    let got = rx.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    let blocks = body["blocks"].as_array().unwrap();
    let types: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["header", "section", "section", "context"], "{body}");
    assert_eq!(blocks[0]["text"]["type"], "plain_text", "{body}");
    assert_eq!(blocks[0]["text"]["text"], "[INFO] test", "{body}");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn", "{body}");
    assert!(
        blocks[1]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("test alert"),
        "{body}"
    );
    assert_eq!(blocks[2]["fields"][0]["type"], "mrkdwn", "{body}");
    assert_eq!(blocks[2]["fields"][0]["text"], "*sink*\nslack", "{body}");
    assert_eq!(blocks[3]["elements"][0]["type"], "mrkdwn", "{body}");
    assert!(
        body["text"].as_str().unwrap().starts_with("[info] test: "),
        "{body}"
    );

    // A refusal for good (Slack's 404 no_service) is not retried, and its error does not
    // carry the URL, which is the credential.
    rx.answer(vec![(404, "")]);
    let t = d.tether(&["--json", "alerts", "test", "slack", "--wait", "20"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&t)).unwrap();
    assert_eq!(v["sinks"]["slack"]["reason"], "rejected", "{v}");
    assert_eq!(v["sinks"]["slack"]["attempts"], 1, "{v}");
    let list = stdout(&d.tether(&["--json", "alerts", "list"]));
    for text in [list, d.log()] {
        assert!(
            !text.contains("s3cr3tSlackPath"),
            "the webhook URL leaked:\n{text}"
        );
    }
}

/// The `config_change` alerts in `alerts list`, oldest first.
fn config_changes(d: &Daemon) -> Vec<serde_json::Value> {
    let list = json(&d.tether(&["--json", "alerts", "list"]));
    let mut v: Vec<_> = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "config_change")
        .cloned()
        .collect();
    v.reverse();
    v
}

#[test]
fn repeats_within_the_cool_down_are_suppressed_and_counted_on_the_next_one_sent() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"recorder\"\nkind = \"alert_sink\"\npath = {:?}\n",
            plugin_component("alert_recorder").display().to_string()
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "\n[alerts]\ncooldown_secs = 2\nbackoff_max_ms = 1000\n",
    );
    // Each reload changes a setting, so each raises config_change (same category, no host).
    let text = std::fs::read_to_string(&d.config).unwrap();
    let reload = |i: u32| {
        std::fs::write(
            &d.config,
            text.replace(
                "backoff_max_ms = 1000",
                &format!("backoff_max_ms = {}", 1001 + i),
            ),
        )
        .unwrap();
        assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    };
    let t0 = Instant::now();
    for i in 0..3 {
        reload(i);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "reloads too slow for the test"
    );
    let states: Vec<String> = config_changes(&d)
        .iter()
        .map(|a| a["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states[1..], ["suppressed", "suppressed"], "{states:?}");
    // After the cool-down the next one goes out and says how many were held back.
    std::thread::sleep(Duration::from_millis(2500));
    reload(3);
    wait_delivered(&d, &["config_change"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let all = config_changes(&d);
        let last = all.last().unwrap().clone();
        if all.len() == 4 && last["state"] == "delivered" {
            break last;
        }
        assert!(Instant::now() < deadline, "{all:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(last["fields"]["suppressed_repeats"], "2", "{last}");
    let sent = d.log().matches("alert kind=config_change").count();
    assert_eq!(
        sent, 2,
        "only the first and the one after the cool-down reach the sink"
    );
}

#[test]
fn a_receiver_down_for_seconds_then_back_gets_every_alert_in_order() {
    // Take a port, then close it: connections are refused until the receiver comes back.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"webhook\"\nkind = \"alert_sink\"\npath = {:?}\n[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]\nsecrets = [\"webhook-secret\"]\n[plugin.limits]\ntimeout_ms = 3000\n[plugin.config]\nurl = \"http://127.0.0.1:{port}/hook\"\n",
            plugin_component("webhook").display().to_string(),
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "\n[vault]\nbackend = \"file\"\n\n[alerts]\nretries = 10\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n",
    );
    set_secret(&d, "webhook-secret", b"e2e-down-then-up");

    // Three enrollments while the receiver is down: three enrollment_complete alerts.
    let names = ["d1", "d2", "d3"];
    let mut dirs = Vec::new();
    for n in names {
        let token = crate::membership::invite(&d, n, &[]);
        let (tdir, config) = crate::membership::target_dir();
        let out = crate::membership::enroll(&config, &token, &[]);
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        dirs.push(tdir);
    }
    // Ten retries at up to 1 s apart outlast the outage (about 7 s before a dead letter).
    std::thread::sleep(Duration::from_secs(2));
    let list = json(&d.tether(&["--json", "alerts", "list"]));
    let first = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["host"] == "d1")
        .cloned()
        .unwrap();
    assert_eq!(first["sinks"]["webhook"]["state"], "retrying", "{first}");
    assert!(
        first["sinks"]["webhook"]["attempts"].as_u64().unwrap() >= 2,
        "{first}"
    );

    // The receiver comes back on the same port: everything arrives, in the order raised.
    let rx = Receiver::start_on(
        TcpListener::bind(("127.0.0.1", port)).unwrap(),
        vec![(200, "")],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let hosts = loop {
        let hosts: Vec<String> = rx
            .got()
            .iter()
            .map(|g| serde_json::from_slice::<serde_json::Value>(&g.body).unwrap())
            .filter(|b| b["kind"] == "enrollment_complete")
            .map(|b| b["host"].as_str().unwrap().to_owned())
            .collect();
        if hosts.len() >= 3 {
            break hosts;
        }
        assert!(
            Instant::now() < deadline,
            "only {hosts:?} arrived\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(hosts, names, "lost or reordered");
    let audit = stdout(&d.tether(&["--json", "audit", "tail", "--type", "alert.dropped"]));
    assert!(audit.trim().is_empty(), "nothing may be dropped: {audit}");
}

#[test]
fn a_config_reload_applies_alert_routes_cool_down_and_sinks_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    let wasm = plugin_component("alert_recorder").display().to_string();
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"rec1\"\nkind = \"alert_sink\"\npath = {wasm:?}\n\n[[plugin]]\nname = \"rec2\"\nkind = \"alert_sink\"\npath = {wasm:?}\n"
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "\n[alerts]\ncooldown_secs = 0\nqueue_capacity = 100\n[[alerts.route]]\ncategories = [\"config_change\", \"test\"]\nsinks = [\"rec1\"]\n",
    );
    let pid = d.pid();
    // Only the routed sink has a queue.
    assert_eq!(code(&d.tether(&["alerts", "test", "rec2"])), 2);
    let text = std::fs::read_to_string(&d.config).unwrap();
    let write = |t: &str| std::fs::write(&d.config, t).unwrap();

    // 1: a change (queue size) while routed to rec1.
    write(&text.replace("queue_capacity = 100", "queue_capacity = 101"));
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    wait_delivered(&d, &["config_change"]);

    // 2: route to rec2 instead, with a long cool-down. The config_change this reload raises
    // already follows the new route.
    let moved = text
        .replace("queue_capacity = 100", "queue_capacity = 102")
        .replace("sinks = [\"rec1\"]", "sinks = [\"rec2\"]")
        .replace("cooldown_secs = 0", "cooldown_secs = 3600");
    write(&moved);
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let changes = loop {
        let c = config_changes(&d);
        if c.len() == 2 && c[1]["state"] == "delivered" {
            break c;
        }
        assert!(Instant::now() < deadline, "{c:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(changes[0]["sinks"].get("rec1").is_some(), "{changes:?}");
    assert!(changes[1]["sinks"].get("rec2").is_some(), "{changes:?}");
    assert!(changes[1]["sinks"].get("rec1").is_none(), "{changes:?}");

    // 3: another change inside the new cool-down is suppressed.
    write(&moved.replace("queue_capacity = 102", "queue_capacity = 103"));
    assert_eq!(code(&d.tether(&["config", "reload"])), 0);
    let c = config_changes(&d);
    assert_eq!(c.len(), 3, "{c:?}");
    assert_eq!(c[2]["state"], "suppressed", "{c:?}");

    // The removed sink is gone, the added one works, and it is the same daemon.
    let t = d.tether(&["alerts", "test", "rec1"]);
    assert_eq!(code(&t), 2, "{}", stderr(&t));
    let v = json(&d.tether(&["--json", "alerts", "test", "rec2", "--wait", "10"]));
    assert_eq!(v["state"], "delivered", "{v}");
    assert_eq!(d.pid(), pid);
    let log = d.log();
    assert!(log.contains("[alerts] applied"), "{log}");
}

#[test]
fn a_target_that_goes_quiet_raises_host_offline_once_and_host_online_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"recorder\"\nkind = \"alert_sink\"\npath = {:?}\n",
            plugin_component("alert_recorder").display().to_string()
        ),
    )
    .unwrap();
    let hub = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "\n[alerts]\noffline_after_secs = 3\ncooldown_secs = 0\n",
    );
    // A target that sends a keepalive every second: alive means heard from within 3 s.
    let token = crate::membership::invite(&hub, "q1", &[]);
    let tdir = tempfile::Builder::new()
        .prefix("tether-e2e-")
        .tempdir()
        .unwrap();
    let config = tdir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        tether_e2e::config_text("target", tdir.path(), "").replace(
            "listen = \"127.0.0.1:0\"\n\n[enroll]",
            "listen = \"127.0.0.1:0\"\npersistent_keepalive_secs = 1\n\n[enroll]",
        ),
    )
    .unwrap();
    let out = crate::membership::enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut target = Daemon::spawn_in(tdir, config, &[]);
    target.wait_ready();
    let count = |kind: &str| {
        json(&hub.tether(&["--json", "alerts", "list"]))["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == kind && a["host"] == "q1")
            .count()
    };
    // Up and talking: nothing to report.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(count("host_offline"), 0, "{}", hub.log());
    assert_eq!(count("host_online"), 0);

    // Quiet (the target process stopped): one host_offline, however long it lasts.
    target.signal(nix::sys::signal::Signal::SIGSTOP);
    let list = wait_delivered(&hub, &["host_offline"]);
    let off = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "host_offline")
        .cloned()
        .unwrap();
    assert_eq!(off["host"], "q1", "{off}");
    assert_eq!(off["severity"], "warning", "{off}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count("host_offline"), 1);

    // Back: host_online.
    target.signal(nix::sys::signal::Signal::SIGCONT);
    wait_delivered(&hub, &["host_online"]);
    assert_eq!(count("host_offline"), 1);
    let log = hub.log();
    assert!(
        log.contains("alert kind=host_offline severity=warning host=q1"),
        "{log}"
    );
    assert!(
        log.contains("alert kind=host_online severity=info host=q1"),
        "{log}"
    );
}
