//! `tether sessions play ID [--speed N] [--max-idle SECS]`: replays the recording's output
//! with its timing, in constant memory (the recording streams from the daemon line by line).

use std::io::Write as _;
use std::time::{Duration, Instant};

use clap::Args;
use tether_api::{SessionRef, SessionsRecording};
use tether_recording::{EventKind, Player};

use crate::error::CliError;
use crate::global::Global;

/// Arguments of `tether sessions play`.
#[derive(Debug, Args)]
pub struct PlayArgs {
    /// The recording id (see `tether sessions list`).
    id: String,
    /// Playback speed (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Longest pause replayed, seconds (longer idle stretches are shortened to this).
    #[arg(long, default_value_t = 2.0)]
    max_idle: f64,
}

pub async fn run(global: &Global, a: PlayArgs) -> Result<u8, CliError> {
    if !(a.speed.is_finite() && a.speed > 0.0 && a.speed <= 1000.0) {
        return Err(CliError::Usage(format!(
            "--speed {}: give a number above 0 and at most 1000",
            a.speed
        )));
    }
    if !(a.max_idle.is_finite() && a.max_idle >= 0.0) {
        return Err(CliError::Usage(format!(
            "--max-idle {}: give a number of seconds, 0 or more",
            a.max_idle
        )));
    }
    // Played from inside the stream: while we sleep the daemon's stream waits (back-pressure),
    // so memory stays constant whatever the recording's size.
    let mut player = Player::new();
    let start = Instant::now();
    let mut virtual_time = 0.0f64;
    let mut last = 0.0f64;
    let mut out = std::io::stdout();
    let mut failed: Option<CliError> = None;
    global
        .client()
        .stream_lines::<SessionsRecording>(&SessionRef { id: a.id }, |line| {
            let ev = match player.push_line(line) {
                Ok(Some(ev)) => ev,
                Ok(None) => return true,
                Err(e) => {
                    failed = Some(CliError::Internal(format!("the recording is damaged: {e}")));
                    return false;
                }
            };
            virtual_time += (ev.time - last).clamp(0.0, a.max_idle);
            last = ev.time;
            let due = Duration::from_secs_f64(virtual_time / a.speed);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            if matches!(ev.kind, EventKind::Output | EventKind::Stderr)
                && let Err(e) = out.write_all(ev.data.as_bytes()).and_then(|()| out.flush())
            {
                failed = Some(CliError::Internal(format!("writing standard output: {e}")));
                return false;
            }
            true
        })
        .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(0)
}
