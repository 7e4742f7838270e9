//! `fleet-sim --targets N`: N simulated targets in this process against a real `tetherd` hub on
//! loopback, and what the hub costs at that size. See BENCHMARKS.md ("Fleet simulator").
//!
//! 1. Starts a hub (`tetherd run --role hub`, 127.0.0.1 only, temp dir).
//! 2. Enrolls N targets through real invites (`POST /v1/vpn/invite`, then the real enrollment
//!    exchange from 127.0.0.1 — one NAT address for the whole fleet), `--enroll-concurrency` at
//!    a time; half are tagged `env=prod`, half `env=staging`.
//! 3. Brings each online: its own WireGuard key and UDP socket, the tunnel driver, the real
//!    target SSH server on overlay port 22; waits until the hub reports every host online.
//! 4. Measures the hub idle (CPU over `--idle-secs`, RSS), `hosts list -H tag:env=prod`
//!    latency, a fan-out of `true` to all (cold: new SSH connections; warm: pooled), and the
//!    audit bytes each step wrote. Prints a report (`--json` for one JSON object).
#![forbid(unsafe_code)]

mod hub;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, audit_bytes, cpu_time, cpu_time_with_children, hwm_kib, open_fds, rss_kib};
use crate::target::{Counters, Identity};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "fleet-sim",
    about = "Simulate a fleet of targets against a real tetherd hub"
)]
struct Args {
    /// Number of simulated targets.
    #[arg(long, default_value_t = 100)]
    targets: usize,
    /// The tetherd binary (default: next to this executable).
    #[arg(long)]
    tetherd: Option<PathBuf>,
    /// Seconds to measure the hub's idle CPU over (all targets online, keepalives running).
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 16)]
    enroll_concurrency: usize,
    /// Hosts the fan-out runs on at once (the exec route allows up to 1000).
    #[arg(long, default_value_t = 1000)]
    exec_concurrency: u32,
    /// Fan-outs of `true` to measure after the idle window: 2 (cold, then warm), 1 (cold only)
    /// or 0 (none: enrollment, idle and selectors only, e.g. at 10,000 targets).
    #[arg(long, default_value_t = 2)]
    fanouts: u8,
    /// `hosts list -H tag:env=prod` calls to take the median of.
    #[arg(long, default_value_t = 5)]
    selector_runs: usize,
    /// The hub's `ssh.max_connections` (default: the hub's own default).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds, rounded to 0.01.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).unwrap_or(u32::MAX)
}

fn p99(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * 0.99).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Seconds, rounded to 0.01.
fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

/// The hub's SSH pool metrics (`tether_ssh_pool_*` from `GET /v1/metrics`) by name without
/// the prefix; empty for a hub that has none.
async fn hub_pool(hub: &Hub) -> Value {
    let text = hub
        .client
        .call::<tether_api::Metrics>(&tether_api::Empty {})
        .await
        .unwrap_or_default();
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("tether_ssh_pool_")
            && let Some((name, value)) = rest.split_once(' ')
            && let Ok(v) = value.trim().parse::<f64>()
        {
            out.insert(name.to_owned(), json!(v as u64));
        }
    }
    Value::Object(out)
}

