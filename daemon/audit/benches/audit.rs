//! Audit chain benchmark (bench binary, one run, same disk):
//! durable appends/s with 64 concurrent writers via group commit vs one fsync per record,
//! p50/p99 append latency, head-rewrite policy cost, zero tail vs plain appends, idle appends
//! written inline vs always handed to the writer thread, and verify
//! throughput.
//!
//! The shared disk's fdatasync time changes by 2-5x from one second to the next, so the cases
//! run interleaved: `AUDIT_BENCH_ROUNDS` rounds (default 6), each running every case for
//! `AUDIT_BENCH_SECS / rounds` (default 3 s per case in all), and the figures aggregate the
//! rounds. Every case thus sees the same mix of fast and slow disk moments.
//!
//! `cargo bench -p tether-audit --bench audit`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tether_audit::{Actor, AuditLog, Event, Options, StaticKeys, Via, verify};
use tether_model::{NoAlerts, Role};

const WRITERS: usize = 64;

/// One case's figures, summed over rounds.
#[derive(Default)]
struct Run {
    records: u64,
    secs: f64,
    lat_us: Vec<f64>,
    batches: f64,
    batch_records: f64,
    fsyncs: f64,
    fsync_secs: f64,
    bytes: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.records as f64 / self.secs
    }
}

fn event(i: usize, k: u64) -> Event {
    Event::new(
        "exec.requested",
        Actor {
            uid: 1000 + i as u32,
            user: format!("operator{i}"),
            role: Some(Role::Operator),
            via: Via::Cli,
        },
    )
    .host(format!("web-{:02}.prod.example.net", i % 16))
    .data(
        json!({"argv": ["systemctl", "restart", "nginx"], "request": k, "timeout_ms": 30000,
                 "selector": "tag:env=prod"}),
    )
}

/// Runs one slice of a case into `acc`: a fresh log in `dir`, 64 writers for `secs`.
async fn run(dir: &Path, keys: &StaticKeys, opts: Options, secs: f64, acc: &mut Run) {
    let reg = prometheus::Registry::new();
    let (log, _) = AuditLog::open_with(dir, keys, &reg, Arc::new(NoAlerts), opts).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut k = 0;
            while Instant::now() < deadline {
                let ev = event(i, k);
                let t = Instant::now();
                log.append(&ev).await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                k += 1;
            }
            lat
        }));
    }
    for t in tasks {
        let lat = t.await.unwrap();
        acc.records += lat.len() as u64;
        acc.lat_us.extend(lat);
    }
    acc.secs += start.elapsed().as_secs_f64();
    log.close().await;
    let fams = reg.gather();
    let hist = |name: &str| {
        fams.iter().find(|f| f.name() == name).unwrap().get_metric()[0]
            .get_histogram()
            .clone()
    };
    let h = hist("tether_audit_batch_size");
    acc.batches += h.get_sample_count() as f64;
    acc.batch_records += h.get_sample_sum();
    let f = hist("tether_audit_fsync_seconds");
    acc.fsyncs += f.get_sample_count() as f64;
    acc.fsync_secs += f.get_sample_sum();
    acc.bytes += tether_audit::list_day_files(dir)
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum::<u64>();
}

