//! The relay server: TLS 1.3, an HTTP/1.1 upgrade, the key proof, then forwarding.
//!
//! Limits: new connections per source address (token bucket, default 5/s burst 10); every
//! authenticated key gets a byte budget (announced in `Welcome`) and its own bounded send queue
//! (a full queue drops the datagram and counts it: one heavy sender fills only its receivers'
//! queues, and only within its own budget); frames are capped at [`crate::proto::MAX_PAYLOAD`];
//! the handshake must finish within 10 s. Only keys in the allowlist are accepted, re-read when
//! the file changes. On shutdown every client is told [`Frame::GoingAway`] first.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::RelayError;
use crate::proto::{Bucket, Decoder, Frame, Key, client_proof, proofs_match, relay_proof};

/// Frames queued to one client before datagrams to it are dropped.
pub const CLIENT_QUEUE: usize = 256;
/// Longest HTTP request head accepted.
const MAX_HEAD: usize = 8192;
/// Time to finish TLS, upgrade and proof.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// How a relay runs.
pub struct RelayConfig {
    /// Where to listen (TCP).
    pub listen: SocketAddr,
    /// TLS 1.3 server config ([`crate::tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// The relay's X25519 secret (its public half is what clients are configured with).
    pub secret: x25519_dalek::StaticSecret,
    /// File of allowed WireGuard keys, one base64 key per line (`#` comments); re-read when it
    /// changes. Unknown keys are refused before anything is forwarded.
    pub allowlist: PathBuf,
    /// Bytes per second each key may send, and its burst.
    pub rate: u32,
    /// Burst of bytes.
    pub burst: u32,
    /// New connections per second per source address, and the burst.
    pub conn_rate: (u32, u32),
    /// Bearer token for `/metrics`; `None`: `/metrics` is refused.
    pub metrics_token: Option<String>,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("listen", &self.listen)
            .field("allowlist", &self.allowlist)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("conn_rate", &self.conn_rate)
            .finish_non_exhaustive()
    }
}

/// Counters (also served on `/metrics`).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Keys connected now.
    pub connected: AtomicU64,
    /// Datagrams forwarded.
    pub forwarded: AtomicU64,
    /// Bytes forwarded.
    pub bytes: AtomicU64,
    /// Datagrams dropped: over the sender's budget.
    pub dropped_budget: AtomicU64,
    /// Datagrams dropped: the receiver's queue was full.
    pub dropped_queue: AtomicU64,
    /// Datagrams dropped: the receiver is not connected.
    pub dropped_no_route: AtomicU64,
    /// Connections refused (rate, unknown key, failed proof, bad protocol).
    pub refused: AtomicU64,
}

struct Shared {
    secret: x25519_dalek::StaticSecret,
    public: Key,
    allowed: RwLock<HashSet<Key>>,
    clients: Mutex<HashMap<Key, (u64, mpsc::Sender<Frame>)>>,
    next_conn: AtomicU64,
    rate: u32,
    burst: u32,
    stats: Arc<RelayStats>,
    metrics_token: Option<String>,
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    public: Key,
    stats: Arc<RelayStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn parse_allowlist(text: &str) -> HashSet<Key> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let b = base64::engine::general_purpose::STANDARD.decode(l).ok()?;
            <[u8; 32]>::try_from(b.as_slice()).ok()
        })
        .collect()
}

