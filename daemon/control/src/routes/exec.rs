//! `POST /v1/exec`: one command on the hosts a selector picks.
//!
//! Order of events, each step before the next: the selector is resolved against the inventory
//! (active hosts only); the policy (regex rules, then plugin votes) is checked for every host —
//! a deny on any host refuses the whole request and records `exec.denied`, so nothing leaves the
//! hub; an approval verdict on any host sends the whole request through the approval gate
//! ([`super::approvals::exec_gate`]: use a granted approval or an allowance, or ask for one);
//! `exec.requested` is written (durable) — a failed
//! write refuses the request; only then does the stream start and the command go to a
//! target. While the record is being written the first hosts' pooled connections and session
//! channels are made ready (opening a channel carries nothing of the command); the `exec`
//! request itself waits for the write, and a failed write closes those channels unused. Each
//! host ends with one `exec.result` record (exit code, duration, byte counts, SHA-256 of its
//! full stdout and stderr). A client that goes away cancels every remote
//! command (signal, then channel close).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};
use tether_api::{ExecEvent, ExecRequest, ExecStream, ExecSummary, MAX_COMMAND_BYTES};
use tether_enroll::HostRecord;
use tether_model::selector::Selector;
use tether_model::{Alert, Severity};
use tether_policy::{RequestKind, Verdict};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::vpn::hub;
use crate::http::{Body, Fail};
use crate::state::{BoxFuture, ExecHost, RemoteCommand, RemoteExec, RemoteExit, RemoteOutput};
use crate::stream;

/// Defaults and bounds of the request's options.
const DEFAULT_CONCURRENCY: u32 = 10;
const MAX_CONCURRENCY: u32 = 1000;
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub(crate) const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_OUTPUT_LIMIT: u64 = 1024 * 1024;

fn bad(code: &str, message: String, hint: &str) -> Fail {
    Fail::bad_request(code, message, hint)
}

/// The validated options.
#[derive(Debug, Clone)]
struct Plan {
    command: String,
    concurrency: usize,
    timeout: Duration,
    connect_timeout: Duration,
    canary: usize,
    max_failures: Option<u32>,
    output_limit: u64,
}

fn plan(req: &ExecRequest, hosts: usize, default_connect_ms: u64) -> Result<Plan, Fail> {
    if req.command.trim().is_empty() {
        return Err(bad(
            "empty_command",
            "the command is empty".to_owned(),
            "tether exec -H SEL -- COMMAND",
        ));
    }
    if req.command.len() > MAX_COMMAND_BYTES {
        return Err(bad(
            "command_too_long",
            format!(
                "the command is {} bytes; at most {MAX_COMMAND_BYTES} are accepted",
                req.command.len()
            ),
            "put long scripts in a file on the targets and run that",
        ));
    }
    let concurrency = req.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(bad(
            "invalid_option",
            format!("concurrency {concurrency} is out of range"),
            "use 1 to 1000",
        ));
    }
    let ms = |v: Option<u64>, d: u64, what: &str| -> Result<Duration, Fail> {
        match v.unwrap_or(d) {
            0 => Err(bad(
                "invalid_option",
                format!("{what} must be more than 0"),
                "e.g. --timeout 30s",
            )),
            n if n > 86_400_000 => Err(bad(
                "invalid_option",
                format!("{what} is over a day"),
                "use at most 24h",
            )),
            n => Ok(Duration::from_millis(n)),
        }
    };
    let max_failures = match (req.max_failures, req.max_failures_percent) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "invalid_option",
                "give max_failures or max_failures_percent, not both".to_owned(),
                "--max-failures 3 or --max-failures 10%",
            ));
        }
        (Some(n), None) => Some(n),
        (None, Some(p)) if p > 100 => {
            return Err(bad(
                "invalid_option",
                format!("max_failures_percent {p} is over 100"),
                "--max-failures 10%",
            ));
        }
        (None, Some(p)) => Some(((u64::from(p) * hosts as u64).div_ceil(100)) as u32),
        (None, None) => None,
    };
    Ok(Plan {
        command: req.command.clone(),
        concurrency: concurrency as usize,
        timeout: ms(req.timeout_ms, DEFAULT_TIMEOUT_MS, "timeout")?,
        connect_timeout: ms(
            req.connect_timeout_ms,
            default_connect_ms,
            "connect timeout",
        )?,
        canary: req.canary.unwrap_or(0) as usize,
        max_failures,
        output_limit: req.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT),
    })
}

