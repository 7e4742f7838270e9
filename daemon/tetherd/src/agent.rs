//! Thin tokio drivers of the agent protocol ([`tether_agent`]), carried inside the tunnel
//! (overlay TCP port [`AGENT_PORT`]). WireGuard authenticates every packet's source address, so
//! the hub knows which host is speaking from the stream's overlay IP alone, and a target
//! accepts only its hub.
//!
//! Each driver is one task that owns its machine: it accepts and opens tunnel streams (one
//! small IO task per stream), feeds the machine bytes, hang-ups, effect results and the time,
//! and performs what the machine asks (audit, inventory, vault, tunnel peer key, alerts).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tether_agent::{
    AGENT_PORT, AgentError, ConnId, HostInfo, Hub as HubMachine, HubAction, HubConfig, RotationId,
    Target as TargetMachine, TargetAction, TargetConfig,
};
use tether_audit::{AuditLog, Event};
use tether_control::audit::daemon_actor;
use tether_control::state::{KeyRotator, RotationFuture, RotationOutcome};
use tether_enroll::{HostRecord, Hub};
use tether_model::{Alert, AlertSink, Severity};
use tether_tunnel::{SecretKey, TunnelError, TunnelHandle, TunnelListener, TunnelStream};
use tether_vault::Vault;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::identity;

/// How long opening a tunnel stream or writing to one may take.
const IO_DEADLINE: Duration = Duration::from_secs(10);

/// What a stream's IO task or an effect reports to its driver.
enum Input {
    Connected(ConnId, TunnelStream),
    ConnectFailed(ConnId, String),
    Bytes(ConnId, Vec<u8>),
    Eof(ConnId),
    IoFailed(ConnId, String),
    /// Hub: the result of `RecordRotation`.
    Recorded(ConnId, Result<(), String>),
    /// Target: the result of `PromoteKey`.
    Promoted(Result<(), String>),
    /// Hub: rotate this host. Target: rotate this machine (`host` is `None`).
    Rotate {
        host: Option<HostInfo>,
        reply: oneshot::Sender<Result<String, AgentError>>,
    },
}

enum Out {
    Bytes(Vec<u8>),
    Close,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The streams of one driver.
#[derive(Default)]
struct Streams {
    open: HashMap<ConnId, mpsc::UnboundedSender<Out>>,
    connecting: HashSet<ConnId>,
}

impl Streams {
    fn attach(&mut self, conn: ConnId, stream: TunnelStream, tx: &mpsc::UnboundedSender<Input>) {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        self.open.insert(conn, out_tx);
        tokio::spawn(stream_io(conn, stream, out_rx, tx.clone()));
    }

    fn connect(
        &mut self,
        conn: ConnId,
        ip: Ipv4Addr,
        tunnel: &TunnelHandle,
        tx: &mpsc::UnboundedSender<Input>,
    ) {
        self.connecting.insert(conn);
        let (tunnel, tx) = (tunnel.clone(), tx.clone());
        tokio::spawn(async move {
            let input =
                match tokio::time::timeout(IO_DEADLINE, tunnel.connect(ip, AGENT_PORT)).await {
                    Ok(Ok(s)) => Input::Connected(conn, s),
                    Ok(Err(e)) => Input::ConnectFailed(conn, format!("cannot reach {ip}: {e}")),
                    Err(_) => Input::ConnectFailed(
                        conn,
                        format!("{ip} did not answer on the tunnel within 10 s (is it online?)"),
                    ),
                };
            let _ = tx.send(input);
        });
    }

    /// A connection finished opening; `false` if the machine gave up on it meanwhile.
    fn connected(
        &mut self,
        conn: ConnId,
        stream: TunnelStream,
        tx: &mpsc::UnboundedSender<Input>,
    ) -> bool {
        if !self.connecting.remove(&conn) {
            return false;
        }
        self.attach(conn, stream, tx);
        true
    }

    fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        if let Some(s) = self.open.get(&conn) {
            let _ = s.send(Out::Bytes(bytes));
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.connecting.remove(&conn);
        if let Some(s) = self.open.remove(&conn) {
            let _ = s.send(Out::Close);
        }
    }
}

/// One stream's IO: received bytes go to the driver, the driver's bytes go out; `Close`
/// flushes and hangs up.
async fn stream_io(
    conn: ConnId,
    mut stream: TunnelStream,
    mut out: mpsc::UnboundedReceiver<Out>,
    tx: mpsc::UnboundedSender<Input>,
) {
    async fn write(stream: &mut TunnelStream, bytes: &[u8]) -> Result<(), String> {
        let w = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match tokio::time::timeout(IO_DEADLINE, w).await {
            Err(_) => Err("writing timed out".to_owned()),
            Ok(r) => r.map_err(|e| format!("writing failed: {e}")),
        }
    }
    let mut buf = vec![0u8; 4096];
    let mut eof = false;
    loop {
        tokio::select! {
            o = out.recv() => match o {
                Some(Out::Bytes(b)) => {
                    if let Err(e) = write(&mut stream, &b).await {
                        let _ = tx.send(Input::IoFailed(conn, e));
                        return;
                    }
                }
                Some(Out::Close) | None => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
                    return;
                }
            },
            r = stream.read(&mut buf), if !eof => match r {
                Ok(0) => {
                    eof = true;
                    let _ = tx.send(Input::Eof(conn));
                }
                Ok(n) => {
                    let _ = tx.send(Input::Bytes(conn, buf[..n].to_vec()));
                }
                Err(e) => {
                    let _ = tx.send(Input::IoFailed(conn, format!("reading failed: {e}")));
                    return;
                }
            },
        }
    }
}

fn outcome(host: String, result: Result<String, AgentError>) -> RotationOutcome {
    match result {
        Ok(key) => RotationOutcome {
            host,
            ok: true,
            new_public_key: Some(key),
            error: None,
        },
        Err(e) => RotationOutcome {
            host,
            ok: false,
            new_public_key: None,
            error: Some(e.to_string()),
        },
    }
}

fn rotation_alert(name: &str) -> Alert {
    let mut alert = Alert::new(
        "key_rotation",
        Severity::Info,
        format!("{name} rotated its WireGuard key"),
    );
    alert.host = Some(name.to_owned());
    alert
}

/// Sends a rotation request to a driver and waits for its result.
async fn ask_driver(
    tx: &mpsc::UnboundedSender<Input>,
    host: Option<HostInfo>,
) -> Result<String, AgentError> {
    let stopped = || AgentError::Local {
        what: "the agent",
        reason: "the agent task has stopped (is the daemon shutting down?)".to_owned(),
    };
    let (reply, rx) = oneshot::channel();
    tx.send(Input::Rotate { host, reply })
        .map_err(|_| stopped())?;
    rx.await.map_err(|_| stopped())?
}

/// The hub's side of the agent channel: a handle to its driver task.
pub struct HubAgent {
    tx: mpsc::UnboundedSender<Input>,
    hub: Arc<Hub>,
}

struct HubDriver {
    machine: HubMachine,
    tunnel: TunnelHandle,
    hub: Arc<Hub>,
    audit: AuditLog,
    alerts: Arc<dyn AlertSink>,
    tx: mpsc::UnboundedSender<Input>,
    streams: Streams,
    waiters: HashMap<RotationId, oneshot::Sender<Result<String, AgentError>>>,
}

impl HubAgent {
    /// Listens on the agent port and starts the driver, until `shutdown`.
    pub fn spawn(
        tunnel: TunnelHandle,
        hub: Arc<Hub>,
        audit: AuditLog,
        alerts: Arc<dyn AlertSink>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<HubAgent>, JoinHandle<()>), TunnelError> {
        let listener = tunnel.listen(AGENT_PORT)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = HubDriver {
            machine: HubMachine::new(HubConfig::default()),
            tunnel,
            hub: Arc::clone(&hub),
            audit,
            alerts,
            tx: tx.clone(),
            streams: Streams::default(),
            waiters: HashMap::new(),
        };
        let task = tokio::spawn(driver.run(listener, rx, shutdown));
        Ok((Arc::new(HubAgent { tx, hub }), task))
    }
}

fn host_info(h: &HostRecord) -> HostInfo {
    HostInfo {
        name: h.name.clone(),
        overlay_ip: h.overlay_ip,
        wg_public_key: h.wg_public_key.clone(),
    }
}

