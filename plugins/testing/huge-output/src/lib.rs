//! Hostile test plugin: returns a deny reason of 64 MiB (the host must cap what it accepts).
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Answers with a 64 MiB reason.
pub struct HugeOutput;

impl PolicyHook for HugeOutput {
    fn evaluate(_req: Request) -> Verdict {
        Verdict::deny("x".repeat(64 << 20))
    }
}

export_policy!(HugeOutput);
