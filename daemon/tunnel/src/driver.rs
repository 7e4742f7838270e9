//! The thin tokio driver: one UDP socket, one timer, one task; streams as `AsyncRead + AsyncWrite`.
//! Plus one task per configured relay that keeps a [`RelayClient`] connected (with backoff) and
//! feeds what it receives to the node; the driver loop hands it datagrams without ever waiting.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tether_model::{Alert, AlertSink, Severity};
use tether_relay::client::Incoming;
use tether_relay::{RelayClient, RelayTarget};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::TunnelMetrics;
use crate::node::{
    Changed, Dest, Event, Node, NodeConfig, PeerConfig, PeerId, PeerStatus, RelayId, RelayStatus,
    StreamId, Transmit,
};
use crate::udp::UdpIo;
use crate::{PublicKey, TunnelError};

/// Datagrams read per wake-up before the stack runs (batching amortises the TCP/IP work; with
/// UDP GRO one receive call may deliver dozens, see [`UdpIo`]).
const RX_BATCH: usize = 64;

/// Datagrams queued to one relay connection before more are dropped (and counted), as UDP would.
const RELAY_QUEUE: usize = 1024;
/// First reconnect delay after a relay connection fails or ends; doubles up to [`RELAY_BACKOFF_MAX`].
const RELAY_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay (plus up to a quarter of it in jitter).
const RELAY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a hub waits after a peer change before pushing its allowlist to a relay.
const ALLOWLIST_DEBOUNCE: Duration = Duration::from_millis(100);
/// Time limit for connecting, TLS, upgrade and key proof with one relay.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A relay this node may use when direct UDP to a peer does not work.
#[derive(Debug, Clone)]
pub struct RelayEndpoint {
    /// Its name, shown in paths as `relay:NAME`.
    pub name: String,
    /// How to reach and recognise it.
    pub target: RelayTarget,
}

/// How to start a [`Tunnel`].
pub struct TunnelConfig {
    /// The node (keys, overlay address, role, buffers).
    pub node: NodeConfig,
    /// UDP address to bind (e.g. `0.0.0.0:51820`; `127.0.0.1:0` in tests).
    pub bind: SocketAddr,
    /// Where `vpn_peer_unhealthy` alerts go.
    pub alerts: Arc<dyn AlertSink>,
    /// Registry for the `tether_vpn_*` metrics (`None`: no metrics).
    pub registry: Option<prometheus::Registry>,
    /// How long [`TunnelHandle::connect`] waits for the TCP handshake.
    pub connect_timeout: Duration,
    /// Relays, in failover order (empty: direct UDP only).
    pub relays: Vec<RelayEndpoint>,
}

impl std::fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("node", &self.node)
            .field("bind", &self.bind)
            .field("relays", &self.relays)
            .finish_non_exhaustive()
    }
}

impl TunnelConfig {
    /// A config with no metrics, no alerts and a 10 s connect timeout.
    pub fn new(node: NodeConfig, bind: SocketAddr) -> Self {
        TunnelConfig {
            node,
            bind,
            alerts: Arc::new(tether_model::NoAlerts),
            registry: None,
            connect_timeout: Duration::from_secs(10),
            relays: Vec::new(),
        }
    }
}

