//! `plugins.toml`: which plugins to load, with which capabilities and limits.
//!
//! ```toml
//! trusted_keys = ["<ed25519 public key, base64>"]
//! allow_unsigned = false
//!
//! [[plugin]]
//! name = "change-window"
//! kind = "policy"                # policy | alert_sink | audit_sink | enrollment_hook
//! path = "change_window.wasm"    # relative to this file; signature at <path>.sig
//! on_error = "fail_closed"       # fail_closed | fail_open | drop_counted; default fail_closed for
//!                                # policy and enrollment_hook (a failed call denies), drop_counted for sinks
//! may_override = false           # policy only: may an Allow loosen a regex deny?
//! [plugin.capabilities]
//! allowed_hosts = ["hooks.example.com"]
//! allow_http = false             # plain http:// destinations
//! allow_private = ["hooks.example.com=10.1.2.3"]  # host=ip pairs allowed despite a private address
//! ca_file = "internal-ca.pem"    # extra trusted CAs for https (PEM, relative to this file)
//! secrets = ["slack_token"]
//! [plugin.limits]
//! timeout_ms = 50
//! memory_mb = 16
//! [plugin.config]
//! windows = "Sat 02:00-04:00"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::types::OnError;

/// Largest `memory_mb` a plugin may ask for (the pooling allocator reserves slots of this size).
pub const MAX_MEMORY_MB: u32 = 256;
/// Largest `timeout_ms`.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// `policy-hook`: votes on requests.
    Policy,
    /// `alert-sink`: delivers alerts.
    AlertSink,
    /// `audit-sink`: delivers audit batches.
    AuditSink,
    /// `enrollment-hook`: approves/denies enrollments.
    EnrollmentHook,
}

impl PluginKind {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Policy => "policy",
            PluginKind::AlertSink => "alert_sink",
            PluginKind::AuditSink => "audit_sink",
            PluginKind::EnrollmentHook => "enrollment_hook",
        }
    }
    fn is_sink(self) -> bool {
        matches!(self, PluginKind::AlertSink | PluginKind::AuditSink)
    }
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Ed25519 public keys (32 bytes each) whose signatures are accepted.
    pub trusted_keys: Vec<[u8; 32]>,
    /// Load plugins without a `.sig` (their signer is reported as none). Still refuses bad signatures.
    pub allow_unsigned: bool,
    /// The plugins, in manifest order (policy hooks vote in this order).
    pub plugins: Vec<PluginSpec>,
}

/// One validated `[[plugin]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// Unique name (`[a-z0-9_-]+`).
    pub name: String,
    /// The world it implements.
    pub kind: PluginKind,
    /// The component (absolute, or relative to the manifest's directory when parsed from a file).
    pub path: PathBuf,
    /// What it may reach.
    pub capabilities: Capabilities,
    /// Per-call limits.
    pub limits: Limits,
    /// Failure mode.
    pub on_error: OnError,
    /// Policy only: an `Allow` may loosen a regex deny.
    pub may_override: bool,
    /// `[plugin.config]`, values rendered as strings.
    pub config: BTreeMap<String, String>,
}

/// What a plugin may reach through host imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Host names (or IP literals) `http.send` may contact. `*.example.com` matches subdomains.
    pub allowed_hosts: Vec<String>,
    /// Allow `http://` (default: HTTPS only).
    pub allow_http: bool,
    /// `(host, ip)` pairs allowed even though `ip` is loopback/private/link-local.
    pub allow_private: Vec<(String, IpAddr)>,
    /// Secret names `secrets.get` may return.
    pub secrets: BTreeSet<String>,
    /// PEM file of CA certificates trusted for `https://` in addition to the built-in Mozilla
    /// roots (for a private CA). Absolute, or relative to the manifest's directory.
    pub ca_file: Option<PathBuf>,
}

