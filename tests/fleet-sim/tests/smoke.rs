//! The simulator's smoke test: 20 simulated targets enroll through real invites from one
//! address, come online, and each answers a fan-out of `true` through the real hub (twice: new
//! and pooled SSH connections). Runs the real `fleet-sim` and `tetherd` binaries of this build
//! (`cargo build --workspace --bins` first, as for the e2e tests).
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn twenty_simulated_targets_enroll_come_online_and_answer_exec() {
    let sim = env!("CARGO_BIN_EXE_fleet-sim");
    let tetherd = std::path::Path::new(sim).with_file_name("tetherd");
    assert!(
        tetherd.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        tetherd.display()
    );
    let started = Instant::now();
    let out = Command::new(sim)
        .args(["--targets", "20", "--idle-secs", "1", "--json"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fleet-sim failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{r:#}");
    assert_eq!(r["targets"], 20);
    assert_eq!(r["selector_tag_env_prod"]["matched"], 10);
    for k in ["fanout_cold", "fanout_warm"] {
        assert_eq!(r[k]["ok"], 20, "{k}: {}", r[k]);
        assert_eq!(r[k]["summary"]["ok"], 20, "{k}: {}", r[k]);
        // one exec.result per host (and exec.requested) reached the hub's audit log
        assert!(
            r[k]["audit_bytes"].as_u64().unwrap() > 20 * 100,
            "{k}: {}",
            r[k]
        );
    }
    assert_eq!(r["target_commands"]["finished"], 40);
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// A hub capped at 3 open SSH connections (`ssh.max_connections = 3`) fans out to 10 targets,
/// twice: every host answers both times, each fan-out's `exec.result`s reach the audit log, and
/// the hub never has more than 3 connections open (its `tether_ssh_pool_connections_peak`);
/// the rest wait for a slot and get one by closing the least recently used idle connection.
#[test]
fn ten_targets_through_a_hub_capped_at_three_ssh_connections() {
    let sim = env!("CARGO_BIN_EXE_fleet-sim");
    let out = Command::new(sim)
        .args([
            "--targets",
            "10",
            "--idle-secs",
            "1",
            "--max-connections",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fleet-sim failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{r:#}");
    for k in ["fanout_cold", "fanout_warm"] {
        let f = &r[k];
        assert_eq!(f["ok"], 10, "{k}: {f}");
        assert_eq!(f["summary"]["ok"], 10, "{k}: {f}");
        assert!(f["audit_bytes"].as_u64().unwrap() > 10 * 100, "{k}: {f}");
        let pool = &f["hub_pool"];
        assert_eq!(pool["connections_max"], 3, "{k}: {pool}");
        let peak = pool["connections_peak"].as_u64().unwrap();
        assert!((1..=3).contains(&peak), "{k}: {pool}");
        assert!(
            pool["connections_open"].as_u64().unwrap() <= 3,
            "{k}: {pool}"
        );
    }
    // 10 hosts through 3 connections: at least 7 were closed to make room in each fan-out.
    let pool = &r["fanout_warm"]["hub_pool"];
    assert!(
        pool["connections_evicted_total"].as_u64().unwrap() >= 14,
        "{pool}"
    );
    assert!(
        pool["connections_opened_total"].as_u64().unwrap() >= 17,
        "{pool}"
    );
    assert_eq!(r["target_commands"]["finished"], 20);
}