struct Inner {
    node: Node,
    read_wakers: HashMap<StreamId, Waker>,
    write_wakers: HashMap<StreamId, Waker>,
    accept_wakers: HashMap<u16, Waker>,
    metrics: Option<TunnelMetrics>,
    stopped: bool,
    /// Datagrams for a relay dropped because its queue was full or it was not connected.
    relay_dropped: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    wake_driver: Notify,
    shutdown: Notify,
    local_addr: SocketAddr,
    overlay_ip: Ipv4Addr,
    alerts: Arc<dyn AlertSink>,
    connect_timeout: Duration,
    /// The key relay connections authenticate with; bumped generation on rotation.
    relay_key: Mutex<boringtun::x25519::StaticSecret>,
    relay_key_gen: watch::Sender<u64>,
    /// Bumped when a peer is added or removed: a hub pushes its peers' keys to its relays.
    peers_gen: watch::Sender<u64>,
    /// Hubs are the relays' admins: they push which keys may connect.
    pushes_allowlist: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the node half-updated in a way that is
        // worse than stopping; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running tunnel: owns the driver task and the relay tasks. Dropping it stops them.
pub struct Tunnel {
    handle: TunnelHandle,
    task: Option<JoinHandle<()>>,
    relay_tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local_addr", &self.handle.local_addr())
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Binds the UDP socket and starts the driver task on the current tokio runtime.
    pub async fn start(cfg: TunnelConfig) -> Result<Tunnel, TunnelError> {
        let sock = UdpSocket::bind(cfg.bind)
            .await
            .map_err(|source| TunnelError::Socket {
                addr: cfg.bind.to_string(),
                source,
            })?;
        let local_addr = sock.local_addr().map_err(|source| TunnelError::Socket {
            addr: cfg.bind.to_string(),
            source,
        })?;
        tune_buffers(&sock);
        let metrics = match &cfg.registry {
            Some(r) => Some(TunnelMetrics::register(r)?),
            None => None,
        };
        let relay_key = cfg.node.private_key.inner().clone();
        let pushes_allowlist = cfg.node.role == crate::NodeRole::Hub;
        let mut node = Node::new(cfg.node, Instant::now())?;
        let relay_ids: Vec<RelayId> = cfg
            .relays
            .iter()
            .map(|r| node.add_relay(r.name.clone()))
            .collect();
        let shared = Arc::new(Shared {
            overlay_ip: node.overlay_ip(),
            inner: Mutex::new(Inner {
                node,
                read_wakers: HashMap::new(),
                write_wakers: HashMap::new(),
                accept_wakers: HashMap::new(),
                metrics,
                stopped: false,
                relay_dropped: 0,
            }),
            wake_driver: Notify::new(),
            shutdown: Notify::new(),
            local_addr,
            alerts: cfg.alerts,
            connect_timeout: cfg.connect_timeout,
            relay_key: Mutex::new(relay_key),
            relay_key_gen: watch::Sender::new(0),
            peers_gen: watch::Sender::new(0),
            pushes_allowlist,
        });
        let mut relay_tx = Vec::new();
        let mut relay_tasks = Vec::new();
        for (ep, id) in cfg.relays.into_iter().zip(relay_ids) {
            let (tx, rx) = mpsc::channel(RELAY_QUEUE);
            relay_tx.push(tx);
            relay_tasks.push(tokio::spawn(relay_task(shared.clone(), id, ep, rx)));
        }
        let task = tokio::spawn(run(shared.clone(), sock, relay_tx));
        Ok(Tunnel {
            handle: TunnelHandle { shared },
            task: Some(task),
            relay_tasks,
        })
    }

    /// A cloneable handle for streams, peers and status.
    pub fn handle(&self) -> TunnelHandle {
        self.handle.clone()
    }

    /// Stops the driver and waits for it; open streams fail with `ConnectionAborted`.
    pub async fn shutdown(mut self) {
        for t in self.relay_tasks.drain(..) {
            t.abort();
        }
        self.handle.shared.shutdown.notify_one();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for t in self.relay_tasks.drain(..) {
            t.abort();
        }
        if let Some(t) = self.task.take() {
            t.abort();
            stop(&self.handle.shared);
        }
    }
}

/// How often the driver refreshes `tether_vpn_stream_buffer_bytes` (a walk over every stream).
const BUFFER_GAUGE_EVERY: Duration = Duration::from_secs(1);

/// UDP socket buffer size asked for. A 256 KiB TCP window is ~180 datagrams in one burst; the
/// Linux default (208 KiB, ~90 datagrams of 1.5 KB) drops the tail of every burst.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

fn tune_buffers(sock: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    // The *Force variants exceed net.core.[rw]mem_max but need CAP_NET_ADMIN; fall back.
    if setsockopt(sock, sockopt::RcvBufForce, &UDP_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &UDP_BUFFER);
    }
    if setsockopt(sock, sockopt::SndBufForce, &UDP_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &UDP_BUFFER);
    }
}

fn stop(shared: &Shared) {
    let mut g = shared.lock();
    g.stopped = true;
    for (_, w) in g.read_wakers.drain() {
        w.wake();
    }
    for (_, w) in g.write_wakers.drain() {
        w.wake();
    }
    for (_, w) in g.accept_wakers.drain() {
        w.wake();
    }
}

