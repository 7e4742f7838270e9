//! `tetherd`: the Tether daemon. Thin main: parse flags, load config, hand over to [`run`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod alerts;
mod cli;
mod error;
mod keys;
mod logging;
mod notify;
mod run;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => run::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tetherd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
