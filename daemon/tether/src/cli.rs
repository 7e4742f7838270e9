use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cmd;

/// Tether: secure remote operations for fleets of Linux machines.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Control socket of the tetherd to talk to. Default: $TETHER_SOCKET, else
    /// /run/tether/tetherd.sock if it exists, else the per-user socket of `tether demo`.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    /// The socket to use, following the documented precedence.
    pub fn socket_path(&self) -> PathBuf {
        if let Some(s) = &self.socket {
            return s.clone();
        }
        if let Some(s) = std::env::var_os("TETHER_SOCKET").filter(|s| !s.is_empty()) {
            return PathBuf::from(s);
        }
        let system = tether_config::system_socket_path();
        if system.exists() {
            return system;
        }
        tether_config::user_socket_path()
    }

    /// A control API client for [`Global::socket_path`].
    pub fn client(&self) -> tether_api::Client {
        tether_api::Client::new(self.socket_path())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's role, version, uptime and host count.
    Status(cmd::status::StatusArgs),
    /// Check, show or reload configuration.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Run a command on the selected hosts (policy-checked and audited), e.g.
    /// `tether exec -H group:web -- uptime`.
    Exec(cmd::exec::ExecArgs),
    /// Enrolled hosts: list (with selectors), show, rm.
    #[command(subcommand)]
    Hosts(cmd::hosts::HostsCommand),
    /// WASM plugins: list, reload (in the daemon); keygen, sign, verify, new (local, no daemon).
    #[command(subcommand)]
    Plugin(cmd::plugin::PluginCommand),
    /// Membership and the tunnel: invite, reinvite, revoke, status.
    #[command(subcommand)]
    Vpn(cmd::vpn::VpnCommand),
    /// Verify, read and export the tamper-evident audit log (admin, auditor).
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Check requests against the policy, run policy fixtures, reload the policy.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Manage the vault's secrets (admin): set, list, rm, rotate. Values are never printed.
    #[command(subcommand)]
    Secret(cmd::secret::SecretCommand),
    /// Start a hub and targets on loopback in a temp dir (no root); Ctrl-C stops and cleans up.
    Demo(cmd::demo::DemoArgs),
}
