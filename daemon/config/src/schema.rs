use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tether_model::{DaemonRole, Role};

use crate::Problem;
use crate::principal::Principal;

/// The whole `tetherd.toml`. Every table rejects unknown keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `hub`, `target` or `relay`. Required (in the file, as `TETHER_ROLE`, or as `tetherd run --role`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<DaemonRole>,
    /// Where the daemon keeps its state (inventory, audit log, vault file). Absolute path.
    pub state_dir: PathBuf,
    /// The local control API.
    pub control: ControlConfig,
    /// Logging.
    pub log: LogConfig,
    /// The secret vault: backend and the locked-memory requirement.
    #[serde(default)]
    pub vault: crate::VaultConfig,
    /// The policy, inline (`[policy]`). Mutually exclusive with `policy_file`.
    #[serde(default)]
    pub policy: tether_policy::PolicySpec,
    /// A standalone policy file (a document with a `[policy]` table) instead of an inline one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PathBuf>,
    /// A `plugins.toml` naming the WASM plugins to load (signed, sandboxed). Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins_manifest: Option<PathBuf>,
    /// The userspace WireGuard tunnel.
    #[serde(default)]
    pub tunnel: TunnelSection,
    /// Enrollment of new targets (hub only).
    #[serde(default)]
    pub enroll: EnrollSection,
    /// The optional Prometheus listener (`/metrics`, `/healthz`, `/readyz` over TCP).
    #[serde(default)]
    pub metrics: crate::MetricsConfig,
    /// Alert routing and delivery, audit-sink batching (`[alerts]`).
    #[serde(default)]
    pub alerts: crate::AlertsSection,
    /// SSH inside the tunnel: the target's server or forward mode, `run_as`, the hub's pool
    /// (`[ssh]`).
    #[serde(default)]
    pub ssh: crate::SshSection,
    /// Approvals and just-in-time access (`[approvals]`).
    #[serde(default)]
    pub approvals: crate::ApprovalsSection,
    /// File transfer confinement on a target (`[files]`).
    #[serde(default)]
    pub files: crate::FilesSection,
    /// The relay role's listener, certificate, allowlist and limits (`[relay]`).
    #[serde(default)]
    pub relay: crate::RelaySection,
}

/// `[tunnel]`: userspace WireGuard over one UDP socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSection {
    /// UDP address to listen on. Hub: the port targets send to (default `0.0.0.0:51820`).
    /// Target: usually `0.0.0.0:0` (any port; the hub learns it from authenticated packets).
    /// Default: `0.0.0.0:51820` on a hub, `0.0.0.0:0` on a target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Hub: the `host:port` targets are told to send to (put in invites). Default: the listen
    /// address, when it names a specific IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The overlay network (hub: `.1`; targets get addresses in it at enrollment).
    pub subnet: String,
    /// Target: send a keepalive this often (seconds) so NAT mappings stay open; 0 disables.
    pub persistent_keepalive_secs: u16,
    /// Target: rotate this machine's WireGuard key when it is older than this many days
    /// (authenticated over the tunnel, audited on both ends); 0 disables.
    pub key_rotation_days: u32,
    /// Relays (`[[tunnel.relays]]`) for peers whose UDP is blocked: a peer tries direct UDP
    /// first and falls back to the first relay that is up. On a hub these are put in every
    /// invite; on a target they are used besides the ones its invite named. Print an entry with
    /// `tetherd relay show` on the relay.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<tether_model::relay::RelaySpec>,
}

impl Default for TunnelSection {
    fn default() -> Self {
        TunnelSection {
            listen: None,
            endpoint: None,
            subnet: "10.99.0.0/16".to_owned(),
            persistent_keepalive_secs: 25,
            key_rotation_days: 90,
            relays: Vec::new(),
        }
    }
}

/// `[enroll]`: the hub's enrollment listener (plain TCP, mutually authenticated by the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollSection {
    /// TCP address of the enrollment listener (hub). Rate-limited per source address.
    pub listen: String,
    /// The `host:port` put in invite tokens. Default: the listen address, when it names a
    /// specific IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Default lifetime of an invite, e.g. `24h`, `30m`, `7d`.
    pub default_ttl: String,
    /// The longest lifetime an invite may be given (`--ttl` over it is refused), default `30d`.
    pub max_ttl: String,
}

impl Default for EnrollSection {
    fn default() -> Self {
        EnrollSection {
            listen: "0.0.0.0:51821".to_owned(),
            endpoint: None,
            default_ttl: "24h".to_owned(),
            max_ttl: "30d".to_owned(),
        }
    }
}

