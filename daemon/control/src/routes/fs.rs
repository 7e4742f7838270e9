//! `/v1/fs/{get,put,list,stat}`: files on targets over SFTP through the hub's SSH pool.
//!
//! Order of events, each before the next: the host (or selector) is resolved against the
//! inventory; the path is checked to be absolute; the policy is asked for every host
//! (`file_read` for get/list/stat, `file_write` for put: `deny_paths`, `allowed_roots`, scopes,
//! plugin votes) — a deny records `fs.denied` and refuses with 403, so nothing is sent; a
//! `fs.<op>` record with `"stage": "requested"` is written (durable; a failed write refuses);
//! only then is the target asked, and it confines the path again below its own
//! `[files] allowed_roots`. Each host ends with a `fs.<op>` record with `"stage": "result"`:
//! path, size, SHA-256, or the error code (an escape attempt shows up as `"error": "escape"`).
//!
//! Uploads stream the request body to every selected host at once (no copy on the hub), bound
//! by the hub's `[files] max_file_size` while streaming: a body that passes it aborts every
//! host's upload (their temp files are removed; the old files stay) and answers 413.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest, Sha256};
use tether_api::{
    FsEntry, FsGetEvent, FsList, FsPathRequest, FsPutHost, FsPutQuery, FsPutResponse, FsStat,
};
use tether_enroll::HostRecord;
use tether_policy::{RequestKind, Verdict};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::http::{Body, Fail};
use crate::state::{ExecHost, FileError, FileMeta, RemoteFiles};
use crate::stream;

/// Longest path accepted, bytes.
const MAX_PATH: usize = 4096;
/// Most hosts one upload goes to (the body is streamed to all at once).
const MAX_PUT_HOSTS: usize = 100;

fn remote(ctx: &Ctx) -> Result<Arc<dyn RemoteFiles>, Fail> {
    ctx.state.files.clone().ok_or_else(|| {
        Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "files_unavailable",
            "this hub runs without its SSH pool, so no file can be moved",
            "start tetherd normally (tetherd run --role hub)",
        )
    })
}

fn check_path(path: &str) -> Result<(), Fail> {
    if !path.starts_with('/') || path.len() > MAX_PATH || path.contains('\0') {
        return Err(Fail::bad_request(
            "invalid_path",
            format!("{path:?} is not an absolute path of at most {MAX_PATH} bytes"),
            "give the full path on the target: HOST:/srv/app/config.yml",
        ));
    }
    Ok(())
}

fn target(h: &HostRecord) -> ExecHost {
    ExecHost {
        name: h.name.clone(),
        ip: h.overlay_ip,
        host_key: h.ssh_host_key.clone(),
        user: h.ssh_user.clone(),
    }
}

/// The single active host named `name`, or 404.
fn one_host(ctx: &Ctx, name: &str) -> Result<HostRecord, Fail> {
    let hub = super::vpn::hub(ctx)?;
    hub.inventory()
        .get(name)
        .filter(HostRecord::is_active)
        .ok_or_else(|| {
            Fail::new(
                StatusCode::NOT_FOUND,
                "no_hosts",
                format!("no enrolled, active host is named {name:?}"),
                "`tether hosts list` shows the names",
            )
        })
}

