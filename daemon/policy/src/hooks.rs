//! The seam that asks the policy plugins ([`PolicyHooks`]). What one plugin answers
//! ([`PluginVote`](crate::PluginVote)) is plain data in `tether-model`, shared with the control
//! API; the regex rules decide first and the votes are then combined with that decision by
//! [`Decision::apply_votes`](crate::Decision::apply_votes). The WASM side (loading, limits,
//! calling) lives in `tether-plugin-host`, which answers with these types; this crate never
//! links wasmtime.

use crate::{PluginVote, Request};

/// Asks the loaded policy plugins about a request. Implemented in `tetherd` over
/// `tether-plugin-host`; a call blocks for at most the plugins' time limits (from async code run
/// it on a blocking thread).
pub trait PolicyHooks: Send + Sync {
    /// Every policy plugin's vote on `req`, in manifest order. A plugin that fails still votes
    /// (its `on_error` fallback, with [`PluginVote::error`] set), so the caller never has to
    /// guess what a missing vote means.
    fn vote(&self, req: &Request) -> Vec<PluginVote>;
}
