//! The agent channel between hub and targets, carried inside the tunnel (overlay TCP port
//! [`AGENT_PORT`]). WireGuard authenticates every packet's source address, so the hub knows which
//! host is speaking from the stream's overlay IP alone, and a target accepts only its hub.
//!
//! Today it carries WireGuard key rotation:
//! 1. (optional) hub → target `rotate_now` (from `tether vpn rotate-keys`); the target acks.
//! 2. target stages a new key and sends `rotate_wg_key{new_public_key}` to the hub.
//! 3. hub records it in the audit log and the inventory (durably), acks, and once the target has
//!    hung up replaces the tunnel peer's key.
//! 4. target promotes the staged key in its vault, switches the tunnel to it, and sends
//!    `confirm_key` over the new session.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tether_audit::{AuditLog, Event};
use tether_control::audit::daemon_actor;
use tether_control::state::{KeyRotator, RotationFuture, RotationOutcome};
use tether_enroll::{HostRecord, Hub};
use tether_model::{Alert, AlertSink, Severity};
use tether_tunnel::{PeerConfig, PublicKey, TunnelHandle, TunnelStream};
use tether_vault::Vault;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::identity;

/// Overlay TCP port of the agent channel on hub and targets.
pub const AGENT_PORT: u16 = 7001;
/// Largest agent message.
const MAX_MESSAGE: u64 = 64 * 1024;
/// Deadline for one exchange.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    /// Hub → target: rotate your WireGuard key now.
    RotateNow,
    /// Target → hub: this is my new WireGuard public key.
    RotateWgKey { new_public_key: String },
    /// Target → hub, over the new session: the new key works.
    ConfirmKey,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Reply {
    fn ok() -> Reply {
        Reply {
            ok: true,
            error: None,
        }
    }
    fn err(e: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(e.into()),
        }
    }
}

async fn read_message<T: serde::de::DeserializeOwned>(
    stream: &mut BufReader<TunnelStream>,
) -> Result<T, String> {
    let mut line = String::new();
    let mut limited = (&mut *stream).take(MAX_MESSAGE);
    let read = limited.read_line(&mut line);
    match tokio::time::timeout(DEADLINE, read).await {
        Err(_) => Err("the other side did not answer within 10 s".to_owned()),
        Ok(Err(e)) => Err(format!("reading failed: {e}")),
        Ok(Ok(0)) => Err("the other side hung up".to_owned()),
        Ok(Ok(_)) => serde_json::from_str(&line).map_err(|e| format!("malformed message: {e}")),
    }
}

async fn write_message<T: Serialize>(
    stream: &mut BufReader<TunnelStream>,
    msg: &T,
) -> Result<(), String> {
    let mut bytes = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    let write = async {
        stream.get_mut().write_all(&bytes).await?;
        stream.get_mut().flush().await
    };
    match tokio::time::timeout(DEADLINE, write).await {
        Err(_) => Err("writing timed out".to_owned()),
        Ok(r) => r.map_err(|e| format!("writing failed: {e}")),
    }
}

async fn connect(tunnel: &TunnelHandle, ip: Ipv4Addr) -> Result<BufReader<TunnelStream>, String> {
    match tokio::time::timeout(DEADLINE, tunnel.connect(ip, AGENT_PORT)).await {
        Err(_) => Err(format!(
            "{ip} did not answer on the tunnel within 10 s (is it online?)"
        )),
        Ok(Err(e)) => Err(format!("cannot reach {ip} through the tunnel: {e}")),
        Ok(Ok(s)) => Ok(BufReader::new(s)),
    }
}

/// The hub's side of the agent channel.
pub struct HubAgent {
    /// The hub's tunnel.
    pub tunnel: TunnelHandle,
    /// Inventory and invites.
    pub hub: Arc<Hub>,
    /// The hub's audit log.
    pub audit: AuditLog,
    /// Where `key_rotation` alerts go.
    pub alerts: Arc<dyn AlertSink>,
}

