//! `tether fs get HOST:PATH LOCAL`: download a file from a target.
//!
//! The bytes go to a temp file next to LOCAL; only when the hub's `done` event arrives and the
//! file's size and SHA-256 match it (the hub has checked the target's digest too) is the temp
//! file fsynced and renamed to LOCAL. A refused, broken or interrupted download (Ctrl-C
//! included) removes the temp file: LOCAL is either untouched or the whole, verified file.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::Args;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tether_api::{FsGet, FsGetEvent, FsPathRequest};

use crate::error::CliError;
use crate::global::Global;

/// `tether fs get` arguments.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// HOST:PATH of the file (absolute path on the target).
    #[arg(value_name = "HOST:PATH")]
    pub remote: String,
    /// Where to write it (an existing directory: the remote file's name inside it).
    #[arg(value_name = "LOCAL")]
    pub local: PathBuf,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Fetched {
    host: String,
    path: String,
    local: String,
    size: u64,
    sha256: String,
}

/// Where the file goes: LOCAL, or LOCAL/NAME when LOCAL is a directory.
fn destination(local: &Path, remote_path: &str) -> Result<PathBuf, CliError> {
    if local.is_dir() {
        let name = Path::new(remote_path)
            .file_name()
            .ok_or_else(|| CliError::Usage(format!("{remote_path} has no file name")))?;
        return Ok(local.join(name));
    }
    Ok(local.to_path_buf())
}

/// Runs `tether fs get`.
pub async fn run(global: &Global, args: GetArgs) -> Result<u8, CliError> {
    let (host, path) = super::remote(&args.remote)?;
    let dest = destination(&args.local, &path)?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tether-get-")
        .tempfile_in(&dir)
        .map_err(|e| {
            CliError::Usage(format!(
                "cannot create a temp file in {}: {e}",
                dir.display()
            ))
        })?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut outcome: Option<Result<(u64, String), String>> = None;
    let mut local_error: Option<String> = None;
    let mut bar = None;
    let request = FsPathRequest {
        host: host.clone(),
        path: path.clone(),
    };
    let client = global.client();
    let download = client.stream::<FsGet>(&request, |event| match event {
        FsGetEvent::Started { size, .. } => {
            bar = super::progress(global, size, &format!("{host}:{path}"));
            true
        }
        FsGetEvent::Data { data } => {
            let bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
                Ok(b) => b,
                Err(e) => {
                    local_error = Some(format!("the hub sent undecodable data: {e}"));
                    return false;
                }
            };
            if let Err(e) = tmp.write_all(&bytes) {
                local_error = Some(format!("cannot write {}: {e}", dir.display()));
                return false;
            }
            hasher.update(&bytes);
            written += bytes.len() as u64;
            if let Some(b) = &bar {
                b.set_position(written);
            }
            true
        }
        FsGetEvent::Done { size, sha256 } => {
            outcome = Some(Ok((size, sha256)));
            false
        }
        FsGetEvent::Error { code, message } => {
            outcome = Some(Err(format!("{message} ({code})")));
            false
        }
    });
    let result = tokio::select! {
        r = download => r,
        _ = tokio::signal::ctrl_c() => {
            drop(tmp);
            eprintln!("tether: interrupted; {} was not written", dest.display());
            return Ok(130);
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    result?;
    if let Some(e) = local_error {
        return Err(CliError::Internal(format!(
            "{e}; {} was not written",
            dest.display()
        )));
    }
    let (size, sha256) = match outcome {
        Some(Ok(done)) => done,
        Some(Err(e)) => {
            eprintln!(
                "tether: the download of {host}:{path} failed: {e}; {} was not written",
                dest.display()
            );
            return Ok(1);
        }
        None => {
            eprintln!(
                "tether: the download of {host}:{path} broke off after {written} bytes; {} was not written",
                dest.display()
            );
            return Ok(1);
        }
    };
    let ours = hex::encode(hasher.finalize());
    if size != written || sha256 != ours {
        eprintln!(
            "tether: the download of {host}:{path} does not verify (got {written} bytes with SHA-256 {ours}, the hub sent {size} bytes with {sha256}); {} was not written",
            dest.display()
        );
        return Ok(1);
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| CliError::Internal(format!("cannot fsync the download: {e}")))?;
    tmp.persist(&dest).map_err(|e| {
        CliError::Internal(format!(
            "cannot move the download to {}: {e}",
            dest.display()
        ))
    })?;
    if global.json {
        crate::output::json(&Fetched {
            host,
            path,
            local: dest.display().to_string(),
            size,
            sha256,
        });
    } else {
        println!(
            "{host}:{path} -> {} ({}, sha256 {sha256})",
            dest.display(),
            super::size(size)
        );
    }
    Ok(0)
}
