//! `POST /v1/session/{host}`: `tether ssh HOST [-- CMD]` without OpenSSH. The request names the
//! host, the command (else the login shell) and the terminal (when the CLI's stdin is one);
//! bad input is refused with a JSON error before the upgrade. After `101 Switching Protocols`
//! both sides speak [`tether_api::frame`]: `Stdin`/`Resize`/`Eof` in, `Stdout`/`Stderr` out,
//! then one `Exit` (or `Error` + `Exit` with status 2 or 255 when the policy refused the
//! session or the host could not be reached). The session goes through a [`ProxySession`]:
//! with a pty, policy as an interactive session and `session.open`/`session.close`; without
//! one, the command is an exec (`exec.requested`, `exec.result`). The client hanging up
//! cancels it (the target kills its processes).

use hyper::StatusCode;
use tether_api::frame::{Decoder, ExitStatus, Frame};
use tether_api::{MAX_COMMAND_BYTES, SessionRequest};
use tether_model::session::{PtyRequest, SessionInput, SessionSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::interactive::{ProxySession, UNREACHABLE_STATUS, active_host};
use super::{Ctx, Takeover};
use crate::http::Fail;
use crate::state::{RemoteExit, RemoteOutput, UpgradedIo};

fn bad(message: String, hint: &str) -> Fail {
    Fail::bad_request("invalid_session", message, hint)
}

/// `POST /v1/session/{host}`.
pub(crate) async fn handle(ctx: Ctx, req: SessionRequest) -> Result<Takeover, Fail> {
    if let Some(c) = &req.command
        && (c.trim().is_empty() || c.len() > MAX_COMMAND_BYTES)
    {
        return Err(bad(
            format!(
                "the command is empty or over {MAX_COMMAND_BYTES} bytes ({} bytes)",
                c.len()
            ),
            "leave the command out for a shell, or put long scripts in a file on the host",
        ));
    }
    if let Some(p) = &req.pty {
        if !(1..=1000).contains(&p.cols) || !(1..=1000).contains(&p.rows) {
            return Err(bad(
                format!("the terminal size {}x{} is out of range", p.cols, p.rows),
                "columns and rows are 1 to 1000",
            ));
        }
        if p.term.is_empty() || p.term.len() > 64 || !p.term.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                format!("the terminal type {:?} is not a TERM name", p.term),
                "e.g. xterm-256color (at most 64 printable characters)",
            ));
        }
    }
    if req.command.is_none() && req.pty.is_none() {
        return Err(bad(
            "a shell needs a terminal, and stdin is not one".to_owned(),
            "give a command (tether ssh HOST -- CMD), or run from a terminal",
        ));
    }
    let record = active_host(&ctx, &req.host)?;
    if ctx.state.remote.is_none() {
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "exec_unavailable",
            "this hub runs without its SSH pool",
            "start tetherd normally (tetherd run --role hub)",
        ));
    }
    let session = ProxySession::new(ctx, record.name, "tether-ssh");
    let spec = SessionSpec {
        pty: req.pty.map(|p| PtyRequest {
            term: p.term,
            cols: u32::from(p.cols),
            rows: u32::from(p.rows),
        }),
        command: req.command,
    };
    Ok(Box::new(move |io| Box::pin(serve(io, session, spec))))
}

/// Speaks `tether-session/1` on `io` for one session.
async fn serve(io: Box<dyn UpgradedIo>, session: ProxySession, spec: SessionSpec) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let cancel = CancellationToken::new();
    let (in_tx, in_rx) = mpsc::channel::<SessionInput>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<RemoteOutput>(32);
    // Client → session. Its end (or garbage) cancels the session.
    let reader = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut decoder = Decoder::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = tokio::select! {
                    r = rd.read(&mut buf) => r.unwrap_or(0),
                    () = cancel.cancelled() => return,
                };
                if n == 0 {
                    cancel.cancel();
                    return;
                }
                decoder.push(&buf[..n]);
                loop {
                    let input = match decoder.next_frame() {
                        Ok(None) => break,
                        Ok(Some(Frame::Stdin(d))) => SessionInput::Data(d),
                        Ok(Some(Frame::Resize { cols, rows })) => SessionInput::Resize {
                            cols: u32::from(cols.clamp(1, 1000)),
                            rows: u32::from(rows.clamp(1, 1000)),
                        },
                        Ok(Some(Frame::Eof)) => SessionInput::Eof,
                        Ok(Some(_)) | Err(_) => {
                            tracing::debug!("tether ssh: a client sent a bad frame; hanging up");
                            cancel.cancel();
                            return;
                        }
                    };
                    if in_tx.send(input).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    let run = session.session(spec, in_rx, out_tx, cancel.clone());
    let forward = async {
        let mut ok = true;
        while let Some(o) = out_rx.recv().await {
            let frame = match o {
                RemoteOutput::Stdout(b) => Frame::Stdout(b.to_vec()),
                RemoteOutput::Stderr(b) => Frame::Stderr(b.to_vec()),
            };
            if ok && wr.write_all(&frame.to_bytes()).await.is_err() {
                ok = false;
                cancel.cancel();
            }
        }
    };
    let (result, ()) = tokio::join!(run, forward);
    let mut tail = Vec::new();
    match result {
        Ok(RemoteExit::Code(c)) => Frame::Exit(ExitStatus::Code(c as i32)).encode(&mut tail),
        Ok(RemoteExit::Signal(s)) => Frame::Exit(ExitStatus::Signal(s)).encode(&mut tail),
        Err(refusal) => {
            Frame::Error(refusal.message).encode(&mut tail);
            let status = i32::try_from(refusal.exit_status).unwrap_or(UNREACHABLE_STATUS as i32);
            Frame::Exit(ExitStatus::Code(status)).encode(&mut tail);
        }
    }
    let _ = wr.write_all(&tail).await;
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
    cancel.cancel();
    let _ = reader.await;
}