/// The active hosts `selector` picks, or the `400`/`404`.
pub(crate) fn resolve(ctx: &Ctx, selector: &str) -> Result<Vec<HostRecord>, Fail> {
    let hub = hub(ctx)?;
    if selector.trim().is_empty() {
        return Err(bad(
            "invalid_selector",
            "the selector is empty".to_owned(),
            "say which hosts: -H web1, -H group:web, -H tag:env=prod, -H all",
        ));
    }
    let parsed = Selector::parse(selector).map_err(|e| {
        bad(
            "invalid_selector",
            e.to_string(),
            "see `tether hosts list --help` for the selector syntax",
        )
    })?;
    let hosts: Vec<HostRecord> = hub
        .inventory()
        .select(&parsed)
        .into_iter()
        .filter(HostRecord::is_active)
        .collect();
    if hosts.is_empty() {
        return Err(Fail::new(
            StatusCode::NOT_FOUND,
            "no_hosts",
            format!("the selector {selector:?} matches no enrolled, active host"),
            "`tether hosts list` shows the names, groups and tags",
        ));
    }
    Ok(hosts)
}

/// Checks the policy for every host before anything leaves; records and refuses denials.
/// Checks `requests` against the policy in force with the plugins voting, on a blocking thread
/// (a panic is a `500`); empty when the daemon has no policy engine.
pub(crate) async fn check_all(
    ctx: &Ctx,
    requests: Vec<tether_policy::Request>,
) -> Result<Vec<tether_policy::Checked>, Fail> {
    let state = Arc::clone(&ctx.state);
    let inline = state.plugins.is_none() && requests.len() <= INLINE_POLICY_CHECKS;
    let check = move || {
        let hooks = state
            .plugins
            .as_deref()
            .map(|h| h as &dyn tether_policy::PolicyHooks);
        let engine = state.policy.as_ref()?;
        Some(
            requests
                .iter()
                .map(|r| engine.check(r, hooks))
                .collect::<Vec<_>>(),
        )
    };
    if inline {
        // Regex rules only (no plugin votes): microseconds per host and no I/O, cheaper than
        // the hand-off to a blocking thread and back on every request.
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))
            .map(Option::unwrap_or_default)
            .map_err(|_| Fail::internal("the policy check panicked".to_owned()));
    }
    Ok(super::blocking("the policy check", check)
        .await?
        .unwrap_or_default())
}

/// Up to this many hosts, a policy check without plugins runs on the request's task (each is a
/// few `RegexSet` scans of at most 8 KiB); above it, or with plugins voting (WASM calls), it runs
/// on a blocking thread.
const INLINE_POLICY_CHECKS: usize = 16;

/// [`check_policy_or_approval`] for paths that cannot wait for an approval (the operator SSH
/// endpoint, `tether ssh`): a `require-approval` verdict refuses, is recorded like a denial, and
/// says how to ask for the approval. Returns the hosts that only warned.
pub(crate) async fn check_policy(
    ctx: &Ctx,
    hosts: &[HostRecord],
    kind: RequestKind,
    command: Option<&str>,
    ticket: Option<&str>,
) -> Result<Vec<String>, Fail> {
    let (warned, approval) = check_policy_or_approval(ctx, hosts, kind, command, ticket).await?;
    let Some(reason) = approval else {
        return Ok(warned);
    };
    let denied = if kind == RequestKind::Session {
        "session.denied"
    } else {
        "exec.denied"
    };
    for host in hosts {
        ctx.state
            .audit_or_refuse(
                denied,
                ctx.actor(),
                Some(&host.name),
                json!({"command": command, "verdict": Verdict::RequireApproval, "reason": reason}),
            )
            .await?;
    }
    Err(Fail::new(
        StatusCode::FORBIDDEN,
        "approval_required",
        format!("an approval is needed to run this: {reason}"),
        "this path cannot wait for one: run it with `tether exec -H HOST -- COMMAND`, which asks for the approval and waits",
    ))
}