impl Relay {
    /// Binds and starts serving.
    pub async fn start(cfg: RelayConfig) -> Result<Relay, RelayError> {
        let text = tokio::fs::read_to_string(&cfg.allowlist)
            .await
            .map_err(|e| {
                RelayError::Io(std::io::Error::new(
                    e.kind(),
                    format!("allowlist {}: {e}", cfg.allowlist.display()),
                ))
            })?;
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let public = x25519_dalek::PublicKey::from(&cfg.secret).to_bytes();
        let stats = Arc::new(RelayStats::default());
        let shared = Arc::new(Shared {
            secret: cfg.secret,
            public,
            allowed: RwLock::new(parse_allowlist(&text)),
            clients: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            rate: cfg.rate,
            burst: cfg.burst,
            stats: stats.clone(),
            metrics_token: cfg.metrics_token,
        });
        let (stop, stop_rx) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.tls);
        let task = tokio::spawn(serve(
            listener,
            acceptor,
            shared,
            cfg.allowlist,
            cfg.conn_rate,
            stop_rx,
        ));
        Ok(Relay {
            addr,
            public,
            stats,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its X25519 public key (what clients configure as `relay_key`).
    pub fn public_key(&self) -> Key {
        self.public
    }

    /// Its counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Tells every client it is going away, then stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    allowlist: PathBuf,
    conn_rate: (u32, u32),
    mut stop: watch::Receiver<bool>,
) {
    let mut per_ip: HashMap<IpAddr, Bucket> = HashMap::new();
    let mut reload = tokio::time::interval(Duration::from_secs(1));
    let mut mtime = tokio::fs::metadata(&allowlist)
        .await
        .and_then(|m| m.modified())
        .ok();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = reload.tick() => {
                let m = tokio::fs::metadata(&allowlist).await.and_then(|m| m.modified()).ok();
                if m != mtime {
                    mtime = m;
                    if let Ok(text) = tokio::fs::read_to_string(&allowlist).await {
                        let set = parse_allowlist(&text);
                        // Keys no longer allowed are disconnected at once.
                        let mut clients = shared.clients.lock().unwrap_or_else(|e| e.into_inner());
                        clients.retain(|k, _| set.contains(k));
                        *shared.allowed.write().unwrap_or_else(|e| e.into_inner()) = set;
                    }
                }
                let now = Instant::now();
                per_ip.retain(|_, b| !b.clone().take(conn_rate.1, now));
            }
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let now = Instant::now();
                if per_ip.len() > 100_000 {
                    per_ip.clear();
                }
                let bucket = per_ip
                    .entry(peer.ip())
                    .or_insert_with(|| Bucket::new(conn_rate.0, conn_rate.1, now));
                if !bucket.take(1, now) {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    drop(tcp);
                    continue;
                }
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                let stop = stop.clone();
                conns.spawn(async move {
                    if let Err(e) = connection(tcp, acceptor, shared.clone(), stop).await {
                        shared.stats.refused.fetch_add(u64::from(e.is_refusal()), Ordering::Relaxed);
                        tracing::debug!(%peer, "relay connection ended: {e}");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Going away: every connection task sees `stop` and tells its client.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

impl RelayError {
    fn is_refusal(&self) -> bool {
        matches!(self, RelayError::Refused(_) | RelayError::Protocol(_))
    }
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

async fn connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<(), RelayError> {
    let _ = tcp.set_nodelay(true);
    let (mut tls, key, mut decoder) = tokio::time::timeout(HANDSHAKE, async {
        let mut tls = acceptor.accept(tcp).await?;
        let rest = http_head(&mut tls, &shared).await?;
        let Some(rest) = rest else {
            return Err(RelayError::Protocol("not an upgrade".into()));
        };
        let mut decoder = Decoder::new();
        decoder.push(&rest);
        let key = authenticate(&mut tls, &mut decoder, &shared).await?;
        Ok::<_, RelayError>((tls, key, decoder))
    })
    .await
    .map_err(|_| RelayError::Timeout("the handshake"))??;

    let (tx, mut rx) = mpsc::channel::<Frame>(CLIENT_QUEUE);
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    {
        // The newest connection for a key wins; the old one is told to go away.
        let mut clients = shared.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = clients.insert(key, (conn_id, tx)) {
            let _ = old.try_send(Frame::GoingAway);
        }
    }
    shared.stats.connected.fetch_add(1, Ordering::Relaxed);
    let result = forward(&mut tls, &mut decoder, &mut rx, key, &shared, stop).await;
    {
        let mut clients = shared.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.get(&key).is_some_and(|(id, _)| *id == conn_id) {
            clients.remove(&key);
        }
    }
    shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
    let _ = tls.shutdown().await;
    result
}

/// Reads the HTTP request head. `/relay` with the upgrade: answers 101 and returns the bytes
/// read past the head; `/healthz` and `/metrics` are answered here (then `None`).
async fn http_head(tls: &mut Tls, shared: &Shared) -> Result<Option<Vec<u8>>, RelayError> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            return Err(RelayError::Protocol("closed before the request".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(RelayError::Protocol("request head over 8 KiB".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or("");
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut parts = request.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let respond = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let answer = match (method, path) {
        ("GET", "/healthz") => respond("200 OK", "ok\n"),
        ("GET", "/metrics") => {
            let auth = header("authorization").unwrap_or_default();
            let ok = shared.metrics_token.as_ref().is_some_and(|t| {
                let want = format!("Bearer {t}");
                subtle::ConstantTimeEq::ct_eq(auth.as_bytes(), want.as_bytes()).into()
            });
            if ok {
                respond("200 OK", &metrics(&shared.stats))
            } else {
                respond("401 Unauthorized", "a bearer token is needed\n")
            }
        }
        ("GET", "/relay")
            if header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("tether-relay/1")) =>
        {
            tls.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: tether-relay/1\r\nconnection: upgrade\r\n\r\n",
            )
            .await?;
            tls.flush().await?;
            return Ok(Some(buf[end..].to_vec()));
        }
        _ => respond("404 Not Found", "not here\n"),
    };
    tls.write_all(answer.as_bytes()).await?;
    tls.flush().await?;
    Ok(None)
}

fn metrics(s: &RelayStats) -> String {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "tether_relay_connected_keys {}\ntether_relay_forwarded_total {}\ntether_relay_forwarded_bytes_total {}\n\
         tether_relay_dropped_total{{reason=\"budget\"}} {}\ntether_relay_dropped_total{{reason=\"queue\"}} {}\n\
         tether_relay_dropped_total{{reason=\"no_route\"}} {}\ntether_relay_refused_total {}\n",
        g(&s.connected),
        g(&s.forwarded),
        g(&s.bytes),
        g(&s.dropped_budget),
        g(&s.dropped_queue),
        g(&s.dropped_no_route),
        g(&s.refused),
    )
}

async fn read_frame(tls: &mut Tls, decoder: &mut Decoder) -> Result<Frame, RelayError> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(f);
        }
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(RelayError::Protocol("closed".into()));
        }
        decoder.push(&buf[..n]);
    }
}

async fn authenticate(
    tls: &mut Tls,
    decoder: &mut Decoder,
    shared: &Shared,
) -> Result<Key, RelayError> {
    let mut server_nonce = [0u8; 32];
    getrandom::fill(&mut server_nonce).map_err(|e| RelayError::Protocol(e.to_string()))?;
    tls.write_all(
        &Frame::ServerHello {
            nonce: server_nonce,
            relay_key: shared.public,
        }
        .encode(),
    )
    .await?;
    tls.flush().await?;
    let Frame::ClientAuth { key, nonce, proof } = read_frame(tls, decoder).await? else {
        return Err(RelayError::Protocol("expected ClientAuth".into()));
    };
    let refuse = |reason: &str| Frame::Refused {
        reason: reason.to_owned(),
    };
    let allowed = shared
        .allowed
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&key);
    if !allowed {
        tls.write_all(&refuse("this key is not in the relay's allowlist").encode())
            .await?;
        return Err(RelayError::Refused("unknown key".into()));
    }
    let want = client_proof(&shared.secret, &key, &server_nonce, &nonce, &key);
    if !proofs_match(&proof, &want) {
        tls.write_all(&refuse("the key proof failed").encode())
            .await?;
        return Err(RelayError::Refused("failed key proof".into()));
    }
    tls.write_all(
        &Frame::Welcome {
            proof: relay_proof(&shared.secret, &key, &server_nonce, &nonce, &key),
            rate: shared.rate,
            burst: shared.burst,
        }
        .encode(),
    )
    .await?;
    tls.flush().await?;
    Ok(key)
}

async fn forward(
    tls: &mut Tls,
    decoder: &mut Decoder,
    rx: &mut mpsc::Receiver<Frame>,
    key: Key,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RelayError> {
    let mut budget = Bucket::new(shared.rate, shared.burst, Instant::now());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Frames already buffered first.
        while let Some(frame) = decoder.next_frame()? {
            match frame {
                Frame::Send { dst, data } => {
                    let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    if !budget.take(n, Instant::now()) {
                        shared.stats.dropped_budget.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let target = shared
                        .clients
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&dst)
                        .map(|(_, tx)| tx.clone());
                    let Some(target) = target else {
                        shared
                            .stats
                            .dropped_no_route
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let len = data.len() as u64;
                    match target.try_send(Frame::Recv { src: key, data }) {
                        Ok(()) => {
                            shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                            shared.stats.bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        Err(_) => {
                            shared.stats.dropped_queue.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Frame::Ping => {
                    tls.write_all(&Frame::Pong.encode()).await?;
                }
                Frame::Pong => {}
                other => {
                    return Err(RelayError::Protocol(format!(
                        "unexpected frame from a client: {other:?}"
                    )));
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {
                tls.write_all(&Frame::GoingAway.encode()).await?;
                tls.flush().await?;
                return Ok(());
            }
            out = rx.recv() => {
                let Some(frame) = out else {
                    // Replaced by a newer connection of the same key, or disallowed.
                    tls.write_all(&Frame::GoingAway.encode()).await?;
                    tls.flush().await?;
                    return Ok(());
                };
                let last = frame == Frame::GoingAway;
                tls.write_all(&frame.encode()).await?;
                // Write whatever else is queued before flushing once.
                while let Ok(f) = rx.try_recv() {
                    tls.write_all(&f.encode()).await?;
                }
                tls.flush().await?;
                if last {
                    return Ok(());
                }
            }
            n = tls.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                decoder.push(&buf[..n]);
            }
        }
    }
}
