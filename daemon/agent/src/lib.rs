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
//! * Both ([`Machine`]): connection events, `poll_action`, `poll_timeout`/`handle_timeout`;
//!   connections are opened, written and closed through the same [`Io`] actions.
//!
//! The wire ([`wire`]) is versioned ([`Version`], [`VersionRange`]): each side announces the
//! versions it speaks and both use the highest common one, so a hub works with targets one
//! release older or newer. [`Version::V1`] is the first release's format, still spoken;
//! [`Version::V2`] adds the handshake and an extensible envelope ([`Message`] grows new kinds,
//! e.g. exec control, without breaking older peers).
#![forbid(unsafe_code)]

mod channel;
mod conns;
pub mod error;
pub mod hub;
mod key;
pub mod target;
pub mod version;
pub mod wire;

#[cfg(test)]
mod tests;

pub use conns::Io;
pub use error::{AgentError, EffectError, Result};
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

/// What the hub's and a target's machines have in common, so one driver loop serves both: the
/// events of their connections, the time, and their actions.
pub trait Machine {
    /// What the driver must do ([`HubAction`] or [`TargetAction`]).
    type Action;
    /// The stream of an [`Io::Connect`] is open.
    fn connected(&mut self, conn: ConnId, now: std::time::Instant);
    /// Bytes arrived on a connection.
    fn received(&mut self, conn: ConnId, bytes: &[u8], now: std::time::Instant);
    /// The peer hung up (end of stream).
    fn closed(&mut self, conn: ConnId, now: std::time::Instant);
    /// The connection could not be opened, or reading/writing failed.
    fn failed(&mut self, conn: ConnId, reason: String, now: std::time::Instant);
    /// The earliest time [`Machine::handle_timeout`] must be called.
    fn poll_timeout(&self) -> Option<std::time::Instant>;
    /// Time passed.
    fn handle_timeout(&mut self, now: std::time::Instant);
    /// The next thing to do.
    fn poll_action(&mut self) -> Option<Self::Action>;
}

/// Implements [`Machine`] by the machine's own methods of the same names.
macro_rules! machine {
    ($machine:ty, $action:ty) => {
        impl Machine for $machine {
            type Action = $action;
            fn connected(&mut self, conn: ConnId, now: std::time::Instant) {
                <$machine>::connected(self, conn, now)
            }
            fn received(&mut self, conn: ConnId, bytes: &[u8], now: std::time::Instant) {
                <$machine>::received(self, conn, bytes, now)
            }
            fn closed(&mut self, conn: ConnId, now: std::time::Instant) {
                <$machine>::closed(self, conn, now)
            }
            fn failed(&mut self, conn: ConnId, reason: String, now: std::time::Instant) {
                <$machine>::failed(self, conn, reason, now)
            }
            fn poll_timeout(&self) -> Option<std::time::Instant> {
                <$machine>::poll_timeout(self)
            }
            fn handle_timeout(&mut self, now: std::time::Instant) {
                <$machine>::handle_timeout(self, now)
            }
            fn poll_action(&mut self) -> Option<$action> {
                <$machine>::poll_action(self)
            }
        }
    };
}

machine!(Hub, HubAction);
machine!(Target, TargetAction);