impl HubAgent {
    /// Accepts agent connections from targets until `shutdown`.
    pub fn spawn(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let listener = self
            .tunnel
            .listen(AGENT_PORT)
            .map_err(|e| format!("agent port {AGENT_PORT}: {e}"))?;
        Ok(tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = shutdown.cancelled() => return,
                    s = listener.accept() => match s {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("agent accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                let me = Arc::clone(&self);
                tokio::spawn(async move { me.serve(stream).await });
            }
        }))
    }

    fn host_at(&self, ip: Ipv4Addr) -> Option<HostRecord> {
        self.hub
            .inventory()
            .list()
            .into_iter()
            .find(|h| h.overlay_ip == ip && h.is_active())
    }

    async fn serve(&self, stream: TunnelStream) {
        let ip = stream.peer_ip();
        let mut stream = BufReader::new(stream);
        let Some(host) = self.host_at(ip) else {
            let _ = write_message(
                &mut stream,
                &Reply::err("no active host has this overlay address"),
            )
            .await;
            return;
        };
        let request: Request = match read_message(&mut stream).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(host = %host.name, "agent: {e}");
                return;
            }
        };
        match request {
            Request::RotateWgKey { new_public_key } => {
                self.rotate_from(host, new_public_key, stream).await
            }
            Request::ConfirmKey => {
                tracing::info!(host = %host.name, "agent: the host's new WireGuard key works");
                let _ = write_message(&mut stream, &Reply::ok()).await;
            }
            Request::RotateNow => {
                let _ = write_message(&mut stream, &Reply::err("only the hub asks for rotations"))
                    .await;
            }
        }
    }

    async fn rotate_from(
        &self,
        host: HostRecord,
        new_key: String,
        mut stream: BufReader<TunnelStream>,
    ) {
        let key = match PublicKey::from_base64(&new_key) {
            Ok(k) if new_key != host.wg_public_key => k,
            Ok(_) => {
                let _ =
                    write_message(&mut stream, &Reply::err("the new key equals the old one")).await;
                return;
            }
            Err(e) => {
                let _ = write_message(&mut stream, &Reply::err(format!("invalid key: {e}"))).await;
                return;
            }
        };
        // Durable record first, then the inventory, then the ack.
        let event = Event::new("vpn.key_rotation", daemon_actor())
            .host(host.name.clone())
            .data(json!({"name": host.name, "old_public_key": host.wg_public_key, "new_public_key": new_key}));
        if let Err(e) = self.audit.append(&event).await {
            let _ = write_message(
                &mut stream,
                &Reply::err(format!("the hub cannot write its audit log: {e}")),
            )
            .await;
            return;
        }
        let hub = Arc::clone(&self.hub);
        let (name, k) = (host.name.clone(), new_key.clone());
        match tokio::task::spawn_blocking(move || hub.inventory().set_wg_key(&name, &k)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let _ = write_message(&mut stream, &Reply::err(e.to_string())).await;
                return;
            }
            Err(_) => return,
        }
        if write_message(&mut stream, &Reply::ok()).await.is_err() {
            tracing::warn!(host = %host.name, "agent: the rotation ack did not go out; the host keeps retrying with its old key until it re-enrolls or rotates again");
        }
        // Wait for the target to hang up (it switches keys right after), then swap the peer.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        let endpoint = self
            .tunnel
            .status()
            .into_iter()
            .find(|p| p.overlay_ip == host.overlay_ip)
            .and_then(|p| p.endpoint);
        if let Some(id) = self.tunnel.peer_by_ip(host.overlay_ip) {
            let _ = self.tunnel.remove_peer(id);
        }
        let added = self.tunnel.add_peer(PeerConfig {
            name: host.name.clone(),
            public_key: key,
            overlay_ip: host.overlay_ip,
            endpoint,
            persistent_keepalive: None,
        });
        match added {
            Ok(_) => {
                tracing::info!(host = %host.name, "WireGuard key rotated");
                let mut alert = Alert::new(
                    "key_rotation",
                    Severity::Info,
                    format!("{} rotated its WireGuard key", host.name),
                );
                alert.host = Some(host.name.clone());
                self.alerts.raise(alert);
            }
            Err(e) => {
                tracing::error!(host = %host.name, "rotated, but the new tunnel peer could not be added: {e}")
            }
        }
    }

    /// Asks one host to rotate and waits (30 s) until its new key is recorded and its tunnel is
    /// up again under that key.
    async fn rotate_host(&self, host: HostRecord) -> RotationOutcome {
        let fail = |e: String| RotationOutcome {
            host: host.name.clone(),
            ok: false,
            new_public_key: None,
            error: Some(e),
        };
        let asked = async {
            let mut s = connect(&self.tunnel, host.overlay_ip).await?;
            write_message(&mut s, &Request::RotateNow).await?;
            let reply: Reply = read_message(&mut s).await?;
            if reply.ok {
                Ok(())
            } else {
                Err(reply.error.unwrap_or_default())
            }
        };
        if let Err(e) = asked.await {
            return fail(e);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now_key = self
                .hub
                .inventory()
                .get(&host.name)
                .map(|h| h.wg_public_key);
            if let Some(k) = now_key.filter(|k| *k != host.wg_public_key) {
                let up = self
                    .tunnel
                    .status()
                    .into_iter()
                    .any(|p| p.overlay_ip == host.overlay_ip && p.public_key == k && p.up);
                if up {
                    return RotationOutcome {
                        host: host.name.clone(),
                        ok: true,
                        new_public_key: Some(k),
                        error: None,
                    };
                }
            }
            if tokio::time::Instant::now() > deadline {
                return fail("the host did not complete the rotation within 30 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
                out.push(self.rotate_host(h).await);
            }
            out
        })
    }
}

/// A target's side of the agent channel.
pub struct TargetAgent {
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
    /// One rotation at a time.
    pub busy: tokio::sync::Mutex<()>,
}

