//! The driver with real relays (`tether_relay::Relay` over TLS 1.3 on 127.0.0.1) and real
//! loopback UDP through an in-test forwarder that can drop everything ("UDP blocked"): a stream
//! keeps every byte while its peer moves relay → direct → relay, and while the first relay shuts
//! down and the second takes over; `vpn_path_switch` fires on each change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tether_relay::{Relay, RelayConfig, RelayTarget};
use tether_tunnel::{
    DEFAULT_HUB_IP, NodeConfig, NodeRole, PeerConfig, RelayEndpoint, SecretKey, Tunnel,
    TunnelConfig, TunnelHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::driver::{Alerts, TARGET_IP};

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The relay tests' certificate helper (`openssl req -x509`, P-256).
#[path = "../../../relay/tests/common/cert.rs"]
mod cert;
use cert::cert;

/// A relay on 127.0.0.1:0 that lets `keys` in.
async fn relay(dir: &std::path::Path, name: &str, keys: &[&SecretKey]) -> (Relay, RelayEndpoint) {
    start_relay(dir, name, keys, lo()).await
}

/// A relay on `listen`; started again with the same `dir` and `name` it has the same certificate
/// and key (a restart).
async fn start_relay(
    dir: &std::path::Path,
    name: &str,
    keys: &[&SecretKey],
    listen: SocketAddr,
) -> (Relay, RelayEndpoint) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let (cert_pem, key_pem) = if d.join("cert.pem").exists() {
        (
            std::fs::read(d.join("cert.pem")).unwrap(),
            std::fs::read(d.join("key.pem")).unwrap(),
        )
    } else {
        cert(&d)
    };
    let allowlist = d.join("allowed-keys");
    let text: String = keys
        .iter()
        .map(|k| format!("{}\n", k.public_key().to_base64()))
        .collect();
    std::fs::write(&allowlist, text).unwrap();
    let secret: [u8; 32] = match std::fs::read(d.join("relay.key")) {
        Ok(b) => b.try_into().unwrap(),
        Err(_) => {
            let mut s = [0u8; 32];
            getrandom::fill(&mut s).unwrap();
            std::fs::write(d.join("relay.key"), s).unwrap();
            s
        }
    };
    let relay = Relay::start(RelayConfig {
        listen,
        tls: tether_relay::tls::server_config(&cert_pem, &key_pem).unwrap(),
        secret: boringtun::x25519::StaticSecret::from(secret),
        allowlist,
        rate: 1_000_000_000,
        burst: 100_000_000,
        conn_rate: (5, 10),
        metrics_token: None,
        admin_keys: Vec::new(),
        enroll: tether_relay::server::EnrollLimits::default(),
    })
    .await
    .unwrap();
    let target = RelayTarget {
        addr: relay.local_addr().to_string(),
        server_name: "relay.test".into(),
        cert_sha256: tether_relay::tls::cert_sha256(&cert_pem).unwrap(),
        relay_key: relay.public_key(),
    };
    (
        relay,
        RelayEndpoint {
            name: name.into(),
            target,
        },
    )
}

/// A UDP forwarder between the target and the hub that can be switched to drop everything.
struct Forwarder {
    addr: SocketAddr,
    forward: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forwarder(hub: SocketAddr) -> Forwarder {
    let sock = UdpSocket::bind(lo()).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let forward = Arc::new(AtomicBool::new(false));
    let on = forward.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut target: Option<SocketAddr> = None;
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if !on.load(Ordering::SeqCst) {
                continue;
            }
            let to = if from == hub {
                match target {
                    Some(t) => t,
                    None => continue,
                }
            } else {
                target = Some(from);
                hub
            };
            let _ = sock.send_to(&buf[..n], to).await;
        }
    });
    Forwarder {
        addr,
        forward,
        task,
    }
}

struct Net {
    hub: Tunnel,
    target: Tunnel,
    hub_alerts: Arc<Alerts>,
    target_alerts: Arc<Alerts>,
    registry: prometheus::Registry,
    fwd: Forwarder,
}