async fn run(
    shared: Arc<Shared>,
    sock: UdpSocket,
    relays: Vec<mpsc::Sender<(PublicKey, Vec<u8>)>>,
) {
    let mut io = UdpIo::new(&sock);
    let mut out: Vec<Transmit> = Vec::new();
    let mut udp_out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    // `tether_vpn_stream_buffer_bytes`: when it was last summed, and the sum.
    let (mut buffers_at, mut buffers): (Option<Instant>, usize) = (None, 0);
    loop {
        let (deadline, pending) = {
            let mut g = shared.lock();
            (g.node.poll_timeout(), g.node.has_output())
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = shared.shutdown.notified() => break,
            _ = std::future::ready(()), if pending => {}
            r = sock.readable() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "tunnel UDP socket not readable");
                } else {
                    let mut g = shared.lock();
                    let now = Instant::now();
                    let r = io.recv(&sock, RX_BATCH, |from, d| g.node.handle_datagram(from, d, now));
                    match r {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => tracing::debug!(error = %e, "tunnel UDP receive failed"),
                    }
                }
            }
            _ = sleep => {
                shared.lock().node.handle_timeout(Instant::now());
            }
            _ = shared.wake_driver.notified() => {}
        }
        {
            let mut g = shared.lock();
            let g = &mut *g;
            while let Some(t) = g.node.poll_transmit() {
                out.push(t);
            }
            while let Some(ev) = g.node.poll_event() {
                if let Event::StreamIncoming { port, .. } = ev
                    && let Some(w) = g.accept_wakers.remove(&port)
                {
                    w.wake();
                }
                if let Event::PathChanged { .. } = ev
                    && let Some(m) = &g.metrics
                {
                    m.path_switched();
                }
                on_event(&shared, &g.node, ev);
            }
            // Wake the parked tasks whose stream became ready: only the streams that changed
            // since the last pass (a hub parks one reader per pooled connection; asking all of
            // them after every run was O(streams) per datagram), all of them once per tick.
            match g.node.take_changed() {
                Changed::All => {
                    g.read_wakers.retain(|id, w| {
                        if g.node.readiness(*id).readable {
                            w.wake_by_ref();
                            false
                        } else {
                            true
                        }
                    });
                    g.write_wakers.retain(|id, w| {
                        let r = g.node.readiness(*id);
                        if r.writable || r.closed {
                            w.wake_by_ref();
                            false
                        } else {
                            true
                        }
                    });
                }
                Changed::Streams(ids) => {
                    for id in ids {
                        if g.read_wakers.contains_key(&id)
                            && g.node.readiness(id).readable
                            && let Some(w) = g.read_wakers.remove(&id)
                        {
                            w.wake();
                        }
                        if g.write_wakers.contains_key(&id) {
                            let r = g.node.readiness(id);
                            if (r.writable || r.closed)
                                && let Some(w) = g.write_wakers.remove(&id)
                            {
                                w.wake();
                            }
                        }
                    }
                }
            }
            if let Some(m) = &mut g.metrics {
                // The buffer total walks every stream: at most once per
                // BUFFER_GAUGE_EVERY, not on every pass (a hub holds one stream per pooled SSH
                // connection; summing 10,000 per datagram was ~half its CPU in a fan-out).
                let now = Instant::now();
                if buffers_at.is_none_or(|t| now.saturating_duration_since(t) >= BUFFER_GAUGE_EVERY)
                {
                    buffers_at = Some(now);
                    buffers = g.node.stream_buffer_bytes();
                }
                m.update(
                    g.node.totals(),
                    g.node.peer_count(),
                    buffers,
                    g.relay_dropped,
                );
            }
        }
        let mut dropped = 0u64;
        for t in out.drain(..) {
            match t.dst {
                Dest::Udp(dst) => udp_out.push((dst, t.payload)),
                Dest::Relay { relay, key } => {
                    // Never wait for a relay: a full queue drops the datagram, as UDP would.
                    let sent = relays
                        .get(usize::from(relay.0))
                        .is_some_and(|tx| tx.try_send((key, t.payload)).is_ok());
                    if !sent {
                        dropped += 1;
                    }
                }
            }
        }
        if !udp_out.is_empty() {
            io.send(&sock, &udp_out).await;
            udp_out.clear();
        }
        if dropped > 0 {
            shared.lock().relay_dropped += dropped;
        }
    }
    stop(&shared);
}

