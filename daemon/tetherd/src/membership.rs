//! Who is in the star, by role. The hub runs the tunnel, the enrollment listener and the
//! inventory (one tunnel peer per active host); a target runs the tunnel with one peer, its hub,
//! from what `tetherd enroll` saved.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use serde::{Deserialize, Serialize};
use tether_audit::{AuditLog, Event};
use tether_config::Config;
use tether_enroll::rejections::{Rejected, Rejections};
use tether_enroll::{
    EnrollError, EnrollHook, EnrollObserver, EnrollServer, HostRecord, Hub, HubIdentity,
    OverlayNet, ServerConfig,
};
use tether_model::AlertSink;
use tether_tunnel::{
    NodeConfig, NodeRole, PeerConfig, PublicKey, Tunnel, TunnelConfig, TunnelError, TunnelHandle,
};
use tether_vault::Vault;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::enroll_hooks::{AuditHook, ChainHook, PluginEnrollHook};
use crate::error::DaemonError;
use crate::identity;
use crate::plugins::Plugins;

/// What `tetherd enroll` saved on a target: everything it needs to reach its hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The name the hub knows this machine by.
    pub name: String,
    /// This machine's overlay address.
    pub overlay_ip: Ipv4Addr,
    /// The overlay subnet prefix length.
    pub prefix_len: u8,
    /// The hub's overlay address.
    pub hub_overlay_ip: Ipv4Addr,
    /// The hub's WireGuard public key (base64).
    pub hub_wg_public_key: String,
    /// The hub's WireGuard endpoint, `host:port`.
    pub hub_wg_endpoint: String,
    /// The hub's SSH client key (OpenSSH); the only key this target's SSH accepts for the hub.
    pub hub_ssh_client_key: String,
    /// Tags the hub assigned.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Groups the hub assigned.
    #[serde(default)]
    pub groups: Vec<String>,
    /// When, unix seconds.
    pub enrolled_at: u64,
    /// Forward mode: the sshd account the hub was told to log in as (and sshd's host key was
    /// sent instead of this daemon's); `None`: enrolled with Tether's own SSH server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// Relays the invite named: the tunnel falls back to them when UDP to the hub is blocked
    /// (besides any in this target's own `[[tunnel.relays]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<tether_model::relay::RelaySpec>,
}

/// `STATE_DIR/enrollment.json`.
pub fn enrollment_path(state_dir: &Path) -> PathBuf {
    state_dir.join("enrollment.json")
}

