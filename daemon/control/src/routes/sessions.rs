//! `/v1/sessions`: recorded sessions in `state_dir/recordings/ID.cast`. Listing reads only each
//! file's header; showing one verifies its whole chain; both that and reading the recording
//! are audited (`session.read`), like reads of the audit log. Everything streams: memory stays
//! constant whatever a recording's size.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;
use tether_api::{SessionDetail, SessionInfo, SessionList, SessionRef, SessionsQuery};
use tether_recording::{Header, Verdict, Verifier};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

use super::Ctx;
use crate::http::{Body, Fail};
use crate::stream;

/// Longest line accepted when reading a recording (a header, or one event's data).
const MAX_LINE: u64 = 4 << 20;
/// Most sessions one list answers.
const MAX_LIST: usize = 10_000;

fn dir(ctx: &Ctx) -> Result<PathBuf, Fail> {
    ctx.state.recordings.clone().ok_or_else(|| {
        Fail::new(
            StatusCode::NOT_FOUND,
            "no_recordings",
            "this tetherd keeps no session recordings (only a hub does)",
            "ask the hub: tether --socket HUB_SOCKET sessions list",
        )
    })
}

fn not_found(id: &str) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        "unknown_session",
        format!("no recording {id:?}"),
        "see `tether sessions list`",
    )
}

fn path_of(ctx: &Ctx, id: &str) -> Result<PathBuf, Fail> {
    tether_recording::valid_id(id)
        .map_err(|e| Fail::bad_request("invalid_session_id", e.to_string(), ""))?;
    let p = dir(ctx)?.join(format!("{id}.cast"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(not_found(id))
    }
}

async fn audited(ctx: &Ctx, what: &str, id: &str) -> Result<(), Fail> {
    ctx.state
        .audit_or_refuse(
            "session.read",
            ctx.actor(),
            None,
            json!({"what": what, "id": id}),
        )
        .await
}

/// The header of `path` and the file's size; `None` for a file that isn't a recording.
async fn info(path: &Path) -> Option<SessionInfo> {
    let f = tokio::fs::File::open(path).await.ok()?;
    let size = f.metadata().await.ok()?.len();
    let mut line = Vec::new();
    tokio::io::BufReader::new(f.take(MAX_LINE))
        .read_until(b'\n', &mut line)
        .await
        .ok()?;
    let h = Header::parse(&line).ok()?;
    let t = h.tether.unwrap_or_default();
    let kind = if t.via == "exec" { "exec" } else { "pty" };
    Some(SessionInfo {
        kind: kind.to_owned(),
        id: t.id,
        host: t.host,
        user: t.user,
        via: t.via,
        command: t.command,
        started_at: h.timestamp,
        width: h.width,
        height: h.height,
        size,
    })
}

/// `GET /v1/sessions`.
pub(crate) async fn list(ctx: Ctx, q: SessionsQuery) -> Result<SessionList, Fail> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_LIST {
        return Err(Fail::bad_request(
            "bad_query",
            format!("limit={limit}; give 1 to {MAX_LIST}"),
            "",
        ));
    }
    let dir = dir(&ctx)?;
    let mut files = Vec::new();
    match tokio::fs::read_dir(&dir).await {
        Ok(mut rd) => {
            while let Ok(Some(e)) = rd.next_entry().await {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "cast") {
                    let mtime = e.metadata().await.ok().and_then(|m| m.modified().ok());
                    files.push((mtime, p));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "recordings_unreadable",
                format!("{}: {e}", dir.display()),
                "check the state directory's permissions",
            ));
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut sessions = Vec::new();
    for (_, p) in files {
        if sessions.len() >= limit {
            break;
        }
        if let Some(i) = info(&p).await
            && q.host.as_ref().is_none_or(|h| *h == i.host)
        {
            sessions.push(i);
        }
    }
    Ok(SessionList { sessions })
}

/// `GET /v1/sessions/{id}`: the header and the whole chain checked.
pub(crate) async fn show(ctx: Ctx, r: SessionRef) -> Result<SessionDetail, Fail> {
    let path = path_of(&ctx, &r.id)?;
    audited(&ctx, "verify", &r.id).await?;
    let info = info(&path).await.ok_or_else(|| not_found(&r.id))?;
    let mut reader = tokio::io::BufReader::new(
        tokio::fs::File::open(&path)
            .await
            .map_err(|_| not_found(&r.id))?,
    );
    let mut v = Verifier::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| {
                Fail::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "recording_unreadable",
                    e.to_string(),
                    "",
                )
            })?;
        if n == 0 {
            break;
        }
        v.push_line(&line);
    }
    Ok(match v.finish() {
        Verdict::Complete {
            sha256,
            events,
            duration,
            ..
        } => SessionDetail {
            info,
            state: "complete".into(),
            sha256,
            events,
            duration_secs: Some(duration),
            problem: None,
        },
        Verdict::Truncated {
            sha256,
            verified_events,
            unverified_bytes,
            ..
        } => SessionDetail {
            info,
            state: "truncated".into(),
            sha256,
            events: verified_events,
            duration_secs: None,
            problem: Some(format!(
                "no end marker: the session is still open or the daemon stopped; {unverified_bytes} bytes after the last chain link are unverified"
            )),
        },
        Verdict::Corrupt { line, why } => SessionDetail {
            info,
            state: "corrupt".into(),
            sha256: String::new(),
            events: 0,
            duration_secs: None,
            problem: Some(format!("line {line}: {why}")),
        },
    })
}

/// `GET /v1/sessions/{id}/recording`: the file, streamed line by line.
pub(crate) async fn recording(ctx: Ctx, r: SessionRef) -> Result<Body, Fail> {
    let path = path_of(&ctx, &r.id)?;
    audited(&ctx, "recording", &r.id).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| not_found(&r.id))?;
    let (tx, body) = stream::channel(8);
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, file);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                break;
            }
        }
    });
    Ok(body)
}
