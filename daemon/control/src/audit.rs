//! Writing audit events for control API actions, and the rule that goes with it: an action
//! whose record cannot be made durable is refused.

use hyper::StatusCode;
use serde_json::Value;
use tether_audit::{Actor, Event, Via};
use tether_model::Role;

use crate::http::Fail;
use crate::{AppState, Caller};

/// Header the CLI (`cli`) and the MCP server (`mcp`) send so records say how a caller came in;
/// anything else is `api`.
pub use tether_api::VIA_HEADER;

/// How a request reached the daemon, from [`VIA_HEADER`].
pub(crate) fn via_of<B>(req: &hyper::Request<B>) -> Via {
    match req.headers().get(VIA_HEADER).and_then(|v| v.to_str().ok()) {
        Some("cli") => Via::Cli,
        Some("mcp") => Via::Mcp,
        _ => Via::Api,
    }
}

/// The audit actor for a control API caller.
pub fn actor(caller: &Caller, role: Option<Role>, via: Via) -> Actor {
    Actor {
        uid: caller.uid,
        user: caller
            .user
            .clone()
            .unwrap_or_else(|| format!("uid:{}", caller.uid)),
        role,
        via,
    }
}

/// The audit actor for the daemon itself (start, stop, SIGHUP).
pub fn daemon_actor() -> Actor {
    let uid = nix::unistd::geteuid().as_raw();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid:{uid}"), |u| u.name);
    Actor {
        uid,
        user,
        role: Some(Role::Admin),
        via: Via::Daemon,
    }
}

impl AppState {
    /// Appends one event and waits until it is durable. Without an audit log (tools, tests)
    /// this is a no-op.
    pub async fn audit(
        &self,
        kind: &str,
        actor: Actor,
        host: Option<&str>,
        data: Value,
    ) -> Result<(), tether_audit::AuditError> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        let mut event = Event::new(kind, actor).data(data);
        if let Some(h) = host {
            event = event.host(h);
        }
        log.append(&event).await.map(|_| ())
    }

    /// [`AppState::audit`] for a request about to act: on failure the caller gets `503` and the
    /// action must not run.
    pub(crate) async fn audit_or_refuse(
        &self,
        kind: &str,
        actor: Actor,
        host: Option<&str>,
        data: Value,
    ) -> Result<(), Fail> {
        self.audit(kind, actor, host, data).await.map_err(|e| {
            tracing::error!(kind, "audit write failed; refusing the action: {e}");
            Fail::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                format!(
                    "the action was refused because its audit record could not be written: {e}"
                ),
                "free space or fix permissions in state_dir/audit, then retry",
            )
        })
    }
}
