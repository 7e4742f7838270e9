//! Test plugin: allows every request.
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Allows everything.
pub struct AllowAll;

impl PolicyHook for AllowAll {
    fn evaluate(_req: Request) -> Verdict {
        Verdict::Allow
    }
}

export_policy!(AllowAll);
