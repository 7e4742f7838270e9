//! `[ssh]`: SSH inside the tunnel — how a target serves the hub's commands, and the hub's pool.
//!
//! ```toml
//! [ssh]
//! # target: "server" runs Tether's own SSH server on the overlay port 22 (the default);
//! # "forward" relays the overlay port 22 to this machine's sshd at forward_to instead.
//! mode = "server"
//! forward_to = "127.0.0.1:22"                             # forward mode: the local sshd
//! host_key_file = "/etc/ssh/ssh_host_ed25519_key.pub"     # forward mode: pinned at enrollment
//! run_as = "deploy"              # target: run commands as this user (default: the daemon's)
//! env_allow = ["LANG", "LC_*", "TZ", "TERM"]              # server mode: variables a client may set
//! connect_timeout = "5s"         # hub: default --connect-timeout; target: reaching forward_to
//! idle_timeout = "5m"            # hub: close a pooled connection idle this long
//! keepalive = "15s"              # hub: SSH keepalive interval (3 unanswered close it)
//! max_channels_per_conn = 32     # hub: commands at once per pooled connection; more wait
//! breaker_threshold = 5          # hub: consecutive connection failures that open the breaker
//! breaker_cool_down = "30s"      # hub: how long an open breaker refuses before one probe
//! record = "interactive"         # hub: record pty sessions only, or "all" (exec sessions too)
//! ```
//! Every key is optional; the defaults are the behaviour without the table.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::parse_duration_secs;

/// How a target serves SSH on its overlay port 22.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshMode {
    /// Tether's own SSH server (russh): exec with an environment allow-list, the target's own
    /// policy and audit per command.
    #[default]
    Server,
    /// Relay the overlay port 22 to this machine's `sshd` at `forward_to`; the hub logs in as
    /// `run_as` with its client key (in that user's `authorized_keys`) and pins sshd's host key.
    Forward,
}

impl SshMode {
    /// `server` or `forward`.
    pub fn as_str(self) -> &'static str {
        match self {
            SshMode::Server => "server",
            SshMode::Forward => "forward",
        }
    }
}

/// Which sessions the hub records (`ssh.record`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordMode {
    /// Interactive (pty) sessions only: `tether ssh`, shells through `tether proxy` (default).
    #[default]
    Interactive,
    /// Interactive sessions and every non-interactive exec through the hub (`tether exec`,
    /// `ssh HOST CMD` through `tether proxy`): stdin, stdout, stderr and the exit status.
    All,
}

impl RecordMode {
    /// `interactive` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordMode::Interactive => "interactive",
            RecordMode::All => "all",
        }
    }
}

/// `[ssh]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSection {
    /// Target: `server` (default) or `forward`.
    pub mode: SshMode,
    /// Target, forward mode: the local sshd, `IP:port` (default `127.0.0.1:22`).
    pub forward_to: String,
    /// Target, forward mode: sshd's Ed25519 host public key, sent to the hub at enrollment and
    /// pinned there (default `/etc/ssh/ssh_host_ed25519_key.pub`).
    pub host_key_file: PathBuf,
    /// Target: the user commands run as. Server mode: the daemon drops to it (its uid, primary
    /// group and supplementary groups) for each command, which needs root; unset: the daemon's
    /// own user. Forward mode: the account the hub logs in to sshd as (required there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Target, server mode: environment variables a client may set (`*` ends a prefix).
    pub env_allow: Vec<String>,
    /// Hub: default limit for opening a connection (tunnel stream, handshake, authentication)
    /// when a request names none. Target, forward mode: limit for connecting to `forward_to`.
    pub connect_timeout: String,
    /// Hub: a pooled connection with no command running for this long is closed.
    pub idle_timeout: String,
    /// Hub: SSH keepalive interval; three unanswered close the connection.
    pub keepalive: String,
    /// Hub: commands at once on one pooled connection (1–1024); more wait for a free channel.
    pub max_channels_per_conn: usize,
    /// Hub: SSH connections open at once across all targets (1–1,000,000). When a request needs
    /// a new one and the pool is full, the least recently used idle connection is closed; with
    /// none idle, the request waits. Unset: derived from the machine's memory (1/8 of it at
    /// 192 KiB per connection, 256–65,536).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Hub: consecutive connection failures that open a target's circuit breaker (1–1000).
    pub breaker_threshold: u32,
    /// Hub: how long an open breaker refuses at once before it lets one probe through.
    pub breaker_cool_down: String,
    /// Hub: the largest recording of one interactive session, bytes (default 256 MiB; 4 KiB to
    /// 64 GiB). Past it the recording ends with a note and the session goes on unrecorded.
    pub recording_max_bytes: u64,
    /// Hub: `interactive` (default) records pty sessions; `all` records exec sessions too.
    pub record: RecordMode,
}

