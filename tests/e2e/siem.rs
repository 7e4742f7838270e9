//! SIEM streaming and export through real receivers: a Splunk HEC receiver on 127.0.0.1 behind
//! the first-party `splunk-hec` audit sink (envelopes, batches, `Authorization: Splunk`,
//! indexer acknowledgement, rejections, an outage), a real `rsyslog` behind the `syslog` sink
//! (RFC 5424 and CEF over octet-counted TCP), and `tether audit export` in every format.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_e2e::{Daemon, bin, code, plugin_component, stderr, stdout};

/// One request the HEC receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
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

    /// The envelopes of an event request (one JSON object per line).
    fn envelopes(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// `None`: acknowledgement disabled (no ackId); `Some(indexed)`: ackIds handed out, and the
    /// ack endpoint says `indexed` for each.
    ack: Option<bool>,
    /// Answer this many event requests with 400 Invalid data format.
    reject: u32,
}

/// A Splunk HEC look-alike on 127.0.0.1: `/services/collector/event` and
/// `/services/collector/ack`, recording every request.
struct Hec {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    mode: Arc<Mutex<Mode>>,
}

impl Hec {
    fn start_on(listener: TcpListener, mode: Mode) -> Hec {
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(mode));
        let (g, m) = (got.clone(), mode.clone());
        std::thread::spawn(move || {
            let mut next_ack = 0u64;
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
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
                let req = Got {
                    path: path.clone(),
                    headers,
                    body,
                };
                let mut mode = m.lock().unwrap();
                let (status, reply) = if path.starts_with("/services/collector/ack") {
                    let ids: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                    let acks: serde_json::Map<String, Value> = ids["acks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|id| (id.to_string(), Value::Bool(mode.ack == Some(true))))
                        .collect();
                    (200, serde_json::json!({ "acks": acks }).to_string())
                } else if mode.reject > 0 {
                    mode.reject -= 1;
                    (
                        400,
                        r#"{"text":"Invalid data format","code":6,"invalid-event-number":0}"#
                            .to_owned(),
                    )
                } else if mode.ack.is_some() {
                    next_ack += 1;
                    (
                        200,
                        format!(r#"{{"text":"Success","code":0,"ackId":{next_ack}}}"#),
                    )
                } else {
                    (200, r#"{"text":"Success","code":0}"#.to_owned())
                };
                drop(mode);
                g.lock().unwrap().push(req);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        Hec { port, got, mode }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<Got> {
        self.got()
            .into_iter()
            .filter(|g| g.path.starts_with("/services/collector/event"))
            .collect()
    }

    /// Every envelope received, in arrival order.
    fn envelopes(&self) -> Vec<Value> {
        self.events().iter().flat_map(Got::envelopes).collect()
    }

    fn set(&self, f: impl FnOnce(&mut Mode)) {
        f(&mut self.mode.lock().unwrap());
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

fn json(out: &std::process::Output) -> Value {
    assert_eq!(code(out), 0, "{}{}", stdout(out), stderr(out));
    serde_json::from_str(&stdout(out)).unwrap()
}

/// The stream status of audit sink `name` in `plugin list`.
fn sink_status(d: &Daemon, name: &str) -> Value {
    let v = json(&d.tether(&["--json", "plugin", "list"]));
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no plugin {name}: {v}"))
}

fn hec_daemon(port: u16, extra: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n[[plugin]]\nname = \"hec\"\nkind = \"audit_sink\"\npath = {:?}\n[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]\nsecrets = [\"splunk-hec-token\"]\n[plugin.limits]\ntimeout_ms = 3000\n[plugin.config]\nurl = \"http://127.0.0.1:{port}\"\nhost = \"hub-e2e\"\n",
            plugin_component("splunk_hec").display().to_string(),
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        &format!(
            "\n[vault]\nbackend = \"file\"\n\n[alerts]\naudit_poll_ms = 50\nbackoff_initial_ms = 100\nbackoff_max_ms = 400\n{extra}"
        ),
    );
    (d, dir)
}

/// seq -> chain hash of every record in the log (from `audit export`).
fn hashes(d: &Daemon) -> std::collections::BTreeMap<u64, String> {
    stdout(&d.tether(&["audit", "export", "--format", "jsonl"]))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            (
                v["seq"].as_u64().unwrap(),
                v["hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hec_gets_batched_envelopes_with_the_token_and_the_cursor_moves_only_on_indexer_ack() {
    const TOKEN: &str = "e2e-hec-token-5d1a";
    let hec = Hec::start_on(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Mode {
            ack: Some(false),
            reject: 0,
        },
    );
    let (d, _dir) = hec_daemon(hec.port, "audit_batch_max = 3\n");
    set_secret(&d, "splunk-hec-token", TOKEN.as_bytes());
    for _ in 0..3 {
        assert_eq!(code(&d.tether(&["audit", "verify"])), 0);
    }
    // Sent, but not indexed yet: the cursor stays put and the batch is not sent again.
    wait_until("a first HEC batch", 15, || !hec.events().is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sink_status(&d, "hec")["acked_seq"],
        0,
        "acked before the indexer said so"
    );
    let first = hec.events();
    assert_eq!(
        first.len(),
        1,
        "re-sent while waiting for the ack: {first:?}"
    );
    let polls = hec
        .got()
        .iter()
        .filter(|g| g.path.starts_with("/services/collector/ack"))
        .count();
    assert!(polls >= 2, "the ack endpoint was not polled");

    // Indexed: the stream moves on and catches up.
    hec.set(|m| m.ack = Some(true));
    wait_until("the stream to catch up", 20, || {
        let s = sink_status(&d, "hec");
        s["lag_records"] == 0 && s["acked_seq"].as_u64().unwrap_or(0) >= 6
    });
    let all = hec.envelopes();
    let seqs: Vec<u64> = all
        .iter()
        .map(|e| e["event"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs[0], 1);
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap, duplicate or reorder: {seqs:?}");
    }
    let chain = hashes(&d);
    for g in hec.got() {
        assert_eq!(
            g.header("authorization"),
            Some(format!("Splunk {TOKEN}").as_str())
        );
        let ch = g
            .header("x-splunk-request-channel")
            .expect("channel header");
        assert_eq!(ch.len(), 36, "{ch}");
    }
    for g in hec.events() {
        let envs = g.envelopes();
        assert!((1..=3).contains(&envs.len()), "batch of {}", envs.len());
        for e in &envs {
            assert_eq!(e["source"], "tetherd:audit");
            assert_eq!(e["sourcetype"], "tether:audit");
            assert!(e["time"].as_f64().unwrap() > 1.7e9, "{e}");
            assert!(
                e["event"]["type"].is_string() && e["event"]["data"].is_object(),
                "{e}"
            );
            let f = &e["fields"];
            let first: u64 = f["tether_first_seq"].as_str().unwrap().parse().unwrap();
            let last: u64 = f["tether_last_seq"].as_str().unwrap().parse().unwrap();
            assert_eq!(first, envs[0]["event"]["seq"].as_u64().unwrap());
            assert_eq!(last, envs.last().unwrap()["event"]["seq"].as_u64().unwrap());
            assert_eq!(
                f["tether_last_hash"].as_str(),
                chain.get(&last).map(String::as_str),
                "{e}"
            );
        }
    }

    // A batch the collector refuses for good is dead-lettered, audited and counted, and the
    // stream goes on.
    hec.set(|m| m.reject = 1);
    assert_eq!(code(&d.tether(&["audit", "verify"])), 0);
    wait_until("audit_sink.rejected", 20, || {
        stdout(&d.tether(&["--json", "audit", "tail", "--type", "audit_sink.rejected"]))
            .contains("\"hec\"")
    });
    let (_, metrics) = d.request("GET", "/metrics", &[], b"");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("tether_audit_sink_rejected_total{sink=\"hec\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    wait_until("the rejection record itself to reach HEC", 20, || {
        hec.envelopes()
            .iter()
            .any(|e| e["event"]["type"] == "audit_sink.rejected")
    });
    // The token never shows up in the daemon's log.
    assert!(!d.log().contains(TOKEN), "token leaked:\n{}", d.log());
}

#[test]
fn hec_down_for_20_seconds_then_back_gets_every_record_in_order() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (d, _dir) = hec_daemon(port, "audit_batch_max = 5\n");
    set_secret(&d, "splunk-hec-token", b"e2e-outage");
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(20) {
        assert_eq!(code(&d.tether(&["audit", "verify"])), 0);
        std::thread::sleep(Duration::from_millis(500));
    }
    let s = sink_status(&d, "hec");
    assert_eq!(s["acked_seq"], 0, "{s}");
    assert!(s["lag_records"].as_u64().unwrap() >= 30, "{s}");
    let hec = Hec::start_on(
        TcpListener::bind(("127.0.0.1", port)).unwrap(),
        Mode {
            ack: None,
            reject: 0,
        },
    );
    wait_until("the stream to catch up after the outage", 30, || {
        sink_status(&d, "hec")["lag_records"] == 0
    });
    let seqs: Vec<u64> = hec
        .envelopes()
        .iter()
        .map(|e| e["event"]["seq"].as_u64().unwrap())
        .collect();
    let last = *hashes(&d).keys().last().unwrap();
    assert_eq!(seqs.first(), Some(&1));
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "lost or reordered: {seqs:?}");
    }
    assert!(*seqs.last().unwrap() + 2 >= last, "{seqs:?} vs {last}");
    let rejected = stdout(&d.tether(&["--json", "audit", "tail", "--type", "audit_sink.rejected"]));
    assert!(
        rejected.trim().is_empty(),
        "nothing may be dropped: {rejected}"
    );
}

/// A real rsyslogd on 127.0.0.1:`port` writing what it receives to `out`; killed on drop.
struct Rsyslog {
    child: Child,
    out: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Rsyslog {
    fn start() -> Option<Rsyslog> {
        let exe = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = dir.path().join("received.log");
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{dir}\")\nmodule(load=\"imtcp\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"tether\")\ntemplate(name=\"t\" type=\"string\" string=\"%hostname%|%msgid%|%structured-data%|%msg%\\n\")\nruleset(name=\"tether\") {{\n  action(type=\"omfile\" file=\"{out}\" template=\"t\")\n}}\n",
                dir = dir.path().display(),
                out = out.display()
            ),
        )
        .unwrap();
        let child = Command::new(exe)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let r = Rsyslog {
            child,
            out,
            port,
            _dir: dir,
        };
        wait_until("rsyslogd to listen", 10, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(r)
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_rsyslog_receives_rfc5424_and_cef_lines_with_the_batch_proof() {
    let Some(rs) = Rsyslog::start() else {
        eprintln!("SKIP: rsyslogd is not installed (apt-get install rsyslog)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plugins.toml");
    let wasm = plugin_component("syslog").display().to_string();
    let entry = |name: &str, format: &str| {
        format!(
            "[[plugin]]\nname = \"{name}\"\nkind = \"audit_sink\"\npath = {wasm:?}\n[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1=127.0.0.1\"]\n[plugin.limits]\ntimeout_ms = 3000\n[plugin.config]\nhost = \"127.0.0.1\"\nport = \"{}\"\nformat = \"{format}\"\nhostname = \"tether-{format}\"\n\n",
            rs.port
        )
    };
    std::fs::write(
        &manifest,
        format!(
            "allow_unsigned = true\n\n{}{}",
            entry("sys5424", "rfc5424"),
            entry("syscef", "cef")
        ),
    )
    .unwrap();
    let d = Daemon::start_top(
        "hub",
        &format!("plugins_manifest = {:?}\n", manifest.display().to_string()),
        "\n[alerts]\naudit_batch_max = 4\naudit_poll_ms = 50\n",
    );
    for _ in 0..5 {
        assert_eq!(code(&d.tether(&["audit", "verify"])), 0);
    }
    wait_until("both syslog sinks to catch up", 20, || {
        ["sys5424", "syscef"].iter().all(|s| {
            let st = sink_status(&d, s);
            st["lag_records"] == 0 && st["acked_seq"].as_u64().unwrap_or(0) >= 6
        })
    });
    // rsyslog writes asynchronously; give its file a moment.
    wait_until("rsyslog's file", 10, || {
        rs.lines()
            .iter()
            .filter(|l| l.starts_with("tether-cef|"))
            .count()
            >= 6
    });
    let lines = rs.lines();
    let chain = hashes(&d);
    let mut seqs = Vec::new();
    for l in lines.iter().filter(|l| l.starts_with("tether-rfc5424|")) {
        let parts: Vec<&str> = l.splitn(4, '|').collect();
        let (msgid, sd, msg) = (parts[1], parts[2], parts[3]);
        assert!(sd.starts_with("[tether@32473 seq=\""), "{l}");
        let seq: u64 = sd["[tether@32473 seq=\"".len()..]
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let rec: Value = serde_json::from_str(&hashes_line(&d, seq)).unwrap();
        assert_eq!(msgid, rec["type"].as_str().unwrap(), "{l}");
        let last: u64 = sd
            .split("last_seq=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let hash = sd
            .split("last_hash=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(Some(hash), chain.get(&last).map(String::as_str), "{l}");
        assert!(msg.contains(rec["type"].as_str().unwrap()), "{l}");
        seqs.push(seq);
    }
    assert_eq!(seqs.first(), Some(&1), "{lines:#?}");
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap or reorder: {seqs:?}");
    }
    let cef: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("tether-cef|"))
        .collect();
    assert!(cef.len() >= 6, "{lines:#?}");
    for l in cef {
        assert!(l.contains("[tether@32473 seq=\""), "{l}");
        assert!(l.contains("CEF:0|Tether|tetherd|"), "{l}");
        assert!(l.contains(" externalId="), "{l}");
    }
    drop(rs);
}

/// The stored line of record `seq`.
fn hashes_line(d: &Daemon, seq: u64) -> String {
    stdout(&d.tether(&[
        "audit",
        "export",
        "--from",
        &seq.to_string(),
        "--to",
        &seq.to_string(),
    ]))
    .trim()
    .to_owned()
}

#[test]
fn audit_export_renders_ocsf_ecs_cef_and_syslog_for_a_seq_range() {
    let d = Daemon::start("hub", "");
    for _ in 0..4 {
        assert_eq!(code(&d.tether(&["audit", "verify"])), 0);
    }
    let run = |args: &[&str]| {
        let mut a = vec!["audit", "export"];
        a.extend_from_slice(args);
        let out = d.tether(&a);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let raw = run(&["--from", "2", "--to", "4"]);
    let recs: Vec<Value> = raw
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        recs.iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );

    let ocsf: Vec<Value> = run(&["--format", "ocsf", "--from", "2", "--to", "4"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ocsf.len(), 3);
    for (e, r) in ocsf.iter().zip(&recs) {
        assert_eq!(e["metadata"]["uid"], r["seq"].to_string(), "{e}");
        assert_eq!(e["metadata"]["version"], "1.3.0");
        assert!([1001, 1007, 3002, 4007, 6003].contains(&e["class_uid"].as_u64().unwrap()));
        assert_eq!(
            e["type_uid"].as_u64().unwrap(),
            e["class_uid"].as_u64().unwrap() * 100 + e["activity_id"].as_u64().unwrap()
        );
        assert_eq!(e["unmapped"]["tether"]["hash"], r["hash"]);
    }
    let ecs: Vec<Value> = run(&["--format", "ecs", "--from", "2", "--to", "4"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ecs.len(), 3);
    assert_eq!(ecs[0]["@timestamp"], recs[0]["ts"]);
    assert!(
        ["success", "failure", "unknown"].contains(&ecs[0]["event"]["outcome"].as_str().unwrap())
    );
    let cef = run(&[
        "--format",
        "cef",
        "--from",
        "2",
        "--to",
        "4",
        "--hostname",
        "hubx",
    ]);
    assert_eq!(cef.lines().count(), 3);
    assert!(
        cef.lines()
            .all(|l| l.starts_with("CEF:0|Tether|tetherd|") && l.contains(" shost=hubx ")),
        "{cef}"
    );
    let sys = run(&[
        "--format",
        "syslog",
        "--from",
        "2",
        "--to",
        "4",
        "--hostname",
        "hubx",
    ]);
    let first = sys.lines().next().unwrap();
    assert!(
        first.starts_with("<11") && first.contains("1 ") && first.contains(" hubx tetherd - "),
        "{first}"
    );
    assert!(first.contains("[tether@32473 seq=\"2\""), "{first}");
    // --since in the future exports nothing; a date long ago everything.
    assert!(run(&["--since", "2999-01-01"]).trim().is_empty());
    assert!(
        run(&["--format", "ocsf", "--since", "2000-01-01"])
            .lines()
            .count()
            >= 5
    );

    // Bad input gets a precise error (exit 2) and writes nothing.
    for (args, want) in [
        (vec!["--from", "5", "--to", "2"], "--from 5 is after --to 2"),
        (vec!["--since", "yesterday"], "--since \"yesterday\""),
        (vec!["--format", "xml"], "invalid value 'xml'"),
    ] {
        let mut a = vec!["audit", "export"];
        a.extend_from_slice(&args);
        let out = d.tether(&a);
        assert_eq!(code(&out), 2, "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
}
