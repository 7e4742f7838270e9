//! `tetherd`: the Tether daemon. Thin main: parse flags, load config, hand over to [`run`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod agent;
mod alerts;
mod cli;
mod enroll_cmd;
mod enroll_hooks;
mod error;
mod identity;
mod keys;
mod logging;
mod membership;
mod notify;
mod plugins;
mod relay;
mod run;
mod ssh;
mod state_dir;
mod vault_key;
mod via_relay;

/// `tetherd --version`: the release and the git commit it was built from (see build.rs).
const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TETHER_COMMIT"),
    ")"
);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => run::main(args),
        cli::Command::Enroll(args) => enroll_cmd::main(args),
        cli::Command::SftpHelper(args) => return sftp_helper(&args.settings),
        cli::Command::Relay(cli::RelayCommand::Show(args)) => relay::show::main(args),
        cli::Command::Relay(cli::RelayCommand::MetricsToken(args)) => {
            relay::metrics_token::main(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tetherd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `tetherd sftp-helper`: one SFTP session as `ssh.run_as` (see `tether_ssh::sftp_helper`).
fn sftp_helper(settings: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tetherd sftp-helper: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(tether_ssh::sftp_helper::helper_main(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tetherd sftp-helper: {e}");
            ExitCode::FAILURE
        }
    }
}
