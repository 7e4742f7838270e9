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
        if tether_model::is_reserved_secret_name(name) {
            return None;
        }
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

/// `plugin.error` records written per plugin and minute at most; further failures in the
/// minute are counted and reported (`suppressed`) in the plugin's next record. A caller whose
/// input makes a plugin fail therefore cannot grow the audit log faster than this.
const ERROR_RECORDS_PER_MINUTE: u32 = 10;

/// Per-plugin budget of `plugin.error` records (sans-IO: the caller passes the time).
#[derive(Default)]
struct ErrorBudget {
    windows: std::collections::HashMap<String, (std::time::Instant, u32, u64)>,
}

impl ErrorBudget {
    /// `Some(suppressed before this one)` if a record may be written for `plugin` at `now`.
    fn admit(&mut self, plugin: &str, now: std::time::Instant) -> Option<u64> {
        if self.windows.len() > 4096 {
            self.windows.clear(); // bounded: plugins are few; this only guards the map
        }
        let w = self.windows.entry(plugin.to_owned()).or_insert((now, 0, 0));
        if now.saturating_duration_since(w.0) >= std::time::Duration::from_secs(60) {
            w.0 = now;
            w.1 = 0;
        }
        if w.1 >= ERROR_RECORDS_PER_MINUTE {
            w.2 += 1;
            return None;
        }
        w.1 += 1;
        Some(std::mem::take(&mut w.2))
    }
}

/// Records plugin lifecycle events in the audit log: a quarantine becomes `plugin.quarantine`,
/// failures `plugin.error` (at most [`ERROR_RECORDS_PER_MINUTE`] per plugin and minute).
struct AuditEvents {
    audit: AuditLog,
    rt: tokio::runtime::Handle,
    budget: std::sync::Mutex<ErrorBudget>,
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
        let admitted = self
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&f.plugin, std::time::Instant::now());
        let Some(suppressed) = admitted else {
            return;
        };
        let event = Event::new("plugin.error", tether_control::audit::daemon_actor()).data(json!({
            "plugin": f.plugin,
            "kind": f.kind.as_str(),
            "consecutive": f.consecutive,
            "error_kind": f.error.kind.as_str(),
            "reason": f.error.message,
            "suppressed": suppressed,
        }));
        self.record(&f.plugin, event);
    }
}

/// The loaded plugins.
pub struct Plugins {
    host: PluginHost,
    /// The audit-sink streams, for the lag in `tether plugin list`.
    pub streamer: std::sync::OnceLock<tether_alerts::AuditStreamer>,
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
            events: Arc::new(AuditEvents {
                audit,
                rt,
                budget: std::sync::Mutex::new(ErrorBudget::default()),
            }),
            ..HostOptions::default()
        };
        let host = PluginHost::load(manifest, opts, registry)
            .map_err(|e| DaemonError::Plugins(format!("{}: {e}", manifest.display())))?;
        Ok(Plugins {
            host,
            streamer: std::sync::OnceLock::new(),
        })
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

impl Plugins {
    /// The names of the loaded plugins of `kind`.
    pub fn names(&self, kind: PluginKind) -> Vec<String> {
        self.host.names(kind)
    }

    /// Delivers one alert to the alert-sink plugin `sink`. Blocking.
    pub fn deliver_alert_to(&self, sink: &str, alert: &tether_model::Alert) -> Result<(), String> {
        match self.host.deliver_alert_to(sink, alert) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.message),
            None => Err(format!(
                "no alert_sink plugin named {sink:?} is loaded (tether plugin list)"
            )),
        }
    }

    /// Delivers one batch of audit records to the audit-sink plugin `sink`, with the batch's
    /// seq range and last chain hash. Blocking.
    pub fn deliver_batch_to(&self, sink: &str, batch: &tether_alerts::Batch) -> Result<(), String> {
        let events: Vec<tether_plugin_host::AuditRecord> =
            batch.records.iter().map(audit_record).collect();
        match self
            .host
            .deliver_audit_batch_to(sink, &events, &batch.last_hash)
        {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.message),
            None => Err(format!(
                "no audit_sink plugin named {sink:?} is loaded (tether plugin list)"
            )),
        }
    }
}

/// An audit record as audit-sink plugins see it.
fn audit_record(r: &tether_audit::Record) -> tether_plugin_host::AuditRecord {
    let data_json = tether_audit::canonical_json(&r.data)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| "{}".to_owned());
    tether_plugin_host::AuditRecord {
        seq: r.seq,
        ts: r.ts.clone(),
        kind: r.kind.clone(),
        actor_uid: r.actor.uid,
        actor_user: r.actor.user.clone(),
        actor_role: r.actor.role.map(|x| x.as_str().to_owned()),
        via: r.actor.via.as_str().to_owned(),
        host: r.host.clone(),
        data_json,
    }
}

impl tether_policy::PolicyHooks for Plugins {
    fn vote(&self, req: &Request) -> Vec<PluginVote> {
        self.host.evaluate(req)
    }

    fn vote_parsed(
        &self,
        req: &Request,
        parse: tether_policy::CommandParser<'_>,
    ) -> Vec<PluginVote> {
        self.host.evaluate_parsed(req, Some(parse))
    }
}

impl PluginAdmin for Plugins {
    fn list(&self) -> Vec<tether_api::PluginInfo> {
        let streams = self.streamer.get().map(|s| s.status()).unwrap_or_default();
        self.host
            .list()
            .into_iter()
            .map(|p| tether_api::PluginInfo {
                lag_records: streams.get(&p.name).map(|s| s.lag),
                acked_seq: streams.get(&p.name).map(|s| s.acked_seq),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn plugin_error_records_are_bounded_per_plugin_and_minute() {
        let mut b = ErrorBudget::default();
        let t0 = Instant::now();
        let written = (0..1000)
            .filter(|i| b.admit("trap", t0 + Duration::from_millis(*i)).is_some())
            .count();
        assert_eq!(written, ERROR_RECORDS_PER_MINUTE as usize);
        // another plugin has its own budget
        assert_eq!(b.admit("other", t0), Some(0));
        // next minute: the first record reports what was left out
        assert_eq!(b.admit("trap", t0 + Duration::from_secs(61)), Some(990));
        assert_eq!(b.admit("trap", t0 + Duration::from_secs(62)), Some(0));
    }
}