impl TargetAgent {
    /// Serves the hub's requests and rotates on schedule until `shutdown`.
    pub fn spawn(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
        let listener = self
            .tunnel
            .listen(AGENT_PORT)
            .map_err(|e| format!("agent port {AGENT_PORT}: {e}"))?;
        let me = Arc::clone(&self);
        let stop = shutdown.clone();
        let serve = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = stop.cancelled() => return,
                    s = listener.accept() => match s { Ok(s) => s, Err(_) => { tokio::time::sleep(Duration::from_millis(200)).await; continue; } },
                };
                if stream.peer_ip() != me.hub_ip {
                    continue; // only the hub may ask
                }
                let me2 = Arc::clone(&me);
                tokio::spawn(async move {
                    let mut s = BufReader::new(stream);
                    if let Ok(Request::RotateNow) = read_message::<Request>(&mut s).await {
                        let _ = write_message(&mut s, &Reply::ok()).await;
                        drop(s);
                        let outcome = me2.rotate_now().await;
                        if let Some(e) = outcome.error {
                            tracing::error!("key rotation asked by the hub failed: {e}");
                        }
                    } else {
                        let _ = write_message(&mut s, &Reply::err("unsupported request")).await;
                    }
                });
            }
        });
        let me = Arc::clone(&self);
        let schedule = tokio::spawn(async move {
            let Some(max_age) = me.max_age else { return };
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if me.key_age().is_some_and(|age| age > max_age) {
                    let outcome = me.rotate_now().await;
                    match outcome.error {
                        None => tracing::info!("scheduled WireGuard key rotation done"),
                        Some(e) => tracing::error!(
                            "scheduled WireGuard key rotation failed (retrying in an hour): {e}"
                        ),
                    }
                }
            }
        });
        Ok(vec![serve, schedule])
    }

    fn key_age(&self) -> Option<Duration> {
        let info = self.vault.info(identity::WIREGUARD).ok().flatten()?;
        let at = info.rotated.unwrap_or(info.created);
        let secs = (time::OffsetDateTime::now_utc() - at).whole_seconds();
        u64::try_from(secs).ok().map(Duration::from_secs)
    }

    /// Rotates this machine's WireGuard key with the hub.
    pub async fn rotate_now(&self) -> RotationOutcome {
        let _one = self.busy.lock().await;
        let fail = |e: String| RotationOutcome {
            host: self.name.clone(),
            ok: false,
            new_public_key: None,
            error: Some(e),
        };
        let staged = format!("{}{}", identity::WIREGUARD, identity::STAGED);
        if self.vault.info(&staged).ok().flatten().is_some() {
            let _ = self.vault.remove(&staged);
        }
        let key = match identity::wireguard_key_named(&self.vault, &staged) {
            Ok(k) => k,
            Err(e) => return fail(format!("cannot make a new key: {e}")),
        };
        let new_public = key.public_key().to_base64();
        let told = async {
            let mut s = connect(&self.tunnel, self.hub_ip).await?;
            write_message(
                &mut s,
                &Request::RotateWgKey {
                    new_public_key: new_public.clone(),
                },
            )
            .await?;
            let reply: Reply = read_message(&mut s).await?;
            // Hang up at once: the hub swaps the peer's key when this stream ends.
            let _ = s.get_mut().shutdown().await;
            if reply.ok {
                Ok(())
            } else {
                Err(reply.error.unwrap_or_default())
            }
        };
        if let Err(e) = told.await {
            let _ = self.vault.remove(&staged);
            return fail(format!("the hub did not accept the new key: {e}"));
        }
        // The hub has the new key durably: from here on it is the only one that works.
        if let Err(e) = identity::promote_staged(&self.vault, identity::WIREGUARD) {
            tracing::error!(
                "the hub took the new WireGuard key but the vault could not store it: {e}; this machine must re-enroll after a restart"
            );
        }
        if let Err(e) = self.tunnel.set_private_key(&key) {
            return fail(format!("cannot switch the tunnel to the new key: {e}"));
        }
        let event = Event::new("vpn.key_rotation", daemon_actor())
            .data(json!({"new_public_key": new_public}));
        if let Err(e) = self.audit.append(&event).await {
            tracing::error!("could not audit the key rotation: {e}");
        }
        // Prove the new session works (this packet also starts the handshake).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let confirmed = async {
                let mut s = connect(&self.tunnel, self.hub_ip).await?;
                write_message(&mut s, &Request::ConfirmKey).await?;
                let reply: Reply = read_message(&mut s).await?;
                if reply.ok {
                    Ok(())
                } else {
                    Err(reply.error.unwrap_or_default())
                }
            };
            match confirmed.await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return fail(format!("the new key was not confirmed: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        let mut alert = Alert::new(
            "key_rotation",
            Severity::Info,
            format!("{} rotated its WireGuard key", self.name),
        );
        alert.host = Some(self.name.clone());
        self.alerts.raise(alert);
        RotationOutcome {
            host: self.name.clone(),
            ok: true,
            new_public_key: Some(new_public),
            error: None,
        }
    }
}

impl KeyRotator for TargetAgent {
    fn rotate(&self, _name: Option<String>) -> RotationFuture<'_> {
        Box::pin(async move { vec![self.rotate_now().await] })
    }
}
