//! Audit streaming benchmark (issue #18, BENCHMARKS.md "Audit streaming to a SIEM").
//!
//! Run: `scripts/bench-siem` (builds under the build lock, then runs this binary outside it).
//! Everything is real: `tetherd` hubs in temp dirs, the first-party `splunk-hec` audit-sink
//! plugin, and a Splunk HEC look-alike on 127.0.0.1 (the receiver of `tests/e2e/siem.rs`, cut
//! down to counting). Audit records come from real audited requests: `GET /v1/audit/checkpoint`
//! over the control socket (one `audit.read` record each, and a cheap handler: a signed head).
//!
//! 1. *Streaming*: `BENCH_WRITERS` (default 4) clients write records for `BENCH_STREAM_SECS`
//!    (default 20) into a hub whose HEC sink is up (default `[alerts]`: batches of up to 100,
//!    200 ms poll); records/s written, records/s received end to end (first write to the last
//!    record received), and the sink lag (`tether_audit_sink_lag_records`) sampled every 250 ms.
//! 2. *Outage*: two hubs side by side, A without a sink, B with its HEC sink pointed at a closed
//!    127.0.0.1 port (connection refused). One client alternates requests A, B, A, B… for
//!    `BENCH_OUTAGE_SECS` (default 600); p50/p99 of each, and both hubs' VmRSS/RssAnon sampled
//!    every second, with the least-squares slope of RssAnon. Then the receiver comes up on B's
//!    port and the backlog's drain rate is measured.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_e2e::{Daemon, bin, code, plugin_component, stderr};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A field of `/proc/PID/status` in kB, as MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// One `GET` on the control socket (`Connection: close`); the status, or 0 on an IO error.
fn get(socket: &Path, path: &str) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// One audited request: `GET /v1/audit/checkpoint` (writes one `audit.read` record).
fn audited(socket: &Path) -> Duration {
    let t = Instant::now();
    let (status, body) = get(socket, "/v1/audit/checkpoint");
    assert_eq!(status, 200, "checkpoint failed: {body}");
    t.elapsed()
}

/// A metric's value (first sample whose line starts with `prefix`) from `/metrics`.
fn metric(socket: &Path, prefix: &str) -> Option<f64> {
    let (_, body) = get(socket, "/metrics");
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}

fn lag(socket: &Path) -> f64 {
    metric(socket, "tether_audit_sink_lag_records{sink=\"hec\"}").unwrap_or(f64::NAN)
}

fn records_total(socket: &Path) -> f64 {
    metric(socket, "tether_audit_records_total").unwrap_or(f64::NAN)
}

/// A Splunk HEC look-alike on 127.0.0.1 (acknowledgement off) that counts the events it gets
/// and keeps their seqs; one thread per connection.
struct Hec {
    seqs: Arc<Mutex<Vec<u64>>>,
    requests: Arc<AtomicU64>,
    first_request: Arc<Mutex<Option<Instant>>>,
}

impl Hec {
    fn start_on(listener: TcpListener) -> Hec {
        let seqs = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let first_request = Arc::new(Mutex::new(None));
        let (s, n, f) = (seqs.clone(), requests.clone(), first_request.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, n, f) = (s.clone(), n.clone(), f.clone());
                std::thread::spawn(move || serve(conn, &s, &n, &f));
            }
        });
        Hec {
            seqs,
            requests,
            first_request,
        }
    }

    fn count(&self) -> usize {
        self.seqs.lock().unwrap().len()
    }
}

