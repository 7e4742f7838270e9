//! Test plugin: denies every request with the reason "deny-all says no".
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Denies everything.
pub struct DenyAll;

impl PolicyHook for DenyAll {
    fn evaluate(_req: Request) -> Verdict {
        Verdict::deny("deny-all says no")
    }
}

export_policy!(DenyAll);
