//! `tether`: the operator's CLI. Talks to `tetherd` over its Unix-socket control API.
//! Exit codes: 0 ok, 1 partial failure, 2 usage or denied, 3 internal, 130 interrupted.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;
mod error;
mod global;
mod output;
mod table;

/// The git commit this CLI was built from (see build.rs), `unknown` without git.
pub(crate) const COMMIT: &str = env!("TETHER_COMMIT");

/// `tether --version`: the release and the git commit it was built from.
const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TETHER_COMMIT"),
    ")"
);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
