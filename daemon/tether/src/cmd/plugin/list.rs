//! `tether plugin list`: the daemon's loaded plugins with their counters.

use tether_api::{Empty, PluginsList};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

pub async fn run(global: &Global) -> Result<u8, CliError> {
    let out = global.client().call::<PluginsList>(&Empty {}).await?;
    if global.json {
        output::json(&out);
        return Ok(0);
    }
    if out.plugins.is_empty() {
        println!("no plugins loaded (set plugins_manifest in tetherd.toml)");
    } else {
        println!(
            "{:<20} {:<16} {:<14} {:>7} {:>7} {:>8}  STATE",
            "NAME", "KIND", "SHA256", "CALLS", "ERRORS", "P99"
        );
    }
    for p in &out.plugins {
        println!(
            "{:<20} {:<16} {:<14} {:>7} {:>7} {:>8}  {}",
            p.name,
            p.kind,
            &p.sha256[..12.min(p.sha256.len())],
            p.calls,
            p.errors,
            p.p99_us.map_or("-".to_owned(), |u| format!("{u}us")),
            match (p.quarantined, p.lag_records) {
                (true, _) => "QUARANTINED".to_owned(),
                (false, Some(lag)) => format!("ok lag={lag}"),
                (false, None) => "ok".to_owned(),
            },
        );
    }
    Ok(0)
}