/// Environment variables a client may set by default.
pub const DEFAULT_ENV_ALLOW: &[&str] = &["LANG", "LC_*", "TZ", "TERM"];

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            mode: SshMode::Server,
            forward_to: "127.0.0.1:22".to_owned(),
            host_key_file: PathBuf::from("/etc/ssh/ssh_host_ed25519_key.pub"),
            run_as: None,
            env_allow: DEFAULT_ENV_ALLOW.iter().map(|s| (*s).to_owned()).collect(),
            connect_timeout: "5s".to_owned(),
            idle_timeout: "5m".to_owned(),
            keepalive: "15s".to_owned(),
            max_channels_per_conn: 32,
            max_connections: None,
            breaker_threshold: 5,
            breaker_cool_down: "30s".to_owned(),
            recording_max_bytes: 256 << 20,
            record: RecordMode::Interactive,
        }
    }
}

/// The `[ssh]` durations, parsed. Only meaningful after [`SshSection::validate`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SshTimes {
    /// `connect_timeout`.
    pub connect_timeout: std::time::Duration,
    /// `idle_timeout`.
    pub idle_timeout: std::time::Duration,
    /// `keepalive`.
    pub keepalive: std::time::Duration,
    /// `breaker_cool_down`.
    pub breaker_cool_down: std::time::Duration,
}

/// Whether `name` is a plausible POSIX user name (what `useradd` accepts).
fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.chars().all(|c| c.is_ascii_digit())
}

impl SshSection {
    /// The durations, falling back to the defaults for any that do not parse.
    pub fn times(&self) -> SshTimes {
        let d = |text: &str, default: u64| {
            std::time::Duration::from_secs(parse_duration_secs(text).unwrap_or(default))
        };
        SshTimes {
            connect_timeout: d(&self.connect_timeout, 5),
            idle_timeout: d(&self.idle_timeout, 300),
            keepalive: d(&self.keepalive, 15),
            breaker_cool_down: d(&self.breaker_cool_down, 30),
        }
    }

