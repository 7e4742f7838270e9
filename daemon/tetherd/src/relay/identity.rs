//! What identifies a relay to its clients: its X25519 key (vault), its TLS certificate (the
//! operator's `tls_cert`/`tls_key`, or a self-signed one generated once into
//! `STATE_DIR/relay-tls/`), and the `/metrics` bearer token (vault). Generated on the relay's
//! first start; `tetherd relay show` reads them.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use tether_config::Config;
use tether_vault::{SecretBox, Vault};
use zeroize::Zeroizing;

use crate::error::DaemonError;

/// Vault entry of the relay's X25519 secret (its public half is the hubs' `relay_key`).
pub const RELAY_KEY: &str = "tetherd.relay-x25519";

/// Directory (inside `state_dir`) of the generated self-signed certificate.
pub const GENERATED_TLS_DIR: &str = "relay-tls";

/// Whether missing key material may be created (the daemon, or `relay show` with the state
/// directory's lock) or only read (a running relay owns the state directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Generate what is missing.
    Create,
    /// Read only; missing material is an error that says to start the relay once.
    Read,
}

fn not_yet(what: &str) -> DaemonError {
    DaemonError::Relay(format!(
        "the relay has no {what} yet; start it once (`tetherd run --role relay`), which generates it"
    ))
}

/// The relay's X25519 secret from the vault.
pub fn secret(vault: &Vault, mode: Mode) -> Result<x25519_dalek::StaticSecret, DaemonError> {
    let secret = match mode {
        Mode::Create => vault.get_or_generate(RELAY_KEY, 32)?,
        Mode::Read => vault.get(RELAY_KEY)?.ok_or_else(|| not_yet("key"))?,
    };
    secret.expose(|b| {
        let mut bytes = Zeroizing::new([0u8; 32]);
        if b.len() != 32 {
            return Err(DaemonError::Relay(format!(
                "vault entry {RELAY_KEY} holds {} bytes, expected 32; restore it from a backup",
                b.len()
            )));
        }
        bytes.copy_from_slice(b);
        Ok(x25519_dalek::StaticSecret::from(*bytes))
    })
}

/// The relay's public key, base64 (the form hubs put in `relay_key`).
pub fn public_b64(secret: &x25519_dalek::StaticSecret) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(x25519_dalek::PublicKey::from(secret).as_bytes())
}

/// The certificate and key the relay serves, in PEM.
pub struct TlsMaterial {
    /// The certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// The private key (PEM); zeroed on drop, never logged.
    pub key_pem: Zeroizing<Vec<u8>>,
    /// Where the certificate was read from.
    pub cert_path: PathBuf,
    /// Whether it is the generated self-signed certificate.
    pub generated: bool,
    /// Whether it was generated just now (first start).
    pub fresh: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_path", &self.cert_path)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Hex SHA-256 of the certificate (what clients pin as `cert_sha256`).
    pub fn sha256(&self) -> Result<String, DaemonError> {
        tether_relay::tls::cert_sha256(&self.cert_pem)
            .map_err(|e| DaemonError::RelayConfig(format!("{}: {e}", self.cert_path.display())))
    }

    /// The TLS 1.3-only server config.
    pub fn server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, DaemonError> {
        tether_relay::tls::server_config(&self.cert_pem, &self.key_pem).map_err(|e| {
            DaemonError::RelayConfig(format!(
                "{e} (certificate {}); check relay.tls_cert and relay.tls_key",
                self.cert_path.display()
            ))
        })
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, DaemonError> {
    std::fs::read(path).map_err(|e| {
        DaemonError::RelayConfig(format!(
            "cannot read relay.{key} {}: {e}; check the path and that tetherd may read it",
            path.display()
        ))
    })
}

/// The certificate and key: the configured files, or the generated self-signed pair.
pub fn tls(config: &Config, mode: Mode) -> Result<TlsMaterial, DaemonError> {
    if let (Some(cert), Some(key)) = (&config.relay.tls_cert, &config.relay.tls_key) {
        return Ok(TlsMaterial {
            cert_pem: read(cert, "tls_cert")?,
            key_pem: Zeroizing::new(read(key, "tls_key")?),
            cert_path: cert.clone(),
            generated: false,
            fresh: false,
        });
    }
    let dir = config.state_dir.join(GENERATED_TLS_DIR);
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let fresh = !(cert_path.is_file() && key_path.is_file());
    if fresh {
        if mode == Mode::Read {
            return Err(not_yet("certificate"));
        }
        generate(&dir, &cert_path, &key_path)?;
    }
    Ok(TlsMaterial {
        cert_pem: read(&cert_path, "tls_cert (generated)")?,
        key_pem: Zeroizing::new(read(&key_path, "tls_key (generated)")?),
        cert_path,
        generated: true,
        fresh,
    })
}

/// A self-signed ECDSA P-256 certificate for this host's name and `tether-relay`; the key is
/// written first (0600), then the certificate, each atomically.
fn generate(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), DaemonError> {
    let io = |e: tether_durable::Error| DaemonError::Relay(e.to_string());
    let names = vec![crate::identity::hostname(), "tether-relay".to_owned()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| DaemonError::Relay(format!("cannot generate the relay's certificate: {e}")))?;
    let key_pem = Zeroizing::new(made.signing_key.serialize_pem());
    tether_durable::ensure_private_dir(dir).map_err(io)?;
    tether_durable::write_atomic(key_path, key_pem.as_bytes(), 0o600).map_err(io)?;
    tether_durable::write_atomic(cert_path, made.cert.pem().as_bytes(), 0o644).map_err(io)?;
    Ok(())
}

/// Makes sure the allowlist file exists (created empty, with a comment saying what goes in it).
pub fn ensure_allowlist(path: &Path) -> Result<bool, DaemonError> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DaemonError::Relay(format!("cannot create {}: {e}", parent.display())))?;
    }
    let text = "# WireGuard public keys allowed to use this relay, one base64 key per line.\n\
                # The relay re-reads this file when it changes; removed keys are disconnected.\n";
    tether_durable::create_exclusive(path, text.as_bytes(), 0o644)
        .map_err(|e| DaemonError::Relay(format!("cannot create the relay allowlist: {e}")))
}

/// The `/metrics` bearer token from vault entry `name`; generated (64 hex digits) when
/// missing and `mode` allows it.
pub fn metrics_token(vault: &Vault, name: &str, mode: Mode) -> Result<SecretBox, DaemonError> {
    if let Some(token) = vault.get(name)? {
        return Ok(token);
    }
    if mode == Mode::Read {
        return Err(not_yet(&format!("metrics token (vault entry {name})")));
    }
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *raw)
        .map_err(|e| DaemonError::Relay(format!("no randomness for the metrics token: {e}")))?;
    let hex = Zeroizing::new(hex::encode(*raw));
    let token = SecretBox::from_slice(hex.as_bytes())?;
    vault.set(name, token.try_clone()?)?;
    tracing::info!(
        secret = name,
        "generated the /metrics bearer token into the vault; print it with `tetherd relay metrics-token`"
    );
    Ok(token)
}
