//! `tether proxy HOST`: OpenSSH's `ProxyCommand`. Joins stdin/stdout to the hub's operator SSH
//! endpoint for HOST over an upgraded control-socket connection (`POST /v1/proxy/{host}`), so
//! the caller is authenticated by the socket's peer credentials and role, and needs no keys.
//! Refusals (no role, unknown host) are printed on stderr; `ssh` then reports the connection
//! as closed.

use clap::Args;
use tether_api::{Proxy, ProxyRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::CliError;
use crate::global::Global;

/// Arguments of `tether proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The enrolled host (OpenSSH passes `%h`).
    pub host: String,
}

/// Reads stdin on a plain thread (so a read that never returns cannot hold up the exit) and
/// hands the chunks over; an empty chunk means end of input.
pub(crate) fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if tx.blocking_send(buf[..n].to_vec()).is_err() || n == 0 {
                return;
            }
        }
    });
    rx
}

pub async fn run(global: &Global, args: ProxyArgs) -> Result<u8, CliError> {
    let io = global
        .client()
        .upgrade::<Proxy>(&ProxyRequest { host: args.host })
        .await?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut input = stdin_chunks();
    let up = async move {
        while let Some(chunk) = input.recv().await {
            if chunk.is_empty() || wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
        // Keep the connection open for the answer: the hub ends it.
        std::future::pending::<()>().await;
    };
    let down = async move {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stdout.write_all(&buf[..n]).is_err() || stdout.flush().is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    Ok(0)
}
