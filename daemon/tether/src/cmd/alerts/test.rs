//! `tether alerts test SINK`: a test alert through the sink's real delivery path.

use clap::Args;
use tether_api::{AlertTestRequest, AlertsTest};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The alert sink (an alert_sink plugin's name).
    pub sink: String,
    /// Seconds to wait for delivery or drop (retries included).
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
}

pub async fn run(global: &Global, args: TestArgs) -> Result<u8, CliError> {
    let out = global
        .client()
        .call::<AlertsTest>(&AlertTestRequest {
            sink: args.sink,
            wait_secs: Some(args.wait),
        })
        .await?;
    let ok = out.state == "delivered";
    if global.json {
        output::json(&out);
    } else {
        println!("{}", super::line(&out));
        for (name, d) in &out.sinks {
            if let Some(e) = &d.error {
                println!("{name}: last error: {e}");
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}
