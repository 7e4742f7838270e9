//! The tools: each one a typed control-API call, its input and output described by JSON Schema.
//!
//! Tool names are snake_case and short (several clients reject dots or names over 64 bytes).

use std::collections::BTreeMap;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ProgressToken,
    RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::{Json, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tether_api::{
    AuditRecords, AuditRecordsQuery, ClientError, Exec, ExecEvent, ExecRequest, ExecStream,
    HostRef, HostsList, HostsQuery, HostsShow, VpnStatusGet,
};
use tokio_util::sync::CancellationToken;

/// Output kept per host and stream for an exec through MCP; the rest is dropped and counted
/// (what a model can use is far less than what a terminal can show).
pub const EXEC_OUTPUT_LIMIT: u64 = 64 * 1024;
/// Most audit records one `audit_tail` call returns.
pub const AUDIT_TAIL_MAX: usize = 1000;
/// Longest an `exec` waits for an approval decision (`wait_secs`), seconds.
pub const WAIT_MAX_SECS: u64 = 3600;

/// The MCP server: the tools over one control-socket client.
#[derive(Clone)]
pub struct TetherMcp {
    pub(crate) client: tether_api::Client,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for TetherMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TetherMcp")
            .field("socket", &self.client.socket())
            .finish_non_exhaustive()
    }
}

/// Input of `hosts_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostsListInput {
    /// Only hosts matching this selector: `host:a,b`, `group:g`, `tag:k=v`, `all`, `~regex`,
    /// joined with `,`, negated with `!`. Default: every host.
    #[serde(default)]
    pub selector: Option<String>,
}

/// One host, as the tools show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HostOut {
    /// Unique name.
    pub name: String,
    /// Overlay (tunnel) address.
    pub overlay_ip: String,
    /// Hostname the machine reported at enrollment.
    pub hostname: String,
    /// `active` or `revoked`.
    pub state: String,
    /// Whether its tunnel session is up.
    pub online: bool,
    /// Groups.
    pub groups: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Last time the host was seen, unix seconds.
    pub last_seen: Option<u64>,
    /// Seconds since its last tunnel handshake (null: never).
    pub last_handshake_secs: Option<u64>,
}

impl From<tether_api::Host> for HostOut {
    fn from(h: tether_api::Host) -> Self {
        HostOut {
            name: h.name,
            overlay_ip: h.overlay_ip,
            hostname: h.hostname,
            state: h.state,
            online: h.online,
            groups: h.groups,
            tags: h.tags,
            last_seen: h.last_seen,
            last_handshake_secs: h.last_handshake_secs,
        }
    }
}

/// Output of `hosts_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HostsListOutput {
    /// The hosts, by name.
    pub hosts: Vec<HostOut>,
}

/// Input of `hosts_show`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostsShowInput {
    /// The host's name.
    pub name: String,
}

/// Input of `exec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecInput {
    /// Which hosts: `host:a,b`, `group:g`, `tag:k=v`, `all`, `~regex`, joined with `,`,
    /// negated with `!`.
    pub selector: String,
    /// The shell command (run by `/bin/sh -c` on each host), at most 8192 bytes. It is checked
    /// against the policy before anything is sent.
    pub command: String,
    /// Per-host limit for the whole command, seconds (default 30, at most 3600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// A granted approval (`apr-…`, from an earlier `approval_pending` result) for exactly this
    /// command and these hosts. It is used up when the command runs.
    #[serde(default)]
    pub approval: Option<String>,
    /// When the policy needs an approval: wait up to this many seconds (1 to 3600) for another
    /// person's decision, with progress notifications, and run the command once it is granted.
    /// Without it the result is an `approval_pending` handle to poll with `approvals_status`.
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

/// What happened on one host.
#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct HostRun {
    /// The host.
    pub host: String,
    /// `ok` (exit 0), `failed` (non-zero exit or a signal), `error` (could not run: offline,
    /// timeout, refused) or `skipped`.
    pub status: String,
    /// Exit code, when the command exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<String>,
    /// Standard output (UTF-8, invalid bytes replaced), at most 64 KiB.
    pub stdout: String,
    /// Standard error, at most 64 KiB.
    pub stderr: String,
    /// Output bytes beyond the limit, not shown.
    pub dropped_bytes: u64,
    /// Why it could not run, or why it was skipped.
    pub error: Option<String>,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
}

