//! `tether sessions list`.

use clap::Args;
use tether_api::{SessionsList, SessionsQuery};

use crate::error::CliError;
use crate::global::Global;
use crate::output;
use crate::table::Table;

/// Arguments of `tether sessions list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sessions on this host.
    #[arg(short = 'H', long, value_name = "HOST")]
    host: Option<String>,
    /// How many of the newest (1–10000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

pub async fn run(global: &Global, a: ListArgs) -> Result<u8, CliError> {
    let out = global
        .client()
        .call::<SessionsList>(&SessionsQuery {
            host: a.host,
            limit: Some(a.limit),
        })
        .await?;
    if global.json {
        output::json(&out);
        return Ok(0);
    }
    if out.sessions.is_empty() {
        println!("no recorded sessions yet (they appear once someone runs `tether ssh HOST`)");
        return Ok(0);
    }
    let mut t = Table::new(&[
        "ID", "KIND", "HOST", "USER", "VIA", "STARTED", "SIZE", "COMMAND",
    ])
    .right(&[6]);
    for s in &out.sessions {
        t.row([
            s.id.clone(),
            s.kind.clone(),
            s.host.clone(),
            s.user.clone(),
            s.via.clone(),
            output::when(s.started_at),
            s.size.to_string(),
            s.command.clone().unwrap_or_else(|| "(shell)".into()),
        ]);
    }
    t.print();
    Ok(0)
}
