//! The hub's enrollment review, composed of small [`EnrollHook`]s:
//!
//! ```text
//! ChainHook [ PluginEnrollHook (WASM enrollment hooks, manifest order) , AuditHook ]
//! ```
//!
//! [`ChainHook`] asks each hook in turn, passing on the tags approved so far; the first deny ends
//! the review. [`PluginEnrollHook`] asks the loaded `enrollment_hook` plugins and audits a plugin
//! deny as `enroll.denied` (naming the plugin). [`AuditHook`] comes last: it records the accepted
//! enrollment (with the merged tags) durably before the host is recorded. Plugin reloads take
//! effect on the next enrollment (the plugin host swaps its set atomically).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use tether_audit::{AuditLog, Event};
use tether_enroll::{EnrollHook, EnrollRequest, HookDecision, HostRecord};
use tether_plugin_host::{EnrollDecision, EnrollVote};

use crate::plugins::Plugins;

/// Longest deny reason passed on to the enrolling target (the wire clips at 512 characters too).
const MAX_REASON: usize = 400;

/// Asks its hooks in order. Each sees the invite's tags plus the tags approved by the hooks
/// before it; the first `Deny` is the answer; otherwise `Approve` with every extra tag (a later
/// hook's tag replaces an earlier one of the same key).
pub struct ChainHook {
    hooks: Vec<Arc<dyn EnrollHook>>,
}

impl ChainHook {
    /// A chain of `hooks`, asked in this order.
    pub fn new(hooks: Vec<Arc<dyn EnrollHook>>) -> ChainHook {
        ChainHook { hooks }
    }
}

impl EnrollHook for ChainHook {
    fn review(&self, request: &EnrollRequest) -> HookDecision {
        let mut req = request.clone();
        let mut extra = BTreeMap::new();
        for hook in &self.hooks {
            match hook.review(&req) {
                HookDecision::Approve { extra_tags } => {
                    for (k, v) in extra_tags {
                        req.tags.insert(k.clone(), v.clone());
                        extra.insert(k, v);
                    }
                }
                deny @ HookDecision::Deny { .. } => return deny,
            }
        }
        HookDecision::Approve { extra_tags: extra }
    }

    fn accepted(&self, host: &HostRecord, peer: Option<std::net::IpAddr>) -> Result<(), String> {
        self.hooks.iter().try_for_each(|h| h.accepted(host, peer))
    }
}

/// The WASM `enrollment_hook` plugins as one [`EnrollHook`]. A deny (the plugin's own, or its
/// `on_error` decision after a failed call — `fail_closed` by default) is audited as
/// `enroll.denied` with the plugin's name and refuses the enrollment with the plugin's reason.
/// Tags a plugin approves with must be valid tags (`tether vpn invite --tag` rules); a plugin
/// that returns an invalid one is treated as failing closed.
pub struct PluginEnrollHook {
    plugins: Arc<Plugins>,
    audit: AuditLog,
}

impl PluginEnrollHook {
    /// Asks `plugins`' enrollment hooks; records denies in `audit`.
    pub fn new(plugins: Arc<Plugins>, audit: AuditLog) -> PluginEnrollHook {
        PluginEnrollHook { plugins, audit }
    }

    /// Audits the deny durably (called on the enrollment server's blocking thread) and builds the
    /// answer for the target. The enrollment is refused even when the record cannot be written.
    fn deny(
        &self,
        r: &EnrollRequest,
        plugin: &str,
        reason: &str,
        error: Option<String>,
    ) -> HookDecision {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON)
            .collect();
        tracing::warn!(host = %r.name, plugin, "enrollment denied by plugin: {reason}");
        let event = Event::new("enroll.denied", tether_control::audit::daemon_actor())
            .host(r.name.clone())
            .data(json!({
                "plugin": plugin,
                "reason": reason,
                "error": error,
                "name": r.name,
                "overlay_ip": r.overlay_ip.to_string(),
                "hostname": r.hostname,
                "peer": r.peer.map(|p| p.to_string()),
                "tags": r.tags,
                "groups": r.groups,
            }));
        if let Err(e) = self.audit.append_blocking(&event) {
            tracing::error!(host = %r.name, plugin, "could not audit a denied enrollment: {e}");
        }
        HookDecision::Deny {
            reason: format!("{reason} (enrollment plugin {plugin})"),
        }
    }
}

