use clap::{CommandFactory, Parser, Subcommand};

use crate::cmd;
use crate::error::CliError;
use crate::global::Global;

/// Tether: secure remote operations for fleets of Linux machines.
#[derive(Debug, Parser)]
#[command(name = "tether", version = crate::VERSION_LINE, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
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
    /// An interactive shell (or one command) on a host through the hub, without OpenSSH:
    /// `tether ssh web1`, `tether ssh web1 -- uptime`. `~.` after a newline disconnects.
    Ssh(cmd::ssh::SshArgs),
    /// For OpenSSH's ProxyCommand: joins stdin/stdout to the hub's SSH endpoint for a host
    /// (set up by `tether ssh-config`).
    Proxy(cmd::proxy::ProxyArgs),
    /// Print an OpenSSH client config for the enrolled hosts: `tether ssh-config >> ~/.ssh/config`,
    /// then `ssh web1 uname -a` works with the stock client.
    SshConfig(cmd::ssh_config::SshConfigArgs),
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
    /// Recent alerts and their delivery state; send a test alert through a sink.
    #[command(subcommand)]
    Alerts(cmd::alerts::AlertsCommand),
    /// Recorded sessions: list, show (verify), play, export (admin, auditor).
    #[command(subcommand)]
    Sessions(cmd::sessions::SessionsCommand),
    /// Serve the control API's tools to AI agents over MCP (stdio): `tether mcp serve`.
    #[command(subcommand)]
    Mcp(cmd::mcp::McpCommand),
    /// Approval requests made by `require-approval` verdicts: list, show, approve, deny.
    #[command(subcommand)]
    Approvals(cmd::approvals::ApprovalsCommand),
    /// Just-in-time roles: request, approve, list, revoke.
    #[command(subcommand)]
    Access(cmd::access::AccessCommand),
    /// Files on targets over SFTP, confined below each target's allowed roots: get, put, ls, stat.
    #[command(subcommand)]
    Fs(cmd::fs::FsCommand),
    /// Start a hub and targets on loopback in a temp dir (no root); Ctrl-C stops and cleans up.
    Demo(cmd::demo::DemoArgs),
    /// Print a shell completion script: bash, zsh or fish.
    Completions(cmd::completions::CompletionsArgs),
    /// Write man pages for tether and every subcommand to a directory.
    Man(cmd::man::ManArgs),
}

impl Cli {
    /// Runs the parsed command; returns the exit code on success paths (0, or 1 for partial
    /// failure).
    pub async fn run(self) -> Result<u8, CliError> {
        let cli = self;
        match cli.command {
            Command::Status(args) => cmd::status::run(&cli.global, args).await,
            Command::Config(c) => cmd::config::run(&cli.global, c).await,
            Command::Demo(args) => cmd::demo::run(&cli.global, args).await,
            Command::Secret(c) => cmd::secret::run(&cli.global, c).await,
            Command::Policy(c) => cmd::policy::run(&cli.global, c).await,
            Command::Audit(c) => cmd::audit::run(&cli.global, c).await,
            Command::Vpn(c) => cmd::vpn::run(&cli.global, c).await,
            Command::Hosts(c) => cmd::hosts::run(&cli.global, c).await,
            Command::Exec(args) => cmd::exec::run(&cli.global, args).await,
            Command::Ssh(args) => cmd::ssh::run(&cli.global, args).await,
            Command::Proxy(args) => cmd::proxy::run(&cli.global, args).await,
            Command::SshConfig(args) => cmd::ssh_config::run(&cli.global, args).await,
            Command::Plugin(c) => cmd::plugin::run(&cli.global, c).await,
            Command::Alerts(c) => cmd::alerts::run(&cli.global, c).await,
            Command::Mcp(c) => cmd::mcp::run(&cli.global, c).await,
            Command::Sessions(c) => cmd::sessions::run(&cli.global, c).await,
            Command::Approvals(c) => cmd::approvals::run(&cli.global, c).await,
            Command::Access(c) => cmd::access::run(&cli.global, c).await,
            Command::Fs(c) => cmd::fs::run(&cli.global, c).await,
            Command::Completions(args) => cmd::completions::run(&cli.global, args, Cli::command()),
            Command::Man(args) => cmd::man::run(&cli.global, args, Cli::command()),
        }
    }
}
