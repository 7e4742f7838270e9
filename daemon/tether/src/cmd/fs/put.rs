//! `tether fs put LOCAL HOST:PATH` / `tether fs put -H SEL LOCAL :PATH`: upload a file.
//!
//! LOCAL is read twice: once for its SHA-256 (sent with the request), then streamed to the hub,
//! which streams it to every selected target at once. Each target writes a temp file next to
//! PATH, checks the size limit while writing, checks the SHA-256, and only then renames it over
//! PATH — so a file that changed or vanished while it was read, a disk that filled up, or an
//! interrupted upload leaves the old file on every target. Exit 0 when every host has the new
//! file, 1 when some failed, 2 when the request was refused.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use sha2::{Digest, Sha256};
use tether_api::{FsPut, FsPutQuery};
use tokio::io::AsyncReadExt;

use crate::error::CliError;
use crate::global::Global;

/// Bytes per chunk sent to the hub.
const CHUNK: usize = 256 * 1024;

/// `tether fs put` arguments.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Upload to these hosts (host:a,b  group:g  tag:k=v  all  ~regex); REMOTE is then `:PATH`.
    #[arg(short = 'H', long = "hosts", value_name = "SEL")]
    pub selector: Option<String>,
    /// Permission bits for the new file, octal (e.g. 644, 0755); default: the old file's, or 644.
    #[arg(long, value_name = "OCTAL")]
    pub mode: Option<String>,
    /// The local file.
    #[arg(value_name = "LOCAL")]
    pub local: PathBuf,
    /// HOST:PATH, or :PATH with -H (absolute path on the target).
    #[arg(value_name = "HOST:PATH")]
    pub remote: String,
}

fn sha256_of(path: &PathBuf) -> Result<(u64, String), CliError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Runs `tether fs put`.
pub async fn run(global: &Global, args: PutArgs) -> Result<u8, CliError> {
    let (selector, path) = match &args.selector {
        Some(sel) => match args.remote.strip_prefix(':') {
            Some(p) if p.starts_with('/') => (crate::cmd::exec::selector(sel), p.to_owned()),
            _ => {
                return Err(CliError::Usage(format!(
                    "with -H, write the destination as :PATH (e.g. :/srv/app/x), not {:?}",
                    args.remote
                )));
            }
        },
        None => {
            let (host, path) = super::remote(&args.remote)?;
            (format!("host:{host}"), path)
        }
    };
    let meta = std::fs::metadata(&args.local)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", args.local.display())))?;
    if !meta.is_file() {
        return Err(CliError::Usage(format!(
            "{} is not a regular file",
            args.local.display()
        )));
    }
    let local = args.local.clone();
    let (size, sha256) = tokio::task::spawn_blocking(move || sha256_of(&local))
        .await
        .map_err(|_| CliError::Internal("hashing the file failed".to_owned()))??;
    let query = FsPutQuery {
        selector,
        path: path.clone(),
        sha256: Some(sha256.clone()),
        mode: args.mode.clone(),
    };
    let bar = super::progress(global, size, &path);
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let local = args.local.clone();
    let reader_bar = bar.clone();
    let reader = tokio::spawn(async move {
        let mut f = tokio::fs::File::open(&local)
            .await
            .map_err(|e| e.to_string())?;
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let k = f.read(&mut buf).await.map_err(|e| e.to_string())?;
            if k == 0 {
                return Ok::<u64, String>(sent);
            }
            buf.truncate(k);
            sent += k as u64;
            if tx.send(bytes::Bytes::from(buf)).await.is_err() {
                return Ok(sent);
            }
            if let Some(b) = &reader_bar {
                b.set_position(sent);
            }
        }
    });
    let client = global.client();
    let call = client.call_streamed::<FsPut>(&query, rx);
    let answer = tokio::select! {
        a = call => a,
        _ = tokio::signal::ctrl_c() => {
            reader.abort();
            eprintln!("tether: interrupted; the targets discard the partial upload and keep the old file");
            return Ok(130);
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Ok(Err(e)) = reader.await {
        eprintln!(
            "tether: reading {} failed mid-way ({e}); the targets refuse the short file",
            args.local.display()
        );
    }
    let answer = answer?;
    let failed = answer.hosts.iter().filter(|h| !h.ok).count();
    if global.json {
        crate::output::json(&answer);
    } else {
        for h in &answer.hosts {
            if h.ok {
                println!(
                    "{:<20} ok      {} -> {} ({}, sha256 {})",
                    h.host,
                    args.local.display(),
                    answer.path,
                    super::size(h.size),
                    h.sha256.as_deref().unwrap_or("")
                );
            } else {
                println!(
                    "{:<20} FAILED  {} ({})",
                    h.host,
                    h.message.as_deref().unwrap_or(""),
                    h.code.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