/// `kind` is [`RequestKind::Exec`] for commands (`POST /v1/exec`, `exec` through the operator
/// SSH endpoint) or [`RequestKind::Session`] for interactive sessions (with their command, if
/// any); a denial is recorded as `exec.denied` or `session.denied`. Returns the hosts that only
/// warned and, when any host needs an approval, the policy's reason (the approval gate records
/// that case: `approval.requested` / `.used`).
pub(crate) async fn check_policy_or_approval(
    ctx: &Ctx,
    hosts: &[HostRecord],
    kind: RequestKind,
    command: Option<&str>,
    ticket: Option<&str>,
) -> Result<(Vec<String>, Option<String>), Fail> {
    if ctx.state.policy.is_none() {
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_unavailable",
            "this tetherd runs without a policy engine, so nothing may run",
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
            command: command.map(str::to_owned),
            path: None,
            user: user.clone(),
            role: ctx.role,
            host: h.facts(),
            ticket: ticket.map(str::to_owned),
        })
        .collect();
    let checked = check_all(ctx, requests).await?;
    let mut refused = Vec::new();
    let mut approval: Option<String> = None;
    let mut warned = Vec::new();
    for (host, c) in hosts.iter().zip(&checked) {
        match c.decision.verdict {
            Verdict::Allow => {}
            Verdict::Warn => warned.push(host.name.clone()),
            // Approvals are the approval gate's to record (approval.requested / .used).
            Verdict::RequireApproval => {
                approval.get_or_insert_with(|| c.decision.reason.to_string());
            }
            v @ Verdict::Deny => {
                let data = json!({
                    "command": command,
                    "verdict": v,
                    "rules": c.decision.rule_ids,
                    "reason": c.decision.reason,
                    "plugin_votes": c.plugin_votes,
                });
                let denied = if kind == RequestKind::Session {
                    "session.denied"
                } else {
                    "exec.denied"
                };
                ctx.state
                    .audit_or_refuse(denied, ctx.actor(), Some(&host.name), data)
                    .await?;
                refused.push((host.name.clone(), c.decision.reason.to_string()));
            }
        }
    }
    if refused.is_empty() {
        return Ok((warned, approval));
    }
    let names: Vec<&str> = refused.iter().map(|(h, _)| h.as_str()).collect();
    let reason = &refused[0].1;
    Err(Fail::new(
        StatusCode::FORBIDDEN,
        "policy_denied",
        format!(
            "the policy denies this on {}: {reason}; nothing was run",
            names.join(", ")
        ),
        "`tether policy check -H HOST -- COMMAND` explains the decision",
    ))
}

