//! Relay benchmark (`scripts/bench-relay`; BENCHMARKS.md, "Relay"). One run measures, on
//! loopback:
//! - throughput of 1,400-byte datagrams from one client to another through a relay against the
//!   same datagrams over a plain UDP socket pair (sender as fast as it can, delivered bytes
//!   counted at the receiver; 1 s windows alternating between the two, 5 of each), and the
//!   ratio;
//! - round-trip latency (1,400 bytes there and echoed back) p50/p99 for both, interleaved in
//!   rounds of 100;
//! - the relay process's CPU seconds per GB forwarded (utime + stime from /proc);
//! - the relay process's RSS before and after 1,000 idle keys connect, and KiB per key.
//!
//! The relay runs in a child process (this binary re-executed) so its CPU and memory are its
//! own; the clients run in this process. Both share the machine's cores.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tether_relay::client::Incoming;
use tether_relay::{Relay, RelayClient, RelayConfig, RelayTarget};
use x25519_dalek::{PublicKey, StaticSecret};

const CHILD_ENV: &str = "TETHER_RELAY_BENCH_DIR";
const DATAGRAM: usize = 1400;
const RELAY_SECRET: [u8; 32] = [7u8; 32];

fn secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn secret(i: u32) -> StaticSecret {
    // Bytes 1..5: X25519 clamps away the low 3 bits of byte 0, so keys differing only there
    // would be one key.
    let mut b = [0x33u8; 32];
    b[1..5].copy_from_slice(&i.to_le_bytes());
    StaticSecret::from(b)
}

fn public(s: &StaticSecret) -> [u8; 32] {
    PublicKey::from(s).to_bytes()
}

fn raise_nofile() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        hard.min(65_536),
        hard.min(65_536),
    );
}

/// The child: a relay on 127.0.0.1:0 with the parent's certificate and allowlist; prints its
/// address, serves until stdin closes, prints its counters.
fn child(dir: &str) {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = std::path::Path::new(dir);
        let cert = std::fs::read(dir.join("cert.pem")).unwrap();
        let key = std::fs::read(dir.join("key.pem")).unwrap();
        let relay = Relay::start(RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: tether_relay::tls::server_config(&cert, &key).unwrap(),
            secret: StaticSecret::from(RELAY_SECRET),
            allowlist: dir.join("allowlist"),
            rate: u32::MAX,
            burst: u32::MAX,
            conn_rate: (1_000_000, 1_000_000),
            metrics_token: None,
        })
        .await
        .unwrap();
        println!("{}", relay.local_addr());
        std::io::stdout().flush().unwrap();
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            while std::io::stdin().read_line(&mut s).map(|n| n > 0).unwrap_or(false) {}
        })
        .await
        .unwrap();
        let st = relay.stats();
        eprintln!(
            "relay counters: forwarded {} datagrams / {} bytes; dropped: queue {}, budget {}, no route {}",
            st.forwarded.load(Ordering::Relaxed),
            st.bytes.load(Ordering::Relaxed),
            st.dropped_queue.load(Ordering::Relaxed),
            st.dropped_budget.load(Ordering::Relaxed),
            st.dropped_no_route.load(Ordering::Relaxed),
        );
        relay.shutdown().await;
    });
}

/// utime + stime of `pid` in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / clk_tck()
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn mbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e6
}

/// Delivered bytes over the time spent sending, per path.
#[derive(Default)]
struct Throughput {
    bytes: u64,
    window: Duration,
}

