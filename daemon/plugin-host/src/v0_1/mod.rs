//! Host side of `tether:plugin@0.1.0` (`plugin-sdk/wit/tether-plugin-0.1.0`).
//!
//! One module per WIT version: bindgen types stay in here; the host imports only translate
//! to and from [`crate::caps`], the single capability granter.

use crate::caps::{self, HttpError, HttpRequest, Level};
use crate::store::StoreState;
use crate::types;

/// `policy-hook` world; the shared interfaces are generated here once.
pub(crate) mod policy {
    wasmtime::component::bindgen!({
        world: "policy-hook",
        path: "../../plugin-sdk/wit/tether-plugin-0.1.0",
    });
}

/// A world whose shared interfaces are the ones generated in [`policy`] (so one host
/// implementation serves every world).
macro_rules! world {
    ($(#[$doc:meta])* $module:ident, $world:literal) => {
        $(#[$doc])*
        pub(crate) mod $module {
            wasmtime::component::bindgen!({
                world: $world,
                path: "../../plugin-sdk/wit/tether-plugin-0.1.0",
                with: {
                    "tether:plugin/types": super::policy::tether::plugin::types,
                    "tether:plugin/http": super::policy::tether::plugin::http,
                    "tether:plugin/secrets": super::policy::tether::plugin::secrets,
                    "tether:plugin/config": super::policy::tether::plugin::config,
                    "tether:plugin/log": super::policy::tether::plugin::log,
                    "tether:plugin/clock": super::policy::tether::plugin::clock,
                },
            });
        }
    };
}

world!(
    /// `alert-sink` world.
    alert,
    "alert-sink"
);
world!(
    /// `audit-sink` world.
    audit,
    "audit-sink"
);
world!(
    /// `enrollment-hook` world.
    enroll,
    "enrollment-hook"
);

use policy::tether::plugin as wit;

/// Adds the tether host imports (all worlds import the same set) to `linker`.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<StoreState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    policy::PolicyHook::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
}

impl wit::types::Host for StoreState {}

impl wit::log::Host for StoreState {
    fn log(&mut self, level: wit::log::Level, message: String) {
        let level = match level {
            wit::log::Level::Debug => Level::Debug,
            wit::log::Level::Info => Level::Info,
            wit::log::Level::Warn => Level::Warn,
            wit::log::Level::Error => Level::Error,
        };
        self.grants.log(level, &message);
    }
}

impl wit::clock::Host for StoreState {
    fn now_unix_ms(&mut self) -> u64 {
        self.grants.now_unix_ms()
    }
}

impl wit::config::Host for StoreState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config_value(&key)
    }
}

impl wit::secrets::Host for StoreState {
    fn get(&mut self, name: String) -> Option<Vec<u8>> {
        // The guest gets its own copy; ours is zeroed on drop.
        self.grants.secret(&name).map(|s| s.to_vec())
    }
}

impl wit::http::Host for StoreState {
    fn send(&mut self, req: wit::http::Request) -> Result<wit::http::Response, wit::http::Error> {
        let r = self.grants.http(
            HttpRequest {
                method: req.method,
                url: req.url,
                headers: req.headers,
                body: req.body,
            },
            self.deadline,
        );
        match r {
            Ok(caps::HttpResponse {
                status,
                headers,
                body,
            }) => Ok(wit::http::Response {
                status,
                headers,
                body,
            }),
            Err(HttpError::NotAllowed(s)) => Err(wit::http::Error::NotAllowed(s)),
            Err(HttpError::Timeout) => Err(wit::http::Error::Timeout),
            Err(HttpError::TooLarge) => Err(wit::http::Error::TooLarge),
            Err(HttpError::Failed(s)) => Err(wit::http::Error::Failed(s)),
        }
    }
}

