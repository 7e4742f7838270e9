//! Relays in real network namespaces: a hub, a target and a router in their own namespaces
//! joined by veths; the router also runs two relays (`tetherd run --role relay`), and nftables
//! on it drops what the test says between target and hub. The target enrolls through a relay
//! while it cannot reach the hub at all, its tunnel works through the relay, moves to direct UDP
//! when UDP is let through and back to the relay when it is dropped again — while one command's
//! output streams across both switches without a line lost — moves to the second relay when the
//! first is killed, and to the third when the second shuts down. Needs root (namespaces, nftables); skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tether_e2e::{Daemon, bin, code, is_root, stderr, stdout};

const HUB_IP: &str = "10.201.1.2";
const ROUTER_HUB_SIDE: &str = "10.201.1.1";
const TARGET_IP: &str = "10.201.2.2";
const ROUTER_TARGET_SIDE: &str = "10.201.2.1";

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}{}",
        args.join(" "),
        stdout(&out),
        stderr(&out)
    );
}

/// Three namespaces: hub — router — target, deleted on drop.
struct Net {
    hub: String,
    router: String,
    target: String,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let net = Net {
            hub: format!("trh{id}"),
            router: format!("trr{id}"),
            target: format!("trt{id}"),
        };
        for ns in [&net.hub, &net.router, &net.target] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (h, rh, t, rt) = (
            format!("trh{id}a"),
            format!("trh{id}b"),
            format!("trt{id}a"),
            format!("trt{id}b"),
        );
        sh(&[
            "ip",
            "link",
            "add",
            &h,
            "netns",
            &net.hub,
            "type",
            "veth",
            "peer",
            "name",
            &rh,
            "netns",
            &net.router,
        ]);
        sh(&[
            "ip",
            "link",
            "add",
            &t,
            "netns",
            &net.target,
            "type",
            "veth",
            "peer",
            "name",
            &rt,
            "netns",
            &net.router,
        ]);
        for (ns, dev, addr) in [
            (&net.hub, &h, format!("{HUB_IP}/24")),
            (&net.router, &rh, format!("{ROUTER_HUB_SIDE}/24")),
            (&net.target, &t, format!("{TARGET_IP}/24")),
            (&net.router, &rt, format!("{ROUTER_TARGET_SIDE}/24")),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        sh(&[
            "ip",
            "-n",
            &net.hub,
            "route",
            "add",
            "default",
            "via",
            ROUTER_HUB_SIDE,
        ]);
        sh(&[
            "ip",
            "-n",
            &net.target,
            "route",
            "add",
            "default",
            "via",
            ROUTER_TARGET_SIDE,
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &net.router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        net.nft(
            "add table inet tether_test\n\
             add chain inet tether_test gate { type filter hook forward priority 0; policy accept; }\n",
        );
        net
    }

    /// Runs an nftables script on the router.
    fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.router, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nft: {}", stderr(&out));
    }

    /// Drops everything forwarded between target and hub (UDP and TCP: no direct path at all).
    fn block_all(&self) {
        self.nft(&format!(
            "flush chain inet tether_test gate\n\
             add rule inet tether_test gate ip saddr {TARGET_IP} ip daddr {HUB_IP} drop\n\
             add rule inet tether_test gate ip saddr {HUB_IP} ip daddr {TARGET_IP} drop\n"
        ));
    }

    /// Drops UDP between target and hub (what a UDP-hostile firewall does).
    fn block_udp(&self) {
        self.nft(&format!(
            "flush chain inet tether_test gate\n\
             add rule inet tether_test gate ip saddr {TARGET_IP} ip daddr {HUB_IP} meta l4proto udp drop\n\
             add rule inet tether_test gate ip saddr {HUB_IP} ip daddr {TARGET_IP} meta l4proto udp drop\n"
        ));
    }

    fn unblock(&self) {
        self.nft("flush chain inet tether_test gate\n");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.hub, &self.router, &self.target] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tether-e2e-")
        .tempdir()
        .unwrap()
}

/// A relay's config in `dir`, listening on the router's hub-side address.
fn relay_config(dir: &Path, port: u16, admin: &str) -> PathBuf {
    let config = dir.join("tetherd.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"relay\"\nstate_dir = \"{}\"\n\n[control]\nsocket = \"{}\"\n\n[vault]\nbackend = \"file\"\n\n[relay]\nlisten = \"{ROUTER_HUB_SIDE}:{port}\"\nadmin_keys = [{admin}]\n",
            dir.join("state").display(),
            dir.join("tetherd.sock").display(),
        ),
    )
    .unwrap();
    config
}