/// Per-call limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline per call (epoch interruption). Default 50 ms; 5000 ms for sinks.
    pub timeout_ms: u64,
    /// Linear memory cap. Default 16 MiB.
    pub memory_mb: u32,
    /// Largest outgoing HTTP request (URL + headers + body). Default 64 KiB.
    pub max_request_bytes: usize,
    /// Largest HTTP response (headers + body) handed to the plugin. Default 1 MiB.
    pub max_response_bytes: usize,
    /// Largest result (reason, tags, error text). Default 64 KiB.
    pub max_output_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    #[serde(default)]
    trusted_keys: Vec<String>,
    #[serde(default)]
    allow_unsigned: bool,
    #[serde(default)]
    plugin: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: String,
    kind: PluginKind,
    path: PathBuf,
    #[serde(default)]
    capabilities: RawCaps,
    #[serde(default)]
    limits: RawLimits,
    on_error: Option<OnError>,
    #[serde(default)]
    may_override: bool,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCaps {
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default)]
    allow_private: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout_ms: Option<u64>,
    memory_mb: Option<u32>,
    max_request_bytes: Option<usize>,
    max_response_bytes: Option<usize>,
    max_output_bytes: Option<usize>,
}

impl Manifest {
    /// Reads and validates a manifest file; relative plugin paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "plugin manifest",
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_with(&text, path, base)
    }

    /// Parses manifest text; relative plugin paths stay relative to the current directory.
    pub fn parse(text: &str) -> Result<Manifest> {
        Self::parse_with(text, Path::new("<string>"), Path::new(""))
    }

    fn parse_with(text: &str, origin: &Path, base: &Path) -> Result<Manifest> {
        let merr = |message: String| Error::Manifest {
            path: origin.to_path_buf(),
            message,
        };
        let top: RawTop = toml::from_str(text).map_err(|e| merr(e.to_string()))?;
        let mut trusted_keys = Vec::new();
        for (i, k) in top.trusted_keys.iter().enumerate() {
            let key = crate::signing::parse_public_key(k)
                .map_err(|e| merr(format!("trusted_keys[{i}]: {e}")))?;
            trusted_keys.push(key);
        }
        let mut plugins = Vec::new();
        let mut names = BTreeSet::new();
        for (i, value) in top.plugin.into_iter().enumerate() {
            let label = value
                .get("name")
                .and_then(|n| n.as_str())
                .map(|n| format!("plugin {n:?}"))
                .unwrap_or_else(|| format!("plugin #{}", i + 1));
            let raw: RawPlugin = value
                .try_into()
                .map_err(|e: toml::de::Error| merr(format!("{label}: {}", e.message())))?;
            let spec = validate(raw, base)?;
            if !names.insert(spec.name.clone()) {
                return Err(merr(format!(
                    "{label}: name: duplicate plugin name; each [[plugin]] needs a unique name"
                )));
            }
            plugins.push(spec);
        }
        Ok(Manifest {
            trusted_keys,
            allow_unsigned: top.allow_unsigned,
            plugins,
        })
    }
}

