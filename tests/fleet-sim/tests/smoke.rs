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
