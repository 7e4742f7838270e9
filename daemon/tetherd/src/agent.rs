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
    AGENT_PORT, AgentError, ConnId, EffectError, HostInfo, Hub as HubMachine, HubAction, HubConfig,
    Io, Machine, RotationId, Target as TargetMachine, TargetAction, TargetConfig,
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

/// What a stream's IO task reports to its driver.
enum StreamEvent {
    Connected(ConnId, TunnelStream),
    ConnectFailed(ConnId, String),
    Bytes(ConnId, Vec<u8>),
    Eof(ConnId),
    IoFailed(ConnId, String),
}

/// A driver's inbox: its streams' events, and what its role is told (effect results, rotation
/// requests).
enum Input<R> {
    Stream(StreamEvent),
    Role(R),
}

type Reply = oneshot::Sender<Result<String, AgentError>>;

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

/// What differs between the hub's and a target's driver; [`Driver`] does the rest.
trait Role: Sized + Send + 'static {
    /// The machine it drives.
    type Machine: Machine + Send;
    /// What its inbox carries besides stream events.
    type Input: Send + 'static;
    /// A stream arrived from `ip`: the machine's connection for it, or `None` to drop it.
    fn accept(&mut self, machine: &mut Self::Machine, ip: Ipv4Addr) -> Option<ConnId>;
    /// Handles an effect result or a request.
    fn input(&mut self, core: &mut Core<Self>, input: Self::Input);
    /// Performs one of the machine's actions.
    fn perform(&mut self, core: &mut Core<Self>, action: <Self::Machine as Machine>::Action);
}

/// The part of a driver both roles share: the machine, its streams, the tunnel, the inbox.
struct Core<R: Role> {
    machine: R::Machine,
    tunnel: TunnelHandle,
    tx: mpsc::UnboundedSender<Input<R::Input>>,
    open: HashMap<ConnId, mpsc::UnboundedSender<Out>>,
    connecting: HashSet<ConnId>,
}

impl<R: Role> Core<R> {
    fn new(
        machine: R::Machine,
        tunnel: TunnelHandle,
        tx: mpsc::UnboundedSender<Input<R::Input>>,
    ) -> Self {
        Core {
            machine,
            tunnel,
            tx,
            open: HashMap::new(),
            connecting: HashSet::new(),
        }
    }

    fn attach(&mut self, conn: ConnId, stream: TunnelStream) {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        self.open.insert(conn, out_tx);
        tokio::spawn(stream_io(conn, stream, out_rx, self.tx.clone()));
    }

    /// Opens, writes to or hangs up a stream for the machine.
    fn io(&mut self, io: Io) {
        match io {
            Io::Connect { conn, ip } => {
                self.connecting.insert(conn);
                let (tunnel, tx) = (self.tunnel.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let event =
                        match tokio::time::timeout(IO_DEADLINE, tunnel.connect(ip, AGENT_PORT))
                            .await
                        {
                            Ok(Ok(s)) => StreamEvent::Connected(conn, s),
                            Ok(Err(e)) => {
                                StreamEvent::ConnectFailed(conn, format!("cannot reach {ip}: {e}"))
                            }
                            Err(_) => StreamEvent::ConnectFailed(
                                conn,
                                format!(
                                    "{ip} did not answer on the tunnel within 10 s (is it online?)"
                                ),
                            ),
                        };
                    let _ = tx.send(Input::Stream(event));
                });
            }
            Io::Send { conn, bytes } => {
                if let Some(s) = self.open.get(&conn) {
                    let _ = s.send(Out::Bytes(bytes));
                }
            }
            Io::Close { conn } => self.close(conn),
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.connecting.remove(&conn);
        if let Some(s) = self.open.remove(&conn) {
            let _ = s.send(Out::Close);
        }
    }

    /// Feeds a stream's event to the machine.
    fn stream_event(&mut self, event: StreamEvent) {
        let now = now();
        match event {
            StreamEvent::Connected(conn, stream) => {
                // The machine may have given up on the connection meanwhile.
                if self.connecting.remove(&conn) {
                    self.attach(conn, stream);
                    self.machine.connected(conn, now);
                }
            }
            StreamEvent::ConnectFailed(conn, e) | StreamEvent::IoFailed(conn, e) => {
                self.close(conn);
                self.machine.failed(conn, e, now);
            }
            StreamEvent::Bytes(conn, b) => self.machine.received(conn, &b, now),
            StreamEvent::Eof(conn) => self.machine.closed(conn, now),
        }
    }
}

/// One agent's driver task: owns the machine, accepts and opens its streams, feeds it events
/// and the time, and performs its actions through the role.
struct Driver<R: Role> {
    core: Core<R>,
    role: R,
}

