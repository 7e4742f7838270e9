//! Shared by the relay's integration tests: a relay on 127.0.0.1 with a fresh `openssl`
//! certificate, and key helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use tether_relay::{EnrollLimits, Relay, RelayClient, RelayConfig, RelayError, RelayTarget};
use x25519_dalek::{PublicKey, StaticSecret};

mod cert;
pub use cert::cert;

/// A running relay and how to reach it.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub allowlist: PathBuf,
    pub relay: Relay,
    pub target: RelayTarget,
}

pub fn b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

pub fn key(s: &StaticSecret) -> [u8; 32] {
    PublicKey::from(s).to_bytes()
}

pub fn secret(n: u8) -> StaticSecret {
    StaticSecret::from([n; 32])
}

/// A relay whose allowlist file holds `file_keys`, with these admins, connection rate and
/// enrollment limits.
pub async fn relay(
    file_keys: &[[u8; 32]],
    admins: &[[u8; 32]],
    conn_rate: (u32, u32),
    enroll: EnrollLimits,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = cert(dir.path());
    let allowlist = dir.path().join("allowed-keys");
    let text: String = file_keys.iter().map(|k| format!("{}\n", b64(k))).collect();
    std::fs::write(&allowlist, text).unwrap();
    let relay = Relay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: tether_relay::tls::server_config(&cert_pem, &key_pem).unwrap(),
        secret: StaticSecret::from([7u8; 32]),
        allowlist: allowlist.clone(),
        rate: 10_000_000,
        burst: 10_000_000,
        conn_rate,
        metrics_token: None,
        admin_keys: admins.to_vec(),
        enroll,
    })
    .await
    .unwrap();
    let target = RelayTarget {
        addr: relay.local_addr().to_string(),
        server_name: "relay.test".into(),
        cert_sha256: tether_relay::tls::cert_sha256(&cert_pem).unwrap(),
        relay_key: relay.public_key(),
    };
    Setup {
        dir,
        allowlist,
        relay,
        target,
    }
}

pub async fn connect(t: &RelayTarget, s: &StaticSecret) -> Result<RelayClient, RelayError> {
    RelayClient::connect(t, s, Duration::from_secs(5)).await
}

pub fn refused(s: &Setup) -> u64 {
    s.relay
        .stats()
        .refused
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The refusal counter once it has reached `want` (or after 2 s): the relay counts a refusal
/// when the connection's task ends, which can be just after the client has read the refusal.
pub async fn refused_after(s: &Setup, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while refused(s) < want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    refused(s)
}