/// `POST /v1/exec`.
pub(crate) async fn exec(ctx: Ctx, req: ExecRequest) -> Result<Body, Fail> {
    let hosts = resolve(&ctx, &req.selector)?;
    // `[ssh] connect_timeout` on the hub, when the request names none.
    let default_connect_ms = ctx
        .state
        .remote
        .as_ref()
        .map_or(DEFAULT_CONNECT_TIMEOUT_MS, |r| {
            r.default_connect_timeout().as_millis() as u64
        });
    let plan = plan(&req, hosts.len(), default_connect_ms)?;
    let Some(remote) = ctx.state.remote.clone() else {
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "exec_unavailable",
            "this hub runs without its SSH pool",
            "start tetherd normally (tetherd run --role hub)",
        ));
    };
    let (warned, approval) = check_policy_or_approval(
        &ctx,
        &hosts,
        RequestKind::Exec,
        Some(&plan.command),
        req.ticket.as_deref(),
    )
    .await?;
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    super::approvals::exec_gate(
        &ctx,
        &plan.command,
        &names,
        req.approval.as_deref(),
        approval.as_deref(),
    )
    .await?;
    let requested = json!({
        "command": plan.command,
        "selector": req.selector,
        "hosts": names,
        "warned": warned,
        "concurrency": plan.concurrency,
        "timeout_ms": plan.timeout.as_millis() as u64,
        "connect_timeout_ms": plan.connect_timeout.as_millis() as u64,
        "canary": plan.canary,
        "max_failures": plan.max_failures,
        "output_limit": plan.output_limit,
        "ticket": req.ticket,
        "approval": req.approval,
    });
    // The first hosts' pooled connections and session channels get ready while
    // `exec.requested` is being made durable; each command is sent only once it is (`go`), and
    // a failed write sends none and records nothing more. The client sees nothing before.
    let (go, gate) = watch::channel(None);
    let (tx, body) = stream::channel(64);
    tokio::spawn(run_all(ctx.clone(), remote, hosts, plan, tx, gate));
    // On a quiet log the append below writes and syncs on this thread (no hand-off to the
    // audit writer and back); let `run_all` — just spawned into this worker's LIFO slot, which
    // the other worker cannot steal — send its channel requests first, so they still overlap
    // the fdatasync.
    tokio::task::yield_now().await;
    let audited = ctx
        .state
        .audit_or_refuse("exec.requested", ctx.actor(), None, requested)
        .await;
    go.send_replace(Some(audited.is_ok()));
    audited?;
    Ok(body)
}

/// Resolves to whether `exec.requested` was written (`false` as well if the request went away).
fn gate_open(mut gate: watch::Receiver<Option<bool>>) -> BoxFuture<'static, bool> {
    Box::pin(async move {
        gate.wait_for(Option::is_some)
            .await
            .is_ok_and(|v| *v == Some(true))
    })
}

/// Sends one event; `false` when the client has gone.
async fn emit(tx: &mpsc::Sender<Bytes>, event: &ExecEvent) -> bool {
    let mut line = match serde_json::to_vec(event) {
        Ok(l) => l,
        Err(_) => return true,
    };
    line.push(b'\n');
    tx.send(Bytes::from(line)).await.is_ok()
}