fn validate(raw: RawPlugin, base: &Path) -> Result<PluginSpec> {
    let name = raw.name.clone();
    let bad = |key: &'static str, message: String| Error::InvalidPlugin {
        plugin: name.clone(),
        key,
        message,
    };
    if raw.name.is_empty()
        || raw.name.len() > 64
        || !raw
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(bad(
            "name",
            "must be 1-64 characters of a-z, 0-9, '-' or '_'".into(),
        ));
    }
    let sink = raw.kind.is_sink();
    let l = raw.limits;
    let limits = Limits {
        timeout_ms: l.timeout_ms.unwrap_or(if sink { 5000 } else { 50 }),
        memory_mb: l.memory_mb.unwrap_or(16),
        max_request_bytes: l.max_request_bytes.unwrap_or(64 * 1024),
        max_response_bytes: l.max_response_bytes.unwrap_or(1024 * 1024),
        max_output_bytes: l.max_output_bytes.unwrap_or(64 * 1024),
    };
    if limits.timeout_ms == 0 || limits.timeout_ms > MAX_TIMEOUT_MS {
        return Err(bad(
            "limits.timeout_ms",
            format!("{} is out of range 1..={MAX_TIMEOUT_MS}", limits.timeout_ms),
        ));
    }
    if limits.memory_mb == 0 || limits.memory_mb > MAX_MEMORY_MB {
        return Err(bad(
            "limits.memory_mb",
            format!("{} is out of range 1..={MAX_MEMORY_MB}", limits.memory_mb),
        ));
    }
    for (key, v) in [
        ("limits.max_request_bytes", limits.max_request_bytes),
        ("limits.max_response_bytes", limits.max_response_bytes),
        ("limits.max_output_bytes", limits.max_output_bytes),
    ] {
        if v == 0 || v > 64 * 1024 * 1024 {
            return Err(bad(key, format!("{v} is out of range 1..=67108864")));
        }
    }
    if raw.may_override && raw.kind != PluginKind::Policy {
        return Err(bad(
            "may_override",
            "only policy plugins vote; remove may_override".into(),
        ));
    }
    let mut allowed_hosts = Vec::new();
    for h in &raw.capabilities.allowed_hosts {
        let h = h.trim().to_ascii_lowercase();
        let body = h.strip_prefix("*.").unwrap_or(&h);
        let ok = !body.is_empty()
            && (body.parse::<IpAddr>().is_ok()
                || body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !ok {
            return Err(bad(
                "capabilities.allowed_hosts",
                format!(
                    "{h:?} is not a host name, *.domain or IP address (no scheme, port or path)"
                ),
            ));
        }
        allowed_hosts.push(h);
    }
    let mut allow_private = Vec::new();
    for p in &raw.capabilities.allow_private {
        let parsed = p.split_once('=').and_then(|(h, ip)| {
            Some((
                h.trim().to_ascii_lowercase(),
                ip.trim().parse::<IpAddr>().ok()?,
            ))
        });
        let Some((host, ip)) = parsed else {
            return Err(bad(
                "capabilities.allow_private",
                format!("{p:?} is not of the form \"host=ip\""),
            ));
        };
        if !allowed_hosts.contains(&host) {
            return Err(bad(
                "capabilities.allow_private",
                format!("{host:?} is not in allowed_hosts; list it there too"),
            ));
        }
        allow_private.push((host, ip));
    }
    let mut secrets = BTreeSet::new();
    for s in &raw.capabilities.secrets {
        if s.is_empty() {
            return Err(bad("capabilities.secrets", "empty secret name".into()));
        }
        if tether_model::is_reserved_secret_name(s) {
            return Err(bad(
                "capabilities.secrets",
                format!(
                    "{s:?} is a daemon key and cannot be granted to a plugin; {}",
                    tether_model::RESERVED_SECRET_HINT
                ),
            ));
        }
        secrets.insert(s.clone());
    }
    let mut config = BTreeMap::new();
    for (k, v) in raw.config {
        let s = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err(Error::InvalidPlugin {
                    plugin: name.clone(),
                    key: "config",
                    message: format!(
                        "config.{k}: arrays and tables are not supported; use a string (e.g. comma-separated)"
                    ),
                });
            }
        };
        config.insert(k, s);
    }
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let path = resolve(raw.path);
    let ca_file = raw.capabilities.ca_file.map(resolve);
    Ok(PluginSpec {
        on_error: raw.on_error.unwrap_or(
            if raw.kind == PluginKind::Policy || raw.kind == PluginKind::EnrollmentHook {
                OnError::FailClosed
            } else {
                OnError::DropCounted
            },
        ),
        name: raw.name,
        kind: raw.kind,
        path,
        capabilities: Capabilities {
            allowed_hosts,
            allow_http: raw.capabilities.allow_http,
            allow_private,
            secrets,
            ca_file,
        },
        limits,
        may_override: raw.may_override,
        config,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_plugin_and_key() {
        let m = Manifest::parse(
            "[[plugin]]\nname = \"a\"\nkind = \"policy\"\npath = \"a.wasm\"\n[[plugin]]\nname = \"s\"\nkind = \"alert_sink\"\npath = \"/x/s.wasm\"\n[plugin.config]\nn = 3\n",
        )
        .unwrap();
        assert_eq!(m.plugins[0].limits.timeout_ms, 50);
        assert_eq!(m.plugins[0].limits.memory_mb, 16);
        assert_eq!(m.plugins[0].on_error, OnError::FailClosed);
        assert_eq!(m.plugins[1].on_error, OnError::DropCounted);
        assert_eq!(m.plugins[1].config["n"], "3");
        assert!(!m.allow_unsigned);

        let e = Manifest::parse("[[plugin]]\nname = \"bad\"\nkind = \"policy\"\npath = \"a\"\n[plugin.limits]\ntimeout = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugin \"bad\"") && e.contains("timeout"), "{e}");
        let e = Manifest::parse("[[plugin]]\nname = \"m\"\nkind = \"policy\"\npath = \"a\"\n[plugin.limits]\nmemory_mb = 9999\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"m\"") && e.contains("limits.memory_mb"), "{e}");
        let e = Manifest::parse("[[plugin]]\nname = \"k\"\nkind = \"nope\"\npath = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugin \"k\"") && e.contains("nope"), "{e}");
        let e = Manifest::parse("allow_unsignd = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_unsignd"), "{e}");
        let e = Manifest::parse("[[plugin]]\nname = \"p\"\nkind = \"policy\"\npath = \"a\"\n[plugin.capabilities]\nallow_private = [\"x=127.0.0.1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("allow_private") && e.contains("allowed_hosts"),
            "{e}"
        );
        let e = Manifest::parse("[[plugin]]\nname = \"d\"\nkind = \"policy\"\npath = \"a\"\n[[plugin]]\nname = \"d\"\nkind = \"policy\"\npath = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate"), "{e}");
        let e = Manifest::parse(
            "[[plugin]]\nname = \"s\"\nkind = \"audit_sink\"\npath = \"a\"\nmay_override = true\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("may_override"), "{e}");
    }

    #[test]
    fn a_manifest_cannot_grant_a_daemon_key() {
        for name in [
            "tetherd.audit-hmac",
            "tetherd.invite-key",
            "TETHERD.wireguard",
        ] {
            let e = Manifest::parse(&format!(
                "[[plugin]]\nname = \"p\"\nkind = \"alert_sink\"\npath = \"a\"\n[plugin.capabilities]\nsecrets = [\"ok\", \"{name}\"]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("plugin \"p\"")
                    && e.contains("capabilities.secrets")
                    && e.contains(name),
                "{e}"
            );
        }
        let m = Manifest::parse(
            "[[plugin]]\nname = \"p\"\nkind = \"alert_sink\"\npath = \"a\"\n[plugin.capabilities]\nsecrets = [\"slack_token\"]\n",
        )
        .unwrap();
        assert!(m.plugins[0].capabilities.secrets.contains("slack_token"));
    }
}

/// Fuzz harness for `plugins.toml` (an admin file, but read by the daemon on every reload).
/// `TETHER_FUZZ_CASES` sets the number of cases (`scripts/fuzz` for long runs).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("TETHER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    const VALID: &str = "trusted_keys = []\nallow_unsigned = true\n[[plugin]]\nname = \"a\"\nkind = \"policy\"\npath = \"a.wasm\"\n[plugin.limits]\ntimeout_ms = 50\nmemory_mb = 16\n[plugin.capabilities]\nallowed_hosts = [\"*.example.com\"]\nallow_private = [\"h=10.0.0.1\"]\nsecrets = [\"x\"]\n[plugin.config]\nk = \"v\"\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn fuzz_manifest_text(text in "(.|\n){0,800}") {
            let _ = Manifest::parse(&text);
        }

        #[test]
        fn fuzz_manifest_mutated(flips in prop::collection::vec((0usize..VALID.len(), any::<char>()), 0..6)) {
            let mut chars: Vec<char> = VALID.chars().collect();
            for (i, c) in flips {
                if i < chars.len() {
                    chars[i] = c;
                }
            }
            let text: String = chars.into_iter().collect();
            let _ = Manifest::parse(&text);
        }
    }
}