/// The one place that decides which keys a relay must let in for this node: its peers' keys.
/// A hub pushes them to each relay when it connects and after peers change
/// ([`RelayClient::set_allowed`]; the relay's admin keys name the hub).
pub(crate) fn allowed_keys(node: &Node) -> Vec<[u8; 32]> {
    node.peer_keys().into_iter().map(|k| k.0).collect()
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return Duration::ZERO;
    }
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(u64::from_le_bytes(b) % ms)
}

/// Keeps one relay connected: connect with the node's key, report up/down to the node, forward
/// queued datagrams to it and received ones to the node; reconnect with backoff (0.5 s doubling
/// to 10 s, plus jitter) after a failure, a disconnect or GoingAway, and at once after a key
/// rotation.
async fn relay_task(
    shared: Arc<Shared>,
    id: RelayId,
    ep: RelayEndpoint,
    mut out: mpsc::Receiver<(PublicKey, Vec<u8>)>,
) {
    let mut backoff = RELAY_BACKOFF_MIN;
    let mut key_gen = shared.relay_key_gen.subscribe();
    let mut peers_gen = shared.peers_gen.subscribe();
    let mut push = shared.pushes_allowlist;
    let mut failing = false;
    loop {
        let secret = shared
            .relay_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        key_gen.mark_unchanged();
        match RelayClient::connect(&ep.target, &secret, RELAY_CONNECT_TIMEOUT).await {
            Ok(mut client) => {
                backoff = RELAY_BACKOFF_MIN;
                failing = false;
                tracing::info!(relay = %ep.name, addr = %ep.target.addr, "relay connected");
                // Stale datagrams queued while disconnected would only confuse WireGuard timers.
                while out.try_recv().is_ok() {}
                if push {
                    peers_gen.mark_unchanged();
                    let keys = allowed_keys(&shared.lock().node);
                    if let Err(e) = client.set_allowed(keys).await {
                        // Not an admin there (the relay closes the connection): stop pushing
                        // to this relay; its allowlist file must list the targets then.
                        tracing::warn!(relay = %ep.name, error = %e, "the relay refused this hub's allowlist: add this hub's WireGuard public key to its [relay] admin_keys, or list the targets' keys in its allowlist file");
                        push = false;
                        continue;
                    }
                }
                shared.lock().node.relay_up(id, Instant::now());
                shared.wake_driver.notify_one();
                let why = loop {
                    tokio::select! {
                        m = out.recv() => match m {
                            Some((key, data)) => {
                                if let Err(e) = client.send(key.0, &data).await {
                                    break e.to_string();
                                }
                            }
                            None => return,
                        },
                        inc = client.recv() => match inc {
                            Some(Incoming::Datagram { src, data }) => {
                                shared.lock().node.handle_relayed(id, PublicKey(src), &data, Instant::now());
                                shared.wake_driver.notify_one();
                            }
                            Some(Incoming::GoingAway) => break "the relay is going away".to_owned(),
                            None => break "the connection closed".to_owned(),
                        },
                        _ = key_gen.changed() => break "the node's key was rotated".to_owned(),
                        _ = peers_gen.changed(), if push => {
                            // Coalesce a burst of enrollments or revocations into one push.
                            tokio::time::sleep(ALLOWLIST_DEBOUNCE).await;
                            peers_gen.mark_unchanged();
                            let keys = allowed_keys(&shared.lock().node);
                            if let Err(e) = client.set_allowed(keys).await {
                                break format!("pushing the allowlist failed: {e}");
                            }
                        }
                    }
                };
                tracing::warn!(relay = %ep.name, why = %why, "relay disconnected");
                shared.lock().node.relay_down(id, Instant::now());
                shared.wake_driver.notify_one();
                if why.contains("rotated") {
                    continue;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(relay = %ep.name, addr = %ep.target.addr, error = %e, "cannot connect to the relay; retrying with backoff");
                    failing = true;
                } else {
                    tracing::debug!(relay = %ep.name, error = %e, "relay connect failed");
                }
            }
        }
        let wait = backoff + jitter(backoff / 4);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = key_gen.changed() => {}
        }
        backoff = (backoff * 2).min(RELAY_BACKOFF_MAX);
    }
}

