//! `tether status`.

use clap::Args;
use tether_api::{Empty, Status};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Arguments of `tether status`.
#[derive(Debug, Args)]
pub struct StatusArgs {}

pub async fn run(global: &Global, _args: StatusArgs) -> Result<u8, CliError> {
    let client = global.client();
    let s = client.call::<Status>(&Empty {}).await?;
    if global.json {
        output::json(&s);
    } else {
        println!(
            "tetherd {} {} (pid {}), up {}",
            s.role,
            s.version,
            s.pid,
            output::duration(s.uptime_secs)
        );
        println!("  socket:    {}", client.socket().display());
        println!("  hosts:     {}", s.hosts);
        println!("  your role: {}", s.caller_role);
    }
    Ok(0)
}
