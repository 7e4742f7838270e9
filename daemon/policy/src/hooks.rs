//! The seam that asks the policy plugins ([`PolicyHooks`]). What one plugin answers
//! ([`PluginVote`](crate::PluginVote)) is plain data in `tether-model`, shared with the control
//! API; the regex rules decide first and the votes are then combined with that decision by
//! [`Decision::apply_votes`](crate::Decision::apply_votes). The WASM side (loading, limits,
//! calling) lives in `tether-plugin-host`, which answers with these types; this crate never
//! links wasmtime.

use crate::{ParsedCommand, PluginVote, Request};

/// The policy's own shell parse, handed to the plugins: `(command, cwd)` → the simple commands
/// the engine saw (with the policy's wrapper table, built-ins plus `[[policy.wrappers]]`), or why
/// the command can't be split. See [`crate::Policy::parse_commands`].
pub type CommandParser<'a> = &'a dyn Fn(&str, Option<&str>) -> Result<Vec<ParsedCommand>, String>;

/// Asks the loaded policy plugins about a request. Implemented in `tetherd` over
/// `tether-plugin-host`; a call blocks for at most the plugins' time limits (from async code run
/// it on a blocking thread).
pub trait PolicyHooks: Send + Sync {
    /// Every policy plugin's vote on `req`, in manifest order. A plugin that fails still votes
    /// (its `on_error` fallback, with [`PluginVote::error`] set), so the caller never has to
    /// guess what a missing vote means.
    fn vote(&self, req: &Request) -> Vec<PluginVote>;

    /// Like [`vote`](Self::vote), with the parse of the policy in force, so plugins that read the
    /// host's parse (`tether:plugin@0.2.0`) see wrappers from `[[policy.wrappers]]` unwrapped
    /// exactly as the regex rules did. The default ignores `parse`.
    fn vote_parsed(&self, req: &Request, parse: CommandParser<'_>) -> Vec<PluginVote> {
        let _ = parse;
        self.vote(req)
    }
}
