//! Tunnel benchmark (bench binary, `cargo bench -p tether-tunnel --bench tunnel`).
//!
//! 1. Tether: overlay TCP hub -> target through two tunnel drivers over loopback UDP (one process:
//!    both WireGuard ends, both smoltcp stacks), for several stream buffer sizes.
//! 2. Baseline, same run: wireguard-go pair in two network namespaces joined by a veth, kernel TCP
//!    over TUN measured with iperf3 (skipped with a message when not root / tools missing).
//! 3. CPU seconds per GB (getrusage self+children, /proc for the wireguard-go daemons), idle CPU of
//!    two connected tunnels, memory per peer (RSS delta over 2000 peers).
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use tether_tunnel::{
    DEFAULT_HUB_IP, Node, NodeConfig, NodeRole, PeerConfig, SecretKey, Tunnel, TunnelConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

fn cpu_secs(who: UsageWho) -> f64 {
    let u = getrusage(who).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Two connected tunnels; stream buffers start at `buf` and may grow to `max` (fixed when
/// `max <= buf`).
async fn pair(buf: usize, max: usize) -> (Tunnel, Tunnel) {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut hn = NodeConfig::new(hk.clone(), DEFAULT_HUB_IP, NodeRole::Hub);
    hn.tcp_buffer = buf;
    hn.tcp_buffer_max = max;
    let mut tn = NodeConfig::new(tk.clone(), TARGET_IP, NodeRole::Target);
    tn.tcp_buffer = buf;
    tn.tcp_buffer_max = max;
    let hub = Tunnel::start(TunnelConfig::new(hn, lo)).await.unwrap();
    let target = Tunnel::start(TunnelConfig::new(tn, lo)).await.unwrap();
    hub.handle()
        .add_peer(PeerConfig {
            name: "t".into(),
            public_key: tk.public_key(),
            overlay_ip: TARGET_IP,
            endpoint: Some(target.handle().local_addr()),
            persistent_keepalive: None,
        })
        .unwrap();
    target
        .handle()
        .add_peer(PeerConfig {
            name: "hub".into(),
            public_key: hk.public_key(),
            overlay_ip: DEFAULT_HUB_IP,
            endpoint: Some(hub.handle().local_addr()),
            persistent_keepalive: Some(25),
        })
        .unwrap();
    (hub, target)
}

/// Returns (Gbit/s, CPU s per GB).
async fn tether_throughput(buf: usize, max: usize, total: usize) -> (f64, f64) {
    let (hub, target) = pair(buf, max).await;
    let listener = target.handle().listen(5201).unwrap();
    let reader = tokio::spawn(async move {
        let mut s = listener.accept().await.unwrap();
        let mut b = vec![0u8; 256 * 1024];
        let mut n = 0usize;
        loop {
            match s.read(&mut b).await.unwrap() {
                0 => break,
                k => n += k,
            }
        }
        (n, Instant::now())
    });
    let mut c = hub.handle().connect(TARGET_IP, 5201).await.unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let cpu0 = cpu_secs(UsageWho::RUSAGE_SELF);
    let t0 = Instant::now();
    let mut sent = 0;
    let mut peak = (0, 0);
    let mut k = 0u32;
    while sent < total {
        let n = chunk.len().min(total - sent);
        c.write_all(&chunk[..n]).await.unwrap();
        sent += n;
        k += 1;
        if k.is_multiple_of(64) {
            peak.0 = peak.0.max(hub.handle().stream_buffer_bytes());
            peak.1 = peak.1.max(target.handle().stream_buffer_bytes());
        }
    }
    if std::env::var_os("TETHER_BENCH_VERBOSE").is_some() {
        eprintln!(
            "  buffers {}..{} KiB: peak stream buffers sender {} KiB, receiver {} KiB",
            buf / 1024,
            max / 1024,
            peak.0 / 1024,
            peak.1 / 1024
        );
    }
    c.shutdown().await.unwrap();
    let (n, t1) = reader.await.unwrap();
    let cpu = cpu_secs(UsageWho::RUSAGE_SELF) - cpu0;
    assert_eq!(n, total);
    let secs = (t1 - t0).as_secs_f64();
    drop(c);
    hub.shutdown().await;
    target.shutdown().await;
    (total as f64 * 8.0 / secs / 1e9, cpu / (total as f64 / 1e9))
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Netns {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after ")" start at index 3 (state); utime=14, stime=15 (1-based) -> 11, 12 here.
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// wireguard-go pair in two namespaces; iperf3 for `secs`. Returns (Gbit/s, CPU s per GB).
fn wireguard_go_baseline(secs: u32) -> Result<(f64, f64), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun missing".into());
    }
    for b in ["ip", "wireguard-go", "wg", "iperf3"] {
        if !which(b) {
            return Err(format!("{b} not installed"));
        }
    }
    let pid = std::process::id() % 100_000;
    let (a, b) = (format!("tb7a{pid}"), format!("tb7b{pid}"));
    let mut g = Netns {
        names: vec![a.clone(), b.clone()],
        children: Vec::new(),
    };
    sh(&["ip", "netns", "add", &a]);
    sh(&["ip", "netns", "add", &b]);
    let (va, vb) = (format!("tb7va{pid}"), format!("tb7vb{pid}"));
    sh(&[
        "ip", "-n", &a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &b,
    ]);
    sh(&["ip", "-n", &a, "addr", "add", "10.201.7.1/24", "dev", &va]);
    sh(&["ip", "-n", &b, "addr", "add", "10.201.7.2/24", "dev", &vb]);
    for (n, v) in [(&a, &va), (&b, &vb)] {
        sh(&["ip", "-n", n, "link", "set", v, "up"]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let ka = SecretKey::generate().unwrap();
    let kb = SecretKey::generate().unwrap();
    let mut wg_pids = Vec::new();
    for (n, ifn, key, peer, ep, ip, pip) in [
        (
            &a,
            format!("wgb7a{pid}"),
            &ka,
            kb.public_key(),
            "10.201.7.2:51820",
            "10.98.0.1",
            "10.98.0.2",
        ),
        (
            &b,
            format!("wgb7b{pid}"),
            &kb,
            ka.public_key(),
            "10.201.7.1:51820",
            "10.98.0.2",
            "10.98.0.1",
        ),
    ] {
        let child = Command::new("ip")
            .args(["netns", "exec", n, "wireguard-go", "-f", &ifn])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wg_pids.push(child.id());
        g.children.push(child);
        let sock = format!("/var/run/wireguard/{ifn}.sock");
        let t0 = Instant::now();
        while !Path::new(&sock).exists() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err("wireguard-go did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let kf = std::env::temp_dir().join(format!("{ifn}.key"));
        std::fs::write(&kf, key.to_base64()).unwrap();
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "wg",
            "set",
            &ifn,
            "private-key",
            kf.to_str().unwrap(),
            "listen-port",
            "51820",
            "peer",
            &peer.to_base64(),
            "endpoint",
            ep,
            "allowed-ips",
            &format!("{pip}/32"),
        ]);
        let _ = std::fs::remove_file(&kf);
        sh(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &ifn,
        ]);
        sh(&["ip", "-n", n, "link", "set", &ifn, "mtu", "1420", "up"]);
    }
    let mut server = Command::new("ip")
        .args(["netns", "exec", &b, "iperf3", "-s", "-1", "-B", "10.98.0.2"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let wg0: f64 = wg_pids.iter().map(|p| proc_cpu_secs(*p)).sum();
    let ch0 = cpu_secs(UsageWho::RUSAGE_CHILDREN);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "iperf3",
            "-c",
            "10.98.0.2",
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .unwrap();
    let _ = server.wait();
    let wg1: f64 = wg_pids.iter().map(|p| proc_cpu_secs(*p)).sum();
    let ch1 = cpu_secs(UsageWho::RUSAGE_CHILDREN);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("no bits_per_second")?;
    let bytes = json["end"]["sum_received"]["bytes"]
        .as_f64()
        .ok_or("no bytes")?;
    let cpu = (wg1 - wg0) + (ch1 - ch0);
    Ok((bps / 1e9, cpu / (bytes / 1e9)))
}

async fn idle_cpu(secs: u64) -> f64 {
    let (hub, target) = pair(
        tether_tunnel::DEFAULT_TCP_BUFFER,
        tether_tunnel::DEFAULT_TCP_BUFFER_MAX,
    )
    .await;
    let l = target.handle().listen(22).unwrap();
    let _c = hub.handle().connect(TARGET_IP, 22).await.unwrap();
    let _s = l.accept().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c0 = cpu_secs(UsageWho::RUSAGE_SELF);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let c = cpu_secs(UsageWho::RUSAGE_SELF) - c0;
    c / secs as f64
}

fn memory_per_peer(n: u32) -> f64 {
    let now = Instant::now();
    let mut node = Node::new(
        NodeConfig::new(
            SecretKey::generate().unwrap(),
            DEFAULT_HUB_IP,
            NodeRole::Hub,
        ),
        now,
    )
    .unwrap();
    let keys: Vec<_> = (0..n)
        .map(|_| SecretKey::generate().unwrap().public_key())
        .collect();
    let r0 = rss_bytes();
    for (i, k) in keys.iter().enumerate() {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 99, 1, 0)) + i as u32);
        node.add_peer(
            PeerConfig {
                name: format!("host-{i}"),
                public_key: *k,
                overlay_ip: ip,
                endpoint: None,
                persistent_keepalive: None,
            },
            now,
        )
        .unwrap();
    }
    let r1 = rss_bytes();
    let per = (r1.saturating_sub(r0)) as f64 / n as f64;
    drop(node);
    per
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench -- --list
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("# tunnel bench {date}");
    let (floor, max) = (
        tether_tunnel::DEFAULT_TCP_BUFFER,
        tether_tunnel::DEFAULT_TCP_BUFFER_MAX,
    );
    // Before/after the buffer autotuning, interleaved so that both see the same machine load:
    // fixed 256 KiB buffers (the old default) against the autotuned default.
    let rounds = 3;
    let total_cmp = 256 * 1024 * 1024;
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        before.push(rt.block_on(tether_throughput(256 * 1024, 256 * 1024, total_cmp)));
        after.push(rt.block_on(tether_throughput(floor, max, total_cmp)));
    }
    let show = |label: &str, v: &[(f64, f64)]| {
        let g: Vec<String> = v.iter().map(|(g, _)| format!("{g:.3}")).collect();
        let mean_g = v.iter().map(|(g, _)| g).sum::<f64>() / v.len() as f64;
        let mean_c = v.iter().map(|(_, c)| c).sum::<f64>() / v.len() as f64;
        println!(
            "{label}, {} MiB x {rounds}: [{}] Gbit/s, mean {mean_g:.3} Gbit/s, {mean_c:.2} CPU-s/GB",
            total_cmp >> 20,
            g.join(", ")
        );
        mean_g
    };
    let b = show("tether fixed 256 KiB (before autotuning)", &before);
    let a = show(
        &format!(
            "tether autotuned {}..{} KiB (default)",
            floor / 1024,
            max / 1024
        ),
        &after,
    );
    println!("ratio autotuned / fixed 256 KiB: {:.3}", a / b);
    if std::env::args().any(|a| a == "loopback") {
        return; // cargo bench -p tether-tunnel --bench tunnel -- loopback
    }
    let total_small = 128 * 1024 * 1024;
    for buf in [64 * 1024, 256 * 1024, 1024 * 1024] {
        let (gbps, cpu) = rt.block_on(tether_throughput(buf, buf, total_small));
        println!(
            "tether fixed buffer {:>5} KiB: {gbps:.3} Gbit/s, {cpu:.2} CPU-s/GB",
            buf / 1024
        );
    }
    let total = 512 * 1024 * 1024;
    let (t_gbps, t_cpu) = rt.block_on(tether_throughput(floor, max, total));
    println!(
        "tether default (autotuned {}..{} KiB), {} MiB: {t_gbps:.3} Gbit/s, {t_cpu:.2} CPU-s/GB",
        floor / 1024,
        max / 1024,
        total >> 20
    );
    match wireguard_go_baseline(8) {
        Ok((w_gbps, w_cpu)) => {
            println!(
                "wireguard-go pair + kernel TCP (iperf3 8 s): {w_gbps:.3} Gbit/s, {w_cpu:.2} CPU-s/GB"
            );
            println!(
                "ratio tether/wireguard-go throughput: {:.2}x; CPU per GB: {:.2}x",
                t_gbps / w_gbps,
                t_cpu / w_cpu
            );
        }
        Err(e) => println!("SKIP wireguard-go baseline: {e}"),
    }
    let idle = rt.block_on(idle_cpu(20));
    println!(
        "idle CPU, two connected tunnels + one idle stream: {:.4}% of one core ({:.1} ms CPU per minute)",
        idle * 100.0,
        idle * 60_000.0
    );
    let per = memory_per_peer(2000);
    println!(
        "memory per peer (RSS delta over 2000 peers, no streams): {:.1} KiB",
        per / 1024.0
    );
    println!(
        "stream buffers per open idle stream: 2 x {} KiB (the floor; growth is given back after 2 s idle)",
        tether_tunnel::DEFAULT_TCP_BUFFER / 1024
    );
}
