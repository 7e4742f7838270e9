//! `/v1/audit/...`: verify, tail, follow, export and checkpoint — admin and auditor only.
//! Every read is itself audited (`audit.read`) before any record is served.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;
use tether_api::{
    AuditExportQuery, AuditFollowQuery, AuditRecordsQuery, Empty, VerifyRequest, VerifyResponse,
};
use tether_audit::{Checkpoint, Filter, Follower, KeySource};

use super::Ctx;
use crate::http::{Body, Fail};
use crate::stream;

fn unavailable() -> Fail {
    Fail::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        "this tetherd runs without an audit log",
        "start tetherd normally (tetherd run)",
    )
}

fn audit_dir(ctx: &Ctx) -> Result<(PathBuf, Arc<dyn KeySource>), Fail> {
    match (&ctx.state.audit, &ctx.state.audit_keys) {
        (Some(log), Some(keys)) => Ok((log.dir().to_path_buf(), Arc::clone(keys))),
        _ => Err(unavailable()),
    }
}

fn bad_query(msg: String) -> Fail {
    Fail::bad_request("bad_query", msg, "see daemon/control/openapi.yaml")
}

fn date(from: Option<&str>) -> Result<Option<time::Date>, Fail> {
    match from {
        None => Ok(None),
        Some(d) => tether_audit::parse_date(d)
            .map(Some)
            .ok_or_else(|| bad_query(format!("from={d} is not a date; write YYYY-MM-DD"))),
    }
}

fn filter(types: &[String], host: Option<&str>, from: Option<&str>) -> Result<Filter, Fail> {
    Ok(Filter {
        types: types.to_vec(),
        host: host.map(str::to_owned),
        from: date(from)?,
    })
}

/// A 500 for an audit read that failed.
fn read_failed(e: tether_audit::AuditError) -> Fail {
    Fail::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "audit_error",
        e.to_string(),
        "",
    )
}

/// Records the read; refuses it if the record can't be written.
async fn audited(ctx: &Ctx, what: &str, query: serde_json::Value) -> Result<(), Fail> {
    ctx.state
        .audit_or_refuse(
            "audit.read",
            ctx.actor(),
            None,
            json!({"what": what, "query": query}),
        )
        .await
}

/// `POST /v1/audit/verify`: the whole chain, or the first break with its kind and seq.
pub(crate) async fn verify(ctx: Ctx, body: VerifyRequest) -> Result<VerifyResponse, Fail> {
    let (dir, keys) = audit_dir(&ctx)?;
    let from = date(body.from.as_deref())?;
    let against = match &body.against {
        None => None,
        Some(text) => Some(
            Checkpoint::parse(text, "the --against checkpoint")
                .map_err(|e| Fail::bad_request("invalid_checkpoint", e.to_string(), ""))?,
        ),
    };
    let query = json!({"from": body.from, "against": against.as_ref().map(|c| c.seq)});
    audited(&ctx, "verify", query).await?;
    // Bring the signed head and the counter outside state_dir up to the last durable record
    // first: both lag the log by up to `head_interval`, and verify holds the log up to them.
    if let Some(log) = &ctx.state.audit {
        log.checkpoint().await.map_err(read_failed)?;
    }
    let anchor = ctx.state.audit_anchor.clone();
    let report = super::blocking("verifying the audit log", move || {
        tether_audit::verify_anchored(
            &dir,
            keys.as_ref(),
            from,
            against.as_ref(),
            anchor.as_deref(),
        )
    })
    .await?
    .map_err(read_failed)?;
    Ok(VerifyResponse {
        ok: report.is_anchored_ok(),
        mb_per_s: report.mb_per_s(),
        report,
    })
}

/// `GET /v1/audit/records?type=&host=&from=&limit=N`: the last N matching records as NDJSON.
pub(crate) async fn tail(ctx: Ctx, q: AuditRecordsQuery) -> Result<Body, Fail> {
    let (dir, _) = audit_dir(&ctx)?;
    let f = filter(&q.types, q.host.as_deref(), q.from.as_deref())?;
    let n = q.limit.unwrap_or(20).min(100_000);
    let detail = json!({"types": q.types, "host": q.host, "from": q.from, "limit": n});
    audited(&ctx, "tail", detail).await?;
    // The first pass (counting) runs before the answer starts, so a damaged log is a precise
    // error status; the second streams one record at a time, whatever `limit` is.
    let (count_dir, count_f) = (dir.clone(), f.clone());
    let total = super::blocking("reading the audit log", move || {
        tether_audit::count_records(&count_dir, &count_f)
    })
    .await?
    .map_err(damaged)?;
    let (tx, body) = stream::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx,
            buf: Vec::new(),
        };
        let n = n.min(usize::try_from(total).unwrap_or(usize::MAX));
        let mut emit = |r: &tether_audit::Record| {
            serde_json::to_writer(&mut w, r).map_err(std::io::Error::other)?;
            w.write_all(b"\n")
        };
        match tether_audit::tail_records_with(&dir, &f, n, &mut emit) {
            Ok(_) => {
                let _ = w.flush();
            }
            Err(e) => tracing::warn!("audit tail stopped: {e}"),
        }
    });
    Ok(body)
}

