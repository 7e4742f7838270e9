//! Audit chain benchmark (bench binary, one run, same disk):
//! durable appends/s with 64 concurrent writers via group commit vs one fsync per record,
//! p50/p99 append latency, head-rewrite policy cost, and verify throughput.
//!
//! `cargo bench -p tether-audit --bench audit` (env `AUDIT_BENCH_SECS`, default 3).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tether_audit::{Actor, AuditLog, Event, Options, StaticKeys, Via, verify};
use tether_model::{NoAlerts, Role};

const WRITERS: usize = 64;

struct Run {
    records: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_batch: f64,
    fsync_mean_us: f64,
    bytes: u64,
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

async fn run(dir: &Path, keys: &StaticKeys, opts: Options, secs: f64) -> Run {
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
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    log.close().await;
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    let fams = reg.gather();
    let h = fams
        .iter()
        .find(|f| f.name() == "tether_audit_batch_size")
        .unwrap()
        .get_metric()[0]
        .get_histogram()
        .clone();
    let f = fams
        .iter()
        .find(|f| f.name() == "tether_audit_fsync_seconds")
        .unwrap()
        .get_metric()[0]
        .get_histogram()
        .clone();
    let fsync_mean_us = f.get_sample_sum() / f.get_sample_count().max(1) as f64 * 1e6;
    if std::env::var_os("AUDIT_BENCH_QUICK").is_some() {
        let b: Vec<String> = f
            .get_bucket()
            .iter()
            .map(|b| format!("<={:.4}:{}", b.upper_bound(), b.cumulative_count()))
            .collect();
        println!(
            "fsync buckets (cumulative) of {}: {}",
            f.get_sample_count(),
            b.join(" ")
        );
    }
    let bytes = tether_audit::list_day_files(dir)
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    Run {
        records: lat.len() as u64,
        secs,
        p50_us: q(0.50),
        p99_us: q(0.99),
        max_us: *lat.last().unwrap(),
        mean_batch: h.get_sample_sum() / h.get_sample_count().max(1) as f64,
        fsync_mean_us,
        bytes,
    }
}

fn show(name: &str, r: &Run) -> f64 {
    let rate = r.records as f64 / r.secs;
    println!(
        "{name:<44} {:>9.0} rec/s  p50 {:>7.0} us  p99 {:>7.0} us  max {:>7.0} us  mean batch {:>6.1}  fdatasync mean {:>5.0} us  ({} records, {:.1} MB, {:.1} s)",
        rate,
        r.p50_us,
        r.p99_us,
        r.max_us,
        r.mean_batch,
        r.fsync_mean_us,
        r.records,
        r.bytes as f64 / 1e6,
        r.secs
    );
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench -- --list
    }
    let secs: f64 = std::env::var("AUDIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let keys = StaticKeys::generate().unwrap();
    println!(
        "audit chain bench: {WRITERS} concurrent writers, {secs} s per case, dir {}",
        base.path().display()
    );

    let group = run(&base.path().join("group"), &keys, Options::default(), secs).await;
    let g = show("group commit (head every >=100 ms)", &group);
    if std::env::var_os("AUDIT_BENCH_QUICK").is_some() {
        let lazy = run(
            &base.path().join("no-head"),
            &keys,
            Options {
                head_interval: Duration::from_secs(3600),
                ..Options::default()
            },
            secs,
        )
        .await;
        show("group commit (no head rewrites)", &lazy);
        return;
    }
    let every = run(
        &base.path().join("group-head-every-batch"),
        &keys,
        Options {
            head_interval: Duration::ZERO,
            ..Options::default()
        },
        secs,
    )
    .await;
    let e = show("group commit (head after every batch)", &every);
    let single = run(
        &base.path().join("single"),
        &keys,
        Options {
            max_batch: 1,
            ..Options::default()
        },
        secs,
    )
    .await;
    let s = show("baseline: one fdatasync per record", &single);
    let no_gather = run(
        &base.path().join("group-no-gather"),
        &keys,
        Options {
            gather: Duration::ZERO,
            ..Options::default()
        },
        secs,
    )
    .await;
    let ng = show("group commit without the gather wait", &no_gather);
    let no_tail = run(
        &base.path().join("group-no-zero-tail"),
        &keys,
        Options {
            prealloc: 0,
            ..Options::default()
        },
        secs,
    )
    .await;
    let nt = show("group commit, plain appends (no zero tail)", &no_tail);
    println!("zero tail vs plain appends: {:.2}x", g / nt);
    println!("gather wait vs none: {:.2}x", g / ng);
    println!("group commit / one-fsync-per-record: {:.1}x", g / s);
    println!(
        "head after every batch costs: {:.0}% of throughput",
        (1.0 - e / g) * 100.0
    );

    // verify: cold-ish first pass, then warm (page cache) passes
    let dir = base.path().join("group");
    let mut best = 0.0f64;
    for pass in 0..3 {
        let rep = verify(&dir, &keys, None, None).unwrap();
        assert!(rep.is_ok(), "{:?}", rep.broken);
        println!(
            "verify pass {pass}: {} records, {:.1} MB in {:.3} s = {:.0} MB/s ({:.0} records/s)",
            rep.records,
            rep.bytes as f64 / 1e6,
            rep.elapsed_secs,
            rep.mb_per_s(),
            rep.records as f64 / rep.elapsed_secs
        );
        best = best.max(rep.mb_per_s());
    }
    println!("verify best: {best:.0} MB/s");

    // Baseline for verify: one SHA-256 per line over the same bytes, already in memory, one thread.
    use sha2::Digest as _;
    let data: Vec<u8> = tether_audit::list_day_files(&dir)
        .unwrap()
        .iter()
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
