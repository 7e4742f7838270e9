//! The tokio driver over real loopback UDP sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_model::{Alert, AlertSink};
use tether_tunnel::{
    DEFAULT_HUB_IP, NodeConfig, NodeRole, PeerConfig, SecretKey, Tunnel, TunnelConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

#[derive(Default)]
pub struct Alerts(pub Mutex<Vec<Alert>>);
impl AlertSink for Alerts {
    fn raise(&self, alert: Alert) {
        self.0.lock().unwrap().push(alert);
    }
}

pub struct Pair {
    pub hub: Tunnel,
    pub target: Tunnel,
    pub registry: prometheus::Registry,
}

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A hub and a target tunnel on loopback UDP, peered both ways, with stream buffers from
/// `tcp_buffer` autotuned up to `tcp_buffer_max` (fixed when the two are equal).
pub async fn pair(tcp_buffer: usize, tcp_buffer_max: usize) -> Pair {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let registry = prometheus::Registry::new();
    let mut hn = NodeConfig::new(hk.clone(), DEFAULT_HUB_IP, NodeRole::Hub);
    hn.tcp_buffer = tcp_buffer;
    hn.tcp_buffer_max = tcp_buffer_max;
    let mut tn = NodeConfig::new(tk.clone(), TARGET_IP, NodeRole::Target);
    tn.tcp_buffer = tcp_buffer;
    tn.tcp_buffer_max = tcp_buffer_max;
    let mut hc = TunnelConfig::new(hn, lo());
    hc.registry = Some(registry.clone());
    let hub = Tunnel::start(hc).await.unwrap();
    let target = Tunnel::start(TunnelConfig::new(tn, lo())).await.unwrap();
    hub.handle()
        .add_peer(PeerConfig {
            name: "t1".into(),
            public_key: tk.public_key(),
            overlay_ip: TARGET_IP,
            endpoint: None, // learnt when the target connects (roaming)
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
    Pair {
        hub,
        target,
        registry,
    }
}

/// Spawns an echo server on the target's overlay port.
pub fn echo_server(target: &Tunnel, port: u16) {
    let listener = target.handle().listen(port).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok(mut s) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_through_the_tunnel_with_status_and_metrics() {
    let p = pair(
        tether_tunnel::DEFAULT_TCP_BUFFER,
        tether_tunnel::DEFAULT_TCP_BUFFER_MAX,
    )
    .await;
    echo_server(&p.target, 22);
    let hub = p.hub.handle();
    let s = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // The hub learns the target's endpoint from the target's first handshake.
            match hub.connect(TARGET_IP, 22).await {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("connect through the tunnel");
    let (mut rd, mut wr) = tokio::io::split(s);
    let data: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    let _wr = writer.await.unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "echoed bytes differ");

    let st = hub.status();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].name, "t1");
    assert!(st[0].up && st[0].handshakes >= 1, "{st:?}");
    assert!(
        st[0].rx_bytes > 4_000_000 && st[0].tx_bytes > 4_000_000,
        "{st:?}"
    );
    assert_eq!(st[0].endpoint, Some(p.target.handle().local_addr()));
    assert!(st[0].last_handshake_secs.is_some());
    let json = serde_json::to_string(&st).unwrap();
    assert!(json.contains("\"overlay_ip\":\"10.99.0.2\""), "{json}");

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&p.registry.gather())
        .unwrap();
    assert!(text.contains("tether_vpn_peers 1"), "{text}");
    assert!(!text.contains("tether_vpn_handshakes_total 0"), "{text}");
    assert!(
        text.contains("tether_vpn_dropped_total{reason=\"forward_denied\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("tether_vpn_bytes_total{dir=\"rx\"}"),
        "{text}"
    );
    // The echo stream is still open (its writer half-closed): its buffers are counted, at
    // least both floors.
    let held = hub.stream_buffer_bytes();
    assert!(held >= 2 * tether_tunnel::DEFAULT_TCP_BUFFER, "{held}");
    assert!(text.contains("tether_vpn_stream_buffer_bytes "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_peer_fails_its_streams_promptly() {
    let p = pair(64 * 1024, 64 * 1024).await;
    let listener = p.hub.handle().listen(2222).unwrap();
    let target = p.target.handle();
    let mut c = target
        .connect(DEFAULT_HUB_IP, 2222)
        .await
        .expect("target connects to the hub");
    let mut s = listener.accept().await.unwrap();
    c.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    let id = p.hub.handle().peer_by_ip(TARGET_IP).unwrap();
    let t0 = std::time::Instant::now();
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 16];
        s.read(&mut b).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.hub.handle().remove_peer(id).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .expect("read did not fail promptly")
        .unwrap();
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(p.hub.handle().status().is_empty());
    // New connections to the removed peer have no route.
    assert!(p.hub.handle().connect(TARGET_IP, 22).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_closed_port_is_refused_quickly() {
    let p = pair(64 * 1024, 64 * 1024).await;
    let t0 = std::time::Instant::now();
    let r = p.target.handle().connect(DEFAULT_HUB_IP, 9).await;
    assert!(r.is_err(), "connect to a port nobody listens on succeeded");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_raises_vpn_peer_unhealthy() {
    let alerts = Arc::new(Alerts::default());
    let mut node = NodeConfig::new(
        SecretKey::generate().unwrap(),
        DEFAULT_HUB_IP,
        NodeRole::Hub,
    );
    node.health.unhealthy_after = Duration::from_millis(800);
    node.health.check_interval = Duration::from_millis(300);
    let mut cfg = TunnelConfig::new(node, lo());
    cfg.alerts = alerts.clone();
    let hub = Tunnel::start(cfg).await.unwrap();
    // A UDP socket that never answers stands in for a dead target.
    let silent = std::net::UdpSocket::bind(lo()).unwrap();
    hub.handle()
        .add_peer(PeerConfig {
            name: "dead-host".into(),
            public_key: SecretKey::generate().unwrap().public_key(),
            overlay_ip: TARGET_IP,
            endpoint: Some(silent.local_addr().unwrap()),
            persistent_keepalive: Some(1),
        })
        .unwrap();
    let t0 = std::time::Instant::now();
    while alerts.0.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = alerts.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, "vpn_peer_unhealthy");
    assert_eq!(got[0].host.as_deref(), Some("dead-host"));
    let st = hub.handle().status();
    assert_ne!(st[0].health, tether_tunnel::HealthState::Healthy, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_applies_back_pressure_to_the_writer() {
    let buf = 64 * 1024;
    let p = pair(buf, buf).await;
    let listener = p.target.handle().listen(22).unwrap();
    let mut c = p.hub.handle().connect(TARGET_IP, 22).await.unwrap();
    let mut s = listener.accept().await.unwrap(); // accepted, never read (yet)
    let chunk = vec![7u8; 16 * 1024];
    let mut written = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), c.write(&chunk)).await {
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => break, // blocked: back-pressure
        }
        assert!(
            written < 16 * buf,
            "writer never blocked ({written} bytes buffered)"
        );
    }
    // Bounded by the two socket buffers (sender tx + receiver rx).
    assert!(
        written >= buf && written <= 2 * buf + chunk.len(),
        "{written}"
    );
    // Reading drains it and the writer continues.
    let mut sink = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < written {
        got += s.read(&mut sink).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(2), c.write_all(&chunk))
        .await
        .expect("writer resumed")
        .unwrap();
}