    /// Checks the section for a daemon of `role` (`None`: unknown yet); each problem as
    /// (key, message).
    pub fn validate(&self, role: Option<tether_model::DaemonRole>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut bad = |key: &str, message: String| out.push((format!("ssh.{key}"), message));
        let is_hub = role == Some(tether_model::DaemonRole::Hub);
        if !(4096..=64 << 30).contains(&self.recording_max_bytes) {
            bad(
                "recording_max_bytes",
                format!(
                    "{} is out of range; give 4096 to 68719476736 bytes",
                    self.recording_max_bytes
                ),
            );
        }
        if is_hub && self.mode == SshMode::Forward {
            bad(
                "mode",
                "\"forward\" applies to a target; a hub runs no SSH server, remove it".to_owned(),
            );
        }
        if is_hub && self.run_as.is_some() {
            bad(
                "run_as",
                "applies to a target (the user its commands run as); remove it from the hub's config"
                    .to_owned(),
            );
        }
        if self.forward_to.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "forward_to",
                format!(
                    "{:?} is not an IP:port address like \"127.0.0.1:22\"",
                    self.forward_to
                ),
            );
        }
        if !self.host_key_file.is_absolute() {
            bad(
                "host_key_file",
                format!("{:?} is not an absolute path", self.host_key_file),
            );
        }
        match &self.run_as {
            Some(user) if !valid_user_name(user) => bad(
                "run_as",
                format!(
                    "{user:?} is not a user name (letters, digits, _ - . ; at most 32; not all digits)"
                ),
            ),
            None if self.mode == SshMode::Forward && !is_hub => bad(
                "run_as",
                "is required with mode = \"forward\": name the account the hub logs in to sshd as (its authorized_keys holds the hub's key)"
                    .to_owned(),
            ),
            _ => {}
        }
        for (i, e) in self.env_allow.iter().enumerate() {
            let name = e.strip_suffix('*').unwrap_or(e);
            let ok = !e.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.contains('*');
            if !ok {
                bad(
                    &format!("env_allow[{i}]"),
                    format!("{e:?}: use a variable name (LANG) or a prefix ending in * (LC_*)"),
                );
            }
        }
        for (key, text, max) in [
            ("connect_timeout", &self.connect_timeout, 600),
            ("idle_timeout", &self.idle_timeout, 7 * 86_400),
            ("keepalive", &self.keepalive, 3600),
            ("breaker_cool_down", &self.breaker_cool_down, 86_400),
        ] {
            match parse_duration_secs(text) {
                None => bad(
                    key,
                    format!("{text:?} is not a duration like 5s, 5m or 1h (at least 1 s)"),
                ),
                Some(s) if s > max => bad(key, format!("{text:?} is longer than {max} s")),
                Some(_) => {}
            }
        }
        if !(1..=1024).contains(&self.max_channels_per_conn) {
            bad(
                "max_channels_per_conn",
                format!("{} is not in 1..=1024", self.max_channels_per_conn),
            );
        }
        if let Some(n) = self.max_connections
            && !(1..=1_000_000).contains(&n)
        {
            bad(
                "max_connections",
                format!(
                    "{n} is not in 1..=1000000: give the most SSH connections the hub keeps open at once, or remove it for the default derived from memory"
                ),
            );
        }
        if !(1..=1000).contains(&self.breaker_threshold) {
            bad(
                "breaker_threshold",
                format!("{} is not in 1..=1000", self.breaker_threshold),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_model::DaemonRole;

    #[test]
    fn defaults_are_valid_for_both_roles() {
        let s = SshSection::default();
        assert!(s.validate(Some(DaemonRole::Hub)).is_empty());
        assert!(s.validate(Some(DaemonRole::Target)).is_empty());
        let t = s.times();
        assert_eq!(t.idle_timeout.as_secs(), 300);
        assert_eq!(t.connect_timeout.as_secs(), 5);
    }

    #[test]
    fn forward_mode_needs_run_as_and_is_target_only() {
        let s = SshSection {
            mode: SshMode::Forward,
            ..SshSection::default()
        };
        let keys: Vec<String> = s
            .validate(Some(DaemonRole::Target))
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(keys, ["ssh.run_as"]);
        let s = SshSection {
            run_as: Some("deploy".into()),
            ..s
        };
        assert!(s.validate(Some(DaemonRole::Target)).is_empty());
        let keys: Vec<String> = s
            .validate(Some(DaemonRole::Hub))
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(keys, ["ssh.mode", "ssh.run_as"]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let s = SshSection {
            forward_to: "localhost".into(),
            host_key_file: "relative.pub".into(),
            run_as: Some("a/b".into()),
            env_allow: vec!["LC_*".into(), "A*B".into(), String::new()],
            connect_timeout: "soon".into(),
            idle_timeout: "30d".into(),
            max_channels_per_conn: 0,
            max_connections: Some(0),
            breaker_threshold: 0,
            ..SshSection::default()
        };
        let keys: Vec<String> = s.validate(None).into_iter().map(|p| p.0).collect();
        for k in [
            "ssh.forward_to",
            "ssh.host_key_file",
            "ssh.run_as",
            "ssh.env_allow[1]",
            "ssh.env_allow[2]",
            "ssh.connect_timeout",
            "ssh.idle_timeout",
            "ssh.max_channels_per_conn",
            "ssh.max_connections",
            "ssh.breaker_threshold",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
        assert!(!keys.iter().any(|x| x == "ssh.env_allow[0]"));
    }

    #[test]
    fn user_names() {
        for ok in ["nobody", "deploy", "www-data", "a.b", "_svc"] {
            assert!(valid_user_name(ok), "{ok}");
        }
        for bad in ["", "-x", "a b", "a:b", "1000", &"x".repeat(33)] {
            assert!(!valid_user_name(bad), "{bad}");
        }
    }
}
