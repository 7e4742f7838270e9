//! Hostile test plugin: panics in `evaluate` (a wasm trap for the host).
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Panics on every call.
pub struct Trap;

impl PolicyHook for Trap {
    fn evaluate(_req: Request) -> Verdict {
        panic!("trap plugin panics on purpose")
    }
}

export_policy!(Trap);
