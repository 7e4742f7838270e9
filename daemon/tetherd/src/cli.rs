use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tether_model::DaemonRole;

/// The Tether daemon. Runs on the hub, on every target, and on relays.
#[derive(Debug, Parser)]
#[command(name = "tetherd", version = crate::VERSION_LINE, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGTERM/SIGINT (SIGHUP reloads the config).
    Run(RunArgs),
    /// Join a hub with an invite token from `tether vpn invite` (on a target).
    Enroll(EnrollArgs),
    /// Internal: serves one SFTP session as `ssh.run_as` (started by the daemon itself).
    #[command(name = "sftp-helper", hide = true)]
    SftpHelper(SftpHelperArgs),
    /// The relay role: what hubs and targets need to use this relay.
    #[command(subcommand)]
    Relay(RelayCommand),
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Print what a hub's `[[tunnel.relays]]` entry needs: address, TLS server name,
    /// certificate SHA-256 and relay key (generated on first use, like a first start would).
    Show(RelayShowArgs),
    /// Print the `/metrics` bearer token (vault secret `relay.metrics_token_secret`).
    MetricsToken(RelayTokenArgs),
}

#[derive(Debug, Args)]
pub struct RelayShowArgs {
    /// Config file (TOML). Default: /etc/tether/tetherd.toml when it exists.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory; overrides `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The name hubs know this relay by (default: this host's name).
    #[arg(long)]
    pub name: Option<String>,
    /// The `host:port` hubs and targets connect to (default: `relay.listen`, or this host's
    /// name and the listen port when it listens on every address).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// The TLS server name clients send (default: the host of the address).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Print JSON instead of text and a TOML snippet.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RelayTokenArgs {
    /// Config file (TOML). Default: /etc/tether/tetherd.toml when it exists.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory; overrides `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}
/// Arguments of the internal `sftp-helper` subcommand.
#[derive(Debug, Args)]
pub struct SftpHelperArgs {
    /// The `[files]` confinement, as JSON.
    #[arg(long)]
    pub settings: String,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The invite token, or `-` to read it from stdin (argv is visible to other users in ps).
    pub token: Option<String>,
    /// Read the token from this file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Config file (TOML). Default: /etc/tether/tetherd.toml when it exists.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory; overrides `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Contact the hub at this host:port instead of the endpoint in the token (NAT, tests).
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
    /// Enroll again with a new identity even if this machine is already enrolled.
    #[arg(long)]
    pub force: bool,
    /// How long to keep retrying when the hub says it is busy with enrollments from this
    /// address (a fleet behind one NAT address), in seconds; retries back off with jitter.
    /// 0: fail at the first refusal.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub retry_for: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file (TOML). Default: /etc/tether/tetherd.toml when it exists.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Hub, target or relay; overrides `role` in the config.
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
    Relay,
}

impl From<RoleArg> for DaemonRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Hub => DaemonRole::Hub,
            RoleArg::Target => DaemonRole::Target,
            RoleArg::Relay => DaemonRole::Relay,
        }
    }
}
