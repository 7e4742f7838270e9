use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tether_model::DaemonRole;

/// The Tether daemon. Runs on the hub and on every target.
#[derive(Debug, Parser)]
#[command(name = "tetherd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGTERM/SIGINT (SIGHUP reloads the config).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file (TOML). Default: /etc/tether/tetherd.toml when it exists.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Hub or target; overrides `role` in the config.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Control socket path; overrides `control.socket`.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// State directory; overrides `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Hub,
    Target,
}

impl From<RoleArg> for DaemonRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Hub => DaemonRole::Hub,
            RoleArg::Target => DaemonRole::Target,
        }
    }
}
