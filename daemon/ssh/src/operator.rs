//! The hub's operator-facing SSH endpoint: what `tether proxy HOST` (OpenSSH's
//! `ProxyCommand`) talks to.
//!
//! The control API upgrades an authenticated control-socket connection (peer credentials and
//! role already checked) and hands it to [`OperatorEndpoint::serve`] for one host. The caller is
//! therefore already known, so authentication here accepts `none` and any public key: the SSH
//! layer only gives the stock client its protocol. The endpoint's host key is a daemon key from
//! the hub's vault, published by `tether ssh-config`.
//!
//! Each channel request is handed to the [`OperatorBackend`] (the control API's exec path: policy
//! before anything leaves, audit, the pool): `exec` without a pty runs like `POST /v1/exec` for
//! that host; `pty-req` + `shell` or `pty-req` + `exec` opens an interactive session through the
//! pool. A refusal reaches the client on stderr with a non-zero exit status. The `sftp`
//! subsystem (the stock `sftp` and `scp`) is admitted by [`OperatorBackend::sftp`] before the
//! client is answered — a refusal closes the channel with the reason on stderr and exit status
//! 2 (OpenSSH drops the stderr of a failed subsystem request) — and then its bytes are
//! relayed to the target's own confined `sftp` subsystem. Other subsystems, agent and X11
//! forwarding and port forwards are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Sig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::SshError;
use crate::pool::{BoxFuture, Exit, Output, PtyRequest, SessionInput, SessionSpec};

/// Why the backend would not run a request: shown to the SSH client on stderr, and its exit
/// status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What happened and what to do.
    pub message: String,
    /// The exit status the client sees (2 for a policy refusal, 255 for a connection problem).
    pub exit_status: u32,
}

/// An admitted subsystem, to run once the client has been told yes: it gets the client's bytes
/// (then end of file) and sends the target's bytes back as [`Output::Stdout`].
pub type SubsystemRun = Box<
    dyn FnOnce(
            mpsc::Receiver<SessionInput>,
            mpsc::Sender<Output>,
        ) -> BoxFuture<'static, Result<Exit, Refusal>>
        + Send,
>;

/// What the endpoint asks for each channel request. Implemented by `tetherd` over the control
/// API's exec path, so every request is policy-checked and audited exactly like `tether exec`.
pub trait OperatorBackend: Send + Sync + 'static {
    /// Runs `command` on the endpoint's host without a pty; output goes to `out` until it ends
    /// or `cancel` fires.
    fn exec(
        &self,
        command: String,
        out: mpsc::Sender<Output>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<Exit, Refusal>>;
    /// Runs an interactive session (pty shell or command) on the endpoint's host.
    fn session(
        &self,
        spec: SessionSpec,
        input: mpsc::Receiver<SessionInput>,
        out: mpsc::Sender<Output>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<Exit, Refusal>>;
    /// Admits the `sftp` subsystem on the endpoint's host (caller, policy, audit, the target's
    /// subsystem opened); the relay it returns stops when `cancel` fires.
    fn sftp(&self, cancel: CancellationToken) -> BoxFuture<'static, Result<SubsystemRun, Refusal>>;
}

/// The hub's operator SSH endpoint.
#[derive(Clone)]
pub struct OperatorEndpoint {
    config: Arc<russh::server::Config>,
}

impl std::fmt::Debug for OperatorEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorEndpoint").finish_non_exhaustive()
    }
}

impl OperatorEndpoint {
    /// An endpoint presenting `host_key`.
    pub fn new(host_key: PrivateKey) -> Self {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::None);
        methods.push(MethodKind::PublicKey);
        let config = russh::server::Config {
            methods,
            keys: vec![host_key],
            preferred: crate::algorithms::preferred(true),
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        };
        OperatorEndpoint {
            config: Arc::new(config),
        }
    }

    /// Serves one operator connection on `stream` until it ends; every request on it goes to
    /// `backend`, and whatever is still running when it ends is cancelled.
    pub async fn serve<S>(
        &self,
        stream: S,
        backend: Arc<dyn OperatorBackend>,
    ) -> Result<(), SshError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handler = OpConn {
            backend,
            channels: HashMap::new(),
            all: CancellationToken::new(),
        };
        let proto = |e: russh::Error| SshError::Protocol {
            host: "the operator's client".to_owned(),
            reason: e.to_string(),
        };
        let session = russh::server::run_stream(Arc::clone(&self.config), stream, handler)
            .await
            .map_err(proto)?;
        session.await.map_err(proto)
    }
}

/// One session channel.
#[derive(Default)]
struct Chan {
    pty: Option<PtyRequest>,
    /// Input towards a running interactive session.
    input: Option<mpsc::Sender<SessionInput>>,
    /// A request already runs on it (one per channel).
    started: bool,
    cancel: CancellationToken,
}

struct OpConn {
    backend: Arc<dyn OperatorBackend>,
    channels: HashMap<ChannelId, Chan>,
    /// Cancelled when the connection ends.
    all: CancellationToken,
}

