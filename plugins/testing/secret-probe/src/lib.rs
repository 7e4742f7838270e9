//! Test plugin: reads the secret named by `config::get("secret")`. Allows when the host returns
//! it, denies with `missing` when not (never puts the secret's value in the answer).
use tether_plugin_sdk::host::{config, secrets};
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Probes the host's secrets import.
pub struct SecretProbe;

impl PolicyHook for SecretProbe {
    fn evaluate(_req: Request) -> Verdict {
        let name = config::get("secret").unwrap_or_default();
        match secrets::get(&name) {
            Some(s) if !s.expose().is_empty() => Verdict::Allow,
            _ => Verdict::deny("missing"),
        }
    }
}

export_policy!(SecretProbe);
