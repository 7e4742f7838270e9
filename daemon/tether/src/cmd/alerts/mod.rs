//! `tether alerts ...`: recent alerts with their delivery state, and a test alert through a sink.

pub mod list;
pub mod test;

use clap::Subcommand;

use crate::error::CliError;
use crate::global::Global;

/// `tether alerts ...`
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Recent alerts, newest first, with their state per sink (delivered, retrying, suppressed,
    /// dropped).
    List(list::ListArgs),
    /// Send a test alert through SINK's real queue and retries; exit 0 when delivered, 1 when
    /// dropped or still pending after --wait.
    Test(test::TestArgs),
}

pub async fn run(global: &Global, cmd: AlertsCommand) -> Result<u8, CliError> {
    match cmd {
        AlertsCommand::List(args) => list::run(global, args).await,
        AlertsCommand::Test(args) => test::run(global, args).await,
    }
}

/// One alert as a line: id, time, state, severity, kind, host, message, and per-sink states.
pub(crate) fn line(a: &tether_api::AlertInfo) -> String {
    let sinks: Vec<String> = a
        .sinks
        .iter()
        .map(|(name, d)| {
            let mut s = format!("{name}={}", d.state);
            if d.attempts > 1 {
                s.push_str(&format!("({} attempts)", d.attempts));
            }
            if let Some(r) = &d.reason {
                s.push_str(&format!("[{r}]"));
            }
            s
        })
        .collect();
    format!(
        "{:>5} {} {:<10} {:<8} {:<22} {:<12} {}  {}",
        a.id,
        a.ts,
        a.state,
        a.severity,
        a.kind,
        a.host.as_deref().unwrap_or("-"),
        a.message,
        sinks.join(" ")
    )
}