fn on_event(shared: &Shared, node: &Node, ev: Event) {
    // One lookup, not every peer's status: at 10,000 peers a burst of PeerUp events (a hub
    // restart) would otherwise cost O(peers) each.
    let name = |id: PeerId| node.peer_name(id).unwrap_or_default().to_owned();
    match ev {
        Event::PeerUnhealthy(id) => {
            let host = name(id);
            let mut a = Alert::new(
                "vpn_peer_unhealthy",
                Severity::Warning,
                format!(
                    "tunnel peer {host} has not completed a WireGuard handshake for over 3 minutes"
                ),
            );
            a.host = Some(host);
            shared.alerts.raise(a);
        }
        Event::PathChanged { peer, from, to } => {
            let host = name(peer);
            tracing::warn!(peer = %host, from = %from, to = %to, "tunnel path switch");
            let mut a = Alert::new(
                "vpn_path_switch",
                Severity::Warning,
                format!("tunnel peer {host} switched path from {from} to {to}"),
            )
            .field("from", from)
            .field("to", to);
            a.host = Some(host);
            shared.alerts.raise(a);
        }
        Event::PeerUp(id) => tracing::info!(peer = %name(id), "tunnel peer up"),
        Event::PeerDown(id) => tracing::info!(peer = %name(id), "tunnel peer down"),
        Event::PeerHealthy(id) => tracing::info!(peer = %name(id), "tunnel peer healthy again"),
        Event::PeerRebuilt(id) => {
            tracing::warn!(peer = %name(id), "tunnel peer rebuilt by the watchdog")
        }
        _ => {}
    }
}

/// A cloneable handle to a running [`Tunnel`].
#[derive(Clone)]
pub struct TunnelHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelHandle")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl TunnelHandle {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This node's WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.lock().node.public_key()
    }

    /// This node's overlay IP.
    pub fn overlay_ip(&self) -> Ipv4Addr {
        self.shared.overlay_ip
    }

    fn live(&self) -> Result<MutexGuard<'_, Inner>, TunnelError> {
        let g = self.shared.lock();
        if g.stopped {
            Err(TunnelError::Stopped)
        } else {
            Ok(g)
        }
    }

    /// Adds a peer (enrollment).
    pub fn add_peer(&self, cfg: PeerConfig) -> Result<PeerId, TunnelError> {
        let id = self.live()?.node.add_peer(cfg, Instant::now())?;
        self.shared.wake_driver.notify_one();
        self.shared.peers_gen.send_modify(|g| *g += 1);
        Ok(id)
    }

    /// Removes a peer (revoke); its streams fail promptly with `ConnectionAborted`.
    pub fn remove_peer(&self, id: PeerId) -> Result<(), TunnelError> {
        self.live()?.node.remove_peer(id)?;
        self.shared.wake_driver.notify_one();
        self.shared.peers_gen.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Replaces this node's private key (`tether vpn rotate-keys`); see [`Node::set_private_key`].
    pub fn set_private_key(&self, key: &crate::SecretKey) -> Result<(), TunnelError> {
        self.live()?.node.set_private_key(key);
        *self
            .shared
            .relay_key
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = key.inner().clone();
        // Relay connections authenticate with the key: reconnect them under the new one.
        self.shared.relay_key_gen.send_modify(|g| *g += 1);
        Ok(())
    }

    /// The configured relays in failover order and whether each is connected now (for
    /// `tether vpn status`).
    pub fn relays(&self) -> Vec<RelayStatus> {
        self.shared.lock().node.relays()
    }

    /// The peer owning an overlay IP.
    pub fn peer_by_ip(&self, ip: Ipv4Addr) -> Option<PeerId> {
        self.shared.lock().node.peer_by_ip(ip)
    }

    /// Per-peer status for `tether vpn status`.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.shared.lock().node.status(Instant::now())
    }

    /// TCP buffer bytes held by the open overlay streams, both directions.
    pub fn stream_buffer_bytes(&self) -> usize {
        self.shared.lock().node.stream_buffer_bytes()
    }

    /// Opens an overlay TCP connection to `peer_ip:port`.
    pub async fn connect(&self, peer_ip: Ipv4Addr, port: u16) -> Result<TunnelStream, TunnelError> {
        let id = self.live()?.node.connect(peer_ip, port)?;
        self.shared.wake_driver.notify_one();
        let stream = TunnelStream {
            shared: self.shared.clone(),
            id,
            peer: peer_ip,
        };
        let wait = poll_fn(|cx| {
            let mut g = self.shared.lock();
            if g.stopped {
                return Poll::Ready(Err("the tunnel driver stopped".to_string()));
            }
            let r = g.node.readiness(id);
            if r.closed {
                return Poll::Ready(Err(
                    "connection refused, reset, or the peer was removed".to_string()
                ));
            }
            if r.connected {
                return Poll::Ready(Ok(()));
            }
            g.write_wakers.insert(id, cx.waker().clone());
            Poll::Pending
        });
        match tokio::time::timeout(self.shared.connect_timeout, wait).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(why)) => Err(TunnelError::Connect {
                ip: peer_ip,
                port,
                why,
            }),
            Err(_) => Err(TunnelError::Connect {
                ip: peer_ip,
                port,
                why: format!("no answer within {:?}", self.shared.connect_timeout),
            }),
        }
    }

    /// Accepts overlay TCP connections on `port`.
    pub fn listen(&self, port: u16) -> Result<TunnelListener, TunnelError> {
        self.live()?.node.listen(port)?;
        Ok(TunnelListener {
            shared: self.shared.clone(),
            port,
        })
    }
}

