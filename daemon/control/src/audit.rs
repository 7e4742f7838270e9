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

/// How a request reached the daemon. The caller's [`VIA_HEADER`] is only a claim: it is
/// believed (`cli` or `mcp`) only when the peer process runs the `tether` CLI installed beside
/// this daemon (the same file, by device and inode, as `/proc/PID/exe` of the peer from
/// `SO_PEERCRED`). Every other client of the socket is recorded as `api`, whatever it claims.
pub(crate) fn via_of<B>(req: &hyper::Request<B>, caller: &Caller) -> Via {
    let claim = match req.headers().get(VIA_HEADER).and_then(|v| v.to_str().ok()) {
        Some("cli") => Via::Cli,
        Some("mcp") => Via::Mcp,
        _ => return Via::Api,
    };
    if caller.pid.is_some_and(peer_runs_the_cli) {
        claim
    } else {
        Via::Api
    }
}

/// Device and inode of the `tether` binary beside this daemon's executable, if there is one.
static CLI_BINARY: std::sync::LazyLock<Option<(u64, u64)>> = std::sync::LazyLock::new(|| {
    use std::os::unix::fs::MetadataExt as _;
    let exe = std::env::current_exe().ok()?;
    let meta = std::fs::metadata(exe.parent()?.join("tether")).ok()?;
    Some((meta.dev(), meta.ino()))
});

/// Whether process `pid` executes the `tether` CLI binary (false when it can't be told, e.g.
/// another uid's process seen by an unprivileged daemon).
fn peer_runs_the_cli(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(cli) = *CLI_BINARY else {
        return false;
    };
    std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| (m.dev(), m.ino()) == cli)
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
