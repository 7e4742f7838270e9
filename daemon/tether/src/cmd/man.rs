//! `tether man --out DIR`: man pages (clap_mangen) for `tether` and every subcommand, one
//! `tether-SUB.1` per command (`man tether-vpn-invite`), written to DIR (created if missing).

use std::path::{Path, PathBuf};

use clap::Args;

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Arguments of `tether man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory for the pages, e.g. /usr/local/share/man/man1.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `cmd` is the whole command tree (`Cli::command()`), passed in so commands never depend on it.
pub fn run(global: &Global, args: ManArgs, mut cmd: clap::Command) -> Result<u8, CliError> {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", args.out.display())))?;
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, "tether", &args.out, &mut written)?;
    if global.json {
        output::json(&serde_json::json!({ "pages": written }));
    } else {
        println!("{} man pages in {}", written.len(), args.out.display());
    }
    Ok(0)
}

/// Writes `NAME.1` for `cmd` and, recursively, `NAME-SUB.1` for each visible subcommand.
fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    // The page's title is its file name, so `man tether-vpn-invite` finds it.
    let page = cmd.clone().name(name.to_owned());
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut text)
        .map_err(|e| CliError::Internal(format!("could not render the man page of {name}: {e}")))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text)
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
