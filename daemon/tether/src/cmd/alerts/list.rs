//! `tether alerts list`: recent alerts with their delivery state per sink.

use clap::Args;
use tether_api::{AlertsList, AlertsQuery};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// How many of the newest alerts (1–1000).
    #[arg(short = 'n', long, default_value_t = 50)]
    pub limit: usize,
}

pub async fn run(global: &Global, args: ListArgs) -> Result<u8, CliError> {
    if !(1..=1000).contains(&args.limit) {
        return Err(CliError::Usage(format!(
            "--limit {}: use 1 to 1000",
            args.limit
        )));
    }
    let out = global
        .client()
        .call::<AlertsList>(&AlertsQuery {
            limit: Some(args.limit),
        })
        .await?;
    if global.json {
        output::json(&out);
        return Ok(0);
    }
    if out.sinks.is_empty() {
        println!("no alert sinks (load an alert_sink plugin; alerts are only logged)");
    } else {
        println!("sinks: {}", out.sinks.join(", "));
    }
    for a in &out.alerts {
        println!("{}", super::line(a));
    }
    Ok(0)
}