impl Enrollment {
    /// Reads the saved enrollment, `None` if this target has not enrolled yet.
    pub fn load(state_dir: &Path) -> Result<Option<Enrollment>, DaemonError> {
        let path = enrollment_path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| DaemonError::Membership(format!(
                "{} is damaged ({e}); enroll again with a fresh token: tetherd enroll --force TOKEN",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DaemonError::Membership(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes it atomically (temp file, fsync, rename, fsync of the directory), mode 0600.
    pub fn save(&self, state_dir: &Path) -> Result<(), DaemonError> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| DaemonError::Membership(e.to_string()))?;
        tether_durable::write_atomic(&enrollment_path(state_dir), &bytes, 0o600)
            .map_err(|e| DaemonError::Membership(e.to_string()))
    }
}

/// The running membership parts of a daemon.
pub struct Membership {
    /// The tunnel (absent on a target that has not enrolled).
    pub tunnel: Option<Tunnel>,
    /// The hub's enrollment core and inventory.
    pub hub: Option<Arc<Hub>>,
    /// A target's saved enrollment.
    pub enrollment: Option<Enrollment>,
    /// Key rotation over the agent channel.
    pub rotator: Option<Arc<dyn tether_control::state::KeyRotator>>,
    /// The hub's SSH pool.
    pub ssh: Option<crate::ssh::HubSide>,
    tasks: Vec<JoinHandle<()>>,
}

impl Membership {
    /// Adds a task to stop with the others (the target's SSH listener).
    pub fn own(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Stops the listener tasks and the tunnel.
    pub async fn shutdown(self) {
        // Close pooled SSH connections (once) while the tunnel can still carry the goodbye.
        if let Some(ssh) = self.ssh {
            ssh.shutdown().await;
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        if let Some(t) = self.tunnel {
            t.shutdown().await;
        }
    }
}

/// The `host:port` to advertise for an address a daemon bound, `None` when targets could not
/// reach it: the configured endpoint (unless it names an unspecified address such as `0.0.0.0`),
/// else the bound IP itself, else — bound to every address — this host's name, when that name
/// resolves to an address other than loopback.
fn advertised(configured: Option<&str>, bound: SocketAddr) -> Option<String> {
    if let Some(e) = configured {
        let unspecified = e
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified());
        return (!unspecified).then(|| e.to_owned());
    }
    if !bound.ip().is_unspecified() {
        return Some(bound.to_string());
    }
    let name = format!("{}:{}", identity::hostname(), bound.port());
    let routable = name
        .to_socket_addrs()
        .is_ok_and(|mut addrs| addrs.any(|a| !a.ip().is_loopback() && !a.ip().is_unspecified()));
    routable.then_some(name)
}

fn agent_port_err(source: TunnelError) -> DaemonError {
    DaemonError::Tunnel {
        what: format!(
            "cannot listen on the agent port {} inside the tunnel",
            tether_agent::AGENT_PORT
        ),
        source,
    }
}

/// Starts this daemon's tunnel with its vault key on `tunnel.listen` (or `default_listen`).
async fn start_tunnel(
    config: &Config,
    vault: &Vault,
    (overlay_ip, prefix): (Ipv4Addr, u8),
    role: NodeRole,
    default_listen: &str,
    registry: &Registry,
    alerts: &Arc<dyn AlertSink>,
    relays: Vec<tether_tunnel::RelayEndpoint>,
) -> Result<Tunnel, DaemonError> {
    let mut node = NodeConfig::new(identity::wireguard_key(vault)?, overlay_ip, role);
    node.prefix_len = prefix;
    let bind: SocketAddr = config
        .tunnel
        .listen
        .as_deref()
        .unwrap_or(default_listen)
        .parse()
        .map_err(|e| DaemonError::Membership(format!("tunnel.listen: {e}")))?;
    Tunnel::start(TunnelConfig {
        node,
        bind,
        alerts: Arc::clone(alerts),
        registry: Some(registry.clone()),
        connect_timeout: Duration::from_secs(10),
        relays,
    })
    .await
    .map_err(|e| DaemonError::Membership(format!("cannot start the tunnel on UDP {bind}: {e}")))
}

/// A tunnel peer for an enrolled host; fails when the inventory holds a malformed key.
pub fn peer_for(host: &HostRecord) -> Result<PeerConfig, TunnelError> {
    Ok(PeerConfig {
        name: host.name.clone(),
        public_key: PublicKey::from_base64(&host.wg_public_key)?,
        overlay_ip: host.overlay_ip,
        endpoint: None,
        persistent_keepalive: None,
    })
}

/// Adds `host`'s tunnel peer only if the inventory still holds it active with this key, under
/// the inventory lock (see [`tether_enroll::Inventory::admit`]): revocation takes the same lock
/// and removes peers after it, so no in-flight enrollment or rotation brings a revoked host back.
pub fn admit_peer(
    hub: &Hub,
    tunnel: &TunnelHandle,
    host: &HostRecord,
    endpoint: Option<SocketAddr>,
) -> Result<(), String> {
    hub.inventory()
        .admit(&host.name, &host.wg_public_key, |current| {
            let mut peer = peer_for(current).map_err(|e| e.to_string())?;
            peer.endpoint = endpoint;
            if let Some(id) = tunnel.peer_by_ip(current.overlay_ip) {
                let _ = tunnel.remove_peer(id);
            }
            tunnel.add_peer(peer).map(|_| ()).map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())?
}

/// Starts the hub's tunnel and enrollment listener and re-adds every active host as a peer.
/// Enrollments are reviewed by the enrollment-hook `plugins` (if any), then audited.
pub async fn start_hub(
    config: &Config,
    vault: &Vault,
    registry: &Registry,
    alerts: Arc<dyn AlertSink>,
    audit: AuditLog,
    plugins: Option<Arc<Plugins>>,
    shutdown: CancellationToken,
) -> Result<Membership, DaemonError> {
    let (network, prefix) =
        tether_config::parse_subnet(&config.tunnel.subnet).ok_or_else(|| {
            DaemonError::Membership(format!(
                "tunnel.subnet {:?} is invalid",
                config.tunnel.subnet
            ))
        })?;
    let net = OverlayNet::new(network, prefix)
        .map_err(|e| DaemonError::Membership(format!("tunnel.subnet: {e}")))?;
    let tunnel = start_tunnel(
        config,
        vault,
        (net.hub_ip(), prefix),
        NodeRole::Hub,
        "0.0.0.0:51820",
        registry,
        &alerts,
        crate::via_relay::endpoints(&config.tunnel.relays),
    )
    .await?;
    let handle = tunnel.handle();
    let wg_endpoint = advertised(config.tunnel.endpoint.as_deref(), handle.local_addr());

    let enroll_addr: SocketAddr = config
        .enroll
        .listen
        .parse()
        .map_err(|e| DaemonError::Membership(format!("enroll.listen: {e}")))?;
    let listener = tokio::net::TcpListener::bind(enroll_addr)
        .await
        .map_err(|e| {
            DaemonError::Membership(format!(
                "cannot listen for enrollments on TCP {enroll_addr}: {e}"
            ))
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| DaemonError::Membership(e.to_string()))?;
    let enroll_endpoint = advertised(config.enroll.endpoint.as_deref(), local);
    let relays = config.tunnel.relays.clone();
    match (&enroll_endpoint, &wg_endpoint) {
        (Some(_), Some(_)) => {}
        _ if !relays.is_empty() => tracing::info!(
            relays = relays.len(),
            "this hub has no endpoint targets can reach directly (set enroll.endpoint and tunnel.endpoint if it has one); targets enroll and connect through the relays"
        ),
        _ => tracing::warn!(
            "this hub has no endpoint targets can reach (bound to every address, and this host's name does not resolve beyond loopback): invites are refused until enroll.endpoint and tunnel.endpoint are set, or a relay is configured in [[tunnel.relays]]"
        ),
    }
    // Both must be reachable for a direct path; an invite without them relies on the relays
    // (and is refused when there are none).
    let (enroll_endpoint, wg_endpoint) = match (enroll_endpoint, wg_endpoint) {
        (Some(e), Some(w)) => (e, w),
        (e, w) => (e.unwrap_or_default(), w.unwrap_or_default()),
    };
    let identity = HubIdentity {
        enroll_endpoint,
        wg_public: handle.public_key().0,
        wg_endpoint,
        ssh_client_public: identity::ssh_public_key(vault)?,
        relays,
    };
    // Every invite key epoch (rotations add `tetherd.invite-key.eN` and never remove one):
    // invites signed by a retired key keep working until they expire.
    let invite_keys = tether_enroll::InviteKeyRing::load(vault)
        .map_err(|e| DaemonError::Membership(e.to_string()))?;
    tracing::info!(keys = ?invite_keys, "invite keys loaded");
    let (tx, rx) = tokio::sync::mpsc::channel::<HubEvent>(EVENT_QUEUE);
    let observer = Arc::new(Observer {
        tx,
        rejections: std::sync::Mutex::new(Rejections::default()),
        dropped: std::sync::atomic::AtomicU64::new(0),
    });
    // Plugins first (they may deny or add tags), then the audit record of the accepted host.
    let mut hooks: Vec<Arc<dyn EnrollHook>> = Vec::new();
    if let Some(plugins) = plugins {
        hooks.push(Arc::new(PluginEnrollHook::new(plugins, audit.clone())));
    }
    hooks.push(Arc::new(AuditHook {
        audit: audit.clone(),
    }));
    let hub = Hub::open(&config.state_dir, identity, invite_keys, net)
        .map_err(|e| DaemonError::Membership(format!("cannot open the inventory: {e}")))?
        .with_hook(Arc::new(ChainHook::new(hooks)))
        .with_wg_key(Arc::new(identity::WgAgreement(identity::wireguard_key(
            vault,
        )?)))
        .with_observer(observer.clone());
    let hub = Arc::new(hub);
    let mut peers = 0;
    // A restart never hands one host's key to another: if the inventory (edited, or written
    // before keys were unique) holds one WireGuard key for two active hosts, neither gets it.
    let active: Vec<HostRecord> = hub
        .inventory()
        .list()
        .into_iter()
        .filter(HostRecord::is_active)
        .collect();
    for host in &active {
        let holders: Vec<&str> = active
            .iter()
            .filter(|h| h.wg_public_key == host.wg_public_key)
            .map(|h| h.name.as_str())
            .collect();
        if holders.len() > 1 {
            tracing::error!(host = %host.name, shared_with = ?holders, "this host's WireGuard key is held by several hosts in hosts.json; no tunnel peer is added for any of them — revoke them and enroll each machine with its own keys");
            continue;
        }
        match admit_peer(&hub, &handle, host, None) {
            Ok(()) => peers += 1,
            Err(e) => tracing::error!(host = %host.name, "could not add the tunnel peer: {e}"),
        }
    }
    tracing::info!(
        tunnel = %handle.local_addr(),
        enroll = %local,
        peers,
        overlay = %handle.overlay_ip(),
        "hub membership ready"
    );

    let server = EnrollServer::from_listener(
        listener,
        Arc::clone(&hub),
        ServerConfig::default(),
        registry,
    )
    .map_err(|e| DaemonError::Membership(format!("enrollment listener: {e}")))?;
    // Targets that cannot reach this hub enroll through its relays.
    let mut relay_tasks = crate::via_relay::spawn_enroll_listeners(
        &config.tunnel.relays,
        identity::wireguard_static(vault)?,
        Arc::clone(&hub),
        server.metrics(),
        shutdown.clone(),
    );
    let serve = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            if let Err(e) = server.serve(shutdown).await {
                tracing::error!("enrollment listener stopped: {e}");
            }
        }
    });
    let alerts_for_ssh = Arc::clone(&alerts);
    let (agent, agent_task) = crate::agent::HubAgent::spawn(
        handle.clone(),
        Arc::clone(&hub),
        audit.clone(),
        Arc::clone(&alerts),
        shutdown.clone(),
    )
    .map_err(agent_port_err)?;
    let ssh = crate::ssh::start_hub(
        handle.clone(),
        vault,
        &config.ssh,
        Arc::clone(&alerts_for_ssh),
        audit.clone(),
        registry,
        shutdown.clone(),
    )?;
    let events = tokio::spawn(enroll_events(
        rx,
        observer,
        Arc::clone(&hub),
        handle,
        audit,
        alerts,
        shutdown,
    ));
    Ok(Membership {
        tunnel: Some(tunnel),
        hub: Some(hub),
        enrollment: None,
        rotator: Some(agent),
        ssh: Some(ssh),
        tasks: {
            relay_tasks.extend([serve, events, agent_task]);
            relay_tasks
        },
    })
}

/// Capacity of the hub's enrollment event queue. Refusals are aggregated before they are
/// queued (at most `2 × MAX_SOURCES + 1` records per window), so it only fills if the audit log
/// stalls; what cannot be queued then is counted and reported in the next summary.
const EVENT_QUEUE: usize = 4096;

/// What the enrollment server tells the daemon.
enum HubEvent {
    Enrolled(HostRecord, Option<std::net::IpAddr>),
    Rejected(Rejected),
}

/// The hub's [`EnrollObserver`]: enrollments become peers, refusals become bounded,
/// per-source aggregated `enroll.rejected` records (see [`tether_enroll::rejections`]).
struct Observer {
    tx: tokio::sync::mpsc::Sender<HubEvent>,
    rejections: std::sync::Mutex<Rejections>,
    dropped: std::sync::atomic::AtomicU64,
}

impl Observer {
    fn queue(&self, event: HubEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn rejections(&self) -> std::sync::MutexGuard<'_, Rejections> {
        self.rejections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EnrollObserver for Observer {
    fn enrolled(&self, host: &HostRecord, peer: Option<std::net::IpAddr>) {
        self.queue(HubEvent::Enrolled(host.clone(), peer));
    }

    fn rejected(&self, peer: Option<std::net::IpAddr>, error: &EnrollError) {
        let records = self.rejections().record(
            peer,
            error.code(),
            &error.to_string(),
            std::time::Instant::now(),
        );
        for r in records {
            self.queue(HubEvent::Rejected(r));
        }
    }
}

/// Adds a tunnel peer for each new host (raising `enrollment_complete`) and records refused
/// attempts (flushing the per-source
/// summaries every few seconds).
async fn enroll_events(
    mut rx: tokio::sync::mpsc::Receiver<HubEvent>,
    observer: Arc<Observer>,
    hub: Arc<Hub>,
    tunnel: TunnelHandle,
    audit: AuditLog,
    alerts: Arc<dyn AlertSink>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let events: Vec<HubEvent> = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let mut v: Vec<HubEvent> = observer
                    .rejections()
                    .flush(std::time::Instant::now())
                    .into_iter()
                    .map(HubEvent::Rejected)
                    .collect();
                let dropped = observer.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
                if dropped > 0 {
                    tracing::error!(dropped, "enrollment events dropped: the audit log is not keeping up");
                    v.push(HubEvent::Rejected(Rejected::Repeated {
                        peer: None,
                        codes: [("dropped", dropped)].into_iter().collect(),
                        window_secs: 5,
                    }));
                }
                v
            }
            e = rx.recv() => match e { Some(e) => vec![e], None => return },
        };
        for event in events {
            match event {
                HubEvent::Enrolled(host, peer) => {
                    raise_enrolled(alerts.as_ref(), &host, peer);
                    match admit_peer(&hub, &tunnel, &host, None) {
                        Ok(()) => {
                            tracing::info!(host = %host.name, ip = %host.overlay_ip, from = ?peer, "host enrolled")
                        }
                        Err(e) => {
                            tracing::warn!(host = %host.name, "enrolled, but the tunnel peer was not added: {e}")
                        }
                    }
                }
                HubEvent::Rejected(r) => {
                    let data = r.to_json();
                    tracing::warn!(%data, "enrollment refused");
                    let event =
                        Event::new("enroll.rejected", tether_control::audit::daemon_actor())
                            .data(data);
                    if let Err(e) = audit.append(&event).await {
                        tracing::error!("could not audit a refused enrollment: {e}");
                    }
                }
            }
        }
    }
}

/// Raises `enrollment_complete` for a host that just enrolled.
fn raise_enrolled(alerts: &dyn AlertSink, host: &HostRecord, peer: Option<std::net::IpAddr>) {
    let mut alert = tether_model::Alert::new(
        "enrollment_complete",
        tether_model::Severity::Info,
        format!("host {} enrolled as {}", host.name, host.overlay_ip),
    )
    .with_host(host.name.clone())
    .field("overlay_ip", host.overlay_ip);
    if let Some(p) = peer {
        alert = alert.field("peer", p);
    }
    alerts.raise(alert);
}

/// Starts a target's tunnel towards its hub, if it has enrolled.
pub async fn start_target(
    config: &Config,
    vault: &Vault,
    registry: &Registry,
    alerts: Arc<dyn AlertSink>,
    audit: AuditLog,
    shutdown: CancellationToken,
) -> Result<Membership, DaemonError> {
    let Some(enrollment) = Enrollment::load(&config.state_dir)? else {
        tracing::info!(
            "not enrolled yet: run `tetherd enroll TOKEN` with a token from `tether vpn invite` on the hub"
        );
        return Ok(Membership {
            tunnel: None,
            hub: None,
            enrollment: None,
            rotator: None,
            ssh: None,
            tasks: Vec::new(),
        });
    };
    let tunnel = start_tunnel(
        config,
        vault,
        (enrollment.overlay_ip, enrollment.prefix_len),
        NodeRole::Target,
        "0.0.0.0:0",
        registry,
        &alerts,
        // This target's own relays first, then the ones its invite named.
        crate::via_relay::endpoints(config.tunnel.relays.iter().chain(&enrollment.relays)),
    )
    .await?;
    // An empty endpoint: the hub has no address this target can reach; relays only.
    let endpoint = if enrollment.hub_wg_endpoint.is_empty() {
        None
    } else {
        Some(
            enrollment
                .hub_wg_endpoint
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    DaemonError::Membership(format!(
                        "cannot resolve the hub's endpoint {}",
                        enrollment.hub_wg_endpoint
                    ))
                })?,
        )
    };
    let keepalive = config.tunnel.persistent_keepalive_secs;
    tunnel
        .handle()
        .add_peer(PeerConfig {
            name: "hub".to_owned(),
            public_key: PublicKey::from_base64(&enrollment.hub_wg_public_key)
                .map_err(|e| DaemonError::Membership(format!("saved hub key: {e}")))?,
            overlay_ip: enrollment.hub_overlay_ip,
            endpoint,
            persistent_keepalive: (keepalive > 0).then_some(keepalive),
        })
        .map_err(|e| DaemonError::Membership(format!("hub peer: {e}")))?;
    tracing::info!(name = %enrollment.name, overlay = %enrollment.overlay_ip, hub = %enrollment.hub_wg_endpoint, relays = enrollment.relays.len(), "target tunnel up");
    let days = config.tunnel.key_rotation_days;
    let (agent, tasks) = crate::agent::TargetAgent::spawn(
        crate::agent::TargetAgentConfig {
            tunnel: tunnel.handle(),
            vault: vault.clone(),
            hub_ip: enrollment.hub_overlay_ip,
            name: enrollment.name.clone(),
            audit,
            alerts,
            max_age: (days > 0).then(|| Duration::from_secs(u64::from(days) * 86_400)),
        },
        shutdown,
    )
    .map_err(agent_port_err)?;
    Ok(Membership {
        tunnel: Some(tunnel),
        hub: None,
        enrollment: Some(enrollment),
        rotator: Some(agent),
        ssh: None,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::advertised;

    #[test]
    fn only_an_address_targets_could_reach_is_advertised() {
        let any: std::net::SocketAddr = "0.0.0.0:51821".parse().unwrap();
        let one: std::net::SocketAddr = "192.0.2.7:51821".parse().unwrap();
        // Configured: used as given, unless it names every address.
        assert_eq!(
            advertised(Some("hub.example.net:51821"), any).as_deref(),
            Some("hub.example.net:51821")
        );
        assert_eq!(advertised(Some("0.0.0.0:51821"), one), None);
        assert_eq!(advertised(Some("[::]:51821"), one), None);
        // Not configured: the specific bound address.
        assert_eq!(advertised(None, one).as_deref(), Some("192.0.2.7:51821"));
        // Bound to every address: the host name only when it resolves beyond loopback.
        if let Some(name) = advertised(None, any) {
            let resolved: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&name)
                .unwrap()
                .collect();
            assert!(resolved.iter().any(|a| !a.ip().is_loopback()), "{name}");
        }
    }
}
