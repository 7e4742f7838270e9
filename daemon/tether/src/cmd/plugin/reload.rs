//! `tether plugin reload`: the daemon re-reads its plugin manifest; a bad plugin keeps the old set.

use serde_json::{Value, json};

use crate::cli::Global;
use crate::error::CliError;
use crate::output;

pub async fn run(global: &Global) -> Result<u8, CliError> {
    let out: Value = global
        .client()
        .post_json("/v1/plugins/reload", &json!({}))
        .await?;
    if global.json {
        output::json(&out);
    } else {
        println!("plugins reloaded: {}", out["plugins"]);
    }
    Ok(0)
}
