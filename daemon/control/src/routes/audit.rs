//! `/v1/audit/...`: verify, tail, follow, export and checkpoint — admin and auditor only.
//! Every read is itself audited (`audit.read`) before any record is served.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tether_audit::{Checkpoint, Filter, Follower, KeySource};

use super::{Ctx, HandlerFuture};
use crate::audit::{actor, via_of};
use crate::http::{self, Body};
use crate::stream;

fn audit_dir(ctx: &Ctx) -> Result<(PathBuf, Arc<dyn KeySource>), hyper::Response<Body>> {
    match (&ctx.state.audit, &ctx.state.audit_keys) {
        (Some(log), Some(keys)) => Ok((log.dir().to_path_buf(), Arc::clone(keys))),
        _ => Err(http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "this tetherd runs without an audit log",
            "start tetherd normally (tetherd run)",
        )),
    }
}

/// Query parameters shared by tail, follow and export.
#[derive(Debug, Default)]
struct Query {
    types: Vec<String>,
    host: Option<String>,
    from: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
}

fn query(req: &Request<Incoming>) -> Result<Query, hyper::Response<Body>> {
    let mut q = Query::default();
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = super::percent_decode(v);
        match k {
            "type" => q.types.push(v),
            "host" => q.host = Some(v),
            "from" => q.from = Some(v),
            "format" => q.format = Some(v),
            "limit" => {
                q.limit = Some(
                    v.parse()
                        .map_err(|_| bad_query(&format!("limit={v} is not a number")))?,
                );
            }
            _ => return Err(bad_query(&format!("unknown query parameter {k:?}"))),
        }
    }
    Ok(q)
}

fn bad_query(msg: &str) -> hyper::Response<Body> {
    http::error(
        StatusCode::BAD_REQUEST,
        "bad_query",
        msg,
        "see daemon/control/openapi.yaml",
    )
}

fn filter(q: &Query) -> Result<Filter, hyper::Response<Body>> {
    let from = match &q.from {
        None => None,
        Some(d) => Some(
            tether_audit::parse_date(d)
                .ok_or_else(|| bad_query(&format!("from={d} is not a date; write YYYY-MM-DD")))?,
        ),
    };
    Ok(Filter {
        types: q.types.clone(),
        host: q.host.clone(),
        from,
    })
}

/// The common start of the read routes: the log's directory, the query, and its filter.
fn reader(
    ctx: &Ctx,
    req: &Request<Incoming>,
) -> Result<(PathBuf, Query, Filter), hyper::Response<Body>> {
    let (dir, _) = audit_dir(ctx)?;
    let q = query(req)?;
    let f = filter(&q)?;
    Ok((dir, q, f))
}

/// A 500 for an audit read that failed (`e`) or whose blocking task panicked (`None`).
fn read_failed(e: Option<tether_audit::AuditError>) -> hyper::Response<Body> {
    match e {
        Some(e) => http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_error",
            &e.to_string(),
            "",
        ),
        None => http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "reading the audit log panicked",
            "this is a bug in tetherd; please report it",
        ),
    }
}

/// Records the read; refuses it if the record can't be written.
async fn audited(
    ctx: &Ctx,
    req: &Request<Incoming>,
    what: &str,
    detail: serde_json::Value,
) -> Result<(), hyper::Response<Body>> {
    let a = actor(&ctx.caller, Some(ctx.role), via_of(req));
    ctx.state
        .audit_or_refuse(
            "audit.read",
            a,
            None,
            json!({"what": what, "query": detail}),
        )
        .await
}

/// Body of `POST /v1/audit/verify`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    /// Only verify day files from this UTC date on (`YYYY-MM-DD`).
    #[serde(default)]
    from: Option<String>,
    /// An exported checkpoint the log must still contain.
    #[serde(default)]
    against: Option<String>,
}