/// A read that failed: a damaged log (a line that is not a record) is a 500 that names the
/// file, line and seq and says what to do; other failures keep their own message.
fn damaged(e: tether_audit::AuditError) -> Fail {
    match e {
        tether_audit::AuditError::Malformed { .. } => Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_damaged",
            e.to_string(),
            "run `tether audit verify` for the first break; restore the day file from backup",
        ),
        other => read_failed(other),
    }
}

/// `GET /v1/audit/follow?type=&host=`: new matching records as NDJSON, until the client leaves.
pub(crate) async fn follow(ctx: Ctx, q: AuditFollowQuery) -> Result<Body, Fail> {
    let (dir, _) = audit_dir(&ctx)?;
    let f = filter(&q.types, q.host.as_deref(), None)?;
    let mut follower = Follower::from_end(&dir, f).map_err(read_failed)?;
    audited(&ctx, "follow", json!({"types": q.types, "host": q.host})).await?;
    let (tx, body) = stream::channel(16);
    let (state, caller) = (Arc::clone(&ctx.state), Arc::clone(&ctx.caller));
    tokio::spawn(async move {
        loop {
            // Re-authorized on every batch (at least every 200 ms), so a reload that takes the
            // caller's role away ends the stream.
            if !state
                .role_of(&caller)
                .is_some_and(|r| super::AUDIT_READERS.contains(&r))
            {
                let body = tether_api::ErrorBody {
                    error: tether_api::ApiError::new(
                        "forbidden",
                        format!("{} may no longer read the audit log", caller.describe()),
                        "the follow stopped because a reload removed your role",
                    ),
                };
                let mut line = serde_json::to_vec(&body).unwrap_or_default();
                line.push(b'\n');
                let _ = tx.send(Bytes::from(line)).await;
                return;
            }
            let batch = match follower.next_batch(Duration::from_millis(200)).await {
                Ok(b) => b,
                Err(e) => {
                    // The stream ends with the standard error body as its last line.
                    let body = tether_api::ErrorBody {
                        error: tether_api::ApiError::new(
                            "audit_error",
                            e.to_string(),
                            "the follow stopped; run `tether audit verify` to check the log",
                        ),
                    };
                    let mut line = serde_json::to_vec(&body).unwrap_or_default();
                    line.push(b'\n');
                    let _ = tx.send(Bytes::from(line)).await;
                    return;
                }
            };
            for r in batch {
                let mut line = serde_json::to_vec(&r).unwrap_or_default();
                line.push(b'\n');
                if tx.send(Bytes::from(line)).await.is_err() {
                    return; // the client went away
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(body)
}

/// A `Write` that forwards chunks into the response channel from a blocking thread.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

/// `GET /v1/audit/export?format=jsonl&type=&host=&from=`: the log's lines, byte for byte.
pub(crate) async fn export(ctx: Ctx, q: AuditExportQuery) -> Result<Body, Fail> {
    let (dir, _) = audit_dir(&ctx)?;
    match q.format.as_deref() {
        None | Some("jsonl") => {}
        Some(other) => {
            return Err(Fail::bad_request(
                "unsupported_format",
                format!("export format {other:?} is not supported yet"),
                "use --format jsonl (OCSF, ECS, CEF and syslog views arrive with SIEM export)",
            ));
        }
    }
    let f = filter(&q.types, q.host.as_deref(), q.from.as_deref())?;
    let detail = json!({"format": "jsonl", "types": q.types, "host": q.host, "from": q.from});
    audited(&ctx, "export", detail).await?;
    let (tx, body) = stream::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx,
            buf: Vec::new(),
        };
        match tether_audit::export_jsonl(&dir, &f, &mut w) {
            Ok(_) => {
                let _ = w.flush();
            }
            Err(e) => tracing::warn!("audit export stopped: {e}"),
        }
    });
    Ok(body)
}

/// `GET /v1/audit/checkpoint`: a fresh signed head for off-box storage.
pub(crate) async fn checkpoint(ctx: Ctx, _req: Empty) -> Result<String, Fail> {
    let log = ctx.state.audit.clone().ok_or_else(unavailable)?;
    audited(&ctx, "checkpoint", json!({})).await?;
    log.export_checkpoint().await.map_err(read_failed)
}