/// Output of `exec`.
#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct ExecOutput {
    /// `completed` (the command was sent; see `hosts`) or `approval_pending` (nothing ran yet:
    /// another person must approve `approval` first).
    pub status: String,
    /// With `approval_pending`: the approval request (`apr-…`). Poll it with
    /// `approvals_status`; once granted, call `exec` again with the same selector and command
    /// and `approval` set to it.
    pub approval: Option<String>,
    /// Per host, in the order they were selected.
    pub hosts: Vec<HostRun>,
    /// Hosts that exited 0.
    pub ok: u32,
    /// Hosts that failed or could not run.
    pub failed: u32,
    /// Hosts not tried.
    pub skipped: u32,
    /// Why hosts were skipped, if they were.
    pub aborted: Option<String>,
}

/// Output of `vpn_status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VpnStatusOutput {
    /// `hub` or `target`.
    pub role: String,
    /// Whether this node has a tunnel.
    pub tunnel: bool,
    /// This node's overlay address.
    pub overlay_ip: Option<String>,
    /// The peers.
    pub peers: Vec<PeerOut>,
}

/// One tunnel peer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PeerOut {
    /// The peer's host name.
    pub name: String,
    /// Its overlay address.
    pub overlay_ip: String,
    /// Whether its session is up.
    pub up: bool,
    /// `healthy`, `stale`, `down`…
    pub health: String,
    /// Seconds since its last handshake (null: never).
    pub last_handshake_secs: Option<u64>,
    /// Round-trip time, milliseconds.
    pub rtt_ms: Option<u64>,
}

/// Input of `audit_tail`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditTailInput {
    /// How many of the newest records (default 20, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only these record types (`exec.result`; `enroll.*` matches a prefix).
    #[serde(default)]
    pub types: Vec<String>,
    /// Only records about this host.
    #[serde(default)]
    pub host: Option<String>,
}

/// Output of `audit_tail`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditTailOutput {
    /// The records, oldest first, as the audit log holds them (seq, ts, type, actor, host,
    /// data, prev, hash, hmac).
    pub records: Vec<serde_json::Value>,
}

/// A client error as the text of an `isError` tool result.
pub(crate) fn failed(e: ClientError) -> String {
    e.to_string()
}

#[tool_router(router = tool_router)]
impl TetherMcp {
    /// A server whose tools call the daemon through `client`.
    pub fn new(client: tether_api::Client) -> Self {
        TetherMcp {
            client,
            tool_router: Self::tool_router() + Self::fs_router() + Self::approvals_router(),
        }
    }

    /// Enrolled hosts with their tunnel state, optionally filtered by a selector.
    #[tool(annotations(read_only_hint = true))]
    async fn hosts_list(
        &self,
        Parameters(input): Parameters<HostsListInput>,
    ) -> Result<Json<HostsListOutput>, String> {
        let list = self
            .client
            .call::<HostsList>(&HostsQuery {
                selector: input.selector,
            })
            .await
            .map_err(failed)?;
        Ok(Json(HostsListOutput {
            hosts: list.hosts.into_iter().map(HostOut::from).collect(),
        }))
    }

    /// One host's record and tunnel state.
    #[tool(annotations(read_only_hint = true))]
    async fn hosts_show(
        &self,
        Parameters(input): Parameters<HostsShowInput>,
    ) -> Result<Json<HostOut>, String> {
        let host = self
            .client
            .call::<HostsShow>(&HostRef { name: input.name })
            .await
            .map_err(failed)?;
        Ok(Json(HostOut::from(host)))
    }

