//! The thin tokio driver: one UDP socket, one timer, one task; streams as `AsyncRead + AsyncWrite`.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tether_model::{Alert, AlertSink, Severity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::TunnelMetrics;
use crate::node::{Event, Node, NodeConfig, PeerConfig, PeerId, PeerStatus, StreamId, Transmit};
use crate::{PublicKey, TunnelError};

/// Datagrams read per wake-up before the stack runs (batching amortises the TCP/IP work).
const RX_BATCH: usize = 64;

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
}

impl std::fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("node", &self.node)
            .field("bind", &self.bind)
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
}

struct Shared {
    inner: Mutex<Inner>,
    wake_driver: Notify,
    shutdown: Notify,
    local_addr: SocketAddr,
    overlay_ip: Ipv4Addr,
    alerts: Arc<dyn AlertSink>,
    connect_timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the node half-updated in a way that is
        // worse than stopping; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running tunnel: owns the driver task. Dropping it stops the task.
pub struct Tunnel {
    handle: TunnelHandle,
    task: Option<JoinHandle<()>>,
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
        let node = Node::new(cfg.node, Instant::now())?;
        let shared = Arc::new(Shared {
            overlay_ip: node.overlay_ip(),
            inner: Mutex::new(Inner {
                node,
                read_wakers: HashMap::new(),
                write_wakers: HashMap::new(),
                accept_wakers: HashMap::new(),
                metrics,
                stopped: false,
            }),
            wake_driver: Notify::new(),
            shutdown: Notify::new(),
            local_addr,
            alerts: cfg.alerts,
            connect_timeout: cfg.connect_timeout,
        });
        let task = tokio::spawn(run(shared.clone(), sock));
        Ok(Tunnel {
            handle: TunnelHandle { shared },
            task: Some(task),
        })
    }

    /// A cloneable handle for streams, peers and status.
    pub fn handle(&self) -> TunnelHandle {
        self.handle.clone()
    }

    /// Stops the driver and waits for it; open streams fail with `ConnectionAborted`.
    pub async fn shutdown(mut self) {
        self.handle.shared.shutdown.notify_one();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            stop(&self.handle.shared);
        }
    }
}

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

async fn run(shared: Arc<Shared>, sock: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    let mut out: Vec<Transmit> = Vec::new();
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
            r = sock.recv_from(&mut buf) => {
                let mut g = shared.lock();
                let now = Instant::now();
                match r {
                    Ok((n, from)) => g.node.handle_datagram(from, &buf[..n], now),
                    Err(e) => tracing::debug!(error = %e, "tunnel UDP receive failed"),
                }
                for _ in 1..RX_BATCH {
                    match sock.try_recv_from(&mut buf) {
                        Ok((n, from)) => g.node.handle_datagram(from, &buf[..n], now),
                        Err(_) => break,
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
                on_event(&shared, &g.node, ev);
            }
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
            if let Some(m) = &mut g.metrics {
                m.update(
                    g.node.totals(),
                    g.node.peer_count(),
                    g.node.stream_buffer_bytes(),
                );
            }
        }
        for t in out.drain(..) {
            if let Err(e) = sock.send_to(&t.payload, t.dst).await {
                tracing::debug!(error = %e, dst = %t.dst, "tunnel UDP send failed");
            }
        }
    }
    stop(&shared);
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
        Ok(id)
    }

    /// Removes a peer (revoke); its streams fail promptly with `ConnectionAborted`.
    pub fn remove_peer(&self, id: PeerId) -> Result<(), TunnelError> {
        self.live()?.node.remove_peer(id)?;
        self.shared.wake_driver.notify_one();
        Ok(())
    }

    /// Replaces this node's private key (`tether vpn rotate-keys`); see [`Node::set_private_key`].
    pub fn set_private_key(&self, key: &crate::SecretKey) -> Result<(), TunnelError> {
        self.live()?.node.set_private_key(key);
        Ok(())
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
        match g.node.recv(self.id, buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                drop(g);
                if n > 0 {
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
        match g.node.send(self.id, data) {
            Ok(n) => {
                drop(g);
                self.shared.wake_driver.notify_one();
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