/// Asks the policy about `path` on every host; records and refuses denials.
async fn check_policy(
    ctx: &Ctx,
    op: &str,
    hosts: &[HostRecord],
    kind: RequestKind,
    path: &str,
) -> Result<(), Fail> {
    if ctx.state.policy.is_none() {
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_unavailable",
            "this tetherd runs without a policy engine, so no file may move",
            "start tetherd normally (tetherd run)",
        ));
    }
    let user = ctx
        .caller
        .user
        .clone()
        .unwrap_or_else(|| format!("uid:{}", ctx.caller.uid));
    let requests: Vec<tether_policy::Request> = hosts
        .iter()
        .map(|h| tether_policy::Request {
            kind,
            command: None,
            path: Some(path.to_owned()),
            user: user.clone(),
            role: ctx.role,
            host: h.facts(),
            ticket: None,
        })
        .collect();
    let checked = super::exec::check_all(ctx, requests).await?;
    let mut refused = Vec::new();
    for (host, c) in hosts.iter().zip(&checked) {
        if matches!(c.decision.verdict, Verdict::Deny | Verdict::RequireApproval) {
            ctx.state
                .audit_or_refuse(
                    "fs.denied",
                    ctx.actor(),
                    Some(&host.name),
                    json!({
                        "op": op,
                        "path": path,
                        "verdict": c.decision.verdict,
                        "rules": c.decision.rule_ids,
                        "reason": c.decision.reason,
                        "plugin_votes": c.plugin_votes,
                    }),
                )
                .await?;
            refused.push((host.name.clone(), c.decision.reason.to_string()));
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = refused.iter().map(|(h, _)| h.as_str()).collect();
    Err(Fail::new(
        StatusCode::FORBIDDEN,
        "policy_denied",
        format!(
            "the policy denies fs {op} of {path} on {}: {}; nothing was sent",
            names.join(", "),
            refused[0].1
        ),
        "`tether policy check` explains the decision; ask an admin to adjust deny_paths or allowed_roots",
    ))
}

/// The `fs.<op>` record before anything is sent.
async fn requested(
    ctx: &Ctx,
    op: &str,
    host: Option<&str>,
    data: serde_json::Value,
) -> Result<(), Fail> {
    let mut d = json!({"stage": "requested"});
    if let (Some(d), Some(extra)) = (d.as_object_mut(), data.as_object()) {
        d.extend(extra.clone());
    }
    ctx.state
        .audit_or_refuse(&format!("fs.{op}"), ctx.actor(), host, d)
        .await
}

/// The `fs.<op>` record after the host answered.
async fn result(
    ctx: &Ctx,
    op: &str,
    host: &str,
    path: &str,
    outcome: Result<(u64, Option<String>), &FileError>,
) {
    let data = match outcome {
        Ok((size, sha256)) => {
            json!({"stage": "result", "path": path, "ok": true, "size": size, "sha256": sha256})
        }
        Err(e) => {
            json!({"stage": "result", "path": path, "ok": false, "error": e.code, "message": e.message})
        }
    };
    if let Err(e) = ctx
        .state
        .audit(&format!("fs.{op}"), ctx.actor(), Some(host), data)
        .await
    {
        tracing::error!(host, "could not audit an fs.{op} result: {e}");
    }
}

/// The HTTP answer for a target's refusal.
fn failed(host: &str, e: &FileError) -> Fail {
    let status = match e.code.as_str() {
        "not_found" => StatusCode::NOT_FOUND,
        "escape" | "denied" | "outside_roots" | "hard_link" | "policy" | "disabled"
        | "permission_denied" => StatusCode::FORBIDDEN,
        "invalid_path" | "wrong_type" => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    Fail::new(
        status,
        &e.code,
        format!("{host}: {}", e.message),
        if e.code == "permission_denied" {
            "the target runs file operations as its ssh.run_as user; give that user access to the path"
        } else {
            "the target confines files below its [files] allowed_roots and applies its deny_paths"
        },
    )
}

fn entry(m: &FileMeta) -> FsEntry {
    crate::convert::fs_entry(m)
}

/// `GET /v1/fs/stat`.
pub(crate) async fn stat(ctx: Ctx, req: FsPathRequest) -> Result<FsStat, Fail> {
    check_path(&req.path)?;
    let host = one_host(&ctx, &req.host)?;
    let files = remote(&ctx)?;
    check_policy(
        &ctx,
        "stat",
        std::slice::from_ref(&host),
        RequestKind::FileRead,
        &req.path,
    )
    .await?;
    requested(&ctx, "stat", Some(&host.name), json!({"path": req.path})).await?;
    let r = files.stat(target(&host), req.path.clone()).await;
    result(
        &ctx,
        "stat",
        &host.name,
        &req.path,
        r.as_ref().map(|m| (m.size, None)),
    )
    .await;
    let m = r.map_err(|e| failed(&host.name, &e))?;
    Ok(FsStat {
        host: host.name,
        entry: entry(&m),
    })
}

/// `GET /v1/fs/list`.
pub(crate) async fn list(ctx: Ctx, req: FsPathRequest) -> Result<FsList, Fail> {
    check_path(&req.path)?;
    let host = one_host(&ctx, &req.host)?;
    let files = remote(&ctx)?;
    check_policy(
        &ctx,
        "ls",
        std::slice::from_ref(&host),
        RequestKind::FileRead,
        &req.path,
    )
    .await?;
    requested(&ctx, "ls", Some(&host.name), json!({"path": req.path})).await?;
    let r = files.list(target(&host), req.path.clone()).await;
    result(
        &ctx,
        "ls",
        &host.name,
        &req.path,
        r.as_ref().map(|l| (l.len() as u64, None)),
    )
    .await;
    let l = r.map_err(|e| failed(&host.name, &e))?;
    Ok(FsList {
        host: host.name,
        path: req.path,
        entries: l.iter().map(entry).collect(),
    })
}

async fn emit(tx: &mpsc::Sender<Bytes>, event: &FsGetEvent) -> bool {
    let Ok(mut line) = serde_json::to_vec(event) else {
        return true;
    };
    line.push(b'\n');
    tx.send(Bytes::from(line)).await.is_ok()
}

/// `POST /v1/fs/get`.
pub(crate) async fn get(ctx: Ctx, req: FsPathRequest) -> Result<Body, Fail> {
    check_path(&req.path)?;
    let host = one_host(&ctx, &req.host)?;
    let files = remote(&ctx)?;
    check_policy(
        &ctx,
        "get",
        std::slice::from_ref(&host),
        RequestKind::FileRead,
        &req.path,
    )
    .await?;
    requested(&ctx, "get", Some(&host.name), json!({"path": req.path})).await?;
    let (opened_tx, opened_rx) = oneshot::channel();
    let (data_tx, mut data_rx) = mpsc::channel::<Bytes>(8);
    let task = {
        let (files, t, p) = (Arc::clone(&files), target(&host), req.path.clone());
        tokio::spawn(async move { files.get(t, p, opened_tx, data_tx).await })
    };
    // Wait until the file is open, so a refusal is an HTTP error rather than a broken stream.
    let size = match opened_rx.await {
        Ok(size) => size,
        Err(_) => {
            let r = match task.await {
                Ok(Err(e)) => e,
                _ => FileError {
                    code: "internal".to_owned(),
                    message: "the download task ended without a result".to_owned(),
                },
            };
            result(&ctx, "get", &host.name, &req.path, Err(&r)).await;
            return Err(failed(&host.name, &r));
        }
    };
    let (tx, body) = stream::channel(16);
    tokio::spawn(async move {
        let name = host.name.clone();
        let mut client_gone = !emit(
            &tx,
            &FsGetEvent::Started {
                host: name.clone(),
                path: req.path.clone(),
                size,
            },
        )
        .await;
        while let Some(chunk) = data_rx.recv().await {
            if client_gone {
                break;
            }
            let data = base64::engine::general_purpose::STANDARD.encode(&chunk);
            client_gone = !emit(&tx, &FsGetEvent::Data { data }).await;
        }
        // Dropping the receiver stops the download if the client went away.
        drop(data_rx);
        let r = match task.await {
            Ok(r) => r,
            Err(_) => Err(FileError {
                code: "internal".to_owned(),
                message: "the download task panicked".to_owned(),
            }),
        };
        let r = match (r, client_gone) {
            (Ok(_), true) => Err(FileError {
                code: "cancelled".to_owned(),
                message: "the client went away".to_owned(),
            }),
            (r, _) => r,
        };
        result(
            &ctx,
            "get",
            &name,
            &req.path,
            r.as_ref().map(|d| (d.size, Some(d.sha256.clone()))),
        )
        .await;
        let last = match r {
            Ok(d) => FsGetEvent::Done {
                size: d.size,
                sha256: d.sha256,
            },
            Err(e) => FsGetEvent::Error {
                code: e.code,
                message: e.message,
            },
        };
        emit(&tx, &last).await;
    });
    Ok(body)
}

fn parse_mode(mode: Option<&str>) -> Result<Option<u32>, Fail> {
    match mode {
        None => Ok(None),
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|v| *v <= 0o7777)
            .map(Some)
            .ok_or_else(|| {
                Fail::bad_request(
                    "invalid_option",
                    format!("mode {m:?} is not octal permission bits like 644 or 0755"),
                    "--mode 644",
                )
            }),
    }
}

/// `POST /v1/fs/put`.
pub(crate) async fn put(
    ctx: Ctx,
    req: FsPutQuery,
    mut body: Incoming,
) -> Result<FsPutResponse, Fail> {
    let wait = ctx
        .state
        .idle_timeout()
        .min(std::time::Duration::from_secs(1));
    let result = put_from(ctx, req, &mut body).await;
    if result.is_err() {
        // Refused before the whole body was read (bad path, policy, limits): read a small
        // rest first, so the client, still sending it, gets the answer rather than a broken
        // pipe (see `http::discard_body`). A bigger rest is left; the connection then closes.
        crate::http::discard_body(body, wait).await;
    }
    result
}

async fn put_from(ctx: Ctx, req: FsPutQuery, body: &mut Incoming) -> Result<FsPutResponse, Fail> {
    check_path(&req.path)?;
    if req.path.ends_with('/') {
        return Err(Fail::bad_request(
            "invalid_path",
            format!("{} names a directory; give the file's path", req.path),
            "tether fs put LOCAL HOST:/dir/name",
        ));
    }
    let mode = parse_mode(req.mode.as_deref())?;
    if let Some(s) = &req.sha256
        && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Fail::bad_request(
            "invalid_option",
            "sha256 is not 64 hex digits".to_owned(),
            "leave it out or send the body's SHA-256",
        ));
    }
    let hosts = super::exec::resolve(&ctx, &req.selector)?;
    if hosts.len() > MAX_PUT_HOSTS {
        return Err(Fail::bad_request(
            "too_many_hosts",
            format!(
                "the selector matches {} hosts; one upload goes to at most {MAX_PUT_HOSTS}",
                hosts.len()
            ),
            "split the selector",
        ));
    }
    let files = remote(&ctx)?;
    let max = ctx.state.config().files.max_file_size;
    let declared = body_length(body);
    check_policy(&ctx, "put", &hosts, RequestKind::FileWrite, &req.path).await?;
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    requested(
        &ctx,
        "put",
        None,
        json!({"path": req.path, "hosts": names, "selector": req.selector, "sha256": req.sha256, "size": declared, "mode": req.mode}),
    )
    .await?;
    let abort = CancellationToken::new();
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for h in &hosts {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        senders.push(tx);
        let (files, t, p, sha, abort) = (
            Arc::clone(&files),
            target(h),
            req.path.clone(),
            req.sha256.clone(),
            abort.clone(),
        );
        tasks.push(tokio::spawn(async move {
            files.put(t, p, mode, rx, sha, abort).await
        }));
    }
    // Stream the body to every host as it arrives, bounded by max_file_size.
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let idle = ctx.state.idle_timeout();
    let mut failure: Option<Fail> = None;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                failure = Some(Fail::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "no upload data arrived for {} s; the upload was discarded",
                        idle.as_secs()
                    ),
                    "retry; keep the connection busy",
                ));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                failure = Some(Fail::bad_request(
                    "body_broken",
                    format!(
                        "the upload body broke off after {total} bytes: {e}; nothing was replaced"
                    ),
                    "retry the upload",
                ));
                break;
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max {
            failure = Some(too_large(max));
            break;
        }
        hasher.update(&data);
        for tx in &senders {
            // A host that failed has dropped its receiver; the others go on.
            let _ = tx.send(data.clone()).await;
        }
    }
    let sha256 = hex::encode(hasher.finalize());
    if failure.is_some() {
        abort.cancel();
    }
    drop(senders);
    let mut results = Vec::new();
    for (h, task) in hosts.iter().zip(tasks) {
        let r = task.await.unwrap_or_else(|_| {
            Err(FileError {
                code: "internal".to_owned(),
                message: "the upload task panicked".to_owned(),
            })
        });
        let r = match (r, &failure) {
            (Err(e), Some(f)) if e.code == "cancelled" => Err(FileError {
                code: f.error.code.clone(),
                message: f.error.message.clone(),
            }),
            (r, _) => r,
        };
        result(
            &ctx,
            "put",
            &h.name,
            &req.path,
            r.as_ref().map(|d| (d.size, Some(d.sha256.clone()))),
        )
        .await;
        results.push(match r {
            Ok(d) => FsPutHost {
                host: h.name.clone(),
                ok: true,
                size: d.size,
                sha256: Some(d.sha256),
                code: None,
                message: None,
            },
            Err(e) => FsPutHost {
                host: h.name.clone(),
                ok: false,
                size: 0,
                sha256: None,
                code: Some(e.code),
                message: Some(e.message),
            },
        });
    }
    if let Some(f) = failure {
        return Err(f);
    }
    Ok(FsPutResponse {
        path: req.path,
        size: total,
        sha256,
        hosts: results,
    })
}

fn body_length(body: &Incoming) -> Option<u64> {
    use hyper::body::Body as _;
    body.size_hint().exact()
}

fn too_large(max: u64) -> Fail {
    Fail::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!(
            "the upload is larger than the hub's max_file_size of {max} bytes; nothing was replaced"
        ),
        "raise [files] max_file_size on the hub and the targets, or send a smaller file",
    )
}
