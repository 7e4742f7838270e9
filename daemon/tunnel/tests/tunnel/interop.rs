//! Interop with a real WireGuard: `wireguard-go` + `wg` inside a network namespace this test
//! creates, our driver in the root namespace. Skips (with a message) when not root or when
//! /dev/net/tun, `ip`, `wireguard-go`, `wg` or `socat` are missing.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tether_tunnel::{
    DEFAULT_HUB_IP, NodeConfig, NodeRole, PeerConfig, SecretKey, Tunnel, TunnelConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Three ICMP echo requests over a raw socket; exits 0 when all three are answered.
const PY_PING: &str = r#"
import socket, struct, sys, time
dst = sys.argv[1]
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(3)
ok = 0
for seq in range(1, 4):
    payload = b"tether-ping-%d" % seq
    hdr = struct.pack("!BBHHH", 8, 0, 0, 0x7707, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), 0x7707, seq) + payload
    s.sendto(pkt, (dst, 0))
    deadline = time.time() + 3
    while time.time() < deadline:
        data, addr = s.recvfrom(2048)
        ihl = (data[0] & 15) * 4
        t, code, _, ident, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if addr[0] == dst and t == 0 and ident == 0x7707 and rseq == seq and data[ihl + 8:] == payload:
            ok += 1
            print("reply", seq)
            break
sys.exit(0 if ok == 3 else 1)
"#;

const WG_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

pub fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// Why the namespace tests cannot run here, if they cannot.
pub fn skip_reason(extra: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root (network namespaces need CAP_NET_ADMIN)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (wireguard-go needs a TUN device)".into());
    }
    for bin in ["ip", "wireguard-go", "wg"].iter().chain(extra) {
        if !which(bin) {
            return Some(format!(
                "`{bin}` is not installed (apt-get install --no-install-recommends wireguard-go wireguard-tools iproute2 socat iperf3)"
            ));
        }
    }
    None
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a veth pair to the root namespace and a wireguard-go interface.
/// Everything is torn down on drop (children killed by pid, namespace deleted).
pub struct WgNamespace {
    pub ns: String,
    pub wg_if: String,
    pub root_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    root_veth: String,
    children: Vec<Child>,
    files: Vec<PathBuf>,
}

impl WgNamespace {
    /// `tag` keeps names unique across concurrent tests (<= 4 chars).
    pub fn new(tag: &str, subnet: u8) -> Self {
        let pid = std::process::id() % 100_000;
        let ns = format!("tt7{tag}{pid}");
        let root_veth = format!("t7{tag}h{pid}");
        let ns_veth = format!("t7{tag}n{pid}");
        let wg_if = format!("wg7{tag}{pid}");
        let root_ip = Ipv4Addr::new(10, 200, subnet, 1);
        let ns_ip = Ipv4Addr::new(10, 200, subnet, 2);
        let me = WgNamespace {
            ns: ns.clone(),
            wg_if,
            root_ip,
            ns_ip,
            root_veth: root_veth.clone(),
            children: Vec::new(),
            files: Vec::new(),
        };
        run(&["ip", "netns", "add", &ns]);
        run(&[
            "ip", "link", "add", &root_veth, "type", "veth", "peer", "name", &ns_veth,
        ]);
        run(&["ip", "link", "set", &ns_veth, "netns", &ns]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{root_ip}/24"),
            "dev",
            &root_veth,
        ]);
        run(&["ip", "link", "set", &root_veth, "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &ns_veth,
        ]);
        run(&["ip", "-n", &ns, "link", "set", &ns_veth, "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        me
    }

    pub fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }

    pub fn spawn(&mut self, args: &[&str]) {
        let child = self
            .exec(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in namespace");
        self.children.push(child);
    }

    /// Starts wireguard-go in the namespace with `key`, listening on 51820, with one peer.
    pub fn start_wireguard(
        &mut self,
        key: &SecretKey,
        overlay: Ipv4Addr,
        peer: &tether_tunnel::PublicKey,
        peer_endpoint: SocketAddr,
        peer_allowed: &str,
    ) {
        let child = self
            .exec(&["wireguard-go", "-f", &self.wg_if])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wireguard-go");
        self.children.push(child);
        let sock = format!("/var/run/wireguard/{}.sock", self.wg_if);
        let t0 = Instant::now();
        while !Path::new(&sock).exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "wireguard-go did not create {sock}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let keyfile = std::env::temp_dir().join(format!("{}.key", self.wg_if));
        std::fs::write(&keyfile, key.to_base64()).unwrap();
        self.files.push(keyfile.clone());
        let st = self
            .exec(&[
                "wg",
                "set",
                &self.wg_if,
                "private-key",
                keyfile.to_str().unwrap(),
                "listen-port",
                "51820",
                "peer",
                &peer.to_base64(),
                "endpoint",
                &peer_endpoint.to_string(),
                "allowed-ips",
                peer_allowed,
            ])
            .status()
            .unwrap();
        assert!(st.success(), "wg set failed");
        run(&[
            "ip",
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{overlay}/16"),
            "dev",
            &self.wg_if,
        ]);
        run(&[
            "ip",
            "-n",
            &self.ns,
            "link",
            "set",
            &self.wg_if,
            "mtu",
            "1420",
            "up",
        ]);
    }
}

impl Drop for WgNamespace {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_veth])
            .stderr(Stdio::null())
            .status();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_wireguard_go_ping_and_tcp_both_ways() {
    if let Some(why) = skip_reason(&["socat"]) {
        eprintln!("SKIP: wireguard-go interop test because {why}");
        return;
    }
    let mut ns = WgNamespace::new("i", 70 + (std::process::id() % 50) as u8);
    let hub_key = SecretKey::generate().unwrap();
    let wg_key = SecretKey::generate().unwrap();
    let bind = SocketAddr::from((ns.root_ip, 0));
    let hub = Tunnel::start(TunnelConfig::new(
        NodeConfig::new(hub_key.clone(), DEFAULT_HUB_IP, NodeRole::Hub),
        bind,
    ))
    .await
    .unwrap();
    let h = hub.handle();
    let wg_endpoint = SocketAddr::from((ns.ns_ip, 51820));
    h.add_peer(PeerConfig {
        name: "wireguard-go".into(),
        public_key: wg_key.public_key(),
        overlay_ip: WG_IP,
        endpoint: Some(wg_endpoint),
        persistent_keepalive: None,
    })
    .unwrap();
    ns.start_wireguard(
        &wg_key,
        WG_IP,
        &h.public_key(),
        h.local_addr(),
        &format!("{DEFAULT_HUB_IP}/32"),
    );

    // 1. The kernel in the namespace pings our smoltcp stack through wireguard-go.
    //    `ping` when installed, else the same ICMP echo from a raw socket in python3.
    let hub_ip = DEFAULT_HUB_IP.to_string();
    let ping = if which("ping") {
        Some(
            ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "3", &hub_ip])
                .output()
                .unwrap(),
        )
    } else if which("python3") {
        Some(
            ns.exec(&["python3", "-c", PY_PING, &hub_ip])
                .output()
                .unwrap(),
        )
    } else {
        eprintln!("SKIP: the ping part because neither `ping` nor `python3` is installed");
        None
    };
    if let Some(ping) = ping {
        let wg_show = ns.exec(&["wg", "show", &ns.wg_if]).output().unwrap();
        assert!(
            ping.status.success(),
            "ping through the tunnel failed: {} {}\nour status: {:?}\nwg show: {}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr),
            h.status(),
            String::from_utf8_lossy(&wg_show.stdout)
        );
    }

    // 2. We connect to a kernel TCP echo server (socat) behind wireguard-go.
    ns.spawn(&[
        "socat",
        &format!("TCP-LISTEN:5001,bind={WG_IP},reuseaddr,fork"),
        "EXEC:cat",
    ]);
    let data: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    let mut stream = None;
    for _ in 0..50 {
        match h.connect(WG_IP, 5001).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let stream = stream.expect("could not connect to socat through wireguard-go");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let d2 = data.clone();
    let w = tokio::spawn(async move {
        wr.write_all(&d2).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    drop(w.await.unwrap());
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echo through wireguard-go differs");

    // 3. A kernel TCP client in the namespace sends a file to our listener.
    let listener = h.listen(6000).unwrap();
    let file = std::env::temp_dir().join(format!("tt7-interop-{}.bin", std::process::id()));
    std::fs::write(&file, &data[..1024 * 1024]).unwrap();
    let mut client = ns
        .exec(&[
            "socat",
            "-u",
            &format!("OPEN:{}", file.display()),
            &format!("TCP:{DEFAULT_HUB_IP}:6000"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut s = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    assert_eq!(s.peer_ip(), WG_IP);
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("upload timed out")
        .unwrap();
    let _ = client.wait();
    let _ = std::fs::remove_file(&file);
    assert!(
        got == data[..1024 * 1024],
        "upload from the kernel client differs ({} bytes)",
        got.len()
    );

    let st = h.status();
    assert!(st[0].up && st[0].handshakes >= 1, "{st:?}");
    assert_eq!(st[0].endpoint, Some(wg_endpoint));
    assert!(st[0].drops.is_empty(), "unexpected drops: {st:?}");
}
