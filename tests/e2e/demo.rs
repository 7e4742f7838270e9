//! `tether demo`: one command, hub + targets on loopback, clean exit on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tether_e2e::bin;

#[test]
fn demo_starts_a_hub_and_targets_and_cleans_up_on_ctrl_c() {
    let mut child = Command::new(bin("tether"))
        .args(["--json", "demo", "--targets", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ready["event"], "ready");
    let dir = PathBuf::from(ready["dir"].as_str().unwrap());
    let daemons = ready["daemons"].as_array().unwrap();
    assert_eq!(daemons.len(), 4);
    assert_eq!(daemons[0]["role"], "hub");
    for d in daemons {
        let out = Command::new(bin("tether"))
            .args([
                "--json",
                "--socket",
                d["socket"].as_str().unwrap(),
                "status",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["role"], d["role"]);
        assert_eq!(s["pid"], d["pid"]);
    }

    // The targets enrolled through real invites and their tunnels are up.
    let hub_socket = daemons[0]["socket"].as_str().unwrap();
    let out = Command::new(bin("tether"))
        .args(["--json", "--socket", hub_socket, "vpn", "status"])
        .output()
        .unwrap();
    let vpn: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peers = vpn["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "{vpn}");
    assert!(peers.iter().all(|p| p["up"] == true), "{vpn}");
    let out = Command::new(bin("tether"))
        .args(["--json", "--socket", hub_socket, "hosts", "list"])
        .output()
        .unwrap();
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["t1", "t2", "t3"]);

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "demo did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!dir.exists(), "temp state removed");
    for d in daemons {
        let pid = d["pid"].as_i64().unwrap() as i32;
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "daemon {pid} stopped"
        );
    }
}
