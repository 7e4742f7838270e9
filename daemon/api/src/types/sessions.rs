//! `/v1/sessions`: recorded sessions (asciicast v2, hash-chained), listed, verified and read.

use serde::{Deserialize, Serialize};

/// Query of `GET /v1/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    /// Only sessions on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How many of the newest (default 50, at most 10000).
    #[serde(
        default,
        deserialize_with = "crate::de::opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit: Option<usize>,
}

/// A recording's id (path parameter): lowercase letters, digits and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRef {
    /// The recording id, as `tether sessions list` shows it.
    pub id: String,
}

/// One recorded session, from its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// The recording id.
    pub id: String,
    /// The host the session ran on.
    pub host: String,
    /// Who opened it.
    pub user: String,
    /// How it arrived: `cli`, `proxy`, `mcp`, `exec`.
    pub via: String,
    /// `pty` (an interactive session) or `exec` (a command without a pty, recorded with
    /// `ssh.record = "all"`: stdout `o`, stderr `e`, exit status `tether:exit:…` marker).
    pub kind: String,
    /// The command, for a session that ran one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Start, unix seconds.
    pub started_at: u64,
    /// Terminal size at the start.
    pub width: u16,
    /// Terminal rows at the start.
    pub height: u16,
    /// File size in bytes.
    pub size: u64,
}

/// Answer of `GET /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionList {
    /// Newest first.
    pub sessions: Vec<SessionInfo>,
}

/// Answer of `GET /v1/sessions/{id}`: the header and the recording's verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionDetail {
    /// From the header.
    #[serde(flatten)]
    pub info: SessionInfo,
    /// `complete` (every chain link and the end marker check out), `truncated` (no end
    /// marker: still running, or the daemon stopped), `corrupt` (edited or damaged).
    pub state: String,
    /// Hex SHA-256 of the file (compare with the `session.close` audit record).
    pub sha256: String,
    /// Events recorded (complete recordings) or covered by a verified link (truncated ones).
    pub events: u64,
    /// Seconds from the start to the last event (complete recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// What is wrong, for truncated and corrupt recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One line of a recording: the asciicast v2 header object, then `[time, code, data]` arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct CastLine(pub serde_json::Value);

endpoint! {
    /// recorded sessions, newest first (admin, auditor)
    SessionsList: Get "/v1/sessions", SessionsQuery => SessionList;
}
endpoint! {
    /// one recorded session, its chain verified (reading it is audited)
    SessionsShow: Get "/v1/sessions/{id}", SessionRef => SessionDetail;
}
endpoint! {
    /// the recording itself, asciicast v2 line by line, streamed (reading it is audited)
    SessionsRecording: Get "/v1/sessions/{id}/recording", SessionRef => CastLine, response = NdJson;
}