impl<R: Role> Driver<R> {
    async fn run(
        mut self,
        listener: TunnelListener,
        mut rx: mpsc::UnboundedReceiver<Input<R::Input>>,
        shutdown: CancellationToken,
    ) {
        loop {
            while let Some(action) = self.core.machine.poll_action() {
                self.role.perform(&mut self.core, action);
            }
            let deadline = self.core.machine.poll_timeout();
            tokio::select! {
                () = shutdown.cancelled() => return,
                s = listener.accept() => match s {
                    Ok(stream) => {
                        if let Some(conn) = self.role.accept(&mut self.core.machine, stream.peer_ip()) {
                            self.core.attach(conn, stream);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("agent accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                Some(input) = rx.recv() => match input {
                    Input::Stream(event) => self.core.stream_event(event),
                    Input::Role(input) => self.role.input(&mut self.core, input),
                },
                () = sleep_until(deadline) => self.core.machine.handle_timeout(now()),
            }
        }
    }
}

/// One stream's IO: received bytes go to the driver, the driver's bytes go out; `Close`
/// flushes and hangs up.
async fn stream_io<R>(
    conn: ConnId,
    mut stream: TunnelStream,
    mut out: mpsc::UnboundedReceiver<Out>,
    tx: mpsc::UnboundedSender<Input<R>>,
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
    let report = |event| {
        let _ = tx.send(Input::Stream(event));
    };
    let mut buf = vec![0u8; 4096];
    let mut eof = false;
    loop {
        tokio::select! {
            o = out.recv() => match o {
                Some(Out::Bytes(b)) => {
                    if let Err(e) = write(&mut stream, &b).await {
                        return report(StreamEvent::IoFailed(conn, e));
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
                    report(StreamEvent::Eof(conn));
                }
                Ok(n) => report(StreamEvent::Bytes(conn, buf[..n].to_vec())),
                Err(e) => return report(StreamEvent::IoFailed(conn, format!("reading failed: {e}"))),
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

/// Sends a rotation request (`request(reply)`) to a driver and waits for its result.
async fn ask_driver<R>(
    tx: &mpsc::UnboundedSender<Input<R>>,
    request: impl FnOnce(Reply) -> R,
) -> Result<String, AgentError> {
    let stopped = || AgentError::Local {
        what: "the agent",
        cause: EffectError::TaskStopped {
            reason: "its driver is gone".to_owned(),
        },
    };
    let (reply, rx) = oneshot::channel();
    tx.send(Input::Role(request(reply)))
        .map_err(|_| stopped())?;
    rx.await.map_err(|_| stopped())?
}

/// What the hub's driver is told besides stream events.
enum HubInput {
    /// The result of `RecordRotation`.
    Recorded(ConnId, Result<(), EffectError>),
    /// Rotate this host's key.
    Rotate(HostInfo, Reply),
}

/// The hub's side of the agent channel: a handle to its driver task.
pub struct HubAgent {
    tx: mpsc::UnboundedSender<Input<HubInput>>,
    hub: Arc<Hub>,
}

struct HubRole {
    hub: Arc<Hub>,
    audit: AuditLog,
    alerts: Arc<dyn AlertSink>,
    waiters: HashMap<RotationId, Reply>,
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
        let driver = Driver {
            core: Core::new(HubMachine::new(HubConfig::default()), tunnel, tx.clone()),
            role: HubRole {
                hub: Arc::clone(&hub),
                audit,
                alerts,
                waiters: HashMap::new(),
            },
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

impl Role for HubRole {
    type Machine = HubMachine;
    type Input = HubInput;

    fn accept(&mut self, machine: &mut HubMachine, ip: Ipv4Addr) -> Option<ConnId> {
        let host = self
            .hub
            .inventory()
            .list()
            .into_iter()
            .find(|h| h.overlay_ip == ip && h.is_active())
            .map(|h| host_info(&h));
        Some(machine.accept(ip, host, now()))
    }

    fn input(&mut self, core: &mut Core<Self>, input: HubInput) {
        match input {
            HubInput::Recorded(conn, r) => core.machine.recorded(conn, r, now()),
            HubInput::Rotate(host, reply) => {
                let id = core.machine.start_rotation(host, now());
                self.waiters.insert(id, reply);
            }
        }
    }

    fn perform(&mut self, core: &mut Core<Self>, action: HubAction) {
        match action {
            HubAction::Io(io) => core.io(io),
            HubAction::RecordRotation {
                conn,
                host,
                old_public_key,
                new_public_key,
            } => {
                // Durable record first, then the inventory; the machine acks after both.
                let (audit, hub, tx) = (self.audit.clone(), Arc::clone(&self.hub), core.tx.clone());
                tokio::spawn(async move {
                    let event = Event::new("vpn.key_rotation", daemon_actor())
                        .host(host.clone())
                        .data(json!({"name": host, "old_public_key": old_public_key, "new_public_key": new_public_key}));
                    let result = match audit.append(&event).await {
                        Err(e) => Err(EffectError::Audit {
                            reason: e.to_string(),
                        }),
                        Ok(_) => {
                            let set = tokio::task::spawn_blocking(move || {
                                hub.inventory().set_wg_key(&host, &new_public_key)
                            });
                            match set.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err(e)) => Err(EffectError::Inventory {
                                    reason: e.to_string(),
                                }),
                                Err(e) => Err(EffectError::TaskStopped {
                                    reason: format!("the inventory update failed: {e}"),
                                }),
                            }
                        }
                    };
                    let _ = tx.send(Input::Role(HubInput::Recorded(conn, result)));
                });
            }
            HubAction::InstallPeerKey { host } => self.install(&core.tunnel, host),
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
}

impl HubRole {
    /// Replaces the host's tunnel peer by one with its new key, keeping its endpoint, only if
    /// the inventory still holds the host active with that key (a revocation or removal while
    /// the rotation was in flight wins: the peer stays gone).
    fn install(&self, tunnel: &TunnelHandle, host: HostInfo) {
        let endpoint = tunnel
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
        match crate::membership::admit_peer(&self.hub, tunnel, &record, endpoint) {
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
                let result =
                    ask_driver(&self.tx, |reply| HubInput::Rotate(host_info(&h), reply)).await;
                out.push(outcome(h.name, result));
            }
            out
        })
    }
}

/// What a target's driver is told besides stream events.
enum TargetInput {
    /// The result of `PromoteKey`.
    Promoted(Result<(), EffectError>),
    /// Rotate this machine's key.
    Rotate(Reply),
}

/// A target's side of the agent channel: a handle to its driver task.
pub struct TargetAgent {
    tx: mpsc::UnboundedSender<Input<TargetInput>>,
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

struct TargetRole {
    vault: Vault,
    name: String,
    audit: AuditLog,
    alerts: Arc<dyn AlertSink>,
    waiters: HashMap<RotationId, Reply>,
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
        let driver = Driver {
            core: Core::new(
                TargetMachine::new(TargetConfig::new(cfg.hub_ip)),
                cfg.tunnel,
                tx,
            ),
            role: TargetRole {
                vault: cfg.vault,
                name: cfg.name,
                audit: cfg.audit,
                alerts: cfg.alerts,
                waiters: HashMap::new(),
                staged: None,
            },
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
                    match ask_driver(&me.tx, TargetInput::Rotate).await {
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
        outcome(
            self.name.clone(),
            ask_driver(&self.tx, TargetInput::Rotate).await,
        )
    }
}

fn key_age(vault: &Vault) -> Option<Duration> {
    let info = vault.info(identity::WIREGUARD).ok().flatten()?;
    let at = info.rotated.unwrap_or(info.created);
    let secs = (time::OffsetDateTime::now_utc() - at).whole_seconds();
    u64::try_from(secs).ok().map(Duration::from_secs)
}

impl Role for TargetRole {
    type Machine = TargetMachine;
    type Input = TargetInput;

    /// Only the hub may ask; anything else is dropped unanswered.
    fn accept(&mut self, machine: &mut TargetMachine, ip: Ipv4Addr) -> Option<ConnId> {
        machine.accept(ip, now())
    }

    fn input(&mut self, core: &mut Core<Self>, input: TargetInput) {
        match input {
            TargetInput::Promoted(r) => core.machine.promoted(r, now()),
            TargetInput::Rotate(reply) => {
                let id = core.machine.start_rotation(now());
                self.waiters.insert(id, reply);
            }
        }
    }

    fn perform(&mut self, core: &mut Core<Self>, action: TargetAction) {
        let vault = &self.vault;
        match action {
            TargetAction::Io(io) => core.io(io),
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
                    .map_err(|e| EffectError::Vault {
                        reason: e.to_string(),
                    });
                core.machine.staged(result, now());
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
                    Some(key) => {
                        core.tunnel
                            .set_private_key(&key)
                            .map_err(|e| EffectError::Tunnel {
                                reason: e.to_string(),
                            })
                    }
                    None => Err(EffectError::StagedKeyMissing),
                };
                if let Err(e) = switched {
                    return core.machine.promoted(Err(e), now());
                }
                let (audit, tx) = (self.audit.clone(), core.tx.clone());
                tokio::spawn(async move {
                    let event = Event::new("vpn.key_rotation", daemon_actor())
                        .data(json!({"new_public_key": new_public_key}));
                    if let Err(e) = audit.append(&event).await {
                        tracing::error!("could not audit the key rotation: {e}");
                    }
                    let _ = tx.send(Input::Role(TargetInput::Promoted(Ok(()))));
                });
            }
            TargetAction::RotationFinished {
                rotation,
                asked_by_hub,
                result,
            } => {
                if result.is_ok() {
                    self.alerts.raise(rotation_alert(&self.name));
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