/// A hub and a target whose only UDP route to each other is the forwarder (dropping at first),
/// both configured with `relays` in that order.
async fn net(hk: &SecretKey, tk: &SecretKey, relays: Vec<RelayEndpoint>) -> Net {
    let registry = prometheus::Registry::new();
    let hub_alerts = Arc::new(Alerts::default());
    let target_alerts = Arc::new(Alerts::default());
    let mut hc = TunnelConfig::new(
        NodeConfig::new(hk.clone(), DEFAULT_HUB_IP, NodeRole::Hub),
        lo(),
    );
    hc.registry = Some(registry.clone());
    hc.alerts = hub_alerts.clone();
    hc.relays = relays.clone();
    let hub = Tunnel::start(hc).await.unwrap();
    let fwd = forwarder(hub.handle().local_addr()).await;
    let mut tc = TunnelConfig::new(
        NodeConfig::new(tk.clone(), TARGET_IP, NodeRole::Target),
        lo(),
    );
    tc.alerts = target_alerts.clone();
    tc.relays = relays;
    let target = Tunnel::start(tc).await.unwrap();
    hub.handle()
        .add_peer(PeerConfig {
            name: "t1".into(),
            public_key: tk.public_key(),
            overlay_ip: TARGET_IP,
            endpoint: None,
            persistent_keepalive: None,
        })
        .unwrap();
    target
        .handle()
        .add_peer(PeerConfig {
            name: "hub".into(),
            public_key: hk.public_key(),
            overlay_ip: DEFAULT_HUB_IP,
            endpoint: Some(fwd.addr),
            persistent_keepalive: Some(25),
        })
        .unwrap();
    Net {
        hub,
        target,
        hub_alerts,
        target_alerts,
        registry,
        fwd,
    }
}

fn path(h: &TunnelHandle) -> String {
    h.status()
        .first()
        .map(|s| s.path.clone())
        .unwrap_or_default()
}

async fn wait_for(what: &str, max: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < max, "{what}: not within {max:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

fn byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 11) as u8
}

/// A paced stream from the hub to the target whose every byte is checked on arrival.
struct Flow {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<u64>,
    reader: tokio::task::JoinHandle<(u64, Option<u64>)>,
}

async fn flow(n: &Net) -> Flow {
    let listener = n.target.handle().listen(9000).unwrap();
    let mut c = n.hub.handle().connect(TARGET_IP, 9000).await.unwrap();
    let mut s = listener.accept().await.unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let got = received.clone();
    let reader = tokio::spawn(async move {
        let _keep = listener;
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        let mut bad = None;
        loop {
            let k = s.read(&mut buf).await.expect("the stream was lost");
            if k == 0 {
                return (at, bad);
            }
            for (j, b) in buf[..k].iter().enumerate() {
                if *b != byte(at + j as u64) && bad.is_none() {
                    bad = Some(at + j as u64);
                }
            }
            at += k as u64;
            got.store(at, Ordering::SeqCst);
        }
    });
    let halt = stop.clone();
    let writer = tokio::spawn(async move {
        // 32 KiB every 10 ms: ~3 MB/s, so switches happen mid-transfer.
        let mut chunk = vec![0u8; 32 * 1024];
        let mut at = 0u64;
        while !halt.load(Ordering::SeqCst) {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = byte(at + j as u64);
            }
            c.write_all(&chunk).await.expect("the stream was lost");
            at += chunk.len() as u64;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.shutdown().await.unwrap();
        // Keep the stream open until the reader has everything.
        tokio::time::sleep(Duration::from_secs(30)).await;
        at
    });
    Flow {
        received,
        stop,
        writer,
        reader,
    }
}

impl Flow {
    async fn advance(&self, by: u64, max: Duration) {
        let want = self.received.load(Ordering::SeqCst) + by;
        wait_for("stream progress", max, || {
            self.received.load(Ordering::SeqCst) >= want
        })
        .await;
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let (got, bad) = tokio::time::timeout(Duration::from_secs(30), self.reader)
            .await
            .expect("the reader finished")
            .unwrap();
        assert_eq!(bad, None, "corrupted byte at this offset");
        self.writer.abort();
        got
    }
}