impl EnrollHook for PluginEnrollHook {
    fn review(&self, r: &EnrollRequest) -> HookDecision {
        let votes = self.plugins.on_enroll(r);
        let mut extra_tags = BTreeMap::new();
        for EnrollVote {
            plugin,
            outcome,
            effective,
        } in votes
        {
            let error = outcome.err().map(|e| e.to_string());
            match effective {
                EnrollDecision::Deny(reason) => return self.deny(r, &plugin, &reason, error),
                EnrollDecision::Approve(tags) => {
                    for (k, v) in tags {
                        if let Err(e) = tether_enroll::validate_tag(&k, &v) {
                            return self.deny(
                                r,
                                &plugin,
                                &format!("enrollment plugin {plugin} returned an invalid tag; failing closed"),
                                Some(e.to_string()),
                            );
                        }
                        extra_tags.insert(k, v);
                    }
                }
            }
        }
        HookDecision::Approve { extra_tags }
    }
}

/// Audits every accepted enrollment durably once its invite is consumed and before the host is
/// recorded (so of racing attempts with one token only the winner is recorded as accepted);
/// refuses it otherwise. Last in the chain.
pub struct AuditHook {
    /// The audit log.
    pub audit: AuditLog,
}

impl EnrollHook for AuditHook {
    fn review(&self, _r: &EnrollRequest) -> HookDecision {
        HookDecision::Approve {
            extra_tags: Default::default(),
        }
    }

    fn accepted(&self, h: &HostRecord, peer: Option<std::net::IpAddr>) -> Result<(), String> {
        let event = Event::new("enroll.accepted", tether_control::audit::daemon_actor())
            .host(h.name.clone())
            .data(json!({
                "name": h.name,
                "overlay_ip": h.overlay_ip.to_string(),
                "hostname": h.hostname,
                "wg_public_key": h.wg_public_key,
                "ssh_host_key_fingerprint": tether_enroll::ssh_fingerprint(&h.ssh_host_key).unwrap_or_default(),
                "peer": peer.map(|p| p.to_string()),
                "tags": h.tags,
                "groups": h.groups,
            }));
        // Called on a blocking thread by the enrollment server.
        self.audit
            .append_blocking(&event)
            .map(|_| ())
            .map_err(|e| format!("the hub cannot write its audit log ({e}); try again later"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Approves with fixed tags and remembers the tags it saw.
    struct Tagger(
        Vec<(&'static str, &'static str)>,
        Mutex<Vec<BTreeMap<String, String>>>,
    );
    impl EnrollHook for Tagger {
        fn review(&self, r: &EnrollRequest) -> HookDecision {
            self.1.lock().unwrap().push(r.tags.clone());
            HookDecision::Approve {
                extra_tags: self
                    .0
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
        }
    }
    struct Deny;
    impl EnrollHook for Deny {
        fn review(&self, _: &EnrollRequest) -> HookDecision {
            HookDecision::Deny {
                reason: "no".into(),
            }
        }
    }

    fn req() -> EnrollRequest {
        EnrollRequest {
            name: "web1".into(),
            overlay_ip: "10.99.0.2".parse().unwrap(),
            tags: [("env".to_string(), "test".to_string())].into(),
            groups: vec![],
            hostname: "web1".into(),
            wg_public_key: String::new(),
            ssh_host_key: String::new(),
            peer: None,
        }
    }

    #[test]
    fn chain_merges_tags_in_order_and_stops_at_the_first_deny() {
        let a = Arc::new(Tagger(vec![("a", "1"), ("env", "prod")], Mutex::default()));
        let b = Arc::new(Tagger(vec![("a", "2")], Mutex::default()));
        let chain = ChainHook::new(vec![a.clone(), b.clone()]);
        assert_eq!(
            chain.review(&req()),
            HookDecision::Approve {
                extra_tags: [("a", "2"), ("env", "prod")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }
        );
        // The second hook saw the first one's tags.
        assert_eq!(b.1.lock().unwrap()[0]["env"], "prod");
        assert_eq!(b.1.lock().unwrap()[0]["a"], "1");

        let last = Arc::new(Tagger(vec![], Mutex::default()));
        let chain = ChainHook::new(vec![a, Arc::new(Deny), last.clone()]);
        assert!(matches!(chain.review(&req()), HookDecision::Deny { .. }));
        assert!(
            last.1.lock().unwrap().is_empty(),
            "hooks after a deny are not asked"
        );
    }
}