impl Drop for OpConn {
    fn drop(&mut self) {
        self.all.cancel();
    }
}

/// Forwards a request's output to the client, then its exit (or refusal), then closes.
async fn finish(
    handle: russh::server::Handle,
    channel: ChannelId,
    run: BoxFuture<'static, Result<Exit, Refusal>>,
    mut rx: mpsc::Receiver<Output>,
) {
    let h2 = handle.clone();
    let forward = async move {
        while let Some(o) = rx.recv().await {
            let sent = match o {
                Output::Stdout(b) => h2.data(channel, b).await,
                Output::Stderr(b) => h2.extended_data(channel, 1, b).await,
            };
            if sent.is_err() {
                break;
            }
        }
    };
    let (result, ()) = tokio::join!(run, forward);
    match result {
        Ok(Exit::Code(c)) => {
            let _ = handle.exit_status_request(channel, c).await;
        }
        Ok(Exit::Signal(s)) => {
            let name = s.trim_start_matches("Custom(").trim_matches(['"', ')']);
            let _ = handle
                .exit_signal_request(
                    channel,
                    Sig::Custom(name.to_owned()),
                    false,
                    String::new(),
                    String::new(),
                )
                .await;
        }
        Err(refusal) => {
            let _ = handle
                .extended_data(
                    channel,
                    1,
                    bytes::Bytes::from(format!("tether: {}\r\n", refusal.message)),
                )
                .await;
            let _ = handle
                .exit_status_request(channel, refusal.exit_status)
                .await;
        }
    }
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

impl OpConn {
    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(chan) = self.channels.get_mut(&channel).filter(|c| !c.started) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        chan.started = true;
        let (tx, rx) = mpsc::channel(32);
        let cancel = chan.cancel.clone();
        let run = match (chan.pty.clone(), command) {
            (None, Some(command)) => self.backend.exec(command, tx, cancel),
            (None, None) => {
                session.channel_failure(channel)?;
                return Ok(());
            }
            (pty, command) => {
                let (input, keys) = mpsc::channel(256);
                chan.input = Some(input);
                self.backend
                    .session(SessionSpec { pty, command }, keys, tx, cancel)
            }
        };
        session.channel_success(channel)?;
        tokio::spawn(finish(session.handle(), channel, run, rx));
        Ok(())
    }
}

impl russh::server::Handler for OpConn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        // The control socket's peer credentials and role check already authenticated the caller.
        Ok(Auth::Accept)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= 16 {
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.channels.insert(
            channel.id(),
            Chan {
                cancel: self.all.child_token(),
                ..Chan::default()
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(c) if !c.started && term.len() <= 64 => {
                c.pty = Some(PtyRequest {
                    term: term.to_owned(),
                    cols: col_width,
                    rows: row_height,
                });
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Not forwarded: the target's environment allow-list is the policy.
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(command), session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(chan) = self.channels.get_mut(&channel).filter(|c| !c.started) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        if name != "sftp" {
            let shown: String = name.chars().take(64).collect();
            session.extended_data(
                channel,
                1,
                format!("tether: only the sftp subsystem is served, not {shown:?}\r\n"),
            )?;
            session.channel_failure(channel)?;
            return Ok(());
        }
        chan.started = true;
        let cancel = chan.cancel.clone();
        // Decided before the client is answered: nothing reaches the target unless admitted.
        match self.backend.sftp(cancel).await {
            Ok(run) => {
                let (input, keys) = mpsc::channel(256);
                match self.channels.get_mut(&channel) {
                    Some(c) => c.input = Some(input),
                    // The client closed the channel meanwhile: the relay's cancel has fired.
                    None => return Ok(()),
                }
                session.channel_success(channel)?;
                let (tx, rx) = mpsc::channel(32);
                tokio::spawn(finish(session.handle(), channel, run(keys, tx), rx));
            }
            Err(refusal) => {
                // OpenSSH exits at once on a failed subsystem request, before printing what
                // the server wrote to stderr; so the channel is accepted and then closed with
                // the reason on stderr and a non-zero exit status, which the client shows.
                session.channel_success(channel)?;
                let (_tx, rx) = mpsc::channel(1);
                let run: BoxFuture<'static, Result<Exit, Refusal>> =
                    Box::pin(std::future::ready(Err(refusal)));
                tokio::spawn(finish(session.handle(), channel, run, rx));
            }
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.channels.get(&channel).and_then(|c| c.input.as_ref()) {
            let _ = input
                .send(SessionInput::Resize {
                    cols: col_width,
                    rows: row_height,
                })
                .await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.channels.get(&channel).and_then(|c| c.input.as_ref()) {
            let _ = input.send(SessionInput::Data(data.to_vec())).await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(input) = self.channels.get(&channel).and_then(|c| c.input.as_ref()) {
            let _ = input.send(SessionInput::Eof).await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.channels.remove(&channel) {
            c.cancel.cancel();
        }
        Ok(())
    }
}
