//! Sans-IO hub↔target conversations inside the tunnel (agent port 7001).
//!
//! WireGuard authenticates every packet's source, so each side knows who speaks from the
//! stream's overlay address alone; this crate decides what to say. Like the tunnel's `Node`, the
//! machines here never touch a socket, a task or a clock: their driver (in `tetherd`) feeds them
//! connections, received bytes, the results of the effects they asked for and the current time,
//! and performs what they return:
//!
//! * [`Hub`]: serves targets' key rotations and confirmations, asks targets to rotate;
//!   emits [`HubAction`]s.
//! * [`Target`]: serves its hub's `rotate_now`, runs its own rotations; emits [`TargetAction`]s.
//! * Both: `poll_action`, `poll_timeout`/`handle_timeout`.
//!
//! The wire ([`wire`]) is versioned ([`Version`], [`VersionRange`]): each side announces the
//! versions it speaks and both use the highest common one, so a hub works with targets one
//! release older or newer. [`Version::V1`] is the first release's format, still spoken;
//! [`Version::V2`] adds the handshake and an extensible envelope ([`Message`] grows new kinds,
//! e.g. exec control, without breaking older peers).
#![forbid(unsafe_code)]

mod channel;
pub mod error;
pub mod hub;
mod key;
pub mod target;
pub mod version;
pub mod wire;

#[cfg(test)]
mod tests;

pub use error::{AgentError, Result};
pub use hub::{HostInfo, Hub, HubAction, HubConfig};
pub use key::check_public_key;
pub use target::{Target, TargetAction, TargetConfig};
pub use version::{Version, VersionRange};
pub use wire::{MAX_MESSAGE, Message};

/// Overlay TCP port of the agent channel on hub and targets.
pub const AGENT_PORT: u16 = 7001;

/// One connection of a machine (allocated by the machine, mapped to a stream by the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// One key rotation of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RotationId(pub u64);