/// `vpn_path_switch` alerts as (host, from, to).
fn switch_alerts(a: &Alerts) -> Vec<(String, String, String)> {
    a.0.lock()
        .unwrap()
        .iter()
        .filter(|a| a.kind == "vpn_path_switch")
        .map(|a| {
            assert_eq!(a.severity, tether_model::Severity::Warning);
            let from = a.fields.get("from").cloned().unwrap_or_default();
            let to = a.fields.get("to").cloned().unwrap_or_default();
            assert!(
                a.message.contains(&format!("from {from} to {to}")),
                "{}",
                a.message
            );
            (a.host.clone().unwrap_or_default(), from, to)
        })
        .collect()
}

fn s3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_every_byte_through_relay_direct_and_relay_again() {
    let dir = tempfile::tempdir().unwrap();
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let (_r1, ep) = relay(dir.path(), "r1", &[&hk, &tk]).await;
    let n = net(&hk, &tk, vec![ep]).await;
    let (h, t) = (n.hub.handle(), n.target.handle());
    wait_for("both relay connections", Duration::from_secs(10), || {
        h.relays().iter().all(|r| r.connected) && t.relays().iter().all(|r| r.connected)
    })
    .await;
    assert_eq!(h.relays()[0].name, "r1");

    // UDP is blocked: the target's handshake goes unanswered for 5 s, then both use the relay.
    let took = wait_for("fallback to the relay", Duration::from_secs(15), || {
        path(&t) == "relay:r1" && path(&h) == "relay:r1"
    })
    .await;
    eprintln!("on the relay after {took:?}");
    let f = flow(&n).await;
    f.advance(1 << 20, Duration::from_secs(20)).await;

    // Unblock: the next probe gets through and both ends go direct; the stream keeps going.
    n.fwd.forward.store(true, Ordering::SeqCst);
    let took = wait_for("back to direct", Duration::from_secs(10), || {
        path(&t) == "direct" && path(&h) == "direct"
    })
    .await;
    eprintln!("direct again {took:?} after UDP was unblocked");
    f.advance(2 << 20, Duration::from_secs(20)).await;
    assert!(h.status()[0].endpoint.is_some());

    // Block again: silence on UDP while data flows sends both back to the relay.
    n.fwd.forward.store(false, Ordering::SeqCst);
    let took = wait_for("back on the relay", Duration::from_secs(40), || {
        path(&t) == "relay:r1" && path(&h) == "relay:r1"
    })
    .await;
    eprintln!("on the relay again {took:?} after UDP was blocked again");
    let at = f.received.load(Ordering::SeqCst);
    let stall = wait_for("bytes flowing again", Duration::from_secs(30), || {
        f.received.load(Ordering::SeqCst) > at
    })
    .await;
    eprintln!("stream moving again {stall:?} after the switch");
    // Its retransmission backoff from 15 s of silence is not waited out on the working path.
    assert!(
        stall < Duration::from_secs(3),
        "stalled {stall:?} after the switch"
    );
    f.advance(1 << 20, Duration::from_secs(30)).await;
    let got = f.finish().await;
    eprintln!("{got} bytes, all intact");

    let want = |host: &str| {
        vec![
            s3(host, "direct", "relay:r1"),
            s3(host, "relay:r1", "direct"),
            s3(host, "direct", "relay:r1"),
        ]
    };
    assert_eq!(switch_alerts(&n.hub_alerts), want("t1"));
    assert_eq!(switch_alerts(&n.target_alerts), want("hub"));
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&n.registry.gather())
        .unwrap();
    assert!(
        text.contains("tether_vpn_path_switches_total 3"),
        "{}",
        text.lines()
            .filter(|l| l.contains("path_switches"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_relay_takes_over_when_the_first_shuts_down_mid_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let (r1, e1) = relay(dir.path(), "r1", &[&hk, &tk]).await;
    let (_r2, e2) = relay(dir.path(), "r2", &[&hk, &tk]).await;
    let n = net(&hk, &tk, vec![e1, e2]).await;
    let (h, t) = (n.hub.handle(), n.target.handle());
    wait_for("fallback to relay r1", Duration::from_secs(20), || {
        path(&t) == "relay:r1" && path(&h) == "relay:r1"
    })
    .await;
    let f = flow(&n).await;
    f.advance(1 << 20, Duration::from_secs(20)).await;

    // r1 shuts down (GoingAway to every client) mid-transfer.
    let t0 = Instant::now();
    let down = tokio::spawn(r1.shutdown());
    wait_for("both on relay r2", Duration::from_secs(10), || {
        path(&t) == "relay:r2" && path(&h) == "relay:r2"
    })
    .await;
    let switched = t0.elapsed();
    let at = f.received.load(Ordering::SeqCst);
    wait_for("bytes flowing again", Duration::from_secs(10), || {
        f.received.load(Ordering::SeqCst) > at
    })
    .await;
    let flowing = t0.elapsed();
    eprintln!(
        "failover: both ends on r2 {:.0} ms after r1's shutdown began, stream moving again at {:.0} ms",
        switched.as_secs_f64() * 1e3,
        flowing.as_secs_f64() * 1e3
    );
    down.await.unwrap();
    assert!(
        flowing < Duration::from_secs(5),
        "failover took {flowing:?}"
    );
    f.advance(1 << 20, Duration::from_secs(20)).await;
    let got = f.finish().await;
    eprintln!("{got} bytes, all intact");
    assert!(!h.relays()[0].connected && h.relays()[1].connected);
    let want = |host: &str| {
        vec![
            s3(host, "direct", "relay:r1"),
            s3(host, "relay:r1", "relay:r2"),
        ]
    };
    assert_eq!(switch_alerts(&n.hub_alerts), want("t1"));
    assert_eq!(switch_alerts(&n.target_alerts), want("hub"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_its_only_relay_restarting_mid_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let (r1, ep) = relay(dir.path(), "r1", &[&hk, &tk]).await;
    let addr = r1.local_addr();
    let n = net(&hk, &tk, vec![ep]).await;
    let (h, t) = (n.hub.handle(), n.target.handle());
    wait_for("fallback to the relay", Duration::from_secs(15), || {
        path(&t) == "relay:r1" && path(&h) == "relay:r1"
    })
    .await;
    let f = flow(&n).await;
    f.advance(1 << 20, Duration::from_secs(20)).await;

    // The relay restarts on the same address with the same certificate and key.
    let t0 = Instant::now();
    r1.shutdown().await;
    let (_r1, _) = start_relay(dir.path(), "r1", &[&hk, &tk], addr).await;
    let restarted = t0.elapsed();
    let at = f.received.load(Ordering::SeqCst);
    wait_for(
        "back on the restarted relay",
        Duration::from_secs(20),
        || path(&t) == "relay:r1" && path(&h) == "relay:r1" && t.relays()[0].connected,
    )
    .await;
    wait_for("bytes flowing again", Duration::from_secs(20), || {
        f.received.load(Ordering::SeqCst) > at
    })
    .await;
    eprintln!(
        "relay restart: down and up again in {:.0} ms, stream moving again {:.0} ms after the shutdown began",
        restarted.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3
    );
    f.advance(1 << 20, Duration::from_secs(20)).await;
    let got = f.finish().await;
    eprintln!("{got} bytes, all intact");
    let want = |host: &str| {
        vec![
            s3(host, "direct", "relay:r1"),
            s3(host, "relay:r1", "direct"),
            s3(host, "direct", "relay:r1"),
        ]
    };
    assert_eq!(switch_alerts(&n.hub_alerts), want("t1"));
    assert_eq!(switch_alerts(&n.target_alerts), want("hub"));
}