/// Parses `30s`, `15m`, `24h`, `7d` (or plain seconds) into seconds.
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.chars().last()? {
        's' => (&t[..t.len() - 1], 1),
        'm' => (&t[..t.len() - 1], 60),
        'h' => (&t[..t.len() - 1], 3600),
        'd' => (&t[..t.len() - 1], 86_400),
        c if c.is_ascii_digit() => (t, 1),
        _ => return None,
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|s| *s > 0)
}

/// Parses `a.b.c.d/n` into the network address and prefix length.
pub fn parse_subnet(text: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.trim().parse().ok()?;
    let prefix: u8 = prefix.trim().parse().ok()?;
    (8..=30).contains(&prefix).then_some((ip, prefix))
}

/// Where a config's policy comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySource {
    /// The `[policy]` table of tetherd.toml.
    Inline(tether_policy::PolicySpec),
    /// The text of `policy_file`.
    File(String),
}

/// `[control]`: the HTTP/JSON API on a Unix socket that the `tether` CLI talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Socket path. Created 0660; its group is `group` when set.
    pub socket: PathBuf,
    /// Group that owns the socket (so its members can connect). Unset: the daemon's own group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Seconds a connection may stay idle (or take to send a request) before it is closed.
    pub idle_timeout_secs: u64,
    /// Who gets which role.
    pub roles: RolesConfig,
}

/// `[control.roles]`: principals (`uid:N`, `user:NAME`, `gid:N`, `group:NAME`) per role.
/// A caller gets the strongest role any of its credentials match. The uid the daemon runs as is
/// always `admin` (it owns the daemon's state anyway).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesConfig {
    /// Everything, including enrollment, secrets, policy and the audit log.
    #[serde(default)]
    pub admin: Vec<Principal>,
    /// Run commands and transfer files within policy.
    #[serde(default)]
    pub operator: Vec<Principal>,
    /// Read the audit log.
    #[serde(default)]
    pub auditor: Vec<Principal>,
    /// Read status and inventory.
    #[serde(default)]
    pub read_only: Vec<Principal>,
}