    /// Runs a shell command on the selected hosts, under the same policy, approvals and audit
    /// as `tether exec`. Sends progress per finished host; cancelling the call cancels the
    /// remote commands. A denied command, a host that could not run it or a non-zero exit is a
    /// result with isError set. When the policy needs another person's approval, the result is
    /// `status: approval_pending` with the approval id (nothing ran), unless `wait_secs` is
    /// given: then it waits for the decision with progress notifications and runs the command
    /// once granted; a denied or expired approval is a result with isError set.
    #[tool(
        annotations(destructive_hint = true, open_world_hint = true),
        output_schema = rmcp::handler::server::common::schema_for_output::<ExecOutput>()
    )]
    async fn exec(
        &self,
        Parameters(input): Parameters<ExecInput>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        ct: CancellationToken,
    ) -> Result<CallToolResult, String> {
        if input.command.len() > tether_api::MAX_COMMAND_BYTES {
            return Err(format!(
                "the command is {} bytes; the limit is {} bytes. Split it, or copy a script with fs_write and run that",
                input.command.len(),
                tether_api::MAX_COMMAND_BYTES
            ));
        }
        let timeout_secs = input.timeout_secs.unwrap_or(30);
        if timeout_secs == 0 || timeout_secs > 3600 {
            return Err(format!(
                "timeout_secs is {timeout_secs}; give 1 to 3600 seconds"
            ));
        }
        if let Some(w) = input.wait_secs
            && (w == 0 || w > WAIT_MAX_SECS)
        {
            return Err(format!(
                "wait_secs is {w}; give 1 to {WAIT_MAX_SECS} seconds, or leave it out to get a pending handle"
            ));
        }
        let mut req = ExecRequest {
            selector: input.selector,
            command: input.command,
            timeout_ms: Some(timeout_secs * 1000),
            output_limit: Some(EXEC_OUTPUT_LIMIT),
            approval: input.approval,
            ..ExecRequest::default()
        };
        let progress = meta.get_progress_token();
        let (id, why) = match self.run(&req, 0.0, progress.as_ref(), &peer, &ct).await {
            Ok(out) => return finished(out),
            Err(Run::Failed(ClientError::Api { error, .. }))
                if error.code == "approval_required" && error.approval.is_some() =>
            {
                (
                    error.approval.clone().unwrap_or_default(),
                    error.to_string(),
                )
            }
            Err(Run::Failed(e)) => return Err(failed(e)),
            Err(Run::Stopped(why)) => return Err(why),
        };
        let Some(wait) = input.wait_secs else {
            return pending(id, &why);
        };
        let polls =
            match crate::approvals::wait(&self.client, &id, wait, progress.as_ref(), &peer, &ct)
                .await?
            {
                crate::approvals::Waited::Granted { polls } => polls,
                crate::approvals::Waited::Pending => return pending(id, &why),
                crate::approvals::Waited::Refused(message) => return Err(message),
            };
        req.approval = Some(id);
        match self
            .run(&req, polls as f64, progress.as_ref(), &peer, &ct)
            .await
        {
            Ok(out) => finished(out),
            Err(Run::Failed(e)) => Err(failed(e)),
            Err(Run::Stopped(why)) => Err(why),
        }
    }

    /// This node's tunnel and its peers: address, health, handshake age, round-trip time.
    #[tool(annotations(read_only_hint = true))]
    async fn vpn_status(&self) -> Result<Json<VpnStatusOutput>, String> {
        let s = self
            .client
            .call::<VpnStatusGet>(&tether_api::Empty {})
            .await
            .map_err(failed)?;
        Ok(Json(VpnStatusOutput {
            role: s.role.to_string(),
            tunnel: s.tunnel,
            overlay_ip: s.overlay_ip,
            peers: s
                .peers
                .into_iter()
                .map(|p| PeerOut {
                    name: p.name,
                    overlay_ip: p.overlay_ip,
                    up: p.up,
                    health: p.health,
                    last_handshake_secs: p.last_handshake_secs,
                    rtt_ms: p.rtt_ms,
                })
                .collect(),
        }))
    }

    /// The newest audit records (admin or auditor role), optionally filtered by type and host.
    /// Reading the audit log is itself audited.
    #[tool(annotations(read_only_hint = true))]
    async fn audit_tail(
        &self,
        Parameters(input): Parameters<AuditTailInput>,
    ) -> Result<Json<AuditTailOutput>, String> {
        let limit = input.limit.unwrap_or(20);
        if limit == 0 || limit > AUDIT_TAIL_MAX {
            return Err(format!("limit is {limit}; give 1 to {AUDIT_TAIL_MAX}"));
        }
        let mut records = Vec::new();
        let mut bad = None;
        self.client
            .stream_lines::<AuditRecords>(
                &AuditRecordsQuery {
                    types: input.types,
                    host: input.host,
                    from: None,
                    limit: Some(limit),
                },
                |line| {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        return true;
                    }
                    match serde_json::from_slice::<serde_json::Value>(line) {
                        Ok(v) => {
                            records.push(v);
                            records.len() <= AUDIT_TAIL_MAX
                        }
                        Err(e) => {
                            bad = Some(e.to_string());
                            false
                        }
                    }
                },
            )
            .await
            .map_err(failed)?;
        if let Some(e) = bad {
            return Err(format!("the daemon sent an invalid audit line: {e}"));
        }
        Ok(Json(AuditTailOutput { records }))
    }
}

