//! Tether's WASM plugin host — the only crate that links wasmtime.
//!
//! Loads signed components listed in `plugins.toml` ([`Manifest`]), verifies their Ed25519
//! signatures ([`signing`]), instantiates each once in its own `Store` with a time limit (epoch
//! interruption), a memory cap (resource limiter) and only the capabilities its manifest entry
//! grants ([`caps`]), and calls them: [`PluginHost::evaluate`] (policy hooks: a
//! [`tether_policy::Request`] in, one [`tether_policy::PluginVote`] per plugin out),
//! [`PluginHost::deliver_alert`], [`PluginHost::deliver_audit_batch`], [`PluginHost::on_enroll`].
//! A plugin that traps, times out or exceeds its memory is contained: its call returns a
//! [`PluginError`], its instance is recycled, and after repeated failures it is quarantined
//! (an alert, and a [`PluginEvents::quarantined`] call for the daemon's audit log).
//!
//! The host API is synchronous (a call blocks for at most the plugin's `timeout_ms`); from async
//! code call it inside `tokio::task::spawn_blocking`.
#![deny(unsafe_code)]

mod abi;
mod addr;
mod cache;
pub mod caps;
mod error;
mod events;
mod host;
pub mod manifest;
mod store;
mod tcp;
mod tls;
mod types;
mod v0_1;
mod v0_2;

pub use cache::{CacheKey, NoCacheKey};
pub use caps::{NoSecrets, SecretSource};
pub use error::{Error, Result};
pub use events::{Failed, NoEvents, PluginEvents, Quarantined};
pub use host::{HostOptions, PluginHost, PluginInfo};
pub use manifest::{Capabilities, Limits, Manifest, PluginKind, PluginSpec};
/// Ed25519 signatures of components (keygen, sign, verify): the wasmtime-free
/// `tether-plugin-sign` crate, shared with the `tether` CLI.
pub use tether_plugin_sign as signing;
pub use types::*;