/// Runs the hosts in order: canaries first, then the rest, at most `concurrency` at once,
/// stopping new starts after a failed canary or too many failures.
async fn run_all(
    ctx: Ctx,
    remote: Arc<dyn RemoteExec>,
    hosts: Vec<HostRecord>,
    plan: Plan,
    tx: mpsc::Sender<Bytes>,
    gate: watch::Receiver<Option<bool>>,
) {
    let started = Instant::now();
    let cancel = CancellationToken::new();
    // The client going away cancels every remote command.
    let watcher = {
        let (tx, cancel) = (tx.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = tx.closed() => cancel.cancel(),
                () = cancel.cancelled() => {}
            }
        })
    };
    let total = hosts.len();
    emit(
        &tx,
        &ExecEvent::Accepted {
            hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        },
    )
    .await;
    let plan = Arc::new(plan);
    let canary = plan.canary.min(total);
    let mut queue = hosts.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let (mut launched, mut ok, mut failed) = (0usize, 0u32, 0u32);
    // Canary hosts that have finished: the rest start only once every canary has.
    let mut canaries_done = 0usize;
    let mut canary_failed: Vec<String> = Vec::new();
    let mut aborted: Option<String> = None;
    loop {
        let limit = if canaries_done < canary {
            canary
        } else {
            total
        };
        while aborted.is_none()
            && !cancel.is_cancelled()
            && *gate.borrow() != Some(false)
            && running.len() < plan.concurrency
            && launched < limit
        {
            let Some(host) = queue.next() else { break };
            launched += 1;
            let is_canary = launched <= canary;
            let task = run_host(
                ctx.clone(),
                Arc::clone(&remote),
                host,
                Arc::clone(&plan),
                tx.clone(),
                cancel.child_token(),
                gate.clone(),
            );
            running.spawn(async move { (task.await, is_canary) });
        }
        let Some(done) = running.join_next().await else {
            if canaries_done == canary
                && canary > 0
                && !canary_failed.is_empty()
                && aborted.is_none()
            {
                aborted = Some(format!("the canary failed on {}", canary_failed.join(", ")));
                continue;
            }
            if aborted.is_some() || cancel.is_cancelled() || launched >= total {
                break;
            }
            continue;
        };
        let (host, success, is_canary) = match done {
            Ok(((host, success), is_canary)) => (host, success, is_canary),
            // A task that panicked: during the canary phase only canaries run.
            Err(_) => (String::new(), false, canaries_done < canary),
        };
        if is_canary {
            canaries_done += 1;
        }
        if success {
            ok += 1;
        } else {
            failed += 1;
            if is_canary {
                canary_failed.push(host);
            }
            if let Some(max) = plan.max_failures
                && failed >= max.max(1)
                && aborted.is_none()
            {
                aborted = Some(format!("{failed} hosts failed (max failures {max})"));
            }
        }
        if canaries_done == canary && canary > 0 && !canary_failed.is_empty() && aborted.is_none() {
            aborted = Some(format!("the canary failed on {}", canary_failed.join(", ")));
        }
    }
    let reason = aborted
        .clone()
        .unwrap_or_else(|| "the request was cancelled".to_owned());
    let mut skipped = 0u32;
    for host in queue {
        skipped += 1;
        emit(
            &tx,
            &ExecEvent::Skipped {
                host: host.name,
                reason: reason.clone(),
            },
        )
        .await;
    }
    let summary = ExecSummary {
        hosts: total as u32,
        ok,
        failed,
        skipped,
        aborted: if skipped > 0 { Some(reason) } else { aborted },
        duration_ms: started.elapsed().as_millis() as u64,
    };
    emit(&tx, &ExecEvent::Summary(summary)).await;
    cancel.cancel();
    let _ = watcher.await;
}

/// What one host's output stream came to.
#[derive(Default)]
pub(crate) struct Tally {
    bytes: u64,
    kept: u64,
    hash: Sha256,
    /// An incomplete UTF-8 sequence carried to the next chunk.
    carry: Vec<u8>,
}