/// The policy's request as this WIT version spells it: the one place a
/// [`tether_policy::Request`] becomes a guest's `request` record.
fn policy_request(req: &tether_policy::Request) -> wit::types::Request {
    use tether_policy::RequestKind as K;
    use wit::types as t;
    t::Request {
        kind: match req.kind {
            K::Exec => t::RequestKind::Exec,
            K::FileRead => t::RequestKind::FileRead,
            K::FileWrite => t::RequestKind::FileWrite,
            K::Session => t::RequestKind::Session,
        },
        command: req.command.clone(),
        path: req.path.clone(),
        user: req.user.clone(),
        role: req.role.as_str().to_owned(),
        host: t::HostFacts {
            name: req.host.name.clone(),
            groups: req.host.groups.clone(),
            tags: req
                .host
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
        ticket: req.ticket.clone(),
    }
}

/// Instantiated bindings of one plugin, by world.
pub(crate) enum Bindings {
    Policy(policy::PolicyHook),
    Alert(alert::AlertSink),
    Audit(audit::AuditSink),
    Enroll(enroll::EnrollmentHook),
}

/// A pre-linked component, ready to instantiate cheaply, by world.
#[derive(Clone)]
pub(crate) enum Pre {
    Policy(policy::PolicyHookPre<StoreState>),
    Alert(alert::AlertSinkPre<StoreState>),
    Audit(audit::AuditSinkPre<StoreState>),
    Enroll(enroll::EnrollmentHookPre<StoreState>),
}

impl Pre {
    /// Type-checks `pre` against the world for `kind`.
    pub fn new(
        kind: crate::manifest::PluginKind,
        pre: wasmtime::component::InstancePre<StoreState>,
    ) -> wasmtime::Result<Pre> {
        use crate::manifest::PluginKind as K;
        Ok(match kind {
            K::Policy => Pre::Policy(policy::PolicyHookPre::new(pre)?),
            K::AlertSink => Pre::Alert(alert::AlertSinkPre::new(pre)?),
            K::AuditSink => Pre::Audit(audit::AuditSinkPre::new(pre)?),
            K::EnrollmentHook => Pre::Enroll(enroll::EnrollmentHookPre::new(pre)?),
        })
    }

    pub fn instantiate(
        &self,
        store: &mut wasmtime::Store<StoreState>,
    ) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::Policy(p) => Bindings::Policy(p.instantiate(store)?),
            Pre::Alert(p) => Bindings::Alert(p.instantiate(store)?),
            Pre::Audit(p) => Bindings::Audit(p.instantiate(store)?),
            Pre::Enroll(p) => Bindings::Enroll(p.instantiate(store)?),
        })
    }
}

use crate::abi::Called;

impl Bindings {
    /// `None` when the bindings are of another world (a host bug, never a plugin's).
    pub fn evaluate(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        req: &tether_policy::Request,
    ) -> Called<tether_policy::Vote> {
        let Bindings::Policy(b) = self else {
            return Ok(None);
        };
        use tether_policy::Vote;
        use wit::types::Verdict;
        Ok(Some(
            match b.call_evaluate(&mut *store, &policy_request(req))? {
                Verdict::Allow => (Vote::Allow, 0),
                Verdict::Abstain => (Vote::Abstain, 0),
                Verdict::Deny(s) => {
                    let n = s.len();
                    (Vote::Deny(s), n)
                }
                Verdict::RequireApproval(s) => {
                    let n = s.len();
                    (Vote::RequireApproval(s), n)
                }
            },
        ))
    }

    pub fn deliver_alert(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        a: &tether_model::Alert,
    ) -> Called<Result<(), String>> {
        let Bindings::Alert(b) = self else {
            return Ok(None);
        };
        use wit::types as t;
        let alert = t::Alert {
            kind: a.kind.clone(),
            severity: match a.severity {
                tether_model::Severity::Info => t::Severity::Info,
                tether_model::Severity::Warning => t::Severity::Warning,
                tether_model::Severity::Critical => t::Severity::Critical,
            },
            host: a.host.clone(),
            message: a.message.clone(),
        };
        let r = b.call_deliver(&mut *store, &alert)?;
        let n = r.as_ref().err().map_or(0, String::len);
        Ok(Some((r, n)))
    }

    pub fn deliver_audit(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        events: &[types::AuditRecord],
    ) -> Called<Result<(), String>> {
        let Bindings::Audit(b) = self else {
            return Ok(None);
        };
        let evs: Vec<wit::types::AuditEvent> = events
            .iter()
            .map(|e| wit::types::AuditEvent {
                seq: e.seq,
                ts: e.ts.clone(),
                kind: e.kind.clone(),
                actor_uid: e.actor_uid,
                actor_user: e.actor_user.clone(),
                actor_role: e.actor_role.clone(),
                via: e.via.clone(),
                host: e.host.clone(),
                data_json: e.data_json.clone(),
            })
            .collect();
        let r = b.call_deliver_batch(&mut *store, &evs)?;
        let n = r.as_ref().err().map_or(0, String::len);
        Ok(Some((r, n)))
    }

    pub fn on_enroll(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        req: &types::EnrollRequest,
    ) -> Called<types::EnrollDecision> {
        let Bindings::Enroll(b) = self else {
            return Ok(None);
        };
        let r = wit::types::EnrollRequest {
            name: req.name.clone(),
            hostname: req.hostname.clone(),
            overlay_ip: req.overlay_ip.clone(),
            tags: req.tags.clone(),
            groups: req.groups.clone(),
            peer: req.peer.clone(),
        };
        Ok(Some(match b.call_on_enroll(&mut *store, &r)? {
            wit::types::EnrollDecision::Approve(tags) => {
                let n = tags.iter().map(|(k, v)| k.len() + v.len()).sum();
                (types::EnrollDecision::Approve(tags), n)
            }
            wit::types::EnrollDecision::Deny(s) => {
                let n = s.len();
                (types::EnrollDecision::Deny(s), n)
            }
        }))
    }
}