/// Why [`TetherMcp::run`] produced no result.
enum Run {
    /// The daemon refused or the call failed (an `approval_required` refusal among them).
    Failed(ClientError),
    /// Cancelled, or the stream ended early: the message for the `isError` result.
    Stopped(String),
}

impl TetherMcp {
    /// Sends `req` once and folds its events; progress per finished host is reported as
    /// `base + done` of `base + total` (so it keeps increasing after an approval wait).
    async fn run(
        &self,
        req: &ExecRequest,
        base: f64,
        progress: Option<&ProgressToken>,
        peer: &Peer<RoleServer>,
        ct: &CancellationToken,
    ) -> Result<ExecOutput, Run> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ExecEvent>();
        let client = self.client.clone();
        let req = req.clone();
        // The call runs while events are folded in here; dropping it (cancellation) closes the
        // connection, which makes the daemon signal and close the remote commands.
        let call = async move { client.stream::<Exec>(&req, |ev| tx.send(ev).is_ok()).await };
        tokio::pin!(call);
        let mut out = ExecOutput::default();
        let mut total = 0usize;
        let mut done = 0usize;
        let mut finished = false;
        let mut result = None;
        loop {
            tokio::select! {
                () = ct.cancelled() => {
                    return Err(Run::Stopped("cancelled by the client; the remote commands were stopped".into()));
                }
                r = &mut call, if result.is_none() => {
                    result = Some(r);
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else {
                        break;
                    };
                    let host_done = fold(&mut out, ev, &mut total, &mut finished);
                    if let (true, Some(token)) = (host_done, progress) {
                        done += 1;
                        let _ = peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), base + done as f64)
                                    .with_total(base + total as f64)
                                    .with_message(format!("{done} of {total} hosts finished")),
                            )
                            .await;
                    }
                }
            }
        }
        if let Some(Err(e)) = result {
            return Err(Run::Failed(e));
        }
        if !finished {
            return Err(Run::Stopped("the daemon ended the exec stream without a summary; check `tether audit tail` and the daemon log".into()));
        }
        out.status = "completed".into();
        Ok(out)
    }
}

/// The tool result of an exec that ran: isError when a host failed or was skipped.
fn finished(out: ExecOutput) -> Result<CallToolResult, String> {
    let text = summary_text(&out);
    let is_error = out.failed > 0 || out.skipped > 0;
    let value = serde_json::to_value(&out).map_err(|e| e.to_string())?;
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(value);
    if is_error {
        r.is_error = Some(true);
    }
    Ok(r)
}