/// Accepts overlay TCP connections on one port. Dropping it stops listening.
pub struct TunnelListener {
    shared: Arc<Shared>,
    port: u16,
}

impl std::fmt::Debug for TunnelListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelListener")
            .field("port", &self.port)
            .finish()
    }
}

impl TunnelListener {
    /// Waits for the next connection.
    pub async fn accept(&self) -> Result<TunnelStream, TunnelError> {
        poll_fn(|cx| {
            let mut g = self.shared.lock();
            if g.stopped {
                return Poll::Ready(Err(TunnelError::Stopped));
            }
            if let Some(id) = g.node.accept(self.port) {
                let peer = g.node.stream_peer(id).unwrap_or(Ipv4Addr::UNSPECIFIED);
                return Poll::Ready(Ok(TunnelStream {
                    shared: self.shared.clone(),
                    id,
                    peer,
                }));
            }
            g.accept_wakers.insert(self.port, cx.waker().clone());
            if g.node.has_output() {
                self.shared.wake_driver.notify_one();
            }
            Poll::Pending
        })
        .await
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TunnelListener {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.node.unlisten(self.port);
        g.accept_wakers.remove(&self.port);
    }
}

/// One overlay TCP connection: `AsyncRead + AsyncWrite` with back-pressure from the TCP window.
pub struct TunnelStream {
    shared: Arc<Shared>,
    id: StreamId,
    peer: Ipv4Addr,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl TunnelStream {
    /// The overlay IP at the other end.
    pub fn peer_ip(&self) -> Ipv4Addr {
        self.peer
    }
}

fn stopped_err() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the tunnel driver stopped",
    )
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.shared.lock();
        if g.stopped {
            return Poll::Ready(Err(stopped_err()));
        }
        // Whoever left output queued already woke the driver: one wake-up per batch of stream
        // calls, not one per call (each costs a cross-thread hand-off).
        let queued = g.node.has_output();
        match g.node.recv(self.id, buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                drop(g);
                if n > 0 && !queued {
                    self.shared.wake_driver.notify_one();
                }
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                g.read_wakers.insert(self.id, cx.waker().clone());
                let kick = g.node.has_output();
                drop(g);
                if kick {
                    self.shared.wake_driver.notify_one();
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.shared.lock();
        if g.stopped {
            return Poll::Ready(Err(stopped_err()));
        }
        // As in poll_read: output already queued means the driver was already woken for it.
        let queued = g.node.has_output();
        match g.node.send(self.id, data) {
            Ok(n) => {
                drop(g);
                if !queued {
                    self.shared.wake_driver.notify_one();
                }
                Poll::Ready(Ok(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                g.write_wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().node.close(self.id);
        self.shared.wake_driver.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.node.release(self.id);
        g.read_wakers.remove(&self.id);
        g.write_wakers.remove(&self.id);
        drop(g);
        self.shared.wake_driver.notify_one();
    }
}
