//! `/v1/exec`: run one command on the hosts a selector picks, streaming typed events.

use serde::{Deserialize, Serialize};

/// Longest command accepted, in bytes (the policy's input limit).
pub const MAX_COMMAND_BYTES: usize = 8192;

/// Body of `POST /v1/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Which hosts (`host:a,b`, `group:g`, `tag:k=v`, `all`, `~regex`, joined with `,`,
    /// negated with `!`). Revoked hosts never match.
    pub selector: String,
    /// The shell command (run by `/bin/sh -c` on each target), at most 8192 bytes.
    pub command: String,
    /// Hosts running at once (default 10, 1–1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Per-host limit for the whole command, milliseconds (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Per-host limit for opening the SSH connection when none is pooled, milliseconds
    /// (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Run on this many hosts first; stop if any of them fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// Stop starting hosts once this many have failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// Stop starting hosts once this percentage (0–100) of the selected hosts have failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures_percent: Option<u32>,
    /// Bytes of output kept per host and stream (default 1 MiB); the rest is dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_limit: Option<u64>,
    /// A change/ticket id for policy plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// A granted approval (`apr-…`) for exactly this request: the same caller, command and
    /// resolved targets. It is used up before anything runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of the `POST /v1/exec` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The request was accepted: these hosts will be tried, in this order.
    Accepted {
        /// The hosts selected.
        hosts: Vec<String>,
    },
    /// A host's command was sent.
    Started {
        /// The host.
        host: String,
    },
    /// Output from a host (UTF-8; invalid bytes replaced).
    Output {
        /// The host.
        host: String,
        /// stdout or stderr.
        stream: ExecStream,
        /// The bytes, as text.
        data: String,
    },
    /// A host's command ended.
    Exit {
        /// The host.
        host: String,
        /// Exit code (null when a signal ended it).
        code: Option<i32>,
        /// The signal that ended it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        /// Wall time, milliseconds.
        duration_ms: u64,
        /// Bytes written to stdout (including dropped ones).
        stdout_bytes: u64,
        /// Bytes written to stderr (including dropped ones).
        stderr_bytes: u64,
        /// Bytes beyond the output limit, not forwarded.
        dropped_bytes: u64,
    },
    /// A host could not run the command (unreachable, timed out, refused, revoked).
    Error {
        /// The host.
        host: String,
        /// `connect`, `timeout`, `host_key`, `refused`, `closed`, `circuit_open`, `ssh`.
        kind: String,
        /// What happened and what to do.
        message: String,
        /// Wall time, milliseconds.
        duration_ms: u64,
    },
    /// A host was not tried (canary failed, max failures reached).
    Skipped {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The last line: what happened overall.
    Summary(ExecSummary),
}

/// The overall result of an exec request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecSummary {
    /// Hosts selected.
    pub hosts: u32,
    /// Hosts that exited 0.
    pub ok: u32,
    /// Hosts that exited non-zero, were killed, or had an error.
    pub failed: u32,
    /// Hosts not tried.
    pub skipped: u32,
    /// Why hosts were skipped, if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
}

endpoint! {
    /// run a command on the selected hosts (policy-checked and audited first); NDJSON events
    Exec: Post "/v1/exec", ExecRequest => ExecEvent, response = NdJson;
}