/// The tool result of an exec held for approval `id`: not an error, a handle to poll.
fn pending(id: String, why: &str) -> Result<CallToolResult, String> {
    let text = format!(
        "approval_pending: {why}\nNothing ran. Another person decides with `tether approvals approve {id}` (or deny) from their own shell; poll approvals_status with id {id}, then call exec again with the same selector and command and approval \"{id}\" (or call exec with wait_secs to wait here)."
    );
    let out = ExecOutput {
        status: "approval_pending".into(),
        approval: Some(id),
        ..ExecOutput::default()
    };
    let value = serde_json::to_value(&out).map_err(|e| e.to_string())?;
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(value);
    Ok(r)
}

/// Folds one exec event into `out`; true when a host reached its end (for progress).
fn fold(out: &mut ExecOutput, ev: ExecEvent, total: &mut usize, finished: &mut bool) -> bool {
    fn run<'a>(out: &'a mut ExecOutput, host: &str) -> &'a mut HostRun {
        let i = match out.hosts.iter().position(|h| h.host == host) {
            Some(i) => i,
            None => {
                out.hosts.push(HostRun {
                    host: host.to_owned(),
                    status: "pending".into(),
                    ..HostRun::default()
                });
                out.hosts.len() - 1
            }
        };
        &mut out.hosts[i]
    }
    match ev {
        ExecEvent::Accepted { hosts } => {
            *total = hosts.len();
            for h in hosts {
                run(out, &h);
            }
            false
        }
        ExecEvent::Started { host } => {
            run(out, &host).status = "running".into();
            false
        }
        ExecEvent::Output { host, stream, data } => {
            let r = run(out, &host);
            match stream {
                ExecStream::Stdout => r.stdout.push_str(&data),
                ExecStream::Stderr => r.stderr.push_str(&data),
            }
            false
        }
        ExecEvent::Exit {
            host,
            code,
            signal,
            duration_ms,
            dropped_bytes,
            ..
        } => {
            let r = run(out, &host);
            r.status = if code == Some(0) { "ok" } else { "failed" }.into();
            r.exit_code = code;
            r.signal = signal;
            r.duration_ms = duration_ms;
            r.dropped_bytes = dropped_bytes;
            true
        }
        ExecEvent::Error {
            host,
            kind,
            message,
            duration_ms,
        } => {
            let r = run(out, &host);
            r.status = "error".into();
            r.error = Some(format!("{kind}: {message}"));
            r.duration_ms = duration_ms;
            true
        }
        ExecEvent::Skipped { host, reason } => {
            let r = run(out, &host);
            r.status = "skipped".into();
            r.error = Some(reason);
            true
        }
        ExecEvent::Summary(s) => {
            out.ok = s.ok;
            out.failed = s.failed;
            out.skipped = s.skipped;
            out.aborted = s.aborted;
            *finished = true;
            false
        }
        // Events added in later daemon versions are not needed for the result.
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// A few lines for clients that read only the text content.
fn summary_text(out: &ExecOutput) -> String {
    let mut s = format!(
        "{} ok, {} failed, {} skipped",
        out.ok, out.failed, out.skipped
    );
    if let Some(a) = &out.aborted {
        s.push_str(&format!(" ({a})"));
    }
    for h in &out.hosts {
        s.push_str(&format!("\n[{}] {}", h.host, h.status));
        if let Some(c) = h.exit_code {
            s.push_str(&format!(" exit {c}"));
        }
        if let Some(e) = &h.error {
            s.push_str(&format!(": {e}"));
        }
        for (name, text) in [("stdout", &h.stdout), ("stderr", &h.stderr)] {
            if !text.is_empty() {
                s.push_str(&format!("\n{name}:\n{}", text.trim_end()));
            }
        }
    }
    s
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TetherMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("tether", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tether runs commands on a fleet of Linux hosts under the operator's policy, \
                 approvals and audit. Use hosts_list to find hosts (selectors: host:a,b group:g \
                 tag:k=v all), exec to run a command, fs_read / fs_write / fs_list / fs_stat for files, \
                 audit_tail to see what happened. A denied command is final for this request: do \
                 not rephrase it to get around the policy. When exec says approval_pending, a \
                 person must approve it outside MCP; poll approvals_status and then call exec \
                 again with the approval id, or pass wait_secs to wait.",
            )
    }
}
