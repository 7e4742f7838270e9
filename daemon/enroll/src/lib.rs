//! Enrollment: signed single-use invite tokens, the mutually authenticated enrollment exchange,
//! host inventory.
//!
//! * [`token`]: `tether1.` invite tokens (HMAC-SHA256 over a readable payload; single-use nonce,
//!   expiry, hub id), parsed without a key on the target.
//! * [`proto`]: the sans-IO exchange (frames, Hello/Welcome, transcript MACs keyed from the token)
//!   and the target's [`TargetSession`].
//! * [`Hub`]: the hub's core: issue/revoke invites ([`InviteStore`]; embedded backend
//!   [`FileInviteStore`], `invites.json`), answer a Hello, record the host in the [`Inventory`]
//!   ([`InventoryStore`]; embedded backend [`FileInventoryStore`], `hosts.json`), enrollment hooks and observers.
//! * [`EnrollServer`] / [`enroll_client`]: thin tokio drivers with rate limit, frame limit and
//!   deadline; metrics into a caller-provided prometheus registry.
#![forbid(unsafe_code)]

pub mod error;
#[cfg(test)]
mod first_release;
pub mod hub;
pub mod inventory;
pub mod invite_keys;
mod journaled;
mod limits;
pub mod proto;
pub mod ratelimit;
pub mod rejections;
pub mod server;
pub mod sshkey;
pub mod store;
pub mod token;
mod util;

pub use error::{EnrollError, RemoteContext, Result};
pub use hub::{
    DEFAULT_TTL_SECS, EnrollEvent, EnrollHook, EnrollObserver, EnrollRequest, HookDecision, Hub,
    InviteRequest, RevokeOutcome,
};
pub use inventory::{
    FileInventoryStore, HostChange, HostRecord, HostState, Inventory, InventoryStore, OverlayNet,
};
pub use invite_keys::{InviteKeyRing, RotatedInviteKey};
pub use proto::{TargetKeys, TargetSession, Welcome, WgKeyAgreement, WgProver};
pub use server::{
    ClientOptions, EnrollMetrics, EnrollServer, ServerConfig, enroll_client, enroll_over,
    retry_delay, serve_stream,
};
pub use sshkey::{SshPublicKey, ssh_fingerprint};
pub use store::{FileInviteStore, InviteStore};
pub use token::{
    HubId, HubIdentity, InvitePayload, InviteRecord, InviteSpec, InviteState, ParsedToken, Token,
    issue, issue_with_epoch, parse_token,
};
pub use util::{unix_now, validate_group, validate_host_name, validate_tag};
