use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a caller of the control API may do. Mapped from the caller's Unix credentials
/// (SO_PEERCRED) through `[control.roles]`.
///
/// Roles are ordered by what they may read or change; `Auditor` is a side role that may read the
/// audit log but not operate the fleet.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read status, hosts and metrics; change nothing.
    ReadOnly,
    /// Read the audit log and status; change nothing.
    Auditor,
    /// Run commands and transfer files within policy.
    Operator,
    /// Everything, including enrollment, secrets, policy reloads and the audit log.
    Admin,
}

impl Role {
    /// Every role, most powerful first. Used for the config's `[control.roles]` table and to pick
    /// the strongest role a caller qualifies for.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Auditor, Role::ReadOnly];

    /// The role's name as written in config and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::ReadOnly => "read_only",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of `admin`, `operator`, `auditor`, `read_only`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; expected one of admin, operator, auditor, read_only")]
pub struct ParseRoleError(pub String);

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ParseRoleError(s.to_owned()))
    }
}

/// Which side of the star a `tetherd` runs on (or `relay`: beside it, forwarding ciphertext).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DaemonRole {
    /// The operator's side: accepts tunnels from targets, runs the policy engine and the audit chain.
    Hub,
    /// A managed machine: connects to its hub and runs what the hub sends within local policy.
    Target,
    /// Forwards WireGuard ciphertext between allowed keys over TLS 1.3 for peers that can't
    /// reach each other over UDP. Runs no tunnel, enrollment, SSH or plugins.
    Relay,
}

impl fmt::Display for DaemonRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DaemonRole::Hub => "hub",
            DaemonRole::Target => "target",
            DaemonRole::Relay => "relay",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(
                serde_json::to_string(&r).ok(),
                Some(format!("\"{}\"", r.as_str()))
            );
        }
        assert!("root".parse::<Role>().is_err());
    }
}