/// One fan-out of `true` to every host: wall time, per-host latencies, outcomes.
async fn fan_out(hub: &Hub, concurrency: u32, counters: &Counters) -> Result<Value, String> {
    let req = tether_api::ExecRequest {
        selector: "all".to_owned(),
        command: "true".to_owned(),
        concurrency: Some(concurrency),
        timeout_ms: Some(60_000),
        ..Default::default()
    };
    let audit_before = audit_bytes(&hub.state_dir().join("audit"));
    let pool_before = hub_pool(hub).await;
    let ended_before = counters.ended();
    let cpu_before = cpu_time(hub.pid());
    let sim_cpu_before = cpu_time_with_children(std::process::id());
    let accepted_before = counters.connections.load(Ordering::Relaxed);
    counters
        .peak_open
        .store(counters.open.load(Ordering::Relaxed), Ordering::Relaxed);
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    // The first few messages of each error kind, digits dropped so alike ones group.
    let mut messages: BTreeMap<String, u64> = BTreeMap::new();
    let mut summary = Value::Null;
    let mut peak_fds = 0usize;
    let mut peak_rss = 0u64;
    let pid = hub.pid();
    hub.client
        .stream::<tether_api::Exec>(&req, |ev| {
            match ev {
                tether_api::ExecEvent::Exit {
                    code, duration_ms, ..
                } => {
                    if code == Some(0) {
                        lat.push(duration_ms);
                    } else {
                        *errors.entry(format!("exit {code:?}")).or_default() += 1;
                    }
                }
                tether_api::ExecEvent::Error { kind, message, .. } => {
                    let m: String = message.chars().filter(|c| !c.is_ascii_digit()).collect();
                    if messages.len() < 20 || messages.contains_key(&m) {
                        *messages.entry(m).or_default() += 1;
                    }
                    *errors.entry(kind).or_default() += 1;
                }
                tether_api::ExecEvent::Summary(s) => {
                    summary = serde_json::to_value(&s).unwrap_or(Value::Null);
                }
                _ => {}
            }
            if lat.len() % 64 == 0 {
                peak_fds = peak_fds.max(open_fds(pid));
                peak_rss = peak_rss.max(rss_kib(pid));
            }
            true
        })
        .await
        .map_err(|e| format!("exec: {e}"))?;
    let wall = started.elapsed();
    let pool = hub_pool(hub).await;
    let cpu = cpu_time(hub.pid()).saturating_sub(cpu_before);
    let sim_cpu = cpu_time_with_children(std::process::id()).saturating_sub(sim_cpu_before);
    // exec.result records are durable before the summary; give the group commit a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let audit_bytes = audit_bytes(&hub.state_dir().join("audit")).saturating_sub(audit_before);
    let mut ended = counters.ended();
    for (how, n) in ended_before {
        if let Some(v) = ended.get_mut(&how) {
            *v = v.saturating_sub(n);
        }
    }
    ended.retain(|_, n| *n > 0);
    lat.sort_unstable();
    Ok(json!({
        "ok": lat.len(),
        "errors": errors,
        "error_messages": messages,
        "target_connections_ended": ended,
        "wall_ms": ms(wall),
        "p50_ms": percentile(&lat, 0.50),
        "p99_ms": percentile(&lat, 0.99),
        "max_ms": lat.last().copied().unwrap_or(0),
        "hub_cpu_ms": ms(cpu),
        "hub_cpu_ms_per_host": ms(cpu / u32::try_from(lat.len().max(1)).unwrap_or(u32::MAX)),
        "sim_cpu_ms": ms(sim_cpu),
        "ssh_connections_opened": counters.connections.load(Ordering::Relaxed).saturating_sub(accepted_before),
        "ssh_connections_peak_open": counters.peak_open.load(Ordering::Relaxed),
        "hub_pool_before": pool_before,
        "hub_pool": pool,
        "hub_peak_rss_kib": peak_rss.max(rss_kib(pid)),
        "hub_peak_fds": peak_fds.max(open_fds(pid)),
        "audit_bytes": audit_bytes,
        "summary": summary,
    }))
}

