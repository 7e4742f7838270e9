//! A self-signed P-256 certificate from the `openssl` CLI, for tests that start a relay. Also
//! included by `daemon/tunnel/tests/tunnel/relay.rs` (by path: test helpers are not published
//! by the relay crate), so it uses nothing but std.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::Path;
use std::process::Command;

/// Writes `cert.pem` and `key.pem` into `dir` and returns their contents.
pub fn cert(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=relay.test",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read(dir.join("cert.pem")).unwrap(),
        std::fs::read(dir.join("key.pem")).unwrap(),
    )
}