impl HubDriver {
    async fn run(
        mut self,
        listener: TunnelListener,
        mut rx: mpsc::UnboundedReceiver<Input>,
        shutdown: CancellationToken,
    ) {
        loop {
            while let Some(action) = self.machine.poll_action() {
                self.perform(action);
            }
            let deadline = self.machine.poll_timeout();
            tokio::select! {
                () = shutdown.cancelled() => return,
                s = listener.accept() => match s {
                    Ok(stream) => {
                        let ip = stream.peer_ip();
                        let host = self
                            .hub
                            .inventory()
                            .list()
                            .into_iter()
                            .find(|h| h.overlay_ip == ip && h.is_active())
                            .map(|h| host_info(&h));
                        let conn = self.machine.accept(ip, host, now());
                        self.streams.attach(conn, stream, &self.tx);
                    }
                    Err(e) => {
                        tracing::warn!("agent accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                Some(input) = rx.recv() => self.input(input),
                () = sleep_until(deadline) => self.machine.handle_timeout(now()),
            }
        }
    }

    fn input(&mut self, input: Input) {
        let now = now();
        match input {
            Input::Connected(conn, stream) => {
                if self.streams.connected(conn, stream, &self.tx) {
                    self.machine.connected(conn, now);
                }
            }
            Input::ConnectFailed(conn, e) | Input::IoFailed(conn, e) => {
                self.streams.close(conn);
                self.machine.failed(conn, e, now);
            }
            Input::Bytes(conn, b) => self.machine.received(conn, &b, now),
            Input::Eof(conn) => self.machine.closed(conn, now),
            Input::Recorded(conn, r) => self.machine.recorded(conn, r, now),
            Input::Rotate {
                host: Some(host),
                reply,
            } => {
                let id = self.machine.start_rotation(host, now);
                self.waiters.insert(id, reply);
            }
            Input::Rotate { host: None, .. } | Input::Promoted(_) => {}
        }
    }

    fn perform(&mut self, action: HubAction) {
        match action {
            HubAction::Connect { conn, ip } => {
                self.streams.connect(conn, ip, &self.tunnel, &self.tx)
            }
            HubAction::Send { conn, bytes } => self.streams.send(conn, bytes),
            HubAction::Close { conn } => self.streams.close(conn),
            HubAction::RecordRotation {
                conn,
                host,
                old_public_key,
                new_public_key,
            } => {
                // Durable record first, then the inventory; the machine acks after both.
                let (audit, hub, tx) = (self.audit.clone(), Arc::clone(&self.hub), self.tx.clone());
                tokio::spawn(async move {
                    let event = Event::new("vpn.key_rotation", daemon_actor())
                        .host(host.clone())
                        .data(json!({"name": host, "old_public_key": old_public_key, "new_public_key": new_public_key}));
                    let result = match audit.append(&event).await {
                        Err(e) => Err(format!("the hub cannot write its audit log: {e}")),
                        Ok(_) => {
                            let set = tokio::task::spawn_blocking(move || {
                                hub.inventory().set_wg_key(&host, &new_public_key)
                            });
                            match set.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(e) => Err(format!("the inventory update panicked: {e}")),
                            }
                        }
                    };
                    let _ = tx.send(Input::Recorded(conn, result));
                });
            }
            HubAction::InstallPeerKey { host } => self.install(host),
            HubAction::KeyConfirmed { host } => {
                tracing::info!(host = %host, "agent: the host's new WireGuard key works");
            }
            HubAction::RotationFinished {
                rotation,
                host,
                result,
            } => {
                if let Err(e) = &result {
                    tracing::warn!(host = %host, "key rotation failed: {e}");
                }
                if let Some(w) = self.waiters.remove(&rotation) {
                    let _ = w.send(result);
                }
            }
            HubAction::ConversationFailed { peer, host, error } => {
                tracing::warn!(%peer, host = host.as_deref().unwrap_or("-"), "agent: {error}");
            }
            _ => {}
        }
    }

    /// Replaces the host's tunnel peer by one with its new key, keeping its endpoint, only if
    /// the inventory still holds the host active with that key (a revocation or removal while
    /// the rotation was in flight wins: the peer stays gone).
    fn install(&self, host: HostInfo) {
        let endpoint = self
            .tunnel
            .status()
            .into_iter()
            .find(|p| p.overlay_ip == host.overlay_ip)
            .and_then(|p| p.endpoint);
        let Some(record) = self.hub.inventory().get(&host.name) else {
            return tracing::warn!(host = %host.name, "rotated, but the host is gone; no peer added");
        };
        let record = HostRecord {
            wg_public_key: host.wg_public_key.clone(),
            ..record
        };
        match crate::membership::admit_peer(&self.hub, &self.tunnel, &record, endpoint) {
            Ok(()) => {
                tracing::info!(host = %host.name, "WireGuard key rotated");
                self.alerts.raise(rotation_alert(&host.name));
            }
            Err(e) => {
                tracing::warn!(host = %host.name, "rotated, but the new tunnel peer was not added: {e}")
            }
        }
    }
}

impl KeyRotator for HubAgent {
    fn rotate(&self, name: Option<String>) -> RotationFuture<'_> {
        Box::pin(async move {
            let hosts: Vec<HostRecord> = match &name {
                Some(n) => match self.hub.inventory().get(n).filter(HostRecord::is_active) {
                    Some(h) => vec![h],
                    None => {
                        return vec![RotationOutcome {
                            host: n.clone(),
                            ok: false,
                            new_public_key: None,
                            error: Some(format!("no active host named {n}")),
                        }];
                    }
                },
                None => self
                    .hub
                    .inventory()
                    .list()
                    .into_iter()
                    .filter(HostRecord::is_active)
                    .collect(),
            };
            let mut out = Vec::with_capacity(hosts.len());
            for h in hosts {
                let result = ask_driver(&self.tx, Some(host_info(&h))).await;
                out.push(outcome(h.name, result));
            }
            out
        })
    }
}

/// A target's side of the agent channel: a handle to its driver task.
pub struct TargetAgent {
    tx: mpsc::UnboundedSender<Input>,
    name: String,
}

/// What a target's agent needs.
pub struct TargetAgentConfig {
    /// The target's tunnel.
    pub tunnel: TunnelHandle,
    /// Its vault (holds the WireGuard key).
    pub vault: Vault,
    /// The hub's overlay address: the only peer it accepts agent requests from.
    pub hub_ip: Ipv4Addr,
    /// Its name at the hub.
    pub name: String,
    /// Its audit log.
    pub audit: AuditLog,
    /// Where `key_rotation` alerts go.
    pub alerts: Arc<dyn AlertSink>,
    /// Rotate when the key is older than this (`None`: never on its own).
    pub max_age: Option<Duration>,
}

struct TargetDriver {
    machine: TargetMachine,
    cfg: TargetAgentConfig,
    tx: mpsc::UnboundedSender<Input>,
    streams: Streams,
    waiters: HashMap<RotationId, oneshot::Sender<Result<String, AgentError>>>,
    staged: Option<SecretKey>,
}

fn staged_name() -> String {
    format!("{}{}", identity::WIREGUARD, identity::STAGED)
}

impl TargetAgent {
    /// Serves the hub's requests and rotates on schedule until `shutdown`.
    pub fn spawn(
        cfg: TargetAgentConfig,
        shutdown: CancellationToken,
    ) -> Result<(Arc<TargetAgent>, Vec<JoinHandle<()>>), TunnelError> {
        let listener = cfg.tunnel.listen(AGENT_PORT)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = Arc::new(TargetAgent {
            tx: tx.clone(),
            name: cfg.name.clone(),
        });
        let (vault, max_age) = (cfg.vault.clone(), cfg.max_age);
        let driver = TargetDriver {
            machine: TargetMachine::new(TargetConfig::new(cfg.hub_ip)),
            cfg,
            tx,
            streams: Streams::default(),
            waiters: HashMap::new(),
            staged: None,
        };
        let serve = tokio::spawn(driver.run(listener, rx, shutdown.clone()));
        let me = Arc::clone(&agent);
        let schedule = tokio::spawn(async move {
            let Some(max_age) = max_age else { return };
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if key_age(&vault).is_some_and(|age| age > max_age) {
                    match ask_driver(&me.tx, None).await {
                        Ok(_) => tracing::info!("scheduled WireGuard key rotation done"),
                        Err(e) => tracing::error!(
                            "scheduled WireGuard key rotation failed (retrying in an hour): {e}"
                        ),
                    }
                }
            }
        });
        Ok((agent, vec![serve, schedule]))
    }