/// Throughput windows of 1 s, alternating UDP and relay, `rounds` of each, so that both paths
/// see the same background load on this shared machine. The sender sends as fast as it can;
/// the receiver counts what arrives (within 200 ms after the window).
async fn throughput(target: &RelayTarget, rounds: u64) -> (Throughput, Throughput) {
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    tx.connect(rx.local_addr().unwrap()).await.unwrap();
    let udp_got = Arc::new(AtomicU64::new(0));
    let counter = udp_got.clone();
    let udp_reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = rx.recv(&mut buf).await {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let (sa, sb) = (secret(0), secret(1));
    let a = RelayClient::connect(target, &sa, Duration::from_secs(10))
        .await
        .unwrap();
    let mut b = RelayClient::connect(target, &sb, Duration::from_secs(10))
        .await
        .unwrap();
    let relay_got = Arc::new(AtomicU64::new(0));
    let counter = relay_got.clone();
    let relay_reader = tokio::spawn(async move {
        while let Some(Incoming::Datagram { data, .. }) = b.recv().await {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    });
    let dst = public(&sb);
    let data = vec![0xabu8; DATAGRAM];
    let (mut udp, mut relay) = (Throughput::default(), Throughput::default());
    let window = Duration::from_secs(1);
    for _ in 0..rounds {
        let before = udp_got.load(Ordering::Relaxed);
        let start = Instant::now();
        while start.elapsed() < window {
            for _ in 0..64 {
                let _ = tx.send(&data).await;
            }
        }
        udp.window += start.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        udp.bytes += udp_got.load(Ordering::Relaxed) - before;

        let before = relay_got.load(Ordering::Relaxed);
        let start = Instant::now();
        while start.elapsed() < window {
            for _ in 0..64 {
                a.send(dst, &data).await.unwrap();
            }
        }
        relay.window += start.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        relay.bytes += relay_got.load(Ordering::Relaxed) - before;
    }
    udp_reader.abort();
    relay_reader.abort();
    (udp, relay)
}

/// Round trips (1,400 bytes there, echoed back) over UDP and through the relay, interleaved in
/// rounds of 100 so that both see the same background load; `n` of each after 100 warm-ups.
async fn rtts(target: &RelayTarget, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let ua = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ub = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    ua.connect(ub.local_addr().unwrap()).await.unwrap();
    let udp_echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = ub.recv_from(&mut buf).await {
            let _ = ub.send_to(&buf[..n], from).await;
        }
    });
    let (sa, sb) = (secret(0), secret(1));
    let mut ra = RelayClient::connect(target, &sa, Duration::from_secs(10))
        .await
        .unwrap();
    let mut rb = RelayClient::connect(target, &sb, Duration::from_secs(10))
        .await
        .unwrap();
    let relay_echo = tokio::spawn(async move {
        while let Some(Incoming::Datagram { src, data }) = rb.recv().await {
            let _ = rb.send(src, &data).await;
        }
    });
    let dst = public(&sb);
    let data = vec![1u8; DATAGRAM];
    let mut buf = vec![0u8; 2048];
    let (mut udp, mut relay) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut done = 0;
    let mut warm = 100;
    while done < n {
        let round = 100.min(n - done);
        for _ in 0..round + warm {
            let t = Instant::now();
            ua.send(&data).await.unwrap();
            tokio::time::timeout(Duration::from_secs(2), ua.recv(&mut buf))
                .await
                .expect("udp echo lost")
                .unwrap();
            udp.push(t.elapsed());
        }
        for _ in 0..round + warm {
            let t = Instant::now();
            ra.send(dst, &data).await.unwrap();
            match tokio::time::timeout(Duration::from_secs(2), ra.recv()).await {
                Ok(Some(Incoming::Datagram { .. })) => {}
                other => panic!("relay echo lost: {other:?}"),
            }
            relay.push(t.elapsed());
        }
        if warm > 0 {
            udp.clear();
            relay.clear();
            warm = 0;
        }
        done += round;
    }
    udp_echo.abort();
    relay_echo.abort();
    udp.sort();
    relay.sort();
    (udp, relay)
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    raise_nofile();
    let rounds = secs("BENCH_ROUNDS", 5).max(1);
    let idle_keys = secs("BENCH_IDLE_KEYS", 1000) as u32;
    let pings = secs("BENCH_PINGS", 2000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["relay.bench".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    let keys: String = (0..idle_keys + 2)
        .map(|i| {
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(public(&secret(i)))
            )
        })
        .collect();
    std::fs::write(dir.path().join("allowlist"), keys).unwrap();

    let mut relay = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = relay.id();
    let mut line = String::new();
    std::io::BufReader::new(relay.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let target = RelayTarget {
        addr: line.trim().to_owned(),
        server_name: "relay.bench".into(),
        cert_sha256: tether_relay::tls::cert_sha256(made.cert.pem().as_bytes()).unwrap(),
        relay_key: PublicKey::from(&StaticSecret::from(RELAY_SECRET)).to_bytes(),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "relay bench: {build} build; one sender, one receiver, datagrams of {DATAGRAM} bytes; {} rounds of 1 s UDP + 1 s relay; relay pid {pid}",
        rounds
    );
    rt.block_on(async {
        // Memory per idle key first, on the fresh relay process (the throughput phase leaves
        // freed buffers in the allocator that would hide or inflate the growth).
        let before = rss_kib(pid);
        let mut clients = Vec::with_capacity(idle_keys as usize);
        let started = Instant::now();
        for chunk in (2..idle_keys + 2).collect::<Vec<_>>().chunks(50) {
            let mut set = tokio::task::JoinSet::new();
            for &i in chunk {
                let t = target.clone();
                set.spawn(async move {
                    RelayClient::connect(&t, &secret(i), Duration::from_secs(30)).await
                });
            }
            while let Some(c) = set.join_next().await {
                clients.push(c.unwrap().expect("an idle key could not connect"));
            }
        }
        let connect_time = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid);
        println!(
            "relay RSS: {before} KiB before, {after} KiB with {} idle keys connected (in {:.1} s) = {:.1} KiB per key",
            clients.len(),
            connect_time.as_secs_f64(),
            (after as f64 - before as f64) / f64::from(idle_keys)
        );
        drop(clients);
        tokio::time::sleep(Duration::from_millis(500)).await;

        let cpu0 = cpu_secs(pid);
        let (udp, rel) = throughput(&target, rounds).await;
        // The relay idles during the UDP windows.
        let relay_cpu = cpu_secs(pid) - cpu0;
        let (udp_mbit, rel_mbit) = (mbit(udp.bytes, udp.window), mbit(rel.bytes, rel.window));
        let (udp_rtt, rel_rtt) = rtts(&target, pings).await;
        let gb = rel.bytes as f64 / 1e9;
        println!();
        println!("| path | delivered Mbit/s | RTT p50 | RTT p99 |");
        println!("|---|---|---|---|");
        println!(
            "| direct UDP (loopback socket pair) | {udp_mbit:.0} | {:.0} µs | {:.0} µs |",
            percentile(&udp_rtt, 0.5).as_secs_f64() * 1e6,
            percentile(&udp_rtt, 0.99).as_secs_f64() * 1e6
        );
        println!(
            "| through the relay (TLS 1.3, loopback) | {rel_mbit:.0} | {:.0} µs | {:.0} µs |",
            percentile(&rel_rtt, 0.5).as_secs_f64() * 1e6,
            percentile(&rel_rtt, 0.99).as_secs_f64() * 1e6
        );
        println!();
        println!(
            "relay / direct throughput: {:.2}x; relay RTT p50 added: {:.0} µs",
            rel_mbit / udp_mbit,
            (percentile(&rel_rtt, 0.5).as_secs_f64() - percentile(&udp_rtt, 0.5).as_secs_f64())
                * 1e6
        );
        println!(
            "relay CPU during the relay windows: {relay_cpu:.2} s for {gb:.2} GB forwarded = {:.2} CPU-s per GB; {:.0} Mbit/s per relay CPU-second",
            relay_cpu / gb,
            rel.bytes as f64 * 8.0 / 1e6 / relay_cpu
        );

    });
    drop(relay.stdin.take());
    let _ = relay.wait();
}