impl Tally {
    /// Counts and hashes `chunk`; returns the text to forward (within `limit`).
    pub(crate) fn take(&mut self, chunk: &[u8], limit: u64) -> Option<String> {
        self.bytes += chunk.len() as u64;
        self.hash.update(chunk);
        let room = limit.saturating_sub(self.kept) as usize;
        let kept = &chunk[..chunk.len().min(room)];
        self.kept += kept.len() as u64;
        if kept.is_empty() {
            return None;
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(kept);
        let cut = match std::str::from_utf8(&buf) {
            Ok(_) => buf.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => buf.len(),
        };
        self.carry = buf.split_off(cut);
        (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
    }

    /// Bytes seen (kept or not).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn flush(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.carry);
        (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned())
    }

    pub(crate) fn digest(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }
}

/// Runs the command on one host; returns its name and whether it exited 0.
async fn run_host(
    ctx: Ctx,
    remote: Arc<dyn RemoteExec>,
    host: HostRecord,
    plan: Arc<Plan>,
    tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
    gate: watch::Receiver<Option<bool>>,
) -> (String, bool) {
    let name = host.name.clone();
    let started = Instant::now();
    emit(&tx, &ExecEvent::Started { host: name.clone() }).await;
    let (out_tx, mut out_rx) = mpsc::channel::<RemoteOutput>(32);
    let target = ExecHost {
        name: name.clone(),
        ip: host.overlay_ip,
        host_key: host.ssh_host_key.clone(),
        user: host.ssh_user.clone(),
    };
    let command = RemoteCommand {
        line: plan.command.clone(),
        connect_timeout: plan.connect_timeout,
    };
    let (recording, recording_failed) =
        super::interactive::exec_recording(&ctx, &name, &plan.command).await;
    let run = remote.run_when(
        target,
        command,
        gate_open(gate.clone()),
        out_tx,
        cancel.clone(),
    );
    let forward = async {
        let (mut stdout, mut stderr) = (Tally::default(), Tally::default());
        while let Some(chunk) = out_rx.recv().await {
            // All of it, before the client sees it (bounded lag, like pty sessions).
            if let Some(r) = &recording {
                super::interactive::record_output(r, &chunk).await;
            }
            let (tally, stream, bytes) = match &chunk {
                RemoteOutput::Stdout(b) => (&mut stdout, ExecStream::Stdout, b),
                RemoteOutput::Stderr(b) => (&mut stderr, ExecStream::Stderr, b),
            };
            if let Some(data) = tally.take(bytes, plan.output_limit) {
                let event = ExecEvent::Output {
                    host: name.clone(),
                    stream,
                    data,
                };
                if !emit(&tx, &event).await {
                    cancel.cancel();
                }
            }
        }
        (stdout, stderr)
    };
    let mut timed_out = false;
    let (result, (mut stdout, mut stderr)) = {
        let work = async { tokio::join!(run, forward) };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            () = tokio::time::sleep(plan.timeout) => {
                timed_out = true;
                cancel.cancel();
                work.await
            }
        }
    };
    if *gate.borrow() != Some(true) {
        // `exec.requested` was not written: nothing was sent and nothing is reported; a
        // recording already started is closed as such, so it verifies as complete.
        if let Some(r) = recording {
            super::interactive::finish_exec_recording(r, "error:not_sent".to_owned()).await;
        }
        return (name.clone(), false);
    }
    for (tally, stream) in [
        (&mut stdout, ExecStream::Stdout),
        (&mut stderr, ExecStream::Stderr),
    ] {
        if let Some(data) = tally.flush() {
            emit(
                &tx,
                &ExecEvent::Output {
                    host: name.clone(),
                    stream,
                    data,
                },
            )
            .await;
        }
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let dropped = (stdout.bytes - stdout.kept) + (stderr.bytes - stderr.kept);
    let recorded = match recording {
        Some(r) => {
            let exit = match &result {
                _ if timed_out => "error:timeout".to_owned(),
                Ok(RemoteExit::Code(c)) => format!("{}", *c as i32),
                Ok(RemoteExit::Signal(s)) => format!("signal:{s}"),
                Err(e) => format!("error:{}", e.kind),
            };
            Some(super::interactive::finish_exec_recording(r, exit).await)
        }
        None => recording_failed,
    };
    let (event, success, audit_outcome) = match result {
        Ok(exit) if !timed_out => {
            let (code, signal) = match exit {
                RemoteExit::Code(c) => (Some(c as i32), None),
                RemoteExit::Signal(s) => (None, Some(s)),
            };
            (
                ExecEvent::Exit {
                    host: name.clone(),
                    code,
                    signal: signal.clone(),
                    duration_ms,
                    stdout_bytes: stdout.bytes,
                    stderr_bytes: stderr.bytes,
                    dropped_bytes: dropped,
                },
                code == Some(0),
                json!({"exit_code": code, "signal": signal}),
            )
        }
        other => {
            let (kind, message) = match other {
                _ if timed_out => (
                    "timeout",
                    format!(
                        "the command did not finish within {:.1} s and was cancelled (raise --timeout if it needs longer)",
                        plan.timeout.as_secs_f64()
                    ),
                ),
                Err(e) => (e.kind, e.message),
                Ok(_) => ("ssh", "unexpected result".to_owned()),
            };
            (
                ExecEvent::Error {
                    host: name.clone(),
                    kind: kind.to_owned(),
                    message: message.clone(),
                    duration_ms,
                },
                false,
                json!({"error": kind, "message": message}),
            )
        }
    };
    emit(&tx, &event).await;
    let outcome = Outcome {
        duration_ms,
        stdout: &stdout,
        stderr: &stderr,
        dropped,
        result: audit_outcome,
        failure: (!success).then(|| describe(&event)),
        recording: recorded,
    };
    record_result(&ctx, &name, &plan.command, outcome).await;
    (name.clone(), success)
}

/// How one host's command went, for its `exec.result` record.
pub(crate) struct Outcome<'a> {
    pub duration_ms: u64,
    pub stdout: &'a Tally,
    pub stderr: &'a Tally,
    /// Bytes beyond the output limit.
    pub dropped: u64,
    /// `{"exit_code", "signal"}` or `{"error", "message"}`.
    pub result: serde_json::Value,
    /// Why it failed (raises `exec_failure`), `None` when it exited 0.
    pub failure: Option<String>,
    /// With `ssh.record = "all"`: the recording's id, SHA-256 and size (or why it failed).
    pub recording: Option<serde_json::Value>,
}

