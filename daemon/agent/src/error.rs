//! The crate's one error enum.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::version::{Version, VersionRange};

/// Why an agent conversation failed. Every message says what failed and what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The two sides share no protocol version (one of them is more than one release apart).
    #[error(
        "no common agent protocol version: this machine speaks {ours}, the peer speaks {theirs}; upgrade the {} side (a hub works with targets one release older or newer)",
        if theirs.max < ours.min { "peer's (older)" } else { "this machine's (older)" }
    )]
    UnsupportedVersion {
        /// The versions this machine speaks.
        ours: VersionRange,
        /// The versions the peer announced.
        theirs: VersionRange,
    },
    /// A message could not be decoded.
    #[error("malformed agent message ({what}); is the peer a tetherd of a supported release?")]
    Malformed {
        /// What was wrong with it.
        what: String,
    },
    /// A message is longer than the limit.
    #[error("agent message longer than {max} bytes; the peer is misbehaving")]
    TooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// A message arrived twice or out of order (a replay, or a broken peer).
    #[error(
        "agent message number {got} arrived where number {expected} was due (replayed or reordered); the conversation was dropped, retry it"
    )]
    Sequence {
        /// The sequence number received.
        got: u64,
        /// The one expected.
        expected: u64,
    },
    /// A message that is valid but not at this point of the conversation.
    #[error("unexpected agent message: {what}")]
    Unexpected {
        /// What arrived, and in which state.
        what: String,
    },
    /// A message that the negotiated protocol version cannot express.
    #[error("the agent message {what} does not exist in protocol version {version}")]
    NotInVersion {
        /// The message.
        what: &'static str,
        /// The negotiated version.
        version: Version,
    },
    /// The peer did not answer in time.
    #[error("{what}: no answer within {} s (is the peer online and its tunnel up? `tether vpn status`)", after.as_secs())]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The peer closed the conversation early.
    #[error("the peer hung up {during}; check its log")]
    HungUp {
        /// During what.
        during: &'static str,
    },
    /// The connection through the tunnel could not be opened or broke.
    #[error("agent connection failed: {reason}")]
    Transport {
        /// The driver's description of the failure.
        reason: String,
    },
    /// The peer refused the request and said why.
    #[error("the peer refused: {message}")]
    Refused {
        /// Machine-readable code (empty from v1 peers).
        code: String,
        /// The peer's explanation.
        message: String,
    },
    /// No active host owns the overlay address a conversation came from.
    #[error("no active host has overlay address {ip}; enroll it again (`tether vpn invite`)")]
    UnknownHost {
        /// The address.
        ip: Ipv4Addr,
    },
    /// The request is one only the other role may make.
    #[error("{what}")]
    NotAllowed {
        /// What was refused.
        what: &'static str,
    },
    /// A target asked for more key rotations of its own than the hub allows per hour.
    #[error(
        "too many key rotations requested by this host (at most {limit} an hour); the hub \
         refuses more until the hour has passed (the admin can still force one with \
         `tether vpn rotate-keys`)"
    )]
    RateLimited {
        /// The hourly limit.
        limit: usize,
    },
    /// A WireGuard key in a message is not 32 bytes of base64.
    #[error("invalid WireGuard key ({what}); expected 44 characters of standard base64")]
    InvalidKey {
        /// What is wrong with it.
        what: &'static str,
    },
    /// A rotation offered a key that is (or was) already in use: an old or replayed message.
    #[error(
        "the new WireGuard key equals the current or a retired key of this host (an old or replayed message); rotate again to make a fresh key"
    )]
    KeyReused,
    /// A local step of the rotation failed (audit log, inventory, vault, tunnel).
    #[error("{what} failed: {cause}")]
    Local {
        /// The step.
        what: &'static str,
        /// What the driver reported.
        #[source]
        cause: EffectError,
    },
    /// The new key is in force on this machine but the hub never confirmed it.
    #[error(
        "the new key was not confirmed by the hub within {} s (last attempt: {last}); the hub has the key, so the tunnel should recover; check `tether vpn status` on both ends",
        after.as_secs()
    )]
    NotConfirmed {
        /// The confirmation window.
        after: Duration,
        /// The last attempt's failure.
        last: Box<AgentError>,
    },
    /// The rotation was not completed in time.
    #[error(
        "the host did not complete the rotation within {} s; check that it is online (`tether vpn status`) and read its log",
        after.as_secs()
    )]
    RotationTimeout {
        /// The limit.
        after: Duration,
    },
}

impl AgentError {
    /// A stable, machine-readable code, sent in v2 refusals.
    pub fn code(&self) -> &'static str {
        match self {
            AgentError::UnsupportedVersion { .. } => "unsupported_version",
            AgentError::Malformed { .. } => "malformed",
            AgentError::TooLarge { .. } => "too_large",
            AgentError::Sequence { .. } => "sequence",
            AgentError::Unexpected { .. } => "unexpected",
            AgentError::NotInVersion { .. } => "not_in_version",
            AgentError::Timeout { .. } => "timeout",
            AgentError::HungUp { .. } => "hung_up",
            AgentError::Transport { .. } => "transport",
            AgentError::Refused { .. } => "refused",
            AgentError::UnknownHost { .. } => "unknown_host",
            AgentError::NotAllowed { .. } => "not_allowed",
            AgentError::InvalidKey { .. } => "invalid_key",
            AgentError::KeyReused => "key_reused",
            AgentError::RateLimited { .. } => "rate_limited",
            AgentError::Local { .. } => "local",
            AgentError::NotConfirmed { .. } => "not_confirmed",
            AgentError::RotationTimeout { .. } => "rotation_timeout",
        }
    }
}

/// Why an effect the driver performed for a machine failed: the result it feeds back with
/// [`crate::Hub::recorded`], [`crate::Target::staged`] and [`crate::Target::promoted`] (the
/// machine turns it into [`AgentError::Local`] naming the step). The subsystems live outside
/// this crate, so their own errors arrive as text in `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EffectError {
    /// The audit log did not take the record durably.
    #[error(
        "the audit log could not record it ({reason}); check the disk and `tether audit verify`"
    )]
    Audit {
        /// The audit log's error.
        reason: String,
    },
    /// The host inventory did not store the change.
    #[error(
        "the inventory could not store it ({reason}); check the state directory's disk and permissions"
    )]
    Inventory {
        /// The inventory's error.
        reason: String,
    },
    /// The vault could not make or keep a key.
    #[error("the vault could not make or store the key ({reason}); check the vault backend")]
    Vault {
        /// The vault's error.
        reason: String,
    },
    /// The tunnel did not take the new key.
    #[error("the tunnel could not switch to the new key ({reason})")]
    Tunnel {
        /// The tunnel's error.
        reason: String,
    },
    /// The staged key to promote is no longer there.
    #[error("the staged key is gone; rotate again")]
    StagedKeyMissing,
    /// The task doing the effect (or the agent itself) stopped before it finished.
    #[error("the agent task stopped ({reason}); is the daemon shutting down?")]
    TaskStopped {
        /// What stopped, and how.
        reason: String,
    },
}

/// `Result` with [`AgentError`].
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