fn serve(
    mut conn: std::net::TcpStream,
    seqs: &Mutex<Vec<u64>>,
    requests: &AtomicU64,
    first: &Mutex<Option<Instant>>,
) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    let _ = r.read_exact(&mut body);
    first.lock().unwrap().get_or_insert_with(Instant::now);
    requests.fetch_add(1, Ordering::Relaxed);
    let got: Vec<u64> = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["event"]["seq"].as_u64())
        .collect();
    seqs.lock().unwrap().extend(got);
    let reply = r#"{"text":"Success","code":0}"#;
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// A hub with the file vault; with `hec_port`, the `splunk-hec` sink sends to
/// `http://127.0.0.1:PORT` (default `[alerts]` otherwise: batches of 100, 200 ms poll,
/// backoff 0.5–30 s).
fn hub(hec_port: Option<u16>) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let top = match hec_port {
        None => String::new(),
        Some(port) => {
            let manifest = dir.path().join("plugins.toml");
            std::fs::write(
                &manifest,
                format!(
                    "allow_unsigned = true\n\n[[plugin]]\nname = \"hec\"\nkind = \"audit_sink\"\npath = {:?}\n[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]\nsecrets = [\"splunk-hec-token\"]\n[plugin.limits]\ntimeout_ms = 3000\n[plugin.config]\nurl = \"http://127.0.0.1:{port}\"\nhost = \"hub-bench\"\n",
                    plugin_component("splunk_hec").display().to_string(),
                ),
            )
            .unwrap();
            format!("plugins_manifest = {:?}\n", manifest.display().to_string())
        }
    };
    let d = Daemon::start_top("hub", &top, "\n[vault]\nbackend = \"file\"\n");
    if hec_port.is_some() {
        set_secret(&d, "splunk-hec-token", b"bench-token");
    }
    (d, dir)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

fn streaming() {
    let secs = env_num("BENCH_STREAM_SECS", 20);
    let writers = env_num("BENCH_WRITERS", 4);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hec = Hec::start_on(listener);
    let (d, _dir) = hub(Some(port));
    let socket = d.socket.clone();
    wait_until("the sink to catch up at start", 60, || lag(&socket) == 0.0);
    let base_received = hec.count();
    let base_written = records_total(&socket);

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    audited(&socket);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut lags = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        lags.push(lag(&socket));
    }
    stop.store(true, Ordering::Relaxed);
    let requests: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let write_secs = t0.elapsed().as_secs_f64();
    let written = records_total(&socket) - base_written;
    // Done when the receiver holds every record written: the lag gauge is refreshed once per
    // poll (200 ms), so a 0 read while the streamer sleeps can predate the last writes.
    wait_until("the receiver to get every record written", 120, || {
        (hec.count() - base_received) as f64 >= written
    });
    let e2e_secs = t0.elapsed().as_secs_f64();
    let received = (hec.count() - base_received) as f64;
    let seqs = hec.seqs.lock().unwrap().clone();
    let gaps = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
    let mut sorted = lags.clone();
    sorted.sort_by(f64::total_cmp);
    let mean = lags.iter().sum::<f64>() / lags.len() as f64;
    println!("## streaming: hub + splunk-hec sink up, {writers} writers, {secs} s");
    println!(
        "audited requests: {requests} ({:.0}/s)",
        requests as f64 / write_secs
    );
    println!(
        "records written: {written:.0} ({:.0}/s)",
        written / write_secs
    );
    println!(
        "records received by HEC: {received:.0} in {e2e_secs:.1} s (first write to the last record received): {:.0}/s end to end; {} HEC requests in all, {:.1} records/request",
        received / e2e_secs,
        hec.requests.load(Ordering::Relaxed),
        seqs.len() as f64 / hec.requests.load(Ordering::Relaxed).max(1) as f64,
    );
    println!(
        "drain after the writers stopped: {:.2} s",
        e2e_secs - write_secs
    );
    println!(
        "sink lag while writing (records, every 250 ms, n={}): mean {mean:.0}, p50 {:.0}, p99 {:.0}, max {:.0}",
        lags.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(f64::NAN)
    );
    println!("seq gaps or reorders seen by HEC: {gaps}");
    assert_eq!(gaps, 0, "records lost or reordered");
}