/// Writes one host's `exec.result` (and raises `exec_failure` when it failed): the same record
/// for `POST /v1/exec` and for `exec` through the operator SSH endpoint.
pub(crate) async fn record_result(ctx: &Ctx, name: &str, command: &str, o: Outcome<'_>) {
    let mut data = json!({
        "command": command,
        "duration_ms": o.duration_ms,
        "stdout_bytes": o.stdout.bytes,
        "stderr_bytes": o.stderr.bytes,
        "dropped_bytes": o.dropped,
        "stdout_sha256": o.stdout.digest(),
        "stderr_sha256": o.stderr.digest(),
    });
    if let (Some(d), Some(r)) = (data.as_object_mut(), o.result.as_object()) {
        d.extend(r.clone());
    }
    if let (Some(d), Some(r)) = (data.as_object_mut(), o.recording) {
        d.insert("recording".to_owned(), r);
    }
    if let Err(e) = ctx
        .state
        .audit("exec.result", ctx.actor(), Some(name), data)
        .await
    {
        tracing::error!(host = %name, "could not audit an exec result: {e}");
    }
    if let Some(why) = o.failure {
        let mut alert = Alert::new(
            "exec_failure",
            Severity::Warning,
            format!("exec failed on {name}: {why}"),
        );
        alert.host = Some(name.to_owned());
        ctx.state.alerts.raise(alert);
    }
}

fn describe(event: &ExecEvent) -> String {
    match event {
        ExecEvent::Exit { code: Some(c), .. } => format!("exit code {c}"),
        ExecEvent::Exit {
            signal: Some(s), ..
        } => format!("killed by {s}"),
        ExecEvent::Error { message, .. } => message.clone(),
        _ => "failed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tally_caps_hashes_everything_and_never_splits_a_character() {
        let mut t = super::Tally::default();
        let text = "héllo wörld".as_bytes();
        let mut out = String::new();
        // Feed one byte at a time: multibyte characters arrive split.
        for b in text {
            if let Some(s) = t.take(std::slice::from_ref(b), 1000) {
                out.push_str(&s);
            }
        }
        assert_eq!(out, "héllo wörld");
        let mut t = super::Tally::default();
        assert_eq!(t.take(b"abcdef", 4).as_deref(), Some("abcd"));
        assert_eq!(t.take(b"gh", 4), None);
        assert_eq!((t.bytes, t.kept), (8, 4));
        assert_eq!(
            t.digest(),
            "9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab"
        );
    }
}
