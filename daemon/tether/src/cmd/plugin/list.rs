//! `tether plugin list`: the daemon's loaded plugins with their counters.

use tether_api::{Empty, PluginsList};

use crate::error::CliError;
use crate::global::Global;
use crate::output;
use crate::table::Table;

pub async fn run(global: &Global) -> Result<u8, CliError> {
    let out = global.client().call::<PluginsList>(&Empty {}).await?;
    if global.json {
        output::json(&out);
        return Ok(0);
    }
    if out.plugins.is_empty() {
        println!("no plugins loaded (set plugins_manifest in tetherd.toml)");
        return Ok(0);
    }
    let mut t = Table::new(&["NAME", "KIND", "SHA256", "CALLS", "ERRORS", "P99", "STATE"])
        .right(&[3, 4, 5]);
    for p in &out.plugins {
        t.row([
            p.name.clone(),
            p.kind.to_string(),
            p.sha256.chars().take(12).collect(),
            p.calls.to_string(),
            p.errors.to_string(),
            p.p99_us.map_or("-".to_owned(), |u| format!("{u}us")),
            if p.quarantined { "QUARANTINED" } else { "ok" }.to_owned(),
        ]);
    }
    t.print();
    Ok(0)
}
