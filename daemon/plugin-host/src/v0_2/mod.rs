//! Host side of `tether:plugin@0.2.0` (`plugin-sdk/wit/tether-plugin-0.2.0`): as 0.1.0, plus
//! the host's parse of the command for policy hooks (`request.parsed`) and the `tcp` import
//! for sinks.
//!
//! One module per WIT version: bindgen types stay in here; the host imports only translate
//! to and from [`crate::caps`], the single capability granter.

use crate::caps::{self, HttpError, HttpRequest, Level, TcpError};
use crate::store::StoreState;
use crate::types;

/// `alert-sink` world (it imports every interface, `tcp` included): the shared interfaces are
/// generated here once.
pub(crate) mod alert {
    wasmtime::component::bindgen!({
        world: "alert-sink",
        path: "../../plugin-sdk/wit/tether-plugin-0.2.0",
    });
}

/// A world whose shared interfaces are the ones generated in [`alert`] (so one host
/// implementation serves every world); `tcp` is mapped only for worlds that import it.
macro_rules! world {
    ($(#[$doc:meta])* $module:ident, $world:literal $(, $extra:literal => $path:path)*) => {
        $(#[$doc])*
        pub(crate) mod $module {
            wasmtime::component::bindgen!({
                world: $world,
                path: "../../plugin-sdk/wit/tether-plugin-0.2.0",
                with: {
                    "tether:plugin/types": super::alert::tether::plugin::types,
                    "tether:plugin/http": super::alert::tether::plugin::http,
                    $($extra: $path,)*
                    "tether:plugin/secrets": super::alert::tether::plugin::secrets,
                    "tether:plugin/config": super::alert::tether::plugin::config,
                    "tether:plugin/log": super::alert::tether::plugin::log,
                    "tether:plugin/clock": super::alert::tether::plugin::clock,
                },
            });
        }
    };
}

world!(
    /// `policy-hook` world.
    policy,
    "policy-hook"
);
world!(
    /// `audit-sink` world.
    audit,
    "audit-sink",
    "tether:plugin/tcp" => super::alert::tether::plugin::tcp
);
world!(
    /// `enrollment-hook` world.
    enroll,
    "enrollment-hook"
);

use alert::tether::plugin as wit;

/// Adds the tether host imports (all worlds import the same set) to `linker`.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<StoreState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    alert::AlertSink::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
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

impl wit::tcp::Host for StoreState {
    fn connect(&mut self, host: String, port: u16) -> Result<u32, wit::tcp::Error> {
        let deadline = self.deadline;
        self.tcp_connect(&host, port, deadline).map_err(tcp_error)
    }

    fn send(&mut self, conn: u32, data: Vec<u8>) -> Result<(), wit::tcp::Error> {
        let deadline = self.deadline;
        self.tcp_send(conn, &data, deadline).map_err(tcp_error)
    }

    fn receive(
        &mut self,
        conn: u32,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, wit::tcp::Error> {
        let deadline = self.deadline;
        self.tcp_receive(conn, max_bytes, timeout_ms, deadline)
            .map_err(tcp_error)
    }

    fn close(&mut self, conn: u32) {
        self.tcp_close(conn);
    }
}

fn tcp_error(e: TcpError) -> wit::tcp::Error {
    match e {
        TcpError::NotAllowed(s) => wit::tcp::Error::NotAllowed(s),
        TcpError::Timeout => wit::tcp::Error::Timeout,
        TcpError::TooLarge => wit::tcp::Error::TooLarge,
        TcpError::Closed => wit::tcp::Error::Closed,
        TcpError::Failed(s) => wit::tcp::Error::Failed(s),
    }
}

/// The host's parse of the request's command, as this WIT version spells it: by `parse` (the
/// policy in force) when given, else with the built-in wrapper table.
fn parsed(
    req: &tether_policy::Request,
    parse: Option<tether_policy::CommandParser<'_>>,
) -> wit::types::Parsed {
    use wit::types as t;
    let Some(cmd) = req.command.as_deref() else {
        return t::Parsed::None;
    };
    let cwd = match req.kind {
        tether_policy::RequestKind::Exec => req.path.as_deref(),
        _ => None,
    };
    let cmds = match parse {
        Some(p) => p(cmd, cwd),
        None => tether_policy::parse_commands(cmd, cwd),
    };
    match cmds {
        Ok(cmds) => t::Parsed::Commands(
            cmds.into_iter()
                .map(|c| t::Command {
                    argv: c.argv,
                    redirects: c
                        .redirects
                        .into_iter()
                        .map(|(op, target)| t::Redirect { op, target })
                        .collect(),
                    paths: c.paths,
                    via: c.via,
                })
                .collect(),
        ),
        Err(why) => t::Parsed::Unparsable(why),
    }
}

/// The policy's request as this WIT version spells it: the one place a
/// [`tether_policy::Request`] becomes a guest's `request` record.
fn policy_request(
    req: &tether_policy::Request,
    parse: Option<tether_policy::CommandParser<'_>>,
) -> wit::types::Request {
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
        parsed: parsed(req, parse),
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

    /// Instantiates the component in `store`.
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
        parse: Option<tether_policy::CommandParser<'_>>,
    ) -> Called<tether_policy::Vote> {
        let Bindings::Policy(b) = self else {
            return Ok(None);
        };
        use tether_policy::Vote;
        use wit::types::Verdict;
        Ok(Some(
            match b.call_evaluate(&mut *store, &policy_request(req, parse))? {
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

    /// Calls an alert sink's `deliver`.
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

    /// Calls an audit sink's `deliver-batch`.
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

    /// Calls an enrollment hook's `on-enroll`.
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
