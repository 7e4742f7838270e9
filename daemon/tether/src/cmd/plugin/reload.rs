//! `tether plugin reload`: the daemon re-reads its plugin manifest; a bad plugin keeps the old set.

use tether_api::{Empty, PluginsReload};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

pub async fn run(global: &Global) -> Result<u8, CliError> {
    let out = global.client().call::<PluginsReload>(&Empty {}).await?;
    if global.json {
        output::json(&out);
    } else {
        println!("plugins reloaded: {}", out.plugins);
    }
    Ok(0)
}
