//! Hostile test plugin: returns a huge deny reason, 64 MiB by default (`config mib = "N"` changes
//! it). With the default 16 MiB memory cap the 64 MiB string cannot even be allocated (a trap);
//! use e.g. `mib = "8"` to test the host's cap on what it accepts from a plugin.
use tether_plugin_sdk::host::config;
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Answers with a reason of `mib` MiB of `x`.
pub struct HugeOutput;

impl PolicyHook for HugeOutput {
    fn evaluate(_req: Request) -> Verdict {
        let mib: usize = config::get("mib")
            .and_then(|m| m.parse().ok())
            .unwrap_or(64);
        Verdict::deny("x".repeat(mib << 20))
    }
}

export_policy!(HugeOutput);