/// `POST /v1/audit/verify`: the whole chain, or the first break with its kind and seq.
pub(crate) fn verify(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let (dir, keys) = match audit_dir(&ctx) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let via = via_of(&req);
        let body: VerifyRequest = match http::read_json(req, ctx.state.idle_timeout()).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let from = match &body.from {
            None => None,
            Some(d) => match tether_audit::parse_date(d) {
                Some(d) => Some(d),
                None => return bad_query(&format!("from={d} is not a date; write YYYY-MM-DD")),
            },
        };
        let against = match &body.against {
            None => None,
            Some(text) => match Checkpoint::parse(text, "the --against checkpoint") {
                Ok(c) => Some(c),
                Err(e) => {
                    return http::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_checkpoint",
                        &e.to_string(),
                        "",
                    );
                }
            },
        };
        let a = actor(&ctx.caller, Some(ctx.role), via);
        let detail = json!({"what": "verify", "query": {"from": body.from, "against": against.as_ref().map(|c| c.seq)}});
        if let Err(r) = ctx
            .state
            .audit_or_refuse("audit.read", a, None, detail)
            .await
        {
            return r;
        }
        let result = tokio::task::spawn_blocking(move || {
            tether_audit::verify(&dir, keys.as_ref(), from, against.as_ref())
        })
        .await;
        match result {
            Ok(Ok(report)) => http::json(
                StatusCode::OK,
                &json!({"ok": report.is_ok(), "mb_per_s": report.mb_per_s(), "report": report}),
            ),
            Ok(Err(e)) => read_failed(Some(e)),
            Err(_) => read_failed(None),
        }
    })
}

/// `GET /v1/audit/records?type=&host=&from=&limit=N`: the last N matching records as NDJSON.
pub(crate) fn tail(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let (dir, q, f) = match reader(&ctx, &req) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let n = q.limit.unwrap_or(20).min(100_000);
        let detail = json!({"types": q.types, "host": q.host, "from": q.from, "limit": n});
        if let Err(r) = audited(&ctx, &req, "tail", detail).await {
            return r;
        }
        match tokio::task::spawn_blocking(move || tether_audit::tail_records(&dir, &f, n)).await {
            Ok(Ok(records)) => {
                let mut out = Vec::new();
                for r in records {
                    if serde_json::to_writer(&mut out, &r).is_ok() {
                        out.push(b'\n');
                    }
                }
                http::with_type(StatusCode::OK, http::full(out), "application/x-ndjson")
            }
            Ok(Err(e)) => read_failed(Some(e)),
            Err(_) => read_failed(None),
        }
    })
}

/// `GET /v1/audit/follow?type=&host=`: new matching records as NDJSON, until the client leaves.
pub(crate) fn follow(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let (dir, q, f) = match reader(&ctx, &req) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let mut follower = match Follower::from_end(&dir, f) {
            Ok(fl) => fl,
            Err(e) => return read_failed(Some(e)),
        };
        if let Err(r) = audited(
            &ctx,
            &req,
            "follow",
            json!({"types": q.types, "host": q.host}),
        )
        .await
        {
            return r;
        }
        let (tx, body) = stream::channel(16);
        tokio::spawn(async move {
            loop {
                let batch = match follower.next_batch(Duration::from_millis(200)).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx
                            .send(Bytes::from(format!(
                                "{}\n",
                                json!({"error": e.to_string()})
                            )))
                            .await;
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
        http::with_type(StatusCode::OK, body, "application/x-ndjson")
    })
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
pub(crate) fn export(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let (dir, _) = match audit_dir(&ctx) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let q = match query(&req) {
            Ok(q) => q,
            Err(r) => return r,
        };
        match q.format.as_deref() {
            None | Some("jsonl") => {}
            Some(other) => {
                return http::error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_format",
                    &format!("export format {other:?} is not supported yet"),
                    "use --format jsonl (OCSF, ECS, CEF and syslog views arrive with SIEM export)",
                );
            }
        }
        let f = match filter(&q) {
            Ok(f) => f,
            Err(r) => return r,
        };
        let detail = json!({"format": "jsonl", "types": q.types, "host": q.host, "from": q.from});
        if let Err(r) = audited(&ctx, &req, "export", detail).await {
            return r;
        }
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
        http::with_type(StatusCode::OK, body, "application/x-ndjson")
    })
}

/// `GET /v1/audit/checkpoint`: a fresh signed head for off-box storage.
pub(crate) fn checkpoint(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let Some(log) = ctx.state.audit.clone() else {
            return http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "no audit log",
                "",
            );
        };
        if let Err(r) = audited(&ctx, &req, "checkpoint", json!({})).await {
            return r;
        }
        match log.export_checkpoint().await {
            Ok(text) => http::with_type(
                StatusCode::OK,
                http::full(text),
                "text/plain; charset=utf-8",
            ),
            Err(e) => read_failed(Some(e)),
        }
    })
}