impl RolesConfig {
    /// The principals configured for `role`.
    pub fn principals(&self, role: Role) -> &[Principal] {
        match role {
            Role::Admin => &self.admin,
            Role::Operator => &self.operator,
            Role::Auditor => &self.auditor,
            Role::ReadOnly => &self.read_only,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`. `RUST_LOG` overrides it when set.
    pub level: String,
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Default for Config {
    fn default() -> Self {
        Config {
            role: None,
            state_dir: crate::default_state_dir(),
            control: ControlConfig {
                socket: crate::default_socket_path(),
                group: None,
                idle_timeout_secs: 30,
                roles: RolesConfig {
                    admin: vec![Principal::Uid(0)],
                    ..RolesConfig::default()
                },
            },
            log: LogConfig {
                level: "info".to_owned(),
            },
            vault: crate::VaultConfig::default(),
            policy: tether_policy::PolicySpec::default(),
            policy_file: None,
            plugins_manifest: None,
            tunnel: TunnelSection::default(),
            metrics: crate::MetricsConfig::default(),
            enroll: EnrollSection::default(),
            alerts: crate::AlertsSection::default(),
            ssh: crate::SshSection::default(),
            approvals: crate::ApprovalsSection::default(),
            files: crate::FilesSection::default(),
            relay: crate::RelaySection::default(),
        }
    }
}

/// Why the policy a config points at could not be read (compile errors are the policy crate's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read policy_file {path}: {reason}")]
pub struct PolicyFileError {
    /// The file.
    pub path: String,
    /// The OS error.
    pub reason: String,
}

impl Config {
    /// The policy this config means: the inline `[policy]` table, or the text of `policy_file`.
    /// Returns the spec source so callers can compile it (through the engine on reloads).
    pub fn policy_source(&self) -> Result<PolicySource, PolicyFileError> {
        match &self.policy_file {
            None => Ok(PolicySource::Inline(self.policy.clone())),
            Some(path) => crate::file::read_config_file(path)
                .map(PolicySource::File)
                .map_err(|e| PolicyFileError {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
        }
    }

    /// Reads and compiles the policy, as a list of problems for `config check` and startup.
    pub fn check_policy(&self) -> Vec<Problem> {
        let problem = |key: &str, message: String| Problem {
            key: key.to_owned(),
            line: None,
            message,
        };
        let spec = match self.policy_source() {
            Err(e) => return vec![problem("policy_file", e.reason)],
            Ok(PolicySource::Inline(spec)) => spec,
            Ok(PolicySource::File(text)) => match tether_policy::PolicySpec::from_toml_str(&text) {
                Ok(spec) => spec,
                Err(e) => return vec![problem("policy_file", e.to_string())],
            },
        };
        match tether_policy::Policy::compile(&spec) {
            Ok(_) => Vec::new(),
            Err(e) => vec![problem(
                if self.policy_file.is_some() {
                    "policy_file"
                } else {
                    "policy"
                },
                e.to_string(),
            )],
        }
    }

    /// The daemon role. Only call after [`Config::validate`] returned no problems.
    pub fn daemon_role(&self) -> DaemonRole {
        self.role.unwrap_or(DaemonRole::Hub)
    }

    /// Checks what types alone can't: required keys, absolute paths, ranges.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                line: None,
                message,
            })
        };
        if self.role.is_none() {
            bad(
                "role",
                "missing; set role = \"hub\", \"target\" or \"relay\" (or pass --role)".to_owned(),
            );
        }
        if !self.state_dir.is_absolute() {
            bad(
                "state_dir",
                format!("{:?} is not an absolute path", self.state_dir),
            );
        }
        if !self.control.socket.is_absolute() {
            bad(
                "control.socket",
                format!("{:?} is not an absolute path", self.control.socket),
            );
        } else if self.control.socket.as_os_str().len() > 107 {
            bad(
                "control.socket",
                "path is longer than the 107 bytes a Unix socket address can hold".to_owned(),
            );
        }
        if let Some(group) = &self.control.group
            && group.is_empty()
        {
            bad(
                "control.group",
                "is empty; remove it or name a group".to_owned(),
            );
        }
        if !(1..=3600).contains(&self.control.idle_timeout_secs) {
            bad(
                "control.idle_timeout_secs",
                format!(
                    "{} is out of range 1..=3600",
                    self.control.idle_timeout_secs
                ),
            );
        }
        if !LOG_LEVELS.contains(&self.log.level.as_str()) {
            bad(
                "log.level",
                format!(
                    "{:?} is not a log level; use one of {}",
                    self.log.level,
                    LOG_LEVELS.join(", ")
                ),
            );
        }
        if let Some(file) = &self.policy_file {
            if !file.is_absolute() {
                bad("policy_file", format!("{file:?} is not an absolute path"));
            }
            if self.policy != tether_policy::PolicySpec::default() {
                bad(
                    "policy_file",
                    "is set, and so is an inline [policy] table; keep one of the two".to_owned(),
                );
            }
        }
        if let Some(m) = self.plugins_manifest.as_ref().filter(|m| !m.is_absolute()) {
            bad("plugins_manifest", format!("{m:?} is not an absolute path"));
        }
        if parse_subnet(&self.tunnel.subnet).is_none() {
            bad(
                "tunnel.subnet",
                format!(
                    "{:?} is not an IPv4 subnet like 10.99.0.0/16 (prefix 8-30)",
                    self.tunnel.subnet
                ),
            );
        }
        if let Some(listen) = &self.tunnel.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "tunnel.listen",
                format!("{listen:?} is not an IP:port address"),
            );
        }
        if self.enroll.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "enroll.listen",
                format!("{:?} is not an IP:port address", self.enroll.listen),
            );
        }
        for (key, endpoint) in [
            ("tunnel.endpoint", &self.tunnel.endpoint),
            ("enroll.endpoint", &self.enroll.endpoint),
        ] {
            if let Some(e) = endpoint {
                let ok = e
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    bad(key, format!("{e:?} is not host:port"));
                }
            }
        }
        if let Some(p) = tether_model::relay::check_relays(&self.tunnel.relays) {
            bad("tunnel.relays", p);
        }
        if parse_duration_secs(&self.enroll.default_ttl).is_none() {
            bad(
                "enroll.default_ttl",
                format!(
                    "{:?} is not a duration like 30m, 24h or 7d",
                    self.enroll.default_ttl
                ),
            );
        }
        match (
            parse_duration_secs(&self.enroll.default_ttl),
            parse_duration_secs(&self.enroll.max_ttl),
        ) {
            (_, None) => bad(
                "enroll.max_ttl",
                format!("{:?} is not a duration like 7d or 30d", self.enroll.max_ttl),
            ),
            (Some(d), Some(m)) if d > m => bad(
                "enroll.default_ttl",
                format!(
                    "{:?} is longer than enroll.max_ttl ({:?})",
                    self.enroll.default_ttl, self.enroll.max_ttl
                ),
            ),
            _ => {}
        }
        if let Err((key, message)) = self.vault.validate() {
            bad(key, message);
        }
        if let Err((key, message)) = self.metrics.validate() {
            bad(key, message);
        }
        for (key, message) in self.alerts.validate() {
            bad(&key, message);
        }
        for (key, message) in self.ssh.validate(self.role) {
            bad(&key, message);
        }
        for (key, message) in self.approvals.validate() {
            bad(&key, message);
        }
        for (key, message) in self.files.validate() {
            bad(key, message);
        }
        for (key, message) in self.relay.validate() {
            bad(&key, message);
        }
        problems
    }
}
