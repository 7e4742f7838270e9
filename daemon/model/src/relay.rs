//! Where a relay is and how it is recognised: what a hub's `[[tunnel.relays]]` lists, what an
//! invite carries to a target, and what a target saves at enrollment.
//!
//! A relay forwards WireGuard ciphertext over TLS 1.3 for peers whose UDP is blocked
//! (`tetherd run --role relay`; `tetherd relay show` prints these fields for a hub's config).

use serde::{Deserialize, Serialize};

/// Most relays one hub, invite or target names.
pub const MAX_RELAYS: usize = 8;

/// One relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySpec {
    /// Short name shown in paths (`relay:NAME`): letters, digits, `-`, `_`, `.`; 1–32 chars.
    pub name: String,
    /// `host:port` to connect to over TCP (TLS 1.3), e.g. `relay1.example.net:443`.
    pub addr: String,
    /// TLS server name (SNI). With a pinned certificate any name works; default: the host of
    /// `addr`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_name: String,
    /// Hex SHA-256 of the relay's TLS certificate (DER): the relay is pinned, never trusted on
    /// first use.
    pub cert_sha256: String,
    /// The relay's X25519 public key, standard base64 of 32 bytes (it proves it holds the
    /// secret on every connection).
    pub relay_key: String,
}

impl RelaySpec {
    /// The TLS server name to send: `server_name`, else the host part of `addr`.
    pub fn sni(&self) -> &str {
        if self.server_name.is_empty() {
            self.addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or(&self.addr)
        } else {
            &self.server_name
        }
    }

    /// The relay key's 32 bytes, once [`RelaySpec::check`] passed.
    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD
            .decode(self.relay_key.trim())
            .ok()?;
        <[u8; 32]>::try_from(b.as_slice()).ok()
    }

    /// What is wrong with this entry, in words an operator can act on; `None` when it is good.
    pub fn check(&self) -> Option<String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 32
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Some(format!(
                "relay name {n:?} must be 1-32 letters, digits, '-', '_' or '.'"
            ));
        }
        let addr_ok = self.addr.len() <= 300
            && self
                .addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !addr_ok {
            return Some(format!("relay {n}: addr {:?} is not host:port", self.addr));
        }
        if self.server_name.len() > 253 {
            return Some(format!("relay {n}: server_name is longer than 253 bytes"));
        }
        if self.cert_sha256.len() != 64 || !self.cert_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Some(format!(
                "relay {n}: cert_sha256 must be 64 hex digits (the SHA-256 of the relay's certificate, from `tetherd relay show` on the relay)"
            ));
        }
        if self.key_bytes().is_none() {
            return Some(format!(
                "relay {n}: relay_key must be the base64 of 32 bytes (from `tetherd relay show` on the relay)"
            ));
        }
        None
    }
}

/// Checks a list: each entry, unique names, at most [`MAX_RELAYS`].
pub fn check_relays(relays: &[RelaySpec]) -> Option<String> {
    if relays.len() > MAX_RELAYS {
        return Some(format!(
            "{} relays listed; at most {MAX_RELAYS}",
            relays.len()
        ));
    }
    for (i, r) in relays.iter().enumerate() {
        if let Some(p) = r.check() {
            return Some(p);
        }
        if relays[..i].iter().any(|o| o.name == r.name) {
            return Some(format!("relay name {:?} is listed twice", r.name));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> RelaySpec {
        RelaySpec {
            name: "r1".into(),
            addr: "relay.example.net:443".into(),
            server_name: String::new(),
            cert_sha256: "ab".repeat(32),
            relay_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        }
    }

    #[test]
    fn a_good_entry_passes_and_sni_defaults_to_the_host() {
        assert_eq!(good().check(), None);
        assert_eq!(good().sni(), "relay.example.net");
        let mut v6 = good();
        v6.addr = "[::1]:443".into();
        assert_eq!(v6.sni(), "::1");
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut r = good();
        r.name = "a b".into();
        assert!(r.check().unwrap().contains("relay name"));
        let mut r = good();
        r.addr = "nohost".into();
        assert!(r.check().unwrap().contains("addr"));
        let mut r = good();
        r.cert_sha256 = "zz".into();
        assert!(r.check().unwrap().contains("cert_sha256"));
        let mut r = good();
        r.relay_key = "AAAA".into();
        assert!(r.check().unwrap().contains("relay_key"));
        assert!(
            check_relays(&[good(), good()])
                .unwrap()
                .contains("listed twice")
        );
        assert!(check_relays(&vec![good(); 9]).unwrap().contains("at most"));
    }
}
