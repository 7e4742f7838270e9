//! `tether completions bash|zsh|fish`: the shell completion script (clap_complete) on stdout.

use clap::{Args, ValueEnum};
use clap_complete::Shell;

use crate::error::CliError;
use crate::global::Global;

/// Shells `tether completions` writes a script for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    /// Install to /usr/share/bash-completion/completions/tether (or ~/.local/share/bash-completion/completions/).
    Bash,
    /// Install as `_tether` in a directory on $fpath, e.g. /usr/local/share/zsh/site-functions/.
    Zsh,
    /// Install to ~/.config/fish/completions/tether.fish (or /usr/share/fish/vendor_completions.d/).
    Fish,
}

/// Arguments of `tether completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: CompletionShell,
}

/// `cmd` is the whole command tree (`Cli::command()`), passed in so commands never depend on it.
pub fn run(
    _global: &Global,
    args: CompletionsArgs,
    mut cmd: clap::Command,
) -> Result<u8, CliError> {
    let shell = match args.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tether", &mut out);
    use std::io::Write;
    match std::io::stdout().lock().write_all(&out) {
        // `tether completions bash | head` closing the pipe early is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Internal(format!(
            "could not write the completion script: {e}"
        ))),
        _ => Ok(0),
    }
}
