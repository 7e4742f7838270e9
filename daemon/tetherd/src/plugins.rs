//! WASM plugins inside the daemon: the plugin host (the only wasmtime user) behind the policy's
//! `PolicyHooks` seam (and the control API's list/reload), and the hub's enrollment review
//! ([`crate::enroll_hooks`]), with secrets granted from the vault.

use std::path::Path;
use std::sync::Arc;

use prometheus::Registry;
use serde_json::{Value, json};
use tether_audit::{AuditLog, Event};
use tether_control::state::{PluginAdmin, ReloadError};
use tether_model::AlertSink;
use tether_plugin_host::{
    CacheKey, EnrollVote, Failed, HostOptions, PluginEvents, PluginHost, PluginKind, Quarantined,
    SecretSource,
};
use tether_policy::{PluginVote, Request};
use tether_vault::Vault;
use zeroize::Zeroizing;

use crate::error::DaemonError;

/// Secrets for plugins, from the vault (the host only asks for names the manifest grants).
struct VaultSecrets(Vault);

impl SecretSource for VaultSecrets {
    fn get(&self, name: &str) -> Option<Zeroizing<Vec<u8>>> {
        let secret = self.0.get(name).ok().flatten()?;
        Some(secret.expose(|b| Zeroizing::new(b.to_vec())))
    }
}

/// Vault entry holding the key that authenticates the compiled-artifact cache.
pub const PLUGIN_CACHE_KEY: &str = "tetherd.plugin-cache-key";

/// The cache key from the vault, generated on first use. A file written into
/// `state_dir/plugin-cache` without this key is never loaded as native code.
struct VaultCacheKey(Vault);

impl CacheKey for VaultCacheKey {
    fn cache_key(&self) -> Option<Zeroizing<Vec<u8>>> {
        match self.0.get_or_generate(PLUGIN_CACHE_KEY, 32) {
            Ok(secret) => Some(secret.expose(|b| Zeroizing::new(b.to_vec()))),
            Err(e) => {
                tracing::warn!(
                    "plugin cache key unavailable ({e}); plugins compile without the cache"
                );
                None
            }
        }
    }
}

/// Records plugin lifecycle events in the audit log: a quarantine becomes `plugin.quarantine`.
struct AuditEvents {
    audit: AuditLog,
    rt: tokio::runtime::Handle,
}

impl AuditEvents {
    /// Called on whichever thread made the failing plugin call; hands the write to the runtime
    /// instead of blocking there (the failure or quarantine itself already happened).
    fn record(&self, plugin: &str, event: Event) {
        let audit = self.audit.clone();
        let plugin = plugin.to_owned();
        self.rt.spawn(async move {
            if let Err(e) = audit.append(&event).await {
                tracing::error!(plugin, "could not audit a plugin event: {e}");
            }
        });
    }
}

impl PluginEvents for AuditEvents {
    fn quarantined(&self, q: &Quarantined) {
        let event =
            Event::new("plugin.quarantine", tether_control::audit::daemon_actor()).data(json!({
                "plugin": q.plugin,
                "kind": q.kind.as_str(),
                "failures": q.failures,
                "error_kind": q.last_error.kind.as_str(),
                "reason": q.last_error.message,
                "hint": "fix the plugin, then `tether plugin reload`",
            }));
        self.record(&q.plugin, event);
    }

    fn failed(&self, f: &Failed) {
        let event = Event::new("plugin.error", tether_control::audit::daemon_actor()).data(json!({
            "plugin": f.plugin,
            "kind": f.kind.as_str(),
            "consecutive": f.consecutive,
            "error_kind": f.error.kind.as_str(),
            "reason": f.error.message,
        }));
        self.record(&f.plugin, event);
    }
}

/// The loaded plugins.
pub struct Plugins {
    host: PluginHost,
}

impl Plugins {
    /// Loads `manifest` (signatures checked, components compiled or taken from the cache in
    /// `state_dir/plugin-cache`). Quarantines are audited through `audit` on `rt`. Blocking.
    pub fn load(
        manifest: &Path,
        state_dir: &Path,
        vault: Vault,
        alerts: Arc<dyn AlertSink>,
        (audit, rt): (AuditLog, tokio::runtime::Handle),
        registry: &Registry,
    ) -> Result<Plugins, DaemonError> {
        let opts = HostOptions {
            cache_dir: Some(state_dir.join("plugin-cache")),
            cache_key: Arc::new(VaultCacheKey(vault.clone())),
            secrets: Arc::new(VaultSecrets(vault)),
            alerts,
            events: Arc::new(AuditEvents { audit, rt }),
            ..HostOptions::default()
        };
        let host = PluginHost::load(manifest, opts, registry)
            .map_err(|e| DaemonError::Plugins(format!("{}: {e}", manifest.display())))?;
        Ok(Plugins { host })
    }

    /// Name, kind, hash and signer of each plugin, for the start-up audit record.
    pub fn summary(&self) -> Value {
        serde_json::to_value(self.list()).unwrap_or(Value::Null)
    }

    /// Asks the enrollment-hook plugins about an enrollment, in manifest order (stops at the
    /// first deny). No votes when none is loaded. Blocking.
    pub fn on_enroll(&self, r: &tether_enroll::EnrollRequest) -> Vec<EnrollVote> {
        if !self.host.has(PluginKind::EnrollmentHook) {
            return Vec::new();
        }
        self.host.on_enroll(&tether_plugin_host::EnrollRequest {
            name: r.name.clone(),
            hostname: r.hostname.clone(),
            overlay_ip: r.overlay_ip.to_string(),
            tags: r.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            groups: r.groups.clone(),
            peer: r.peer.map(|p| p.to_string()),
        })
    }
}

impl tether_policy::PolicyHooks for Plugins {
    fn vote(&self, req: &Request) -> Vec<PluginVote> {
        self.host.evaluate(req)
    }
}

impl PluginAdmin for Plugins {
    fn list(&self) -> Vec<tether_api::PluginInfo> {
        self.host
            .list()
            .into_iter()
            .map(|p| tether_api::PluginInfo {
                name: p.name,
                kind: p.kind.as_str().to_owned(),
                sha256: p.sha256,
                signer: p.signer,
                calls: p.calls,
                errors: p.errors,
                p50_us: p.p50_us,
                p99_us: p.p99_us,
                quarantined: p.quarantined,
                secret_denials: p.secret_denials,
                http_denials: p.http_denials,
            })
            .collect()
    }

    fn reload(&self) -> Result<usize, ReloadError> {
        self.host
            .reload()
            .map_err(|e| ReloadError::Plugins(Box::new(e)))
    }
}
