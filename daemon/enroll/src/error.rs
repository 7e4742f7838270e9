//! The one error type of this crate.
//!
//! Every message says what failed and what to do next. No variant carries secret material: the
//! token's MAC, the invite key and the derived session key never appear in an error. Names, hub
//! ids, overlay IPs and expiry times are not secret (they are in the token's readable payload).
//!
//! The hub sends the target an error frame with [`EnrollError::code`] and
//! [`EnrollError::wire_message`]; the target maps it back with [`EnrollError::from_remote`], so
//! both sides report the same variant.

use std::path::PathBuf;

/// Everything that can go wrong in enrollment, invites and the inventory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The token (or a message carrying it) does not have the expected shape.
    #[error(
        "invite token is malformed: {what}. Copy the whole token printed by `tether vpn invite` \
         (one line starting with `tether1.`), or ask the hub admin for a new one"
    )]
    Malformed {
        /// Which part is wrong.
        what: String,
    },
    /// The invite's expiry time has passed.
    #[error(
        "the invite for host {name:?} expired at {} ; ask the hub admin for a fresh one \
         (`tether vpn reinvite {name}`)", crate::util::fmt_unix(*at)
    )]
    Expired {
        /// Host name the invite was for.
        name: String,
        /// Expiry, unix seconds.
        at: u64,
    },
    /// The token was issued by another hub than the one it was presented to.
    #[error(
        "this invite was issued by hub {token_hub}, but was presented to {presented_to}; enroll \
         against the hub that issued it (the endpoint inside the token), or ask this hub's admin \
         for an invite"
    )]
    ForeignHub {
        /// Hub id inside the token.
        token_hub: String,
        /// The hub it was presented to (its id, or its address on the target side).
        presented_to: String,
    },
    /// The token failed authentication with this hub's invite key.
    #[error(
        "the invite token failed authentication: it was altered, truncated, or signed with an \
         invite key this hub no longer has. Ask the hub admin for a new token and paste it unchanged"
    )]
    Tampered,
    /// The invite's single-use nonce was already consumed by an earlier enrollment.
    #[error(
        "the invite for host {name:?} was already used; an invite enrolls exactly one machine. \
         If this machine was not the one enrolled, tell the hub admin: `tether vpn reinvite {name}` \
         issues a new one (and `tether vpn revoke {name}` throws the other machine out)"
    )]
    AlreadyUsed {
        /// Host name the invite was for.
        name: String,
    },
    /// The invite was revoked by an admin before it was used.
    #[error(
        "the invite for host {name:?} was revoked by the hub admin; ask for a new one \
         (`tether vpn reinvite {name}`)"
    )]
    Revoked {
        /// Host name the invite was for.
        name: String,
    },
    /// The hub has no record of this invite's nonce.
    #[error(
        "the hub has no record of this invite (it was never issued here, was pruned after expiry, \
         or the hub's state was reset); ask the hub admin for a new one"
    )]
    UnknownInvite,
    /// An enrollment hook denied the enrollment.
    #[error(
        "the hub's enrollment hook denied this enrollment: {reason}. Fix what it names, or ask the \
         hub admin"
    )]
    Denied {
        /// The hook's reason, shown to the target.
        reason: String,
    },
    /// A name, tag or group is not acceptable.
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        /// "host name", "group", "tag key", "tag value".
        what: &'static str,
        /// The rejected value.
        value: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// An active host (or a pending invite) already has this name.
    #[error(
        "host name {name:?} is already taken by {by}; pick another name, or `tether hosts rm {name}` \
         / `tether vpn reinvite {name}` to replace it"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// "an enrolled host" or "a pending invite".
        by: &'static str,
    },
    /// An overlay address is outside the subnet, reserved, or in use.
    #[error("overlay address {ip} cannot be used: {why}")]
    AddressUnavailable {
        /// The address.
        ip: std::net::Ipv4Addr,
        /// Why not.
        why: String,
    },
    /// A key the enrolling machine presented is already held by another host in the inventory
    /// (a cloned machine, a copied vault, or a replayed identity).
    #[error(
        "the {which} this machine presented is already held by host {by:?}; a machine needs its own \
         keys: enroll it with `tetherd enroll --force TOKEN` (fresh keys), or remove the other host first"
    )]
    KeyTaken {
        /// "WireGuard public key" or "SSH host key".
        which: &'static str,
        /// The host holding it.
        by: String,
    },
    /// Every address of the overlay subnet is taken.
    #[error(
        "no free overlay address left in {subnet}; remove old hosts (`tether hosts rm NAME`) or \
         configure a larger `[enroll] subnet`"
    )]
    AddressPoolExhausted {
        /// The subnet, e.g. `10.99.0.0/16`.
        subnet: String,
    },
    /// No host with this name in the inventory.
    #[error("no host named {name:?} in the inventory; `tether hosts list` shows the known hosts")]
    NoSuchHost {
        /// The name looked up.
        name: String,
    },
    /// The server claiming to be the hub failed to prove it holds the invite key.
    #[error(
        "the server at {endpoint} failed to prove it is the hub that issued this invite (a fake hub \
         or a man in the middle); nothing was configured. Check the network path to the hub and \
         retry; report it to the hub admin if it persists"
    )]
    HubNotAuthenticated {
        /// The address contacted.
        endpoint: String,
    },
    /// The hub's authenticated reply contradicts what the token pins.
    #[error(
        "the hub's reply does not match the invite ({what}); nothing was configured. Ask the hub \
         admin for a new invite"
    )]
    HubMismatch {
        /// Which pinned value differs.
        what: &'static str,
    },
    /// A frame longer than the limit was announced.
    #[error(
        "enrollment message of {len} bytes exceeds the {max}-byte limit; the connection was closed"
    )]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The exchange did not finish in time.
    #[error(
        "enrollment {what} did not finish within {after_ms} ms; check that the hub's enrollment \
         endpoint is reachable and retry"
    )]
    Timeout {
        /// What was in progress.
        what: &'static str,
        /// The deadline in milliseconds.
        after_ms: u64,
    },
    /// The peer broke the protocol (unexpected message, bad field, early close).
    #[error(
        "enrollment protocol error: {what}; check that both sides run a compatible tether version"
    )]
    Protocol {
        /// What was wrong.
        what: String,
    },
    /// The two sides share no enrollment protocol version.
    #[error(
        "no common enrollment protocol version: this side speaks v{ours_min} to v{ours_max}, the other side v{theirs}; upgrade the older side (a hub enrolls targets one release older or newer)"
    )]
    UnsupportedVersion {
        /// The oldest version this side speaks.
        ours_min: u16,
        /// The newest version this side speaks.
        ours_max: u16,
        /// The version the other side announced or chose.
        theirs: u16,
    },
    /// The hub refused the connection because this address made too many attempts (or the hub
    /// was at its connection cap). `tetherd enroll` retries by itself within its deadline.
    #[error(
        "too many enrollment attempts from this address; {}",
        crate::util::fmt_retry_after(*retry_after_ms)
    )]
    RateLimited {
        /// When the hub expects to take the next attempt from this address, in milliseconds
        /// (sent in the error frame's `retry_after_ms`; absent from hubs before it).
        retry_after_ms: Option<u64>,
    },
    /// Connecting to the hub failed.
    #[error(
        "could not connect to the hub's enrollment endpoint {endpoint}: {source}; check the \
         address, that the hub runs with `[enroll] listen` set, and firewalls"
    )]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Binding the enrollment listener failed.
    #[error(
        "could not listen for enrollments on {addr}: {source}; pick a free address in \
         `[enroll] listen`"
    )]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing a state file failed.
    #[error("could not {what} {}: {source}; check permissions and free space", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A state file exists but cannot be understood.
    #[error(
        "state file {} is corrupt: {what}; restore it from a backup or move it away to start empty",
        path.display()
    )]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Locked secret memory could not be had for key material.
    #[error("could not hold enrollment key material in secure memory: {0}")]
    Secret(#[from] tether_vault::VaultError),
    /// Registering the metrics failed (e.g. registered twice in one registry).
    #[error("could not register enrollment metrics: {0}; register them once per registry")]
    Metrics(String),
    /// The hub failed internally (details are in the hub's log, not sent to the target).
    #[error(
        "the hub could not complete the enrollment ({what}); the hub admin should check tetherd's \
         log, then issue a new invite if this one was consumed"
    )]
    Internal {
        /// What failed, without details.
        what: String,
    },
    /// An invite was asked of a hub that names no address targets can reach and no relay.
    #[error(
        "this hub has no endpoint targets can reach and no relay, so a target could not use \
         the invite: set `[enroll] endpoint` and `[tunnel] endpoint` to an address targets can \
         reach, or add a relay in `[[tunnel.relays]]` (see README, Relay)"
    )]
    Unreachable,
    /// The hub answered with an error code this version does not know.
    #[error("the hub refused the enrollment ({code}): {message}")]
    Remote {
        /// The hub's error code.
        code: String,
        /// The hub's message.
        message: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = EnrollError> = std::result::Result<T, E>;

impl EnrollError {
    /// Stable machine-readable code (used on the wire, in metrics and in the control API).
    pub fn code(&self) -> &'static str {
        match self {
            EnrollError::Malformed { .. } => "malformed",
            EnrollError::Expired { .. } => "expired",
            EnrollError::ForeignHub { .. } => "foreign_hub",
            EnrollError::Tampered => "tampered",
            EnrollError::AlreadyUsed { .. } => "already_used",
            EnrollError::Revoked { .. } => "revoked",
            EnrollError::UnknownInvite => "unknown_invite",
            EnrollError::Denied { .. } => "denied",
            EnrollError::InvalidName { .. } => "invalid_name",
            EnrollError::NameTaken { .. } => "name_taken",
            EnrollError::AddressUnavailable { .. } => "address_unavailable",
            EnrollError::AddressPoolExhausted { .. } => "address_pool_exhausted",
            EnrollError::KeyTaken { .. } => "key_taken",
            EnrollError::NoSuchHost { .. } => "no_such_host",
            EnrollError::HubNotAuthenticated { .. } => "hub_not_authenticated",
            EnrollError::HubMismatch { .. } => "hub_mismatch",
            EnrollError::FrameTooLarge { .. } => "frame_too_large",
            EnrollError::Timeout { .. } => "timeout",
            EnrollError::Protocol { .. } => "protocol",
            EnrollError::UnsupportedVersion { .. } => "unsupported_version",
            EnrollError::RateLimited { .. } => "rate_limited",
            EnrollError::Connect { .. } => "connect",
            EnrollError::Bind { .. } => "bind",
            EnrollError::Io { .. } | EnrollError::CorruptState { .. } => "internal",
            EnrollError::Secret(_) | EnrollError::Metrics(_) | EnrollError::Internal { .. } => {
                "internal"
            }
            EnrollError::Remote { .. } => "remote",
            EnrollError::Unreachable => "unreachable",
        }
    }

    /// The message the hub sends to the target for this error. Hub-internal failures (files,
    /// secure memory) are reduced to a generic text: their details stay in the hub's log.
    pub fn wire_message(&self) -> String {
        match self {
            EnrollError::Io { .. }
            | EnrollError::CorruptState { .. }
            | EnrollError::Secret(_)
            | EnrollError::Metrics(_)
            | EnrollError::Internal { .. } => EnrollError::Internal {
                what: "state could not be recorded".into(),
            }
            .to_string(),
            other => other.to_string(),
        }
    }

    /// Maps an error frame from the hub back to a variant, filling details from the token the
    /// target holds (`name`, `expires_at`, `token_hub`, `endpoint`).
    pub fn from_remote(code: &str, message: &str, ctx: &RemoteContext<'_>) -> EnrollError {
        let name = ctx.name.to_string();
        match code {
            "malformed" => EnrollError::Malformed {
                what: format!("the hub said: {}", clip(message)),
            },
            "expired" => EnrollError::Expired {
                name,
                at: ctx.expires_at,
            },
            "foreign_hub" => EnrollError::ForeignHub {
                token_hub: ctx.token_hub.to_string(),
                presented_to: format!("the server at {}", ctx.endpoint),
            },
            "tampered" => EnrollError::Tampered,
            "already_used" => EnrollError::AlreadyUsed { name },
            "revoked" => EnrollError::Revoked { name },
            "unknown_invite" => EnrollError::UnknownInvite,
            "denied" => EnrollError::Denied {
                reason: clip(message),
            },
            "rate_limited" => EnrollError::RateLimited {
                retry_after_ms: ctx.retry_after_ms,
            },
            "frame_too_large" => EnrollError::Protocol {
                what: format!("the hub refused a message as too large: {}", clip(message)),
            },
            "timeout" => EnrollError::Timeout {
                what: "exchange (the hub's per-connection deadline passed)",
                after_ms: u64::try_from(crate::limits::DEFAULT_DEADLINE.as_millis())
                    .unwrap_or(u64::MAX),
            },
            "internal" => EnrollError::Internal {
                what: "reported by the hub".into(),
            },
            _ => EnrollError::Remote {
                code: clip(code),
                message: clip(message),
            },
        }
    }
}

/// What the target knows from its token, to enrich errors received from the hub.
#[derive(Debug, Clone, Copy)]
pub struct RemoteContext<'a> {
    /// Host name in the token.
    pub name: &'a str,
    /// Expiry in the token (unix seconds).
    pub expires_at: u64,
    /// Hub id in the token.
    pub token_hub: &'a str,
    /// The endpoint contacted.
    pub endpoint: &'a str,
    /// The error frame's retry-after, when the hub sent one.
    pub retry_after_ms: Option<u64>,
}

/// Keeps remote-supplied text short and printable.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(512).collect()
}
