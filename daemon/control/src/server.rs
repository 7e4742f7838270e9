//! Binding the control socket and serving connections until shutdown.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::unistd::{Group, chown};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, Body};
use crate::routes::{self, Ctx, Lookup};
use crate::{AppState, Caller, ControlError, MAX_BODY_BYTES};

/// How long shutdown waits for in-flight requests before dropping them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// Binds the control socket at `path`: mode 0660, group `group` (or the daemon's own).
///
/// A socket left by a dead daemon is replaced; a live one is an error naming its pid. The
/// socket's directory is created (0755) only when `create_dir` is set — callers pass it for the
/// default locations, so a typo in an explicit `control.socket` is reported instead of hidden.
/// Must be called inside a tokio runtime.
pub fn bind(
    path: &Path,
    group: Option<&str>,
    create_dir: bool,
) -> Result<UnixListener, ControlError> {
    let io = |action, source| ControlError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let gid = match group {
        None => None,
        Some(name) => match Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            _ => {
                return Err(ControlError::UnknownGroup {
                    group: name.to_owned(),
                });
            }
        },
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        if !create_dir {
            return Err(ControlError::SocketDirMissing {
                dir: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(live) => {
                let pid =
                    nix::sys::socket::getsockopt(&live, nix::sys::socket::sockopt::PeerCredentials)
                        .map(|c| c.pid())
                        .unwrap_or(0);
                return Err(ControlError::AlreadyRunning {
                    pid,
                    socket: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "replacing a stale control socket left by a stopped tetherd");
                std::fs::remove_file(path).map_err(|e| io("remove the stale", e))?;
            }
            Err(e) => return Err(io("probe the existing", e)),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io("chmod", e))?;
    if gid.is_some() {
        chown(path, None, gid).map_err(|e| io("chown", e.into()))?;
    }
    Ok(listener)
}

/// Serves `listener` until `shutdown` is cancelled, then lets in-flight requests finish for up to
/// [`DRAIN_TIMEOUT`]. Every connection task is owned by this function's tracker.
pub async fn serve(listener: UnixListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(slot) = stream
                        .peer_cred()
                        .ok()
                        .and_then(|c| state.connections.admit(c.uid(), &state.metrics))
                    else {
                        // Over a cap (or no credentials): closed at once, its descriptor freed.
                        drop(stream);
                        continue;
                    };
                    let (st, sd) = (Arc::clone(&state), shutdown.clone());
                    tracker.spawn(async move {
                        // Shared with requests, so a connection upgraded to a session (tether
                        // proxy, tether ssh) keeps its place under the caps while it lasts.
                        let slot = Arc::new(slot);
                        serve_connection(stream, st, sd, Arc::clone(&slot)).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tracker.len(),
            "control connections still open after the drain timeout; closing them"
        );
    }
}

async fn serve_connection(
    stream: UnixStream,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    slot: Arc<crate::connlimit::Slot>,
) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("could not read the peer credentials of a control connection: {e}");
            return;
        }
    };
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    // Peer credentials are the source; only the user database's answer (name, groups) is
    // reused for a few seconds (see `CallerCache`), so most connections skip the blocking pool.
    let Some(caller) = state.callers.resolve(uid, gid, pid).await else {
        return;
    };
    let caller = Arc::new(caller);
    let svc_state = Arc::clone(&state);
    let service = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(Arc::clone(&slot));
        let state = Arc::clone(&svc_state);
        let caller = Arc::clone(&caller);
        async move { Ok::<_, Infallible>(handle(req, caller, state).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.idle_timeout())
        .serve_connection(TokioIo::new(stream), service)
        // `tether proxy` and `tether ssh` switch the connection to SSH or session frames.
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    caller: Arc<Caller>,
    state: Arc<AppState>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let (label, resp) = route(req, caller, &state, &path).await;
    state
        .metrics
        .requests
        .with_label_values(&[label, resp.status().as_str()])
        .inc();
    resp
}

/// Counts a denial and, within the per-uid rate ([`crate::denials`]), records it as
/// `auth.denied` and logs it, with the caller's path and method cut to escaped excerpts.
async fn record_denial(
    state: &AppState,
    caller: &Caller,
    role: Option<tether_model::Role>,
    via: tether_audit::Via,
    method: &str,
    path: &str,
    reason: &str,
) {
    use crate::denials::{Verdict, excerpt};
    state.metrics.auth_denials.inc();
    let suppressed = match state.denials.check(caller.uid, std::time::Instant::now()) {
        Verdict::Record { suppressed } => suppressed,
        Verdict::Suppress => {
            state.metrics.auth_denials_unrecorded.inc();
            return;
        }
    };
    let (method, path) = (excerpt(method), excerpt(path));
    let mut data = serde_json::json!({"method": method, "path": path, "reason": reason});
    if suppressed > 0 {
        data["suppressed"] = suppressed.into();
    }
    if let Err(e) = state
        .audit(
            "auth.denied",
            crate::audit::actor(caller, role, via),
            None,
            data,
        )
        .await
    {
        tracing::error!("could not audit an auth denial: {e}");
    }
    tracing::warn!(caller = %caller.describe(), %method, %path, reason, suppressed, "control request refused");
}

async fn route(
    req: Request<Incoming>,
    caller: Arc<Caller>,
    state: &Arc<AppState>,
    path: &str,
) -> (&'static str, Response<Body>) {
    match route_or_refuse(req, caller, state, path).await {
        Routed::Answered(label, resp) => (label, resp),
        // Refused before the body was read: read (a bounded part of) it first, so the
        // answer is not lost to a connection closed with the request still arriving.
        Routed::Refused(label, resp, body) => {
            crate::http::discard_body(body, DISCARD_WAIT).await;
            (label, resp)
        }
    }
}

/// How long an early refusal waits for the rest of a small body ([`crate::http::discard_body`]).
const DISCARD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

enum Routed {
    /// The route ran (and read what it needed).
    Answered(&'static str, Response<Body>),
    /// Refused before any handler ran; the body is still unread.
    Refused(&'static str, Response<Body>, Incoming),
}

async fn route_or_refuse(
    req: Request<Incoming>,
    caller: Arc<Caller>,
    state: &Arc<AppState>,
    path: &str,
) -> Routed {
    let via = crate::audit::via_of(&req, &caller);
    let Some(role) = state.role_of(&caller) else {
        record_denial(
            state,
            &caller,
            None,
            via,
            req.method().as_str(),
            path,
            "no role",
        )
        .await;
        let who = match &caller.user {
            Some(name) => format!("uid:{} or user:{name}", caller.uid),
            None => format!("uid:{}", caller.uid),
        };
        let resp = http::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("{} has no role on this tetherd", caller.describe()),
            &format!(
                "an admin can add {who} to a role in [control.roles] of tetherd.toml, then reload (SIGHUP)"
            ),
        );
        return Routed::Refused("denied", resp, req.into_body());
    };
    match routes::lookup(req.method(), path) {
        Lookup::NotFound => {
            let resp = http::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route {} {path}", req.method()),
                "see daemon/control/openapi.yaml for the routes this tetherd serves",
            );
            Routed::Refused("unknown", resp, req.into_body())
        }
        Lookup::MethodNotAllowed(allowed) => {
            let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            let resp = http::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("{path} does not accept {}", req.method()),
                &format!("use {}", allowed.join(" or ")),
            );
            Routed::Refused("unknown", resp, req.into_body())
        }
        Lookup::Found(r, _) if !r.roles.contains(&role) => {
            record_denial(
                state,
                &caller,
                Some(role),
                via,
                r.method.as_str(),
                path,
                "role not allowed",
            )
            .await;
            let allowed: Vec<&str> = r.roles.iter().map(|r| r.as_str()).collect();
            let resp = http::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!(
                    "{} has role {role}, which may not call {} {}",
                    caller.describe(),
                    r.method,
                    r.path
                ),
                &format!("this needs one of: {}", allowed.join(", ")),
            );
            Routed::Refused(r.path, resp, req.into_body())
        }
        Lookup::Found(r, params) => {
            if !r.streamed_body
                && http::declared_length(&req).is_some_and(|n| n > MAX_BODY_BYTES as u64)
            {
                // Not read at all: the connection closes after the answer.
                return Routed::Answered(r.path, http::too_large().into_response());
            }
            let ctx = Ctx {
                state: Arc::clone(state),
                caller,
                role,
                via,
            };
            Routed::Answered(r.path, (r.handler)(req, ctx, params).await)
        }
    }
}