fn outage() {
    let secs = env_num("BENCH_OUTAGE_SECS", 600);
    let dead = free_port();
    let (a, _da) = hub(None);
    let (b, _db) = hub(Some(dead));
    let (sa, sb) = (a.socket.clone(), b.socket.clone());
    for _ in 0..100 {
        audited(&sa);
        audited(&sb);
    }
    let (pa, pb) = (a.pid(), b.pid());
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    let mut mem: Vec<(f64, f64, f64, f64, f64)> = Vec::new();
    let t0 = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut flip = false;
    while t0.elapsed() < Duration::from_secs(secs) {
        if t0.elapsed() >= next_sample {
            mem.push((
                t0.elapsed().as_secs_f64(),
                status_mib(pa, "VmRSS:"),
                status_mib(pa, "RssAnon:"),
                status_mib(pb, "VmRSS:"),
                status_mib(pb, "RssAnon:"),
            ));
            next_sample += Duration::from_secs(1);
        }
        // Alternate which hub goes first so neither always follows the other's fsync.
        flip = !flip;
        if flip {
            la.push(audited(&sa).as_secs_f64() * 1000.0);
            lb.push(audited(&sb).as_secs_f64() * 1000.0);
        } else {
            lb.push(audited(&sb).as_secs_f64() * 1000.0);
            la.push(audited(&sa).as_secs_f64() * 1000.0);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let backlog = lag(&sb);
    la.sort_by(f64::total_cmp);
    lb.sort_by(f64::total_cmp);
    let (a50, a99, b50, b99) = (
        percentile(&la, 0.5),
        percentile(&la, 0.99),
        percentile(&lb, 0.5),
        percentile(&lb, 0.99),
    );
    println!(
        "## outage: sink refused (B) vs no sink (A), {elapsed:.0} s, {} requests each",
        la.len()
    );
    println!(
        "A no sink:   p50 {a50:.2} ms, p90 {:.2} ms, p99 {a99:.2} ms",
        percentile(&la, 0.9)
    );
    println!(
        "B sink down: p50 {b50:.2} ms, p90 {:.2} ms, p99 {b99:.2} ms",
        percentile(&lb, 0.9)
    );
    println!(
        "added by the down sink: p50 {:+.1}%, p99 {:+.1}% (goal < +10%)",
        (b50 / a50 - 1.0) * 100.0,
        (b99 / a99 - 1.0) * 100.0
    );
    println!("B's backlog (sink lag) at the end: {backlog:.0} records");
    let col = |i: usize| -> Vec<f64> { mem.iter().map(|m| [m.0, m.1, m.2, m.3, m.4][i]).collect() };
    let ts = col(0);
    let half = ts.len() / 2;
    for (name, rss, anon) in [
        ("A no sink", col(1), col(2)),
        ("B sink down", col(3), col(4)),
    ] {
        let max = anon.iter().copied().fold(f64::MIN, f64::max);
        println!(
            "{name}: VmRSS {:.1} -> {:.1} MiB (max {:.1}); RssAnon {:.1} -> {:.1} MiB (max {max:.1}); RssAnon slope {:+.3} MiB/min overall, {:+.3} MiB/min over the second half ({} samples)",
            rss[0],
            rss[rss.len() - 1],
            rss.iter().copied().fold(f64::MIN, f64::max),
            anon[0],
            anon[anon.len() - 1],
            slope(&ts, &anon) * 60.0,
            slope(&ts[half..], &anon[half..]) * 60.0,
            ts.len()
        );
    }
    if let Ok(path) = std::env::var("BENCH_RSS_CSV") {
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "secs,a_rss_mib,a_anon_mib,b_rss_mib,b_anon_mib").unwrap();
        for m in &mem {
            writeln!(f, "{:.1},{:.2},{:.2},{:.2},{:.2}", m.0, m.1, m.2, m.3, m.4).unwrap();
        }
        println!("RSS samples written to {path}");
    }

    // The receiver comes back: how fast does B stream its backlog?
    let listener = TcpListener::bind(("127.0.0.1", dead)).unwrap();
    let hec = Hec::start_on(listener);
    let t = Instant::now();
    wait_until("B's backlog to drain", 600, || lag(&sb) == 0.0);
    let total = t.elapsed().as_secs_f64();
    let first = hec
        .first_request
        .lock()
        .unwrap()
        .map_or(0.0, |f| f.duration_since(t).as_secs_f64());
    let seqs = hec.seqs.lock().unwrap().clone();
    let gaps = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
    println!(
        "receiver back: first request after {first:.1} s (retry backoff), backlog of {} records streamed in {:.1} s after that: {:.0} records/s; gaps {gaps}, first seq {:?}",
        seqs.len(),
        total - first,
        seqs.len() as f64 / (total - first).max(0.001),
        seqs.first()
    );
    assert_eq!(gaps, 0, "records lost or reordered after the outage");
    drop((a, b));
}

fn main() {
    println!(
        "# tether audit streaming bench, {} (load average {})",
        String::from_utf8_lossy(&Command::new("date").arg("-u").output().unwrap().stdout).trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "streaming" {
        streaming();
    }
    if only.is_empty() || only == "outage" {
        outage();
    }
    println!(
        "# done (load average {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
