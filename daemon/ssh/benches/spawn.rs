//! spawn → reap of `/bin/sh -c true`, the way the target starts each `exec` command: the
//! `clone(CLONE_VM | CLONE_VFORK)` path ([`Shell::start`]) against tokio's `Command` with the
//! `pre_exec` privilege drop (a fork of the whole process, [`Shell::forked`]), alternating in
//! one run, inside a multi-threaded tokio runtime whose process holds `BENCH_HEAP_MIB` (24) MiB
//! of touched heap, about a target daemon's resident size. As root, both drop to `nobody`
//! with its groups (what `ssh.run_as` does); otherwise both run as the current user (then std
//! uses `posix_spawn` too and the two should tie). `BENCH_ITER` (1000) samples per path.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tether_ssh::run_as::RunAs;
use tether_ssh::spawn::{Shell, ShellSpec};
use tokio::io::AsyncReadExt;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn once(spec: &ShellSpec<'_>, forked: bool) -> Duration {
    let t = Instant::now();
    let mut sh = if forked {
        Shell::forked(spec)
    } else {
        Shell::start(spec)
    }
    .expect("spawn");
    let (out, err) = sh.take_output();
    let drain = |r: Option<tether_ssh::spawn::Output>| async move {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf).await;
        }
    };
    tokio::join!(drain(out), drain(err));
    let status = sh.wait().await.expect("wait");
    assert!(status.success());
    t.elapsed()
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let iters = env_num("BENCH_ITER", 1000);
    let heap = vec![1u8; env_num("BENCH_HEAP_MIB", 24) << 20];
    let run_as = if nix::unistd::geteuid().is_root() {
        RunAs::resolve(Some("nobody")).expect("nobody")
    } else {
        RunAs::resolve(None).expect("self")
    };
    let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    let spec = ShellSpec {
        command: "true",
        env: &env,
        cwd: std::path::Path::new("/"),
        run_as: &run_as,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load at start: {}", load().trim());
    let (mut cloned, mut forked) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..20 {
            once(&spec, false).await;
            once(&spec, true).await;
        }
        for i in 0..iters {
            // Alternate which goes first, so neither always follows the other.
            if i % 2 == 0 {
                cloned.push(once(&spec, false).await.as_secs_f64() * 1e3);
                forked.push(once(&spec, true).await.as_secs_f64() * 1e3);
            } else {
                forked.push(once(&spec, true).await.as_secs_f64() * 1e3);
                cloned.push(once(&spec, false).await.as_secs_f64() * 1e3);
            }
        }
    });
    println!("load at end: {}", load().trim());
    std::hint::black_box(&heap);
    for v in [&mut cloned, &mut forked] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "spawn -> reap of /bin/sh -c true as {} (drop: {}), {iters} samples each, {} MiB heap:",
        run_as.name,
        run_as.drop,
        heap.len() >> 20
    );
    println!("| path | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|");
    for (name, v) in [
        ("clone(CLONE_VM|CLONE_VFORK) (Shell::start)", &cloned),
        ("fork + pre_exec (Shell::forked, before)", &forked),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99)
        );
    }
    println!(
        "fork / clone, p50: {:.2}x",
        pct(&forked, 0.5) / pct(&cloned, 0.5)
    );
}