/// `tetherd relay show --json` for a relay config: the `[[tunnel.relays]]` entry as TOML.
fn relay_entry(config: &Path, name: &str) -> String {
    let out = Command::new(bin("tetherd"))
        .args(["relay", "show", "--json", "--name", name, "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    format!(
        "\n[[tunnel.relays]]\nname = {}\naddr = {}\nserver_name = {}\ncert_sha256 = {}\nrelay_key = {}\n",
        v["name"], v["addr"], v["server_name"], v["cert_sha256"], v["relay_key"]
    )
}

fn json(out: &Output) -> Value {
    assert_eq!(code(out), 0, "{}{}", stdout(out), stderr(out));
    serde_json::from_str(&stdout(out)).unwrap()
}

/// The path of the named peer in `vpn status`, if it is there and up.
fn path_of(d: &Daemon, peer: &str) -> Option<String> {
    let v = json(&d.tether(&["--json", "vpn", "status"]));
    v["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == peer && p["up"] == true)
        .and_then(|p| p["path"].as_str().map(str::to_owned))
}

/// Waits until the peer's path is `want` on this daemon; returns how long it took.
fn wait_path(d: &Daemon, peer: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now = path_of(d, peer);
        if now.as_deref() == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "peer {peer} still on {now:?}, not {want}, after {limit:?}:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A relay in namespace `ns`, once it logged that it listens (a relay has no control API).
fn relay_daemon(dir: tempfile::TempDir, config: PathBuf, ns: &str) -> Daemon {
    let d = Daemon::spawn_in_netns(dir, config, ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("tetherd relay ready") {
        assert!(Instant::now() < deadline, "relay not ready:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn daemon_in(dir: tempfile::TempDir, config: PathBuf, ns: &str) -> Daemon {
    let mut d = Daemon::spawn_in_netns(dir, config, ns);
    d.wait_ready();
    d
}

#[test]
fn a_target_behind_a_udp_blocking_firewall_enrolls_and_works_through_relays_and_moves_between_paths()
 {
    if !is_root() {
        eprintln!("SKIP: needs root (network namespaces and nftables)");
        return;
    }
    assert!(
        Command::new("nft").arg("--version").output().is_ok(),
        "nft is missing: apt-get install nftables (scripts/test installs it)"
    );
    let net = Net::new();
    net.block_all();

    // The relays' identities first (generated by `relay show`), so the hub can list them.
    let (r1_dir, r2_dir, r3_dir) = (tempdir(), tempdir(), tempdir());
    let r1_cfg = relay_config(r1_dir.path(), 4431, "");
    let r2_cfg = relay_config(r2_dir.path(), 4432, "");
    let r3_cfg = relay_config(r3_dir.path(), 4433, "");
    let relays =
        relay_entry(&r1_cfg, "r1") + &relay_entry(&r2_cfg, "r2") + &relay_entry(&r3_cfg, "r3");

    // The hub, in its namespace, with both relays.
    let hub_dir = tempdir();
    let hub_cfg = hub_dir.path().join("tetherd.toml");
    std::fs::write(
        &hub_cfg,
        format!(
            "role = \"hub\"\nstate_dir = \"{}\"\n\n[tunnel]\nlisten = \"{HUB_IP}:51820\"\n{relays}\n[enroll]\nlisten = \"{HUB_IP}:51821\"\n\n[control]\nsocket = \"{}\"\n\n[vault]\nbackend = \"file\"\n",
            hub_dir.path().join("state").display(),
            hub_dir.path().join("tetherd.sock").display(),
        ),
    )
    .unwrap();
    let mut hub = Daemon::spawn_in_netns(hub_dir, hub_cfg, &net.hub);
    hub.wait_ready();
    let hub_key = json(&hub.tether(&["--json", "vpn", "status"]))["public_key"]
        .as_str()
        .unwrap()
        .to_owned();

    // The relays, on the router, with the hub as their admin (it pushes its peers' keys).
    let admin = format!("\"{hub_key}\"");
    let r1_cfg = relay_config(r1_dir.path(), 4431, &admin);
    let r2_cfg = relay_config(r2_dir.path(), 4432, &admin);
    let r3_cfg = relay_config(r3_dir.path(), 4433, &admin);
    let r1 = relay_daemon(r1_dir, r1_cfg, &net.router);
    let r2 = relay_daemon(r2_dir, r2_cfg, &net.router);
    let _r3 = relay_daemon(r3_dir, r3_cfg, &net.router);

    // Enrollment: the hub's endpoint is unreachable (everything dropped), so the target
    // enrolls through a relay.
    let token = {
        let out = hub.tether(&["vpn", "invite", "edge1"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let target_dir = tempdir();
    let target_cfg = target_dir.path().join("tetherd.toml");
    std::fs::write(
        &target_cfg,
        format!(
            "role = \"target\"\nstate_dir = \"{}\"\n\n[tunnel]\nlisten = \"{TARGET_IP}:0\"\npersistent_keepalive_secs = 2\n\n[control]\nsocket = \"{}\"\n\n[vault]\nbackend = \"file\"\n",
            target_dir.path().join("state").display(),
            target_dir.path().join("tetherd.sock").display(),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let enrolled = Command::new("ip")
        .args(["netns", "exec", &net.target])
        .arg(bin("tetherd"))
        .args(["enroll", &token, "--config"])
        .arg(&target_cfg)
        .output()
        .unwrap();
    assert_eq!(
        code(&enrolled),
        0,
        "{}{}\nhub:\n{}",
        stdout(&enrolled),
        stderr(&enrolled),
        hub.log()
    );
    assert!(
        stderr(&enrolled).contains("through a relay"),
        "{}",
        stderr(&enrolled)
    );
    eprintln!("enrolled through the relay in {:?}", started.elapsed());

    // The tunnel comes up over a relay; a command runs through it.
    let target = daemon_in(target_dir, target_cfg, &net.target);
    let took = wait_path(&target, "hub", "relay:r1", Duration::from_secs(30));
    eprintln!("target on relay:r1 after {took:?}");
    wait_path(&hub, "edge1", "relay:r1", Duration::from_secs(20));
    let out = hub.tether(&["exec", "-H", "edge1", "--", "echo", "through-the-relay"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("through-the-relay"),
        "{}",
        stdout(&out)
    );

    // A command streams output across both switches: UDP allowed (direct), then dropped again
    // (relay). Every line must arrive.
    // A script file: the hub's policy checker refuses shell loops inline.
    let script = hub.dir.path().join("lines.sh");
    std::fs::write(
        &script,
        "i=0\nwhile [ $i -lt 60 ]; do i=$((i+1)); echo line$i; sleep 0.5; done\n",
    )
    .unwrap();
    let script = script.display().to_string();
    let long = Command::new(bin("tether"))
        .arg("--socket")
        .arg(&hub.socket)
        .args([
            "exec",
            "-H",
            "edge1",
            "--timeout",
            "120s",
            "--",
            "sh",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    net.unblock();
    let took = wait_path(&target, "hub", "direct", Duration::from_secs(15));
    wait_path(&hub, "edge1", "direct", Duration::from_secs(15));
    eprintln!("moved to direct {took:?} after UDP was let through");
    net.block_udp();
    let took = wait_path(&target, "hub", "relay:r1", Duration::from_secs(20));
    wait_path(&hub, "edge1", "relay:r1", Duration::from_secs(20));
    eprintln!("back on relay:r1 {took:?} after UDP was dropped again");
    let out = long.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for i in 1..=60 {
        assert!(
            text.lines().any(|l| l.ends_with(&format!("line{i}"))),
            "line{i} lost:\n{text}"
        );
    }

    // The first relay is killed (no goodbye: its sockets just close): both ends move to the
    // second.
    let killed = Instant::now();
    r1.signal(Signal::SIGKILL);
    wait_path(&target, "hub", "relay:r2", Duration::from_secs(10));
    wait_path(&hub, "edge1", "relay:r2", Duration::from_secs(10));
    eprintln!(
        "failover to relay:r2 in {:?} after relay r1 was killed",
        killed.elapsed()
    );
    let out = hub.tether(&["exec", "-H", "edge1", "--", "echo", "via-r2"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("via-r2"));

    // The second shuts down (it tells its clients it is going away): on to the third.
    let stopped = Instant::now();
    r2.signal(Signal::SIGTERM);
    wait_path(&target, "hub", "relay:r3", Duration::from_secs(10));
    wait_path(&hub, "edge1", "relay:r3", Duration::from_secs(10));
    eprintln!(
        "failover to relay:r3 in {:?} after relay r2 shut down",
        stopped.elapsed()
    );
    let out = hub.tether(&["exec", "-H", "edge1", "--", "echo", "via-r3"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("via-r3"));

    // Each change was an alert on the hub.
    let alerts = json(&hub.tether(&["--json", "alerts", "list"]));
    let switches = alerts
        .as_array()
        .or_else(|| alerts["alerts"].as_array())
        .map(|a| a.iter().filter(|x| x["kind"] == "vpn_path_switch").count())
        .unwrap_or(0);
    assert!(switches >= 5, "expected vpn_path_switch alerts: {alerts}");
    drop(target);
    drop(hub);
}
