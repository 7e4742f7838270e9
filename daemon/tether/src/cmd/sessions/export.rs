//! `tether sessions export ID [-o FILE]`.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use tether_api::{SessionRef, SessionsRecording};

use crate::error::CliError;
use crate::global::Global;

/// Arguments of `tether sessions export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The recording id (see `tether sessions list`).
    id: String,
    /// Write to this file (default: standard output). Written to a temp file beside it and
    /// renamed once complete, so a failed export leaves no partial file.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub async fn run(global: &Global, a: ExportArgs) -> Result<u8, CliError> {
    let client = global.client();
    let req = SessionRef { id: a.id };
    match a.output {
        None => {
            let mut out = std::io::stdout().lock();
            let mut failed = None;
            client
                .stream_lines::<SessionsRecording>(&req, |line| match out.write_all(line) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                })
                .await?;
            if let Some(e) = failed {
                return Err(CliError::Internal(format!("writing standard output: {e}")));
            }
            out.flush()
                .map_err(|e| CliError::Internal(format!("writing standard output: {e}")))?;
        }
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| CliError::Usage(format!("can't write in {}: {e}", dir.display())))?;
            let mut failed = None;
            client
                .stream_lines::<SessionsRecording>(&req, |line| {
                    match tmp.as_file_mut().write_all(line) {
                        Ok(()) => true,
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
                })
                .await?;
            if let Some(e) = failed {
                return Err(CliError::Internal(format!(
                    "writing {}: {e}",
                    path.display()
                )));
            }
            tmp.as_file().sync_all().ok();
            tmp.persist(&path)
                .map_err(|e| CliError::Internal(format!("writing {}: {e}", path.display())))?;
            eprintln!(
                "wrote {} (play it with `asciinema play {}`)",
                path.display(),
                path.display()
            );
        }
    }
    Ok(0)
}
