use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to stderr (journald captures it under systemd). `RUST_LOG` wins over `log.level`.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