async fn run(args: Args) -> Result<Value, String> {
    let tetherd = match args.tetherd.clone() {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("current exe: {e}"))?
            .with_file_name("tetherd"),
    };
    let extra = args
        .max_connections
        .map(|n| format!("[ssh]\nmax_connections = {n}\n"))
        .unwrap_or_default();
    let hub = Hub::start(&tetherd, &extra).await?;
    let pid = hub.pid();
    let rss_empty = rss_kib(pid);
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let n = args.targets;

    // Enrollment through real invites, `enroll_concurrency` at a time, all from 127.0.0.1.
    let started = Instant::now();
    let mut invite_lat: Vec<Duration> = Vec::with_capacity(n);
    let mut enroll_lat: Vec<Duration> = Vec::with_capacity(n);
    let mut targets = Vec::with_capacity(n);
    let mut welcomes = Vec::with_capacity(n);
    // Enrollment rate per 1,000 targets, to show whether it falls as the fleet grows.
    let mut per_thousand: Vec<f64> = Vec::new();
    let mut chunk_started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<usize> = (i..n.min(i + args.enroll_concurrency.max(1))).collect();
        i += batch.len();
        let mut tasks = Vec::new();
        for k in batch {
            let env = if k % 2 == 0 { "prod" } else { "staging" };
            let client = tether_api::Client::new(hub.client.socket());
            tasks.push(tokio::spawn(async move {
                // Invites are issued concurrently too (an operator's script in parallel).
                let t0 = Instant::now();
                let inv = client
                    .call::<tether_api::VpnInvite>(&tether_api::InviteRequest {
                        name: format!("sim{k:05}"),
                        tags: BTreeMap::from([("env".to_owned(), env.to_owned())]),
                        groups: vec!["sim".to_owned()],
                        ttl: None,
                    })
                    .await
                    .map_err(|e| format!("invite sim{k:05}: {e}"))?;
                let invite = t0.elapsed();
                let id = Identity::generate()?;
                let t1 = Instant::now();
                let w = id.enroll(inv.token, &format!("sim{k:05}")).await?;
                Ok::<_, String>((id, w, invite, t1.elapsed()))
            }));
        }
        for t in tasks {
            let (id, w, invite, enroll) = t.await.map_err(|e| format!("enroll task: {e}"))??;
            invite_lat.push(invite);
            enroll_lat.push(enroll);
            welcomes.push((id, w));
            if welcomes.len() % 1000 == 0 {
                let rate = 1000.0 / chunk_started.elapsed().as_secs_f64();
                per_thousand.push((rate * 10.0).round() / 10.0);
                chunk_started = Instant::now();
                eprintln!(
                    "fleet-sim: {} enrolled ({:.1} /s for the last 1,000)",
                    welcomes.len(),
                    rate
                );
            }
        }
    }
    let enroll_wall = started.elapsed();
    let audit_after_enroll = audit_bytes(&hub.state_dir().join("audit"));
    for (id, w) in welcomes {
        targets.push(target::start(id, &w, counters.clone(), stop.clone()).await?);
    }

    // Wait until the hub sees every host online.
    let t0 = Instant::now();
    let deadline = Duration::from_secs(60) + Duration::from_millis(20 * n as u64);
    let online = loop {
        let list = hub
            .client
            .call::<tether_api::HostsList>(&tether_api::HostsQuery::default())
            .await
            .map_err(|e| format!("hosts list: {e}"))?;
        let up = list.hosts.iter().filter(|h| h.online).count();
        if up == n || t0.elapsed() > deadline {
            break up;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let online_after = t0.elapsed();
    if online < n {
        return Err(format!(
            "only {online} of {n} hosts came online within {deadline:?}"
        ));
    }

    // Idle: every target keepalive-ing, nothing else happening.
    let own_before = cpu_time(std::process::id());
    let audit_before_idle = audit_bytes(&hub.state_dir().join("audit"));
    let cpu_before = cpu_time(pid);
    let t_idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let idle_wall = t_idle.elapsed();
    let idle_cpu = cpu_time(pid).saturating_sub(cpu_before);
    let own_idle_cpu = cpu_time(std::process::id()).saturating_sub(own_before);
    let idle_audit = audit_bytes(&hub.state_dir().join("audit")).saturating_sub(audit_before_idle);
    let rss_idle = rss_kib(pid);

    // Selector latency (median of `--selector-runs`, the first one included in the max).
    let mut sel = Vec::new();
    let mut matched = 0;
    for _ in 0..args.selector_runs.max(1) {
        let t = Instant::now();
        let list = hub
            .client
            .call::<tether_api::HostsList>(&tether_api::HostsQuery {
                selector: Some("tag:env=prod".to_owned()),
            })
            .await
            .map_err(|e| format!("hosts list: {e}"))?;
        sel.push(t.elapsed());
        matched = list.hosts.len();
    }
    sel.sort_unstable();

    let cold = if args.fanouts >= 1 {
        eprintln!("fleet-sim: cold fan-out starts");
        fan_out(&hub, args.exec_concurrency, &counters).await?
    } else {
        Value::Null
    };
    let warm = if args.fanouts >= 2 {
        eprintln!("fleet-sim: warm fan-out starts");
        fan_out(&hub, args.exec_concurrency, &counters).await?
    } else {
        Value::Null
    };
    let report = json!({
        "targets": n,
        "enroll": {
            "wall_s": secs(enroll_wall),
            "per_s": (n as f64 / enroll_wall.as_secs_f64() * 10.0).round() / 10.0,
            "invite_ms_mean": ms(mean(&invite_lat)),
            "enroll_exchange_ms_mean": ms(mean(&enroll_lat)),
            "enroll_exchange_ms_p99": ms(p99(&mut enroll_lat)),
            "audit_bytes": audit_after_enroll,
            "online_after_s": secs(online_after),
            "per_s_by_thousand": per_thousand,
        },
        "idle": {
            "secs": secs(idle_wall),
            "hub_cpu_percent_of_one_core": (idle_cpu.as_secs_f64() / idle_wall.as_secs_f64() * 1000.0).round() / 10.0,
            "sim_cpu_percent_of_one_core": (own_idle_cpu.as_secs_f64() / idle_wall.as_secs_f64() * 1000.0).round() / 10.0,
            "hub_rss_kib_empty": rss_empty,
            "hub_rss_kib": rss_idle,
            "hub_kib_per_peer": ((rss_idle.saturating_sub(rss_empty)) as f64 / n.max(1) as f64 * 10.0).round() / 10.0,
            "audit_bytes": idle_audit,
        },
        "selector_tag_env_prod": {
            "matched": matched,
            "median_ms": ms(sel[sel.len() / 2]),
            "max_ms": ms(sel[sel.len() - 1]),
        },
        "fanout_cold": cold,
        "fanout_warm": warm,
        "hub_peak_rss_kib": hwm_kib(pid),
        "target_commands": {
            "admitted": counters.admitted.load(Ordering::Relaxed),
            "finished": counters.finished.load(Ordering::Relaxed),
        },
    });
    stop.cancel();
    for t in targets {
        t.tunnel.shutdown().await;
    }
    drop(hub);
    Ok(report)
}

fn print_report(r: &Value) {
    let g = |p: &str| r.pointer(p).cloned().unwrap_or(Value::Null);
    println!(
        "fleet-sim: {} targets against one tetherd hub on loopback",
        g("/targets")
    );
    println!(
        "  enrollment      {} s ({} /s; invite mean {} ms, exchange mean {} ms p99 {} ms), all online {} s later",
        g("/enroll/wall_s"),
        g("/enroll/per_s"),
        g("/enroll/invite_ms_mean"),
        g("/enroll/enroll_exchange_ms_mean"),
        g("/enroll/enroll_exchange_ms_p99"),
        g("/enroll/online_after_s")
    );
    println!(
        "  enrollment /s per 1,000 in order: {}",
        g("/enroll/per_s_by_thousand")
    );
    println!(
        "  idle            hub CPU {} % of one core over {} s (simulator {} %), RSS {} KiB ({} KiB empty, {} KiB/peer), audit +{} B",
        g("/idle/hub_cpu_percent_of_one_core"),
        g("/idle/secs"),
        g("/idle/sim_cpu_percent_of_one_core"),
        g("/idle/hub_rss_kib"),
        g("/idle/hub_rss_kib_empty"),
        g("/idle/hub_kib_per_peer"),
        g("/idle/audit_bytes")
    );
    println!(
        "  tag:env=prod    {} hosts, median {} ms, max {} ms",
        g("/selector_tag_env_prod/matched"),
        g("/selector_tag_env_prod/median_ms"),
        g("/selector_tag_env_prod/max_ms")
    );
    for k in ["fanout_cold", "fanout_warm"] {
        println!(
            "  {k:<15} {} ok, errors {}, wall {} ms, per-host p50 {} ms p99 {} ms max {} ms, hub CPU {} ms ({} ms/host; simulator {} ms), peak RSS {} KiB, peak fds {}, SSH connections opened {} (peak open {}), audit +{} B",
            g(&format!("/{k}/ok")),
            g(&format!("/{k}/errors")),
            g(&format!("/{k}/wall_ms")),
            g(&format!("/{k}/p50_ms")),
            g(&format!("/{k}/p99_ms")),
            g(&format!("/{k}/max_ms")),
            g(&format!("/{k}/hub_cpu_ms")),
            g(&format!("/{k}/hub_cpu_ms_per_host")),
            g(&format!("/{k}/sim_cpu_ms")),
            g(&format!("/{k}/hub_peak_rss_kib")),
            g(&format!("/{k}/hub_peak_fds")),
            g(&format!("/{k}/ssh_connections_opened")),
            g(&format!("/{k}/ssh_connections_peak_open")),
            g(&format!("/{k}/audit_bytes"))
        );
        println!(
            "  {:<15} hub pool before {} after {}; target connections ended {}; error messages {}",
            "",
            g(&format!("/{k}/hub_pool_before")),
            g(&format!("/{k}/hub_pool")),
            g(&format!("/{k}/target_connections_ended")),
            g(&format!("/{k}/error_messages"))
        );
    }
    println!("  hub peak RSS    {} KiB", g("/hub_peak_rss_kib"));
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let json_out = args.json;
    // Many targets: raise the open-file limit as far as allowed (one UDP socket per target).
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-sim: cannot start a runtime: {e}");
            return std::process::ExitCode::from(3);
        }
    };
    match rt.block_on(run(args)) {
        Ok(report) => {
            if json_out {
                println!("{report}");
            } else {
                print_report(&report);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-sim: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
