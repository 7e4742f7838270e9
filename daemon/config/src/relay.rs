//! `[relay]`: the relay role (`role = "relay"`), which forwards WireGuard ciphertext between
//! allowed keys over TLS 1.3 for peers that can't reach each other over UDP.

use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The largest datagram a relay forwards (`tether_relay::MAX_DATAGRAM`): a per-key burst below
/// it would let no full-size datagram through.
pub const RELAY_MAX_DATAGRAM: u32 = 2048;

/// `[relay]` (relay role only; ignored by hubs and targets). Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// TCP address to listen on (TLS 1.3, HTTP/1.1 upgrade), default `0.0.0.0:443` so that it
    /// passes firewalls and HTTPS proxies that only allow 443. Below 1024 it needs
    /// `CAP_NET_BIND_SERVICE` (the shipped systemd unit grants exactly that).
    pub listen: String,
    /// PEM certificate chain to serve. Set together with `tls_key`; when both are unset, a
    /// self-signed certificate is generated once into `STATE_DIR/relay-tls/` and reused
    /// (hubs and targets pin its SHA-256, printed by `tetherd relay show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// File of allowed WireGuard public keys, one base64 key per line (`#` comments), re-read
    /// when it changes. Default `STATE_DIR/relay-allowlist`, created empty when missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowlist: Option<PathBuf>,
    /// Base64 WireGuard public keys of hubs allowed to push allowlists to this relay and to take
    /// enrollments through it.
    pub admin_keys: Vec<String>,
    /// Bytes per second each connected key may send through the relay (default 12,500,000:
    /// 100 Mbit/s). Announced to clients; datagrams over it are dropped.
    pub rate: u32,
    /// Burst of bytes each key may send at once (default 2,500,000); at least 2048, the largest
    /// datagram.
    pub burst: u32,
    /// New connections per second per source address (default 5).
    pub conn_rate: u32,
    /// Burst of new connections per source address (default 10).
    pub conn_burst: u32,
    /// Name of the vault secret holding the bearer token for `/metrics`. Generated (random, 64
    /// hex digits) on first start when the vault has no such secret; `tetherd relay
    /// metrics-token` prints it. Unset: `/metrics` is refused (`/healthz` stays open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token_secret: Option<String>,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            listen: "0.0.0.0:443".to_owned(),
            tls_cert: None,
            tls_key: None,
            allowlist: None,
            admin_keys: Vec::new(),
            rate: 12_500_000,
            burst: 2_500_000,
            conn_rate: 5,
            conn_burst: 10,
            metrics_token_secret: None,
        }
    }
}

impl RelaySection {
    /// The parsed listen address, when valid.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }

    /// The allowlist file: `allowlist`, or `STATE_DIR/relay-allowlist`.
    pub fn allowlist_path(&self, state_dir: &std::path::Path) -> PathBuf {
        self.allowlist
            .clone()
            .unwrap_or_else(|| state_dir.join("relay-allowlist"))
    }

    /// The decoded `admin_keys` (only call after [`RelaySection::validate`] found none bad).
    pub fn admin_key_bytes(&self) -> Vec<[u8; 32]> {
        self.admin_keys
            .iter()
            .filter_map(|k| decode_key(k))
            .collect()
    }

    /// Checks the section; each problem names its key and what to write instead.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| out.push((format!("relay.{key}"), message));
        if self.listen_addr().is_none() {
            bad(
                "listen",
                format!(
                    "{:?} is not an IP:port address like \"0.0.0.0:443\"",
                    self.listen
                ),
            );
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => bad(
                "tls_key",
                "is missing while relay.tls_cert is set; set both (your own certificate) or neither (a generated self-signed one)".to_owned(),
            ),
            (None, Some(_)) => bad(
                "tls_cert",
                "is missing while relay.tls_key is set; set both (your own certificate) or neither (a generated self-signed one)".to_owned(),
            ),
            _ => {}
        }
        for (key, path) in [
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("allowlist", &self.allowlist),
        ] {
            if let Some(p) = path.as_ref().filter(|p| !p.is_absolute()) {
                bad(key, format!("{p:?} is not an absolute path"));
            }
        }
        for (i, k) in self.admin_keys.iter().enumerate() {
            if decode_key(k).is_none() {
                bad(
                    &format!("admin_keys[{i}]"),
                    format!(
                        "{k:?} is not a WireGuard public key (44 characters of base64, 32 bytes)"
                    ),
                );
            }
        }
        if self.rate == 0 {
            bad(
                "rate",
                "is 0, which forwards nothing; give bytes per second, e.g. 12500000 (100 Mbit/s)"
                    .to_owned(),
            );
        }
        if self.burst < RELAY_MAX_DATAGRAM {
            bad(
                "burst",
                format!(
                    "{} bytes is below the largest datagram ({RELAY_MAX_DATAGRAM} bytes), so full-size datagrams would never pass; use at least {RELAY_MAX_DATAGRAM}",
                    self.burst
                ),
            );
        }
        if self.conn_rate == 0 {
            bad(
                "conn_rate",
                "is 0, which refuses every connection; use at least 1 (default 5)".to_owned(),
            );
        }
        if self.conn_burst == 0 {
            bad(
                "conn_burst",
                "is 0, which refuses every connection; use at least 1 (default 10)".to_owned(),
            );
        }
        if let Some(name) = &self.metrics_token_secret
            && let Err(reason) = tether_model::check_secret_name(name)
        {
            bad(
                "metrics_token_secret",
                format!("invalid secret name {name:?}: {reason}"),
            );
        }
        out
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::RelaySection;

    fn keys(s: &RelaySection) -> Vec<String> {
        s.validate().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(RelaySection::default().validate().is_empty());
        assert_eq!(
            RelaySection::default().listen_addr(),
            Some("0.0.0.0:443".parse().unwrap_or_else(|_| unreachable!()))
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let s = RelaySection {
            listen: "relay:443".to_owned(),
            tls_cert: Some("cert.pem".into()),
            tls_key: None,
            allowlist: Some("keys".into()),
            admin_keys: vec![
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned(),
                "not a key".to_owned(),
            ],
            rate: 0,
            burst: 100,
            conn_rate: 0,
            conn_burst: 0,
            metrics_token_secret: Some(String::new()),
        };
        assert_eq!(
            keys(&s),
            [
                "relay.listen",
                "relay.tls_key",
                "relay.tls_cert",
                "relay.allowlist",
                "relay.admin_keys[1]",
                "relay.rate",
                "relay.burst",
                "relay.conn_rate",
                "relay.conn_burst",
                "relay.metrics_token_secret",
            ]
        );
        let only_key = RelaySection {
            tls_key: Some("/k.pem".into()),
            ..RelaySection::default()
        };
        assert_eq!(keys(&only_key), ["relay.tls_cert"]);
    }
}
