//! `tether plugin list|reload`. (Signing and scaffolding — keygen, sign, verify, new — come next;
//! they must not link wasmtime into the CLI.)

use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::Global;
use crate::error::CliError;
use crate::output;

/// `tether plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Loaded plugins: kind, hash, signer, calls, errors, latency, quarantine.
    List,
    /// Re-read the plugin manifest; a bad plugin keeps the old set.
    Reload,
}

pub async fn run(global: &Global, cmd: PluginCommand) -> Result<u8, CliError> {
    let client = global.client();
    match cmd {
        PluginCommand::List => {
            let out: Value = client.get_json("/v1/plugins").await?;
            if global.json {
                output::json(&out);
                return Ok(0);
            }
            let list = out["plugins"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no plugins loaded (set plugins_manifest in tetherd.toml)");
            } else {
                println!(
                    "{:<20} {:<16} {:<14} {:>7} {:>7} {:>8}  STATE",
                    "NAME", "KIND", "SHA256", "CALLS", "ERRORS", "P99"
                );
            }
            for p in list {
                println!(
                    "{:<20} {:<16} {:<14} {:>7} {:>7} {:>8}  {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["kind"].as_str().unwrap_or("?"),
                    p["sha256"].as_str().map_or("?", |h| &h[..12.min(h.len())]),
                    p["calls"],
                    p["errors"],
                    p["p99_us"]
                        .as_u64()
                        .map_or("-".to_owned(), |u| format!("{u}us")),
                    if p["quarantined"] == true {
                        "QUARANTINED"
                    } else {
                        "ok"
                    },
                );
            }
            Ok(0)
        }
        PluginCommand::Reload => {
            let out: Value = client.post_json("/v1/plugins/reload", &json!({})).await?;
            if global.json {
                output::json(&out);
            } else {
                println!("plugins reloaded: {}", out["plugins"]);
            }
            Ok(0)
        }
    }
}
