//! `tether sessions show ID`.

use clap::Args;
use tether_api::{SessionRef, SessionsShow};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Arguments of `tether sessions show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The recording id (see `tether sessions list`).
    id: String,
}

/// Exit 0 for a complete recording, 1 for a truncated or corrupt one.
pub async fn run(global: &Global, a: ShowArgs) -> Result<u8, CliError> {
    let d = global
        .client()
        .call::<SessionsShow>(&SessionRef { id: a.id })
        .await?;
    let code = u8::from(d.state != "complete");
    if global.json {
        output::json(&d);
        return Ok(code);
    }
    println!("session {}", d.info.id);
    println!("  host:     {}", d.info.host);
    println!("  user:     {} (via {})", d.info.user, d.info.via);
    if let Some(c) = &d.info.command {
        println!("  command:  {c}");
    }
    println!("  started:  {}", output::when(d.info.started_at));
    if let Some(s) = d.duration_secs {
        println!("  duration: {}", output::duration(s.round() as u64));
    }
    println!("  size:     {} bytes, {} events", d.info.size, d.events);
    println!("  sha256:   {}", d.sha256);
    println!("  state:    {}", d.state);
    if let Some(p) = &d.problem {
        println!("  problem:  {p}");
    }
    println!(
        "  (compare sha256 with the session.close record: tether audit tail --type session.close)"
    );
    Ok(code)
}