fn show(name: &str, r: &mut Run) -> f64 {
    r.lat_us.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| r.lat_us[((r.lat_us.len() as f64 - 1.0) * p) as usize];
    println!(
        "{name:<44} {:>9.0} rec/s  p50 {:>7.0} us  p99 {:>7.0} us  max {:>7.0} us  mean batch {:>6.1}  fdatasync mean {:>5.0} us  ({} records, {:.1} MB, {:.1} s)",
        r.rate(),
        q(0.50),
        q(0.99),
        r.lat_us.last().copied().unwrap_or(0.0),
        r.batch_records / r.batches.max(1.0),
        r.fsync_secs / r.fsyncs.max(1.0) * 1e6,
        r.records,
        r.bytes as f64 / 1e6,
        r.secs
    );
    r.rate()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench -- --list
    }
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("AUDIT_BENCH_SECS", 3.0);
    let rounds = env("AUDIT_BENCH_ROUNDS", 6.0).max(1.0) as usize;
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let keys = StaticKeys::generate().unwrap();
    println!(
        "audit chain bench: {WRITERS} concurrent writers, {secs} s per case in {rounds} interleaved rounds, dir {}",
        base.path().display()
    );
    let d = Options::default();
    let cases: Vec<(&str, Options)> = vec![
        ("default: zero tail, head every >=100 ms", d.clone()),
        (
            "head rewritten as often as possible",
            Options {
                head_interval: Duration::ZERO,
                ..d.clone()
            },
        ),
        (
            "gather wait of up to 1 ms",
            Options {
                gather: Duration::from_millis(1),
                ..d.clone()
            },
        ),
        (
            "plain appends (no zero tail)",
            Options {
                prealloc: 0,
                ..d.clone()
            },
        ),
        (
            "baseline: one fdatasync per record",
            Options {
                max_batch: 1,
                ..d.clone()
            },
        ),
        (
            "every append handed to the writer thread (inline_when_idle off)",
            Options {
                inline_when_idle: false,
                ..d.clone()
            },
        ),
    ];
    let mut runs: Vec<Run> = cases.iter().map(|_| Run::default()).collect();
    for round in 0..rounds {
        for (i, (_, opts)) in cases.iter().enumerate() {
            let dir = base.path().join(format!("case{i}-round{round}"));
            run(
                &dir,
                &keys,
                opts.clone(),
                secs / rounds as f64,
                &mut runs[i],
            )
            .await;
        }
    }
    let rates: Vec<f64> = cases
        .iter()
        .zip(runs.iter_mut())
        .map(|((name, _), r)| show(name, r))
        .collect();
    println!(
        "default / one-fsync-per-record: {:.1}x",
        rates[0] / rates[4]
    );
    println!("zero tail vs plain appends: {:.2}x", rates[0] / rates[3]);
    println!(
        "idle appends inline vs always handed to the writer thread: {:.2}x",
        rates[0] / rates[5]
    );
    println!(
        "1 ms gather wait vs none (default): {:.2}x",
        rates[2] / rates[0]
    );
    println!(
        "head as often as possible costs: {:.0}% of throughput",
        (1.0 - rates[1] / rates[0]) * 100.0
    );

    // verify over the default case's logs (one per round): 3 passes, page cache warm after the first
    let dirs: Vec<_> = (0..rounds)
        .map(|r| base.path().join(format!("case0-round{r}")))
        .collect();
    let mut best = 0.0f64;
    for pass in 0..3 {
        let (mut records, mut bytes, mut el) = (0u64, 0u64, 0.0f64);
        for dir in &dirs {
            let rep = verify(dir, &keys, None, None).unwrap();
            assert!(rep.is_ok(), "{:?}", rep.broken);
            records += rep.records;
            bytes += rep.bytes;
            el += rep.elapsed_secs;
        }
        let mbs = bytes as f64 / 1e6 / el;
        println!(
            "verify pass {pass}: {records} records, {:.1} MB in {el:.3} s = {mbs:.0} MB/s ({:.0} records/s)",
            bytes as f64 / 1e6,
            records as f64 / el
        );
        best = best.max(mbs);
    }
    println!("verify best: {best:.0} MB/s");

    // Baseline for verify: one SHA-256 per line over the same bytes, already in memory, one thread.
    use sha2::Digest as _;
    let data: Vec<u8> = dirs
        .iter()
        .flat_map(|dir| tether_audit::list_day_files(dir).unwrap())
        .flat_map(|(_, p)| std::fs::read(p).unwrap())
        .collect();
    let t = Instant::now();
    let mut acc = 0u8;
    for line in data.split(|&b| b == b'\n') {
        acc ^= sha2::Sha256::digest(line)[0];
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "baseline: SHA-256 per line in memory, 1 thread: {:.0} MB/s (verify best = {:.2}x of it) [{acc}]",
        data.len() as f64 / 1e6 / el,
        best / (data.len() as f64 / 1e6 / el)
    );
}