    /// Rotates this machine's WireGuard key with the hub.
    pub async fn rotate_now(&self) -> RotationOutcome {
        outcome(self.name.clone(), ask_driver(&self.tx, None).await)
    }
}

fn key_age(vault: &Vault) -> Option<Duration> {
    let info = vault.info(identity::WIREGUARD).ok().flatten()?;
    let at = info.rotated.unwrap_or(info.created);
    let secs = (time::OffsetDateTime::now_utc() - at).whole_seconds();
    u64::try_from(secs).ok().map(Duration::from_secs)
}

impl TargetDriver {
    async fn run(
        mut self,
        listener: TunnelListener,
        mut rx: mpsc::UnboundedReceiver<Input>,
        shutdown: CancellationToken,
    ) {
        loop {
            while let Some(action) = self.machine.poll_action() {
                self.perform(action);
            }
            let deadline = self.machine.poll_timeout();
            tokio::select! {
                () = shutdown.cancelled() => return,
                s = listener.accept() => match s {
                    Ok(stream) => {
                        // Only the hub may ask; anything else is dropped unanswered.
                        if let Some(conn) = self.machine.accept(stream.peer_ip(), now()) {
                            self.streams.attach(conn, stream, &self.tx);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                },
                Some(input) = rx.recv() => self.input(input),
                () = sleep_until(deadline) => self.machine.handle_timeout(now()),
            }
        }
    }

    fn input(&mut self, input: Input) {
        let now = now();
        match input {
            Input::Connected(conn, stream) => {
                if self.streams.connected(conn, stream, &self.tx) {
                    self.machine.connected(conn, now);
                }
            }
            Input::ConnectFailed(conn, e) | Input::IoFailed(conn, e) => {
                self.streams.close(conn);
                self.machine.failed(conn, e, now);
            }
            Input::Bytes(conn, b) => self.machine.received(conn, &b, now),
            Input::Eof(conn) => self.machine.closed(conn, now),
            Input::Promoted(r) => self.machine.promoted(r, now),
            Input::Rotate { reply, .. } => {
                let id = self.machine.start_rotation(now);
                self.waiters.insert(id, reply);
            }
            Input::Recorded(..) => {}
        }
    }

    fn perform(&mut self, action: TargetAction) {
        let vault = &self.cfg.vault;
        match action {
            TargetAction::Connect { conn, ip } => {
                self.streams.connect(conn, ip, &self.cfg.tunnel, &self.tx)
            }
            TargetAction::Send { conn, bytes } => self.streams.send(conn, bytes),
            TargetAction::Close { conn } => self.streams.close(conn),
            TargetAction::StageKey => {
                let staged = staged_name();
                if vault.info(&staged).ok().flatten().is_some() {
                    let _ = vault.remove(&staged);
                }
                let result = identity::wireguard_key_named(vault, &staged)
                    .map(|k| {
                        let public = k.public_key().to_base64();
                        self.staged = Some(k);
                        public
                    })
                    .map_err(|e| e.to_string());
                self.machine.staged(result, now());
            }
            TargetAction::DiscardStagedKey => {
                let _ = vault.remove(&staged_name());
                self.staged = None;
            }
            TargetAction::PromoteKey { new_public_key } => {
                // The hub has the new key durably: from here on it is the only one that works.
                if let Err(e) = identity::promote_staged(vault, identity::WIREGUARD) {
                    tracing::error!(
                        "the hub took the new WireGuard key but the vault could not store it: {e}; this machine must re-enroll after a restart"
                    );
                }
                let switched = match self.staged.take() {
                    Some(key) => self
                        .cfg
                        .tunnel
                        .set_private_key(&key)
                        .map_err(|e| e.to_string()),
                    None => Err("the staged key is gone".to_owned()),
                };
                if let Err(e) = switched {
                    return self.machine.promoted(Err(e), now());
                }
                let (audit, tx) = (self.cfg.audit.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let event = Event::new("vpn.key_rotation", daemon_actor())
                        .data(json!({"new_public_key": new_public_key}));
                    if let Err(e) = audit.append(&event).await {
                        tracing::error!("could not audit the key rotation: {e}");
                    }
                    let _ = tx.send(Input::Promoted(Ok(())));
                });
            }
            TargetAction::RotationFinished {
                rotation,
                asked_by_hub,
                result,
            } => {
                if result.is_ok() {
                    self.cfg.alerts.raise(rotation_alert(&self.cfg.name));
                }
                match (self.waiters.remove(&rotation), &result) {
                    (Some(w), _) => {
                        let _ = w.send(result);
                    }
                    (None, Err(e)) if asked_by_hub => {
                        tracing::error!("key rotation asked by the hub failed: {e}")
                    }
                    (None, _) => {}
                }
            }
            TargetAction::ConversationFailed { error } => {
                tracing::warn!("agent: {error}");
            }
            _ => {}
        }
    }
}

impl KeyRotator for TargetAgent {
    fn rotate(&self, _name: Option<String>) -> RotationFuture<'_> {
        Box::pin(async move { vec![self.rotate_now().await] })
    }
}
