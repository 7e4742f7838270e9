//! TLS for `http.send` (`https://`): rustls with the `ring` provider, one client config per
//! plugin, built when the plugin loads.
//!
//! Trust: the Mozilla root store compiled into the daemon (`webpki-roots`) plus the manifest's
//! optional `capabilities.ca_file` (a private CA). Compiled-in roots rather than the system store
//! (`rustls-native-certs`): what a sandboxed plugin may trust is then fixed by the daemon binary
//! and the plugin's manifest alone — not by whatever a machine's `/etc/ssl` holds (interception
//! CAs, a store missing in minimal containers) — and it behaves the same on every host. A
//! private CA is added per plugin with `ca_file`, never globally.
//!
//! The server's certificate is verified against the URL's host name (or IP literal), which is
//! also the SNI; the TCP connection itself goes to an address already checked by the capability
//! granter, so DNS rebinding cannot redirect it.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::error::{Error, Result};
use crate::manifest::PluginSpec;

/// The client config for one plugin: built-in roots plus `capabilities.ca_file`, HTTP/1.1 ALPN.
/// Fails (so the plugin does not load) when `ca_file` cannot be read or holds no usable CA.
pub(crate) fn client_config(spec: &PluginSpec) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &spec.capabilities.ca_file {
        let pem = std::fs::read(path).map_err(|source| Error::Io {
            what: "plugin ca_file",
            path: path.clone(),
            source,
        })?;
        let bad = |message: String| Error::InvalidPlugin {
            plugin: spec.name.clone(),
            key: "capabilities.ca_file",
            message,
        };
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                bad(format!(
                    "{}: not a readable PEM file ({e}); give the CA certificate(s) in PEM",
                    path.display()
                ))
            })?;
            n += 1;
            roots.add(cert).map_err(|e| {
                bad(format!(
                    "{}: certificate #{n} cannot be a trust anchor ({e})",
                    path.display()
                ))
            })?;
        }
        if n == 0 {
            return Err(bad(format!(
                "{} holds no \"BEGIN CERTIFICATE\" block; give the CA certificate(s) in PEM",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Runtime(format!("tls client config: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name the certificate must be valid for (and the SNI): a DNS name or an IP literal.
pub(crate) fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).ok()
}

/// A handshake failure, saying what was wrong and what to do about it.
pub(crate) fn describe(host: &str, e: &std::io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return format!("tls handshake with {host}: {e}");
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                " (not signed by a trusted CA; for a private CA set capabilities.ca_file to its PEM certificate)"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                " (the certificate does not name this host; use the name it was issued for)"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                " (outside its validity period; renew it, or check this machine's clock)"
            }
            _ => "",
        },
        _ => "",
    };
    format!("tls handshake with {host}: {tls}{hint}")
}
