//! `tether plugin list`: the daemon's loaded plugins with their counters.

use serde_json::Value;

use crate::cli::Global;
use crate::error::CliError;
use crate::output;

pub async fn run(global: &Global) -> Result<u8, CliError> {
    let out: Value = global.client().get_json("/v1/plugins").await?;
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
