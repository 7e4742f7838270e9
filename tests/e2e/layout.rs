//! The workspace's layering, checked on the real dependency graph: the CLI talks to the daemon
//! through `tether-api` and links none of the daemon's subsystems.

use std::process::Command;

use tether_e2e::{repo, stderr, stdout};

/// Crates the `tether` CLI must never link: the daemon's subsystems and what they bring.
const FORBIDDEN: &[&str] = &[
    "tether-control",
    "tether-tunnel",
    "tether-enroll",
    "tether-audit",
    "tether-vault",
    "tether-agent",
    "tether-plugin-host",
    "wasmtime",
    "boringtun",
    "smoltcp",
    "keyring",
    "russh",
];

#[test]
fn the_cli_links_the_api_and_none_of_the_daemon() {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree",
            "--offline",
            "-p",
            "tether",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(repo())
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree: {}", stderr(&out));
    let tree = stdout(&out);
    let crates: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains("tether-api"), "{tree}");
    let linked: Vec<&&str> = FORBIDDEN.iter().filter(|c| crates.contains(**c)).collect();
    assert!(
        linked.is_empty(),
        "the tether CLI links {linked:?}; it must reach the daemon only through tether-api"
    );
}
